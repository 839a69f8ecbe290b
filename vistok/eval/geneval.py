"""Mini-GenEval: generate an image per held-out caption, let the attribute judge read it back, and count
how often it reads the caption's attributes (all five: `geneval_accuracy`; each: `geneval_accuracy/<slot>`).

Chance: `geneval_chance` = 1 / (number of attribute combinations) for a judge guessing uniformly, and
`geneval_shuffled_accuracy`: the same generated images scored against another image's caption (what an
image that ignores its caption would score with this judge and these captions).
"""

from __future__ import annotations

import math
import random

import torch

from vistok.data.generated import SLOTS
from vistok.eval.attribute_classifier import AttributeClassifier, attribute_accuracy


def chance_metrics() -> dict[str, float]:
    """Uniform-guess chance of every attribute right, and per attribute."""
    return {"geneval_chance": 1.0 / math.prod(len(v) for v in SLOTS.values()),
            **{f"geneval_chance/{slot}": 1.0 / len(values) for slot, values in SLOTS.items()}}


def score_generated(judge: AttributeClassifier, images: torch.Tensor, captions: list[str],
                    seed: int = 0) -> dict[str, float]:
    """geneval_accuracy[/slot] of generated images (B, 3, H, W) in [-1, 1] against the captions they came from,
    plus the shuffled-caption baseline and the chance levels."""
    judge = judge.eval()
    matched = attribute_accuracy(judge, images.float().cpu(), captions)
    order = list(range(len(captions)))
    random.Random(seed).shuffle(order)
    shuffled = attribute_accuracy(judge, images.float().cpu(), [captions[i] for i in order])
    metrics = {"geneval_accuracy": matched["all"]}
    metrics.update({f"geneval_accuracy/{slot}": matched[slot] for slot in SLOTS})
    metrics["geneval_shuffled_accuracy"] = shuffled["all"]
    metrics.update({f"geneval_shuffled_accuracy/{slot}": shuffled[slot] for slot in SLOTS})
    metrics.update(chance_metrics())
    metrics["geneval_images"] = float(len(captions))
    return metrics
