"""Text-to-image decoding: visual tokens/s written with the LLM's key/value cache vs re-running the whole
sequence for every token, and vs Hugging Face `generate` writing as many text tokens with the same LLM.

`generate` is the limit for this decode loop: the same decoder, the same cache, one token per step. Both
loops are greedy over a batch of captions without guidance (guidance doubles the rows of both alike), and
the visual codebook has as many codes as the LLM has text tokens, so both loops pay the same output head.
The tokenizer's codebook stands in for the tokenizer: its decoder runs after the loop and is not timed.

Shapes (the LLM is a random-init Llama built like the default tiny one, float32):
    mini         64 visual tokens (ett_mini: 8 x 8), the default tiny LLM (width 128, 2 layers)
    paper        1,024 visual tokens (ETT at 512 px, stride 16), a reduced LLM (width 256, 2 layers) so that
                 the O(N^2) re-run takes a minute or two on one CPU thread (one round of it)
    paper_width  1,024 visual tokens at ETT's LLM width (Qwen2.5-1.5B: 1536, MLP 8960, 12 heads), one layer:
                 the cached loop against `generate` only (the re-run would take hours on a CPU)

Torch runs on one thread: the ratios are what to read, and a shared machine's other jobs leave them alone
better than absolute tokens/s.
"""

from __future__ import annotations

import shutil
import tempfile

import torch
from torch import nn

from scripts.benchmarks.timing import interleaved, verdict

CACHE_SPEEDUP_TARGET = 10.0  # cached over the full re-run at 1,024 tokens
GENERATE_RATIO_TARGET = 1.2  # seconds per token of the cached loop over `generate`'s

SHAPES = {  # LLM sizes; rounds of the cached loop against generate, then against the re-run (0: not run)
    "mini": {"tokens": 64, "llm": {"hidden_size": 128, "num_layers": 2, "num_heads": 4}, "rounds": 7,
             "rerun_rounds": 7},
    "paper": {"tokens": 1024, "llm": {"hidden_size": 256, "num_layers": 2, "num_heads": 4}, "rounds": 5,
              "rerun_rounds": 1},
    "paper_width": {"tokens": 1024, "rounds": 3, "rerun_rounds": 0, "llm": {
        "hidden_size": 1536, "intermediate_size": 8960, "num_layers": 1, "num_heads": 12}},
}


class Codebook(nn.Module):
    """What `TextToImage` reads of a tokenizer: N tokens per image, one stream of K codes and their
    embeddings."""

    bits_per_token = None  # integer codes: the generator samples them with a softmax head

    def __init__(self, num_tokens: int, codebook_size: int, embed_dim: int = 16):
        super().__init__()
        self.num_tokens, self.codebook_sizes, self.embed_dim = num_tokens, (codebook_size,), embed_dim
        self.embedding = nn.Embedding(codebook_size, embed_dim)

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        return self.embedding(indices[..., 0])


def _captions(count: int) -> list[str]:
    from vistok.data.generated import SLOTS, caption_from_attributes

    return [caption_from_attributes({slot: values[i % len(values)] for slot, values in SLOTS.items()})
            for i in range(count)]


def _text_to_image(llm_dir: str, tokens: int):
    from vistok.generation.generator import TextToImage
    from vistok.models.connector import MLPProjector
    from vistok.models.llm import CausalLM
    from vistok.models.unified import UnifiedModel

    llm = CausalLM(llm_dir)
    codebook = Codebook(tokens, llm.model.get_input_embeddings().num_embeddings)
    model = UnifiedModel(codebook, llm, MLPProjector(codebook.embed_dim, llm.hidden_size), generation=True)
    return TextToImage(model)


def _generate_text(llm, captions: list[str], tokens: int) -> torch.Tensor:
    """`generate` on the same LLM from the same prompts, greedy, exactly `tokens` new tokens per row."""
    ids, attention = llm.tokenize_prompts(captions, 24)
    return llm.model.generate(input_ids=ids, attention_mask=attention.long(), max_new_tokens=tokens,
                              min_new_tokens=tokens, do_sample=False, use_cache=True,
                              pad_token_id=llm.tokenizer.pad_token_id)


def measure_shape(name: str, tokens: int, llm: dict, rounds: int, rerun_rounds: int, batch: int = 2) -> dict:
    """Tokens/s of the cached loop, the full re-run and `generate` at one shape, in interleaved rounds."""
    from vistok.models.llm import build_tiny_llm

    scratch = tempfile.mkdtemp(prefix="vistok-bench-llm-")
    try:
        llm_dir = build_tiny_llm(f"{scratch}/llm", _captions(200), **llm, max_position_embeddings=tokens + 64)
        return _measure(name, llm_dir, tokens, rounds, rerun_rounds, batch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _measure(name: str, llm_dir: str, tokens: int, rounds: int, rerun_rounds: int, batch: int) -> dict:
    from vistok.generation.sampling import SamplingOptions

    captions = _captions(batch)
    torch.manual_seed(0)
    generator = _text_to_image(llm_dir, tokens)
    greedy = SamplingOptions(temperature=0)

    def writer(use_cache: bool):  # one model: the two loops differ only in the cache
        def write() -> torch.Tensor:
            generator.use_cache = use_cache
            return generator.sample_indices(captions, greedy, progress=False)
        return write

    def generate() -> torch.Tensor:
        return _generate_text(generator.llm, captions, tokens)

    # These two calls also warm both sides up.
    assert writer(True)().shape == (batch, tokens, 1)
    prompt_length = generator.llm.tokenize_prompts(captions, 24)[0].shape[1]
    assert generate().shape[1] == prompt_length + tokens  # every token written, no early stop

    cached_s, generate_s, generate_ratio = interleaved(writer(True), generate, 1, rounds, warmup=0)
    config = generator.llm.model.config
    per_second = lambda seconds: batch * tokens / seconds  # noqa: E731
    result = {"tokens": tokens, "hidden_size": config.hidden_size, "num_layers": config.num_hidden_layers,
              "batch": batch, "cached_tokens_per_s": per_second(cached_s),
              "generate_tokens_per_s": per_second(generate_s), "generate_ratio": generate_ratio}
    if rerun_rounds:  # the O(N^2) side: no warm-up call (the cached loop is warm, the re-run warms in a step)
        uncached_s, _, speedup = interleaved(writer(False), writer(True), 1, rerun_rounds, warmup=0)
        result.update(uncached_tokens_per_s=per_second(uncached_s), cache_speedup=speedup)
    _report(name, result, rounds, rerun_rounds)
    return result


def _report(name: str, result: dict, rounds: int, rerun_rounds: int) -> None:
    shape = (f"{result['tokens']} visual tokens, LLM width {result['hidden_size']} x {result['num_layers']} "
             f"layers, batch {result['batch']}, 1 thread")
    rates = (f"cached {result['cached_tokens_per_s']:.0f} tok/s, "
             f"generate {result['generate_tokens_per_s']:.0f} tok/s (medians of {rounds} rounds)")
    if rerun_rounds:
        plural = "s" if rerun_rounds > 1 else ""
        rates += f", full re-run {result['uncached_tokens_per_s']:.1f} tok/s ({rerun_rounds} round{plural})"
    print(f"generation[{name}]: {shape}: {rates}")
    ratio = result["generate_ratio"]
    line = (f"generation[{name}]: seconds per token, cached over generate: {ratio:.2f} "
            f"{verdict(ratio, GENERATE_RATIO_TARGET, higher_is_better=False)}")
    if rerun_rounds:
        speedup = result["cache_speedup"]
        line += f"; cache speedup over the re-run: {speedup:.1f}x"
        if result["tokens"] >= 1024:
            line += f" {verdict(speedup, CACHE_SPEEDUP_TARGET, higher_is_better=True)}"
    print(line)


def generation(shapes: dict | None = None) -> dict:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return {name: measure_shape(name, **shape) for name, shape in (shapes or SHAPES).items()}
    finally:
        torch.set_num_threads(threads)
