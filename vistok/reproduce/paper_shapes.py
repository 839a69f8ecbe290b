"""Paper shapes on a CPU: a `*_paper` experiment at its real resolution, token count, codebook, quantizer,
patch size, widths and LLM architecture, with only depth, batch and steps cut (`debug=paper_shapes`).

`debug=paper_shapes` holds what every experiment shares (CPU, 32-bit, batch 2, two steps per stage, two
validation images). Depth lives under different keys in each family (conv blocks per level, ViT depth, a
layered backbone's taps), so `PAPER_SHAPES` lists them per experiment and `paper_shape_overrides` returns the
whole override list for `train.py` or `dry_run`:

| experiment | depth cut (paper -> here) | inputs it needs |
| --- | --- | --- |
| ett_paper | conv blocks per level 4 -> 1 (decoder 5 -> 1); LLM layers 28 -> the directory's | shards, llm_path, init_from, lpips |
| ibq_paper | conv blocks per level 4 -> 1 (decoder 5 -> 1) | shards, lpips |
| tokenflow_paper | both towers' and the pixel decoder's conv blocks 2 -> 1 | shards, teacher |
| tokenflow_paper_vq | conv blocks per level 2 -> 1 | shards |
| flextok_paper | ViT depth 18 -> 2 (encoder and decoder) | shards |
| onedpiece_paper | ViT depth 12 -> 2 (encoder and decoder) | shards |
| instella_paper | encoder 12 -> 2 (merge after block 1, was 8), decoder 16 -> 2 (split after 1) | shards |
| instella_paper_vq2d | conv blocks per level 2 -> 1 | shards |
| dualtoken_paper | backbone 27 -> 3 (taps 4/6/26 -> 1/2/3); pixel decoder blocks 2 -> 1 | shards, teacher, lpips |

The LLM's depth is the layer count of the directory `llm_path` points to: `paper_llm_config(layers)` is
Qwen2.5-1.5B's architecture (`configs/llm/qwen2_5_1_5b.yaml`, `expected`) with fewer layers, for writing one.
Experiments whose GAN starts late in the paper (step 20k) start it at once here (`gan_start=0`), so the
discriminator trains, and holds its memory, within the few steps.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[2]
GAN_FROM_START = "stages.tokenizer.gan_start=0"


@dataclass(frozen=True)
class PaperShapes:
    depth: tuple[str, ...]  # overrides that cut depth (and what depends on it)
    llm: bool = False       # needs a local LLM directory (llm_path) of reduced depth
    teacher: bool = False   # needs a local Hugging Face vision model (teacher_path, teacher_dim)
    init: str | None = None  # needs a pre-trained tokenizer (init_from): the experiment that trains one
    lpips: bool = False     # needs LPIPS's weight files (lpips_vgg, lpips_heads)


IBQ_DEPTH = ("tokenizer.encoder.blocks_per_level=1", "tokenizer.decoder.blocks_per_level=1")
PAPER_SHAPES: dict[str, PaperShapes] = {
    "ibq_paper": PaperShapes(IBQ_DEPTH, lpips=True),
    "ett_paper": PaperShapes(IBQ_DEPTH, llm=True, init="ibq_paper", lpips=True),
    "ett_paper_gen": PaperShapes(IBQ_DEPTH, llm=True, init="ibq_paper", lpips=True),
    "tokenflow_paper": PaperShapes(("tokenizer.encoder.semantic.blocks_per_level=1",
                                    "tokenizer.encoder.pixel.blocks_per_level=1",
                                    "tokenizer.decoder.pixel.blocks_per_level=1", GAN_FROM_START),
                                   teacher=True),
    "tokenflow_paper_vq": PaperShapes(("tokenizer.encoder.blocks_per_level=1", GAN_FROM_START)),
    "flextok_paper": PaperShapes(("tokenizer.encoder.depth=2",)),
    "onedpiece_paper": PaperShapes(("tokenizer.encoder.depth=2",)),
    "instella_paper": PaperShapes(("tokenizer.encoder.depth=2", "tokenizer.encoder.merge_after=1",
                                   "tokenizer.decoder.depth=2", "tokenizer.decoder.split_after=1",
                                   GAN_FROM_START)),
    "instella_paper_vq2d": PaperShapes(("tokenizer.encoder.blocks_per_level=1", GAN_FROM_START)),
    "dualtoken_paper": PaperShapes(("tokenizer.encoder.depth=3", "tokenizer.encoder.shortcut_layer=1",
                                    "tokenizer.encoder.pixel_layer=2", "tokenizer.encoder.semantic_layer=3",
                                    "tokenizer.decoder.pixel.blocks_per_level=1"), teacher=True, lpips=True),
}


def paper_shape_overrides(experiment: str, train: str, val: str, *, llm_path: str | None = None,
                          teacher_path: str | None = None, teacher_dim: int | None = None,
                          init_from: str | None = None, lpips_vgg: str | None = None,
                          lpips_heads: str | None = None) -> list[str]:
    """`train.py` overrides that run `experiment` at paper shapes on img2dataset shards `train` / `val`.

    Raises ValueError naming the experiment's missing inputs (an LLM directory, a teacher, init_from, LPIPS
    weights)."""
    if experiment not in PAPER_SHAPES:
        raise ValueError(f"no paper shapes for {experiment!r}; known: {', '.join(sorted(PAPER_SHAPES))}")
    shapes = PAPER_SHAPES[experiment]
    no_teacher = teacher_path is None or teacher_dim is None
    needed = {"llm_path": shapes.llm and llm_path is None, "init_from": shapes.init and init_from is None,
              "teacher_path and teacher_dim": shapes.teacher and no_teacher,
              "lpips_vgg and lpips_heads": shapes.lpips and (lpips_vgg is None or lpips_heads is None)}
    missing = [name for name, absent in needed.items() if absent]
    if missing:
        raise ValueError(f"{experiment} at paper shapes needs {', '.join(missing)}")
    overrides = [f"experiment={experiment}", "debug=paper_shapes", f"data.train={train}", f"data.val={val}",
                 *shapes.depth]
    if shapes.llm:
        overrides.append(f"llm.path={llm_path}")
    if shapes.init:
        overrides.append(f"init_from={init_from}")
    if shapes.teacher:
        overrides += [f"module.semantic.teacher.path={teacher_path}",
                      f"tokenizer.decoder.semantic.out_dim={teacher_dim}"]
    if shapes.lpips:
        overrides += [f"loss.perceptual.vgg_path={lpips_vgg}", f"loss.perceptual.heads_path={lpips_heads}"]
    return overrides


def paper_llm_config(layers: int) -> dict:
    """Qwen2.5-1.5B's architecture (hidden 1536, 12 heads, 2 KV heads, MLP 8960, ...) with `layers` layers:
    the keys of a Hugging Face `config.json` (the vocabulary size is the caller's tokenizer's)."""
    expected = OmegaConf.load(ROOT / "configs" / "llm" / "qwen2_5_1_5b.yaml").expected
    config = OmegaConf.to_container(expected)
    config["num_hidden_layers"] = layers
    return config
