"""The in-run semantic teacher: a tiny CLIP (conv image tower + positional bag-of-words text tower) trained
contrastively on the dataset's image-caption pairs, saved as a vistok module, then frozen.
Nothing is downloaded, so every dual-family experiment runs offline.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from vistok.cache import cached
from vistok.tokenizers.modules.conv import ConvEncoder


def _words(caption: str) -> list[str]:
    return caption.lower().replace(".", " ").replace(",", " ").split()


class MiniCLIP(nn.Module):
    """Image tower (B, 3, H, W) -> (B, dim, h, w) feature map, mean-pooled for the contrastive loss; text
    tower = word + position embeddings, averaged (word order matters: "red ... blue mark" != "blue ... red").

    As a teacher, `forward(images)` returns the feature map.

    Args:
        vocabulary: caption words (index 0 is reserved for unknown words).
        dim: feature and embedding width Dt.
        base_channels, ch_mult: image tower widths (one downsample per extra level).
        max_words: caption words read (the rest are ignored).
    """

    def __init__(self, vocabulary: list[str], dim: int = 32, base_channels: int = 16,
                 ch_mult: tuple[int, ...] = (1, 2, 4), max_words: int = 16):
        super().__init__()
        self.vocabulary = list(vocabulary)
        self.word_ids = {w: i + 1 for i, w in enumerate(self.vocabulary)}
        self.dim, self.max_words = dim, max_words
        self.image_tower = ConvEncoder(out_dim=dim, base_channels=base_channels, ch_mult=tuple(ch_mult))
        self.image_proj = nn.Linear(dim, dim)
        self.word_embedding = nn.Embedding(len(self.vocabulary) + 1, dim)
        self.position_embedding = nn.Embedding(max_words, dim)
        self.text_proj = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, dim))
        self.logit_scale = nn.Parameter(torch.tensor(2.3))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.image_tower(images)  # (B, dim, h, w)

    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.image_proj(self(images).mean((2, 3))), dim=-1)  # (B, dim)

    def embed_texts(self, captions: list[str]) -> torch.Tensor:
        device = self.word_embedding.weight.device
        ids = torch.zeros(len(captions), self.max_words, dtype=torch.long, device=device)
        for row, caption in enumerate(captions):
            words = [self.word_ids.get(w, 0) for w in _words(caption)][: self.max_words]
            ids[row, : len(words)] = torch.tensor(words, dtype=torch.long)
        present = (ids > 0).float()[..., None]  # (B, W, 1)
        tokens = (self.word_embedding(ids) + self.position_embedding.weight[None]) * present
        pooled = tokens.sum(1) / present.sum(1).clamp_min(1)
        return F.normalize(self.text_proj(pooled), dim=-1)  # (B, dim)


def contrastive_loss(model: MiniCLIP, images: torch.Tensor, captions: list[str]) -> torch.Tensor:
    """Symmetric InfoNCE; identical captions in a batch count as positives of each other."""
    image, text = model.embed_images(images), model.embed_texts(captions)
    logits = model.logit_scale.exp().clamp(max=100) * image @ text.t()  # (B, B)
    groups = {c: i for i, c in enumerate(dict.fromkeys(captions))}
    ids = torch.tensor([groups[c] for c in captions], device=logits.device)
    targets = (ids[:, None] == ids[None]).float()
    targets = targets / targets.sum(1, keepdim=True)
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.t(), targets)) / 2


@torch.no_grad()
def retrieval_accuracy(model: MiniCLIP, images: torch.Tensor, captions: list[str]) -> float:
    """Zero-shot: the fraction of images whose best caption, among the distinct captions given, is theirs."""
    candidates = list(dict.fromkeys(captions))
    text = model.embed_texts(candidates)
    best = []
    for chunk in images.split(500):
        best += (model.embed_images(chunk) @ text.t()).argmax(-1).tolist()
    return sum(candidates[b] == c for b, c in zip(best, captions)) / max(1, len(captions))


def _read_pairs(urls: list[str], resolution: int, limit: int | None = None) -> tuple[torch.Tensor, list[str]]:
    from vistok.data.wds import make_val_loader

    images, captions = [], []
    for batch in make_val_loader(urls, 500, resolution, 0, 1, 0, require_caption=True):
        images.append(batch["image"])
        captions += list(batch["caption"])
        if limit is not None and len(captions) >= limit:
            break
    return torch.cat(images)[:limit], captions[:limit]


def train_mini_clip(model: MiniCLIP, images: torch.Tensor, captions: list[str], steps: int, batch_size: int,
                    lr: float, seed: int) -> list[float]:
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, lr, total_steps=steps, pct_start=0.1)
    losses = []
    model.train()
    for _ in range(steps):
        rows = torch.randint(0, len(captions), (batch_size,), generator=generator)
        loss = contrastive_loss(model, images[rows], [captions[i] for i in rows.tolist()])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
    return losses


def build_mini_clip(cache_dir: str, data, dim: int = 32, base_channels: int = 16,
                    ch_mult: tuple[int, ...] = (1, 2, 4), steps: int = 600, max_epochs: float = 15.0,
                    batch_size: int = 128, lr: float = 3e-3, seed: int = 0) -> Path:
    """The folder of the mini-CLIP for these settings and this data under `cache_dir`, training and saving it
    first when it is not there (a few seconds to a minute on a CPU). `vistok.teachers.load_teacher` loads it.

    Args:
        cache_dir: parent folder; the teacher lives in an export folder `mini_clip-d<dim>-<key>`, the key
            hashing its settings and data (`vistok.cache`).
        data: a datamodule (`prepare()`, `train_urls`, `val_urls`, `resolution`) whose training pairs teach it.
        steps: optimiser steps, at most `max_epochs` passes over the pairs (small test datasets stay fast).
    """
    data.prepare()
    settings = {"dim": dim, "base_channels": base_channels, "ch_mult": list(ch_mult), "steps": steps,
                "max_epochs": max_epochs,
                "batch_size": batch_size, "lr": lr, "seed": seed, "resolution": data.resolution,
                "train": [Path(u).name for u in data.train_urls], "data_dir": str(Path(data.train_urls[0]).parent)}
    return cached(cache_dir, f"mini_clip-d{dim}-", settings,
                  lambda tmp: _train_and_export(tmp, data, settings), directory=True)


def _train_and_export(folder: Path, data, settings: dict) -> None:
    """Train the mini-CLIP that `settings` describe on `data`; write it into `folder` as a vistok export."""
    from vistok.export import export_writer

    start = time.time()
    images, captions = _read_pairs(data.train_urls, data.resolution)
    vocabulary = sorted({w for c in captions for w in _words(c)})
    dim, base_channels, ch_mult = settings["dim"], settings["base_channels"], tuple(settings["ch_mult"])
    batch_size, seed = settings["batch_size"], settings["seed"]
    steps = max(1, min(settings["steps"], int(settings["max_epochs"] * len(captions) / batch_size)))
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = MiniCLIP(vocabulary, dim, base_channels, ch_mult)
        losses = train_mini_clip(model, images, captions, steps, batch_size, settings["lr"], seed)
    model.eval()
    val_images, val_captions = _read_pairs(data.val_urls, data.resolution)
    meta = {"experiment": "mini_clip teacher", "step": steps, "settings": settings, "train_pairs": len(captions),
            "final_loss": sum(losses[-20:]) / len(losses[-20:]), "seconds": time.time() - start,
            "metrics": {"val_retrieval_accuracy": retrieval_accuracy(model, val_images, val_captions)}}
    config = {"_target_": "vistok.teachers.mini_clip.MiniCLIP", "vocabulary": vocabulary, "dim": dim,
              "base_channels": base_channels, "ch_mult": list(ch_mult)}
    export_writer(model, config, meta)(folder)
    print(f"mini-CLIP teacher trained in {meta['seconds']:.0f}s: val retrieval accuracy "
          f"{meta['metrics']['val_retrieval_accuracy']:.3f}, saved in {folder.parent}")
