"""The mini-GenEval judge: a small CNN that reads each caption attribute (size, colour, shape, position,
mark) off a generated-dataset image.

It is trained on the dataset's real training images only (never on generated ones, so it cannot be tuned
to a generator), checked on the real held-out images, and cached by the data and training parameters.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from vistok.cache import cached
from vistok.data.generated import SLOTS, parse_caption

_FORMAT_VERSION = 1  # bumped when the architecture or the training recipe changes


class AttributeClassifier(nn.Module):
    """(B, 3, R, R) images in [-1, 1] -> logits per attribute slot {slot: (B, |values|)}.

    Three convolutions (the last two stride 2) then a flattened map: the position and the corner mark
    are about *where* things are, so no global pooling.
    """

    def __init__(self, resolution: int = 32, width: int = 32, hidden: int = 128):
        super().__init__()
        if resolution % 4:
            raise ValueError(f"resolution must be divisible by 4, got {resolution}")
        self.resolution = resolution
        self.features = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1), nn.GELU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.GELU(),
            nn.Conv2d(2 * width, 2 * width, 3, stride=2, padding=1), nn.GELU(),
            nn.Flatten(), nn.Linear(2 * width * (resolution // 4) ** 2, hidden), nn.GELU(),
        )
        self.heads = nn.ModuleDict({slot: nn.Linear(hidden, len(values)) for slot, values in SLOTS.items()})

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        if images.shape[-2:] != (self.resolution, self.resolution):
            images = F.interpolate(images, size=(self.resolution, self.resolution), mode="bilinear",
                                   align_corners=False)
        features = self.features(images)
        return {slot: head(features) for slot, head in self.heads.items()}

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """{slot: (B,) int64 value index into SLOTS[slot]}."""
        return {slot: logits.argmax(-1) for slot, logits in self(images).items()}


@dataclass
class ClassifierRecipe:
    """How the judge is trained (part of its cache key)."""

    width: int = 32
    hidden: int = 128
    epochs: int = 4
    batch_size: int = 128
    lr: float = 2e-3
    seed: int = 0


def caption_labels(captions: list[str]) -> dict[str, torch.Tensor]:
    """{slot: (B,) int64 value index} from generated-dataset captions; a caption that does not follow the
    template is an error (the judge only reads this dataset's attributes)."""
    labels: dict[str, list[int]] = {slot: [] for slot in SLOTS}
    for caption in captions:
        parsed = parse_caption(caption)
        missing = [slot for slot, value in parsed.items() if value is None]
        if missing:
            raise ValueError(f"caption {caption!r} does not name {missing} (not a generated-dataset caption)")
        for slot, value in parsed.items():
            labels[slot].append(SLOTS[slot].index(value))
    return {slot: torch.tensor(values, dtype=torch.long) for slot, values in labels.items()}


def load_split(pattern: str | list[str], resolution: int, limit: int | None = None) -> tuple[torch.Tensor, list[str]]:
    """All images (B, 3, R, R) in [-1, 1] and captions of a shard pattern, in shard order."""
    from vistok.data.wds import expand_urls, make_val_loader

    images, captions = [], []
    for batch in make_val_loader(expand_urls(pattern), 500, resolution, 0, 1, 0, require_caption=True):
        images.append(batch["image"])
        captions.extend(batch["caption"])
        if limit is not None and len(captions) >= limit:
            break
    if not captions:
        raise ValueError(f"no captioned images in {pattern}")
    return torch.cat(images)[:limit], captions[:limit]


def train_classifier(images: torch.Tensor, captions: list[str], recipe: ClassifierRecipe) -> AttributeClassifier:
    """Train the judge on real images (B, 3, R, R) with their captions' attributes (sum of per-slot CEs)."""
    labels = caption_labels(captions)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.seed)
        model = AttributeClassifier(images.shape[-1], recipe.width, recipe.hidden)
        optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=0.0)
        steps = recipe.epochs * -(-len(captions) // recipe.batch_size)
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, recipe.lr, total_steps=steps, pct_start=0.1)
        model.train()
        for _ in range(recipe.epochs):
            order = torch.randperm(len(captions))
            for start in range(0, len(order), recipe.batch_size):
                rows = order[start : start + recipe.batch_size]
                logits = model(images[rows])
                loss = sum(F.cross_entropy(logits[s], labels[s][rows]) for s in SLOTS)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
    return model.eval()


def attribute_accuracy(model: AttributeClassifier, images: torch.Tensor, captions: list[str],
                       batch_size: int = 500) -> dict[str, float]:
    """{"all": every attribute right, slot: that attribute right}, fractions over the images."""
    labels = caption_labels(captions)
    hits = {slot: [] for slot in SLOTS}
    for start in range(0, len(captions), batch_size):
        predicted = model.predict(images[start : start + batch_size])
        for slot in SLOTS:
            hits[slot].append(predicted[slot].cpu() == labels[slot][start : start + batch_size])
    per_slot = {slot: torch.cat(h) for slot, h in hits.items()}
    every = torch.stack(list(per_slot.values())).all(0)
    return {"all": float(every.float().mean()), **{s: float(h.float().mean()) for s, h in per_slot.items()}}


@dataclass
class TrainedClassifier:
    """A judge and its accuracy on the real held-out images ({"all", slot: ...})."""

    model: AttributeClassifier
    heldout_accuracy: dict[str, float]
    path: Path


def ensure_classifier(cache_dir: str | Path, train_urls: str | list[str], val_urls: str | list[str],
                      resolution: int, recipe: ClassifierRecipe | None = None) -> TrainedClassifier:
    """The judge for this dataset: loaded from `cache_dir` when a finished one is there, else trained on the
    real training images, scored on the real held-out images and saved (atomically, as
    `attribute-classifier-<key>.pt`). The cache key holds the training shards' paths (the generated dataset's
    directory names hash its parameters)."""
    from vistok.data.wds import expand_urls

    recipe = recipe or ClassifierRecipe()
    params = {"train": expand_urls(train_urls), "resolution": resolution, **asdict(recipe),
              "format": _FORMAT_VERSION}
    path = cached(cache_dir, "attribute-classifier-", params, suffix=".pt",
                  build=lambda tmp: _train_and_save(tmp, train_urls, val_urls, resolution, recipe))
    saved = torch.load(path, map_location="cpu", weights_only=True)
    model = AttributeClassifier(resolution, recipe.width, recipe.hidden)
    model.load_state_dict(saved["state_dict"])
    return TrainedClassifier(model.eval(), saved["heldout_accuracy"], path)


def _train_and_save(path: Path, train_urls: str | list[str], val_urls: str | list[str], resolution: int,
                    recipe: ClassifierRecipe) -> None:
    """Train a judge on the real training images, score it on the held-out ones, save both to `path`."""
    model = train_classifier(*load_split(train_urls, resolution), recipe)
    heldout = attribute_accuracy(model, *load_split(val_urls, resolution))
    torch.save({"state_dict": model.state_dict(), "heldout_accuracy": heldout}, path)
