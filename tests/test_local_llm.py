"""A pretrained LLM as users load one: `llm=local llm.path=DIR` with a Hugging Face directory of the Qwen2
architecture (ETT's Qwen2.5), written here with random weights and a real `tokenizer.json` (a byte-level
BPE with Qwen's special tokens and a chat template); nothing is downloaded.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import run_train

CAPTIONS = ["a red circle with a small mark at the top left", "a blue square on a dark background",
            "a green triangle with a mark at the bottom right", "a yellow star, no mark"] * 8
CHAT_TEMPLATE = ("{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}"
                 "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def write_qwen2_directory(path: Path, hidden: int = 64, layers: int = 2) -> Path:
    """A Qwen2ForCausalLM (random init) + its fast tokenizer, saved as `save_pretrained` writes a Hub model."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(CAPTIONS, trainers.BpeTrainer(vocab_size=300, special_tokens=specials,
                                                          initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>", pad_token="<|endoftext|>",
                                        additional_special_tokens=specials[1:])
    tokenizer.chat_template = CHAT_TEMPLATE
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=512, tie_word_embeddings=True,
                         eos_token_id=tokenizer.eos_token_id, bos_token_id=None)
    torch.manual_seed(0)
    Qwen2ForCausalLM(config).save_pretrained(str(path), safe_serialization=True)
    tokenizer.save_pretrained(str(path))
    return path


@pytest.fixture(scope="module")
def qwen2_dir(tmp_path_factory) -> Path:
    return write_qwen2_directory(tmp_path_factory.mktemp("models") / "qwen2-tiny")


def test_the_directory_is_what_a_hub_checkpoint_holds(qwen2_dir):
    from vistok.models.llm import CausalLM

    files = {p.name for p in qwen2_dir.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= files
    assert json.loads((qwen2_dir / "config.json").read_text())["model_type"] == "qwen2"
    llm = CausalLM(str(qwen2_dir), dtype="bfloat16", gradient_checkpointing=True)
    assert type(llm.model).__name__ == "Qwen2ForCausalLM" and llm.hidden_size == 64
    assert llm.model.dtype.is_floating_point and str(llm.model.dtype) == "torch.bfloat16"
    assert llm.tokenizer.eos_token == "<|endoftext|>"


@pytest.mark.slow
def test_ett_runs_with_a_local_qwen2_directory(qwen2_dir, tmp_path, cache_dir):
    """The ETT stages on a user's own LLM directory, with ETT-paper's LLM settings (bf16, checkpointing)."""
    run_dir = tmp_path / "run"
    args = ["experiment=ett_mini", "debug=tiny", "num_threads=1", "llm=local", f"llm.path={qwen2_dir}",
            "llm.dtype=bfloat16", "llm.gradient_checkpointing=true", "logger=csv"]
    result = run_train(args, run_dir, cache_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for stage in ("align", "ett", "post"):
        assert metrics["stages"][stage]["caption_loss"] > 0, stage
    llm_export = run_dir / "llm"
    assert json.loads((llm_export / "config.json").read_text())["model_type"] == "qwen2"
    assert (llm_export / "tokenizer.json").is_file()
