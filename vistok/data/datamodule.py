"""Lightning data modules over webdataset shards (any img2dataset output, or the generated shapes-cap set)."""

from __future__ import annotations

import math
import os
from typing import Any

import lightning as L

from vistok.data.generated import ensure_generated
from vistok.data.schema import CaptionSchema, generated_captions
from vistok.data.wds import (
    ShardLoader,
    count_samples,
    expand_urls,
    make_train_loader,
    make_val_loader,
    read_captions,
)

# Nominal epoch size when the shards carry no `_stats.json` (e.g. remote shards).
DEFAULT_TRAIN_SAMPLES = 10000
# Decoding workers stop paying off beyond a few; the main process needs a core of its own.
MAX_AUTO_WORKERS = 4


def default_num_workers() -> int:
    """Loader workers for this machine: one core left to the training process, at most MAX_AUTO_WORKERS.

    Counts the CPUs this process may run on (a scheduler's allocation), not the node's, so a 2-core job
    gets one worker instead of PyTorch's warning about more workers than cores.
    """
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # platforms without CPU affinity (macOS)
        cpus = os.cpu_count() or 1
    return max(0, min(MAX_AUTO_WORKERS, cpus - 1))


class ShardDataModule(L.LightningDataModule):
    """Train/val loaders over shard patterns (globs, directories, brace patterns, lists, remote URLs).

    Batches are dicts: {"image": (B, 3, H, W) in [-1, 1], "caption": list[str], "key": list[str],
    "skipped": int}. An epoch is `ceil(train_samples / (batch_size * world_size))` batches on every rank.
    When the trainer resumed from a mid-epoch checkpoint, the training stream continues at the batch
    after the last one trained on (the stream is deterministic in the seed, rank, worker and epoch).

    `require_captions` (set by the runner for runs with an LLM) counts samples without a caption as
    corrupt; otherwise they are kept with an empty caption.

    `caption_schema` says which attributes the captions name (vistok/data/schema.py), for the metrics that score
    them; None (plain shards) = free text, no attribute metrics.

    `num_workers=None` picks the workers from the visible CPUs (`default_num_workers`). `num_train` caps
    the samples of an epoch and `num_val` the validation samples (the first ones); `debug=tiny` sets both,
    as it sets the size of the generated set, so a smoke run stays seconds long on any data.
    """

    def __init__(
        self,
        train: Any,
        val: Any,
        resolution: int = 32,
        batch_size: int = 64,
        val_batch_size: int = 250,
        num_workers: int | None = 0,
        train_samples: int | None = None,
        seed: int = 0,
        require_captions: bool = False,
        num_train: int | None = None,
        num_val: int | None = None,
        caption_schema: CaptionSchema | None = None,
    ):
        super().__init__()
        # Only store arguments: Hydra builds this before anything may touch the file system.
        self.train, self.val = train, val
        self.resolution = resolution
        self.batch_size, self.val_batch_size = batch_size, val_batch_size
        self.num_workers = default_num_workers() if num_workers is None else num_workers
        self.train_samples = train_samples
        self.num_train, self.num_val = num_train, num_val
        self.seed = seed
        self.require_captions = require_captions
        self.caption_schema = caption_schema
        self.train_urls: list[str] | None = None
        self.val_urls: list[str] | None = None

    def prepare(self) -> None:
        """Resolve and validate the shard patterns (idempotent).

        Call it early so a bad pattern fails before any model is built.

        Raises:
            FileNotFoundError: a pattern matches no local file; the message names it.
        """
        if self.train_urls is None:
            self.train_urls = expand_urls(self.train)
        if self.val_urls is None:
            self.val_urls = expand_urls(self.val)

    def setup(self, stage: str | None = None) -> None:
        self.prepare()

    def _rank_and_world(self) -> tuple[int, int]:
        """Rank and world size from the attached trainer (bound here, in the main process)."""
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 0, 1
        return int(trainer.global_rank), int(trainer.world_size)

    def _resume_position(self) -> tuple[int, int]:
        """(epoch, batches of it already trained on) of the attached trainer; (0, 0) unless resumed.

        Lightning restores its loop counters from the checkpoint before it asks for the dataloader;
        `processed` counts the batch a checkpoint was saved after (its `completed` lags by one there).
        """
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 0, 0
        fit_loop = trainer.fit_loop
        epoch = int(fit_loop.epoch_progress.current.completed)
        return epoch, int(fit_loop.epoch_loop.batch_progress.current.processed)

    def batches_per_rank(self, world_size: int) -> int:
        """Training batches every rank yields per epoch."""
        self.prepare()
        samples = self.train_samples
        if samples is None:
            samples = count_samples(self.train_urls)
        if samples is None:
            samples = DEFAULT_TRAIN_SAMPLES
        if self.num_train is not None:
            samples = min(samples, self.num_train)
        return max(1, math.ceil(samples / (self.batch_size * world_size)))

    def train_dataloader(self) -> ShardLoader:
        self.prepare()
        rank, world_size = self._rank_and_world()
        batches_per_rank = self.batches_per_rank(world_size)
        loader = make_train_loader(
            self.train_urls, self.batch_size, self.resolution, rank, world_size,
            self.num_workers, batches_per_rank, self.seed, require_caption=self.require_captions,
        )
        epoch, batches_done = self._resume_position()
        if batches_done >= batches_per_rank:  # saved after the last batch of an epoch: start the next
            epoch, batches_done = epoch + 1, 0
        if epoch or batches_done:
            loader.resume_at(epoch, batches_done)
        return loader

    def val_dataloader(self) -> ShardLoader:
        self.prepare()
        rank, world_size = self._rank_and_world()
        return make_val_loader(
            self.val_urls, self.val_batch_size, self.resolution, rank, world_size, self.num_workers,
            require_caption=self.require_captions, limit=self.num_val,
        )

    def train_captions(self, limit: int | None = None) -> list[str]:
        """Training captions (e.g. to fit a text tokenizer), read in this process; at most `num_train`
        of them when it is set (a smoke run does not read a whole dataset's captions)."""
        self.prepare()
        caps = [n for n in (limit, self.num_train) if n is not None]
        return read_captions(self.train_urls, limit=min(caps) if caps else None)


class GeneratedDataModule(ShardDataModule):
    """`ShardDataModule` over the embedded shapes-cap dataset, generated into `cache_dir` on first use.

    Training shards are split over ranks (`rank_shards`); validation is split by sample, every rank
    running the same number of batches (see `ValStream`).
    """

    def __init__(
        self,
        cache_dir: str,
        num_train: int = 6000,
        num_val: int = 500,
        seed: int = 0,
        resolution: int = 32,
        mark_size: int = 2,
        mark_contrast: float = 0.5,
        batch_size: int = 64,
        val_batch_size: int = 250,
        num_workers: int | None = 0,
        samples_per_shard: int = 100,
        caption_schema: CaptionSchema | None = None,
    ):
        super().__init__(
            train=None, val=None, resolution=resolution, batch_size=batch_size,
            val_batch_size=val_batch_size, num_workers=num_workers, train_samples=num_train, seed=seed,
            num_train=num_train, num_val=num_val,  # the set is generated at these sizes: caps that cut nothing
            caption_schema=caption_schema or generated_captions(),
        )
        self.cache_dir = cache_dir
        self.mark_size, self.mark_contrast = mark_size, mark_contrast
        # Small shards so that training shards split disjointly over many ranks.
        self.samples_per_shard = samples_per_shard

    def prepare_data(self) -> None:
        # Lightning runs this once per node before `setup`, so ranks do not all generate at once.
        self.prepare()

    def prepare(self) -> None:
        """Generate (or reuse) the cached shards, then resolve them like any other patterns."""
        if self.train is None or self.val is None:
            self.train, self.val = ensure_generated(
                self.cache_dir, num_train=self.num_train, num_val=self.num_val, seed=self.seed,
                resolution=self.resolution, mark_size=self.mark_size, mark_contrast=self.mark_contrast,
                samples_per_shard=self.samples_per_shard,
            )
        super().prepare()
