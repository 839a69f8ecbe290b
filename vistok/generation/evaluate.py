"""Mini-GenEval of a trained run: generate from held-out captions, score with the attribute judge, save a grid."""

from __future__ import annotations

from pathlib import Path

import torch

from vistok.eval.attribute_classifier import TrainedClassifier, attribute_accuracy, load_split
from vistok.eval.geneval import score_generated
from vistok.generation.generator import TextToImage, eval_mode
from vistok.generation.grid import save_caption_grid
from vistok.generation.sampling import SamplingOptions


def run_geneval(generator: TextToImage, judge: TrainedClassifier, val_urls: list[str], resolution: int,
                options: SamplingOptions, num_images: int = 200, batch_size: int = 100,
                grid_path: str | Path | None = None, progress: bool = True) -> dict[str, float]:
    """geneval_* metrics of `generator` on the first `num_images` held-out captions, scored by `judge` (the
    attribute classifier of this dataset, `vistok.eval.attribute_classifier.ensure_classifier`).

    Besides the generated images' scores (see vistok/eval/geneval.py) it reports the judge's accuracy on
    the real held-out images (`geneval_classifier_accuracy`) and on the tokenizer's reconstructions of the
    same images (`geneval_recon_accuracy`: what perfect tokens would score after this decoder).
    """
    if num_images < 1:
        raise ValueError(f"num_images must be >= 1, got {num_images}")
    real, captions = load_split(val_urls, resolution, limit=num_images)
    generated = generator.generate(captions, options, batch_size=batch_size, progress=progress)
    metrics = score_generated(judge.model, generated.images, captions, seed=options.seed)
    metrics["geneval_classifier_accuracy"] = judge.heldout_accuracy["all"]
    metrics["geneval_recon_accuracy"] = attribute_accuracy(judge.model, _reconstruct(generator, real), captions)["all"]
    if grid_path is not None:
        save_caption_grid(generated.images[:16], captions[:16], grid_path)
    return metrics


@torch.no_grad()
def _reconstruct(generator: TextToImage, images: torch.Tensor, batch_size: int = 250) -> torch.Tensor:
    tokenizer = generator.tokenizer
    device = next(tokenizer.parameters()).device
    out = []
    with eval_mode(tokenizer):
        for start in range(0, images.shape[0], batch_size):
            recon, _ = tokenizer(images[start : start + batch_size].to(device))
            out.append(recon.clamp(-1, 1).cpu())
    return torch.cat(out)
