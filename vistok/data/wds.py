"""Webdataset pipelines for img2dataset-style shards (`<key>.jpg|png|webp`, `<key>.txt`, `<key>.json`).

Every loader yields batches of one format::

    {"image": FloatTensor (B, 3, H, W) in [-1, 1], "caption": list[str], "key": list[str],
     "valid": BoolTensor (B,), "skipped": int}

`valid` is False only for the blank rows that pad validation batches (see `ValStream`).

`skipped` is the number of samples the producing worker dropped as corrupt since its previous batch.
Workers are separate processes, so this is how skip counts reach the training module, which sums them.

Rank and world size are always passed in explicitly, from the main process. Nothing here reads them
from the environment inside a DataLoader worker: webdataset's `split_by_node` does that, and with
spawned workers (or before the process group exists) it silently sees rank 0 of 1 on every rank.
"""

from __future__ import annotations

import contextlib
import gc
import glob
import itertools
import json
import logging
import os
import re
import signal
import time
from collections import Counter
from typing import Any, Iterable, Iterator

import braceexpand
import numpy as np
import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from torch.utils.data.dataloader import _MultiProcessingDataLoaderIter, _SingleProcessDataLoaderIter
from webdataset.gopen import Pipe

from vistok.data.decode import load_image

__all__ = ["NoUsableDataError", "ShardLoader", "count_samples", "expand_urls", "kill_shard_commands",
           "load_image", "make_train_loader", "make_val_loader", "rank_shards", "read_captions",
           "waiting_for_data"]

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS: tuple[str, ...] = ("jpg", "jpeg", "png", "webp")
_REMOTE_RE = re.compile(r"^(pipe:|[a-zA-Z][a-zA-Z0-9+.-]*://)")
# A stream that drops this many rows, samples or shards in a row (corrupt, failed the status filter, a shard
# with no row), or goes this many seconds, without one usable sample is treated as broken: skipping forever
# would hang training (resampled shards never run out). Read when a stream starts.
MAX_CONSECUTIVE_FAILURES = 1000
STALL_SECONDS = 300.0
_LOGGED_SKIPS = 5
_NAMED_SHARDS = 5


class NoUsableDataError(RuntimeError):
    """A stream yields no usable sample, or a validation set holds none; the message names the shards."""


def describe_shards(urls: Iterable[str]) -> str:
    """The first few shard names (sorted, de-duplicated) and how many more there are."""
    names = sorted(set(urls))
    more = f" and {len(names) - _NAMED_SHARDS} more" if len(names) > _NAMED_SHARDS else ""
    return ", ".join(names[:_NAMED_SHARDS]) + more


# --------------------------------------------------------------------------------------------------
# URL handling
# --------------------------------------------------------------------------------------------------


def _is_remote(url: str) -> bool:
    return bool(_REMOTE_RE.match(url))


def _expand_one(piece: str, pattern: Any) -> list[str]:
    """Local files for one brace-expanded piece: a directory, a glob or a plain file path."""
    path = os.path.abspath(os.path.expanduser(piece))
    if os.path.isdir(path):
        found = glob.glob(os.path.join(path, "*.tar"))
    elif glob.has_magic(path):
        found = [p for p in glob.glob(path) if os.path.isfile(p)]
    else:
        found = [path] if os.path.isfile(path) else []
    if not found:
        raise FileNotFoundError(f"no shards found for data pattern {pattern!r} (nothing matches {piece!r})")
    return found


def expand_urls(pattern: Any) -> list[str]:
    """Resolve a shard specification into a list of URLs.

    Args:
        pattern: a glob, a directory (its `*.tar`), a brace pattern, a remote URL (`pipe:`, `s3://`,
            `http(s)://`, `gs://`, ... passed through unchecked), or a list/tuple/ListConfig of these.

    Returns:
        Local paths (absolute, sorted, de-duplicated) followed by remote URLs in the given order.

    Raises:
        FileNotFoundError: a local piece matches no file; the message names the pattern.
    """
    if isinstance(pattern, (str, os.PathLike)):
        items = [os.fspath(pattern)]
    elif isinstance(pattern, Iterable):
        items = [os.fspath(p) for p in pattern]
    else:
        raise TypeError(f"cannot interpret data pattern {pattern!r}")
    if not items:
        raise FileNotFoundError(f"empty data pattern {pattern!r}")
    local: set[str] = set()
    remote: list[str] = []
    for item in items:
        for piece in braceexpand.braceexpand(item):
            if not _is_remote(piece):
                local.update(_expand_one(piece, item))
            elif piece not in remote:
                remote.append(piece)
    return sorted(local) + remote


def count_samples(urls: Any) -> int | None:
    """Sum of `successes` in the `<shard>_stats.json` files beside local shards.

    Returns None when any shard is remote or lacks its stats file (the count is then unknown).
    """
    total = 0
    for url in expand_urls(urls):
        stats_path = url[: -len(".tar")] + "_stats.json" if url.endswith(".tar") else None
        if _is_remote(url) or stats_path is None or not os.path.isfile(stats_path):
            return None
        with open(stats_path) as handle:
            stats = json.load(handle)
        count = stats.get("successes", stats.get("count"))
        if count is None:
            return None
        total += int(count)
    return total


# --------------------------------------------------------------------------------------------------
# Per-sample steps (module level or small classes so they pickle under both fork and spawn)
# --------------------------------------------------------------------------------------------------


class _SkipCounter:
    """Counts what a stream drops, and stops a stream that makes no progress.

    Used as a webdataset exception handler: a corrupt sample or shard is skipped and counted in `pending`
    (what the next batch reports, summed into `data_skipped`) and `total`. Rows img2dataset marked as failed
    (`filtered`) and shard openings (`opened`) are not corrupt data and are not counted there.

    All three count as unusable in `consecutive` until `succeeded` marks progress. More than
    `MAX_CONSECUTIVE_FAILURES` of them in a row, or `STALL_SECONDS` without progress, raise
    `NoUsableDataError` naming the shards they came from: a resampled stream would otherwise skip forever.
    """

    def __init__(self, shards: Iterable[str] = ()):
        self.pending = 0
        self.total = 0
        self.consecutive = 0
        self.max_consecutive = MAX_CONSECUTIVE_FAILURES
        self.stall_seconds = STALL_SECONDS
        self.shards = list(shards)  # named when the failing ones are unknown
        self.current_shard: str | None = None  # the shard being read, set by `opened` or the decoder
        self.failing_shards: set[str] = set()  # shards of the unusable events since the last progress
        self.since_progress: Counter = Counter()  # unusable events by kind since the last progress
        self.overall: Counter = Counter()  # the same, never reset
        self.last_progress = time.monotonic()
        self._last_message = ""

    def __call__(self, exn: Exception) -> bool:
        if self._repeats_last_shard_error(exn):
            return True
        self.pending += 1
        self.total += 1
        if self.total <= _LOGGED_SKIPS:
            log.warning("skipping corrupt sample or shard: %r", exn)
        self._unusable("corrupt samples or shards", self.current_shard, exn)
        return True  # tell webdataset to continue with the next sample

    def filtered(self, shard: str | None) -> None:
        """A row img2dataset marked as failed was dropped."""
        self._unusable("rows that failed the status filter", shard)

    def opened(self, shard: str) -> None:
        """A shard is opened: unusable until one of its rows is (a shard with no row never is)."""
        self.current_shard = shard
        self._unusable("shard openings", shard)

    def succeeded(self) -> None:
        if self.consecutive:  # called once per row: the common case touches nothing else
            self.consecutive = 0
            self.failing_shards.clear()
            self.since_progress.clear()
        self.last_progress = time.monotonic()

    def take(self) -> int:
        """Return the number skipped since the last call, and reset it."""
        count, self.pending = self.pending, 0
        return count

    def _unusable(self, kind: str, shard: str | None, exn: Exception | None = None) -> None:
        self.consecutive += 1
        self.since_progress[kind] += 1
        self.overall[kind] += 1
        if shard is not None and len(self.failing_shards) <= _NAMED_SHARDS:
            self.failing_shards.add(shard)
        waited = time.monotonic() - self.last_progress
        if self.consecutive > self.max_consecutive or waited > self.stall_seconds:
            span = (f"{self.consecutive} in a row" if self.consecutive > self.max_consecutive
                    else f"{waited:.0f} seconds")
            raise NoUsableDataError(
                f"no usable sample in {span} ({_counts(self.since_progress)}) from shards "
                f"{describe_shards(self.failing_shards or self.shards)}"
                + (f"; last error: {exn!r}" if exn is not None else "")
                + f". Check the shards (limits: {self.max_consecutive} in a row, "
                f"{self.stall_seconds:.0f} seconds)")

    def _repeats_last_shard_error(self, exn: Exception) -> bool:
        """True for the second report of one truncated shard.

        A tar cut inside a member fails twice: reading the member (message `... @ <stream>`), then the
        shard's stream as webdataset moves to the next header (args `(..., stream, url)`). Both are one
        lost sample, so the second is not counted; it always follows the first immediately.
        """
        last, self._last_message = self._last_message, str(exn.args[0]) if exn.args else ""
        stream = exn.args[-2] if len(exn.args) >= 3 else None
        return stream is not None and hasattr(stream, "read") and last.endswith(f" @ {stream}")


def _counts(counter: Counter) -> str:
    return ", ".join(f"{count} {kind}" for kind, count in sorted(counter.items())) or "nothing read"


class _CountOpenings:
    """Pipeline stage before the tar reader: tells the counter which shard is read, and counts the opening."""

    def __init__(self, counter: _SkipCounter):
        self.counter = counter

    def __call__(self, shards: Iterator[dict]) -> Iterator[dict]:
        for shard in shards:
            self.counter.opened(shard["url"])
            yield shard


class _StatusFilter:
    """`wds.select` predicate: keeps the rows img2dataset did not mark as failed.

    A kept row is progress for the raw stream; a dropped one counts toward its stop (`_SkipCounter.filtered`).
    """

    def __init__(self, counter: _SkipCounter):
        self.counter = counter

    def __call__(self, sample: dict) -> bool:
        if _is_success(sample):
            self.counter.succeeded()
            return True
        self.counter.filtered(sample.get("__url__"))
        return False


# img2dataset writes `"status": "success"` with json.dumps' default separators.
_SUCCESS_STATUS = b'"status": "success"'


def _is_success(sample: dict) -> bool:
    """False for rows img2dataset marks as failed; rows without (readable) json are kept.

    Parsing the json costs as much per sample as the rest of the filter stage, so the common row is
    recognised from its bytes first (see `_plainly_successful`); anything else is parsed.
    """
    raw = sample.get("json")
    if raw is None or _plainly_successful(raw):
        return True
    try:
        meta = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return True  # json is optional metadata; a bad one says nothing about the image
    return not isinstance(meta, dict) or meta.get("status", "success") == "success"


def _plainly_successful(raw: bytes) -> bool:
    """True only where parsing would also keep the row: one `"status"` in the bytes, with the value success.

    Without backslashes no string can hide a quote, so that one `"status"` followed by a colon is a key.
    At top level it says success; nested, the top level has no status, which also counts as success.
    Invalid or non-object json is kept as well. Other encodings or spacings fall back to parsing.
    """
    return (isinstance(raw, bytes) and raw.count(b'"status"') == 1 and _SUCCESS_STATUS in raw
            and b"\\" not in raw)


class _Decode:
    """Turn a raw webdataset sample into {"image", "caption", "key"}; raises if it is corrupt.

    With `require_caption` (runs that train on captions) a sample without a caption is corrupt too;
    otherwise its caption is "".
    """

    def __init__(self, resolution: int, counter: _SkipCounter, require_caption: bool = False):
        self.resolution = resolution
        self.counter = counter
        self.require_caption = require_caption

    def __call__(self, sample: dict) -> dict:
        ext = next((e for e in IMAGE_EXTENSIONS if e in sample), None)
        self.counter.current_shard = sample.get("__url__")
        if ext is None:
            raise ValueError(f"sample {sample.get('__key__')!r} has no image ({sorted(sample)})")
        image = load_image(sample[ext], self.resolution)
        caption = sample.get("txt", b"")
        caption = caption.decode("utf-8", errors="replace").strip() if caption else ""
        if self.require_caption and not caption:
            raise ValueError(f"sample {sample.get('__key__')!r} has no caption (txt) and this run trains on "
                             "captions")
        self.counter.succeeded()
        return {"image": image, "caption": caption, "key": str(sample.get("__key__", ""))}


class _Collate:
    """Stack decoded samples into the batch dict, attaching the skip count since the last batch."""

    def __init__(self, counter: _SkipCounter):
        self.counter = counter

    def __call__(self, samples: list[dict]) -> dict:
        return {
            "image": torch.stack([s["image"] for s in samples]),
            "caption": [s["caption"] for s in samples],
            "key": [s["key"] for s in samples],
            "valid": torch.tensor([s.get("valid", True) for s in samples]),
            "skipped": self.counter.take(),
        }


def _worker() -> tuple[int, int]:
    """(worker id, number of workers) of the current DataLoader process; (0, 1) in the main one."""
    info = get_worker_info()
    return (0, 1) if info is None else (info.id, info.num_workers)


def _default_stop_signal_in_worker() -> None:
    """In a DataLoader worker, let SIGTERM end the process again, taking its `pipe:` commands with it.

    A forked worker inherits the training process's SIGTERM handlers (Lightning's only sets a flag), so the
    DataLoader's own `terminate()` of a worker stuck reading a shard would be ignored and the exit would wait
    for it forever. Workers hold no state worth a graceful stop.
    """
    if get_worker_info() is not None:
        signal.signal(signal.SIGTERM, _end_worker)


def _end_worker(signum: int, frame) -> None:
    kill_shard_commands()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


# --------------------------------------------------------------------------------------------------
# Datasets
# --------------------------------------------------------------------------------------------------


class TrainStream(IterableDataset):
    """Infinite resampled-shard stream cut into epochs of exactly `batches_per_rank` batches.

    The batches of one rank are divided over its workers as evenly as possible (worker w gets
    `batches_per_rank // W` plus one if `w < batches_per_rank % W`), so every rank yields exactly
    `batches_per_rank` batches whatever `num_workers` is. Seeds mix (seed, rank, worker, epoch): runs
    repeat, ranks and workers differ, and each epoch draws a new stream.

    Because the stream is a function of those seeds, a resumed run can continue at the exact batch it
    stopped at: `start_batch` (set by `ShardLoader.resume_at`) fast-forwards past the rank's first
    batches of the epoch, reading and dropping them.
    """

    def __init__(self, urls: list[str], batch_size: int, resolution: int, rank: int, world_size: int,
                 batches_per_rank: int, seed: int, shuffle_buffer: int = 1000, require_caption: bool = False):
        super().__init__()
        if not urls:
            raise ValueError("TrainStream needs at least one shard")
        self.urls = rank_shards(list(urls), rank, world_size)
        self.batch_size, self.resolution = batch_size, resolution
        self.rank, self.world_size = rank, world_size
        self.batches_per_rank, self.seed = batches_per_rank, seed
        self.shuffle_buffer = shuffle_buffer
        self.require_caption = require_caption
        self.epoch = 0  # set by `ShardLoader` in the main process before workers are started
        self.start_batch = 0  # likewise: batches of this epoch already trained on (resume)

    def __len__(self) -> int:
        return self.batches_per_rank

    def _worker_batches(self, worker: int, num_workers: int) -> int:
        base, extra = divmod(self.batches_per_rank, num_workers)
        return base + (1 if worker < extra else 0)

    def _worker_done(self, worker: int, num_workers: int) -> int:
        """This worker's share of the first `start_batch` batches (the DataLoader takes workers in turn)."""
        return max(0, -(-(self.start_batch - worker) // num_workers))

    def __iter__(self) -> Iterator[dict]:
        worker, num_workers = _worker()
        num_batches = self._worker_batches(worker, num_workers)
        if num_batches == 0:
            return iter(())
        shard_seed, shuffle_seed = np.random.SeedSequence(
            [self.seed, self.rank, worker, self.epoch]).generate_state(2).tolist()
        _default_stop_signal_in_worker()
        # Rows are counted before the shuffle buffer and samples after it, each against its own progress:
        # a row that passes the status filter is progress for the first even before it is decoded.
        rows, decodes = _SkipCounter(self.urls), _SkipCounter(self.urls)
        pipeline = wds.DataPipeline(
            # worker_seed is a constant: the default one reads RANK from the environment.
            wds.ResampledShards(self.urls, seed=shard_seed, worker_seed=_zero, deterministic=True),
            _CountOpenings(rows),
            wds.tarfile_to_samples(handler=rows),
            wds.select(_StatusFilter(rows)),
            wds.shuffle(self.shuffle_buffer, initial=min(100, self.shuffle_buffer), seed=shuffle_seed),
            wds.map(_Decode(self.resolution, decodes, self.require_caption), handler=decodes),
            wds.batched(self.batch_size, collation_fn=_Collate(_CombinedCounter(rows, decodes)),
                        partial=False),
        ).with_epoch(num_batches)
        # Batches already trained on are dropped with their skip counts (the checkpoint counted those).
        return itertools.islice(iter(pipeline), self._worker_done(worker, num_workers), None)


def rank_shards(urls: list[str], rank: int, world_size: int) -> list[str]:
    """The training shards of one rank: `urls[rank::world_size]`, disjoint across ranks.

    With fewer shards than ranks a disjoint split is impossible; every rank then draws from all shards
    (different streams, same files) and a warning says so.
    """
    if len(urls) >= world_size:
        return urls[rank::world_size]
    log.warning("%d training shards for %d ranks: ranks share shards (write at least one shard per rank "
                "for disjoint data)", len(urls), world_size)
    return urls


def _zero() -> int:
    return 0


class ValStream(IterableDataset):
    """Exact single pass over all shards, split by sample over every (rank, worker) slot.

    Collectives in validation (FSDP forwards, HF `generate` with synced GPUs, metric reduction) hang
    unless every rank runs the same number of steps, so every slot yields the same number of batches:

    - each slot reads the whole sample sequence (tar parsing and the failed-row filter are deterministic,
      so all slots see the same sequence) and decodes only samples `i` with `i % slots == slot`;
    - at the end each slot pads to `ceil(total / slots)` samples with blank rows (`valid` False), and a
      sample that fails to decode becomes such a row too, so the counts never depend on decoding.

    Reading every shard on every slot costs `slots` times the (cheap) tar reads of a held-out set; images
    are decoded once. With a single slot there is nothing to equalise: failed samples are dropped.
    Shard-level errors are counted by slot 0 only, decode errors by the slot that owns the sample.
    `limit` keeps the first `limit` successful rows (smoke runs on a large held-out set).
    """

    def __init__(self, urls: list[str], batch_size: int, resolution: int, rank: int, world_size: int,
                 require_caption: bool = False, limit: int | None = None):
        super().__init__()
        self.urls = list(urls)
        self.batch_size, self.resolution = batch_size, resolution
        self.rank, self.world_size = rank, world_size
        self.require_caption = require_caption
        self.limit = limit

    def _blank(self) -> dict:
        image = torch.zeros(3, self.resolution, self.resolution)
        return {"image": image, "caption": "", "key": "", "valid": False}

    def _owned_samples(self, slot: int, slots: int, shard_errors: _SkipCounter,
                       decode_errors: _SkipCounter) -> Iterator[dict]:
        decode = _Decode(self.resolution, decode_errors, self.require_caption)
        total = decoded = 0
        for total, sample in enumerate(self._rows(shard_errors), start=1):
            if (total - 1) % slots != slot:
                continue
            try:
                item = decode(sample)
            except Exception as exn:  # noqa: BLE001 - any decode failure is a skipped sample
                decode_errors(exn)
                if slots > 1:
                    yield self._blank()
                continue
            decoded += 1
            yield {**item, "valid": True}
        if decoded == 0 and (total == 0 or slots == 1 or not self._any_sample_decodes()):
            raise NoUsableDataError(self._nothing_usable(total, shard_errors, decode_errors))
        for _ in range(-(-total // slots) - len(range(slot, total, slots))):
            yield self._blank()

    def _rows(self, counter: _SkipCounter) -> Iterator[dict]:
        """Rows that pass the status filter, in shard order (the first `limit`); the same on every slot."""
        raw = wds.DataPipeline(
            wds.SimpleShardList(self.urls),
            _CountOpenings(counter),
            wds.tarfile_to_samples(handler=counter),
            wds.select(_StatusFilter(counter)),
        )
        return itertools.islice(raw, self.limit)

    def _any_sample_decodes(self) -> bool:
        """Whether any slot's sample decodes, asked by a slot whose own samples all failed.

        Slots must agree on whether the set is empty (a rank that stopped alone would leave the others
        waiting in a collective), so the slot reads the set again and decodes until one sample succeeds.
        """
        decode = _Decode(self.resolution, _SkipCounter(self.urls), self.require_caption)
        for sample in self._rows(_SkipCounter(self.urls)):
            with contextlib.suppress(Exception):
                decode(sample)
                return True
        return False

    def _nothing_usable(self, rows: int, shard_errors: _SkipCounter, decode_errors: _SkipCounter) -> str:
        dropped = shard_errors.overall + decode_errors.overall
        dropped.pop("shard openings", None)
        return (f"the validation set has no usable sample: {rows} rows passed the status filter, "
                f"{_counts(dropped)} in shards {describe_shards(self.urls)}; validating on "
                "nothing would report no metrics. Check data.val")

    def __iter__(self) -> Iterator[dict]:
        _default_stop_signal_in_worker()
        worker, num_workers = _worker()
        slots, slot = self.world_size * num_workers, self.rank * num_workers + worker
        shard_errors, decode_errors = _SkipCounter(self.urls), _SkipCounter(self.urls)
        samples = self._owned_samples(slot, slots, shard_errors, decode_errors)
        counter = _CombinedCounter(shard_errors if slot == 0 else None, decode_errors)
        return _batches(samples, self.batch_size, _Collate(counter))


class _CombinedCounter:
    """`take()` over the shard-error counter (slot 0 only) and the decode-error counter."""

    def __init__(self, shard_errors: _SkipCounter | None, decode_errors: _SkipCounter):
        self.shard_errors, self.decode_errors = shard_errors, decode_errors

    def take(self) -> int:
        shard = self.shard_errors.take() if self.shard_errors is not None else 0
        return shard + self.decode_errors.take()


def _batches(samples: Iterator[dict], batch_size: int, collate) -> Iterator[dict]:
    """Consecutive batches of `batch_size` samples; the last one may be partial."""
    while chunk := list(itertools.islice(samples, batch_size)):
        yield collate(chunk)


class _Waiting:
    """How many batch requests of the main thread are in progress (nested: an iterator may wrap another)."""

    depth = 0


@contextlib.contextmanager
def _waiting_for_a_batch():
    _Waiting.depth += 1
    try:
        yield
    finally:
        _Waiting.depth -= 1


def waiting_for_data() -> bool:
    """True while this process's main thread waits for a `ShardLoader` batch (reading, decoding, a worker).

    Nothing is half-done then, so a stop signal can act at once (vistok/training/preemption.py) instead of
    at the end of a batch that may never come.
    """
    return _Waiting.depth > 0


def kill_shard_commands() -> int:
    """Kill the running commands of this process's `pipe:` shards (e.g. a hung `curl`); returns how many.

    For a stop while waiting for data: closing such a shard's stream makes webdataset wait for its command,
    up to two hours. The command runs under a shell, so its descendants are killed with it (a `cat` left
    behind would keep the pipes it inherited open). Called from a signal handler: it only walks live objects.
    """
    killed = 0
    for obj in gc.get_objects():
        if type(obj) is Pipe and obj.proc.poll() is None:  # type(): isinstance would touch odd proxies
            for pid in [*_descendants(obj.proc.pid), obj.proc.pid]:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            killed += 1
    return killed


def _descendants(pid: int) -> list[int]:
    """Process ids below `pid`, children first (from /proc; none where there is no /proc)."""
    parents: dict[int, list[int]] = {}
    for entry in glob.glob("/proc/[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            with open(entry) as handle:
                fields = handle.read().rsplit(")", 1)[1].split()  # after "(command name)": state, ppid, ...
            parents.setdefault(int(fields[1]), []).append(int(entry.split("/")[2]))
    found, queue = [], [pid]
    while queue:
        children = parents.get(queue.pop(), [])
        found += children
        queue += children
    return found


class _SingleProcessIterator(_SingleProcessDataLoaderIter):
    def _next_data(self):
        with _waiting_for_a_batch():
            return super()._next_data()


class _MultiProcessIterator(_MultiProcessingDataLoaderIter):
    def _next_data(self):
        with _waiting_for_a_batch():
            return super()._next_data()


class ShardLoader(DataLoader):
    """DataLoader that gives its dataset a fresh `epoch` each time it is iterated.

    Workers are not persistent, so each `iter()` ships the dataset (with the new epoch) to freshly
    started workers; a per-worker counter would restart at 0 every epoch and repeat the data.
    """

    def __init__(self, dataset: IterableDataset, **kwargs: Any):
        super().__init__(dataset, batch_size=None, persistent_workers=False, **kwargs)
        self._next_epoch = 0
        self._start_batch = 0

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch used by the next `iter()` (e.g. when resuming a run)."""
        self._next_epoch = epoch

    def resume_at(self, epoch: int, batches_done: int) -> None:
        """Make the next `iter()` continue epoch `epoch` after its first `batches_done` batches."""
        self._next_epoch, self._start_batch = epoch, batches_done

    # Lightning treats a loader with state_dict/load_state_dict as resumable (and warns otherwise). The
    # position itself is not kept here: it is derived from Lightning's own restored loop counters and
    # handed over with `resume_at` (see ShardDataModule.train_dataloader).
    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def _get_iterator(self):
        # DataLoader's own choice, with iterators that mark the wait for a batch (`waiting_for_data`).
        if self.num_workers == 0:
            return _SingleProcessIterator(self)
        self.check_worker_number_rationality()
        return _MultiProcessIterator(self)

    def __iter__(self):
        if hasattr(self.dataset, "epoch"):
            self.dataset.epoch = self._next_epoch
        if hasattr(self.dataset, "start_batch"):
            self.dataset.start_batch = self._start_batch
        self._next_epoch += 1
        self._start_batch = 0
        return super().__iter__()


def _loader(dataset: IterableDataset, num_workers: int, multiprocessing_context: str | None) -> ShardLoader:
    return ShardLoader(
        dataset,
        num_workers=num_workers,
        collate_fn=_as_is,
        pin_memory=torch.cuda.is_available(),
        multiprocessing_context=multiprocessing_context if num_workers > 0 else None,
    )


def _as_is(batch: dict) -> dict:
    """The datasets yield finished batches; the DataLoader's default would walk each one again (every
    caption and key) looking for numpy arrays to convert."""
    return batch


def make_train_loader(urls: list[str], batch_size: int, resolution: int, rank: int, world_size: int,
                      num_workers: int, batches_per_rank: int, seed: int, shuffle_buffer: int = 1000,
                      multiprocessing_context: str | None = None,
                      require_caption: bool = False) -> ShardLoader:
    """Training loader: resampled shards, shuffled, full batches, exactly `batches_per_rank` per epoch.

    Each rank resamples (with replacement) from its own shards, `rank_shards(urls, rank, world_size)`,
    so ranks read disjoint data whenever there are at least as many shards as ranks.
    `require_caption` counts samples without a caption as corrupt (skipped).
    """
    dataset = TrainStream(expand_urls(urls), batch_size, resolution, rank, world_size,
                          batches_per_rank, seed, shuffle_buffer, require_caption)
    return _loader(dataset, num_workers, multiprocessing_context)


def make_val_loader(urls: list[str], batch_size: int, resolution: int, rank: int, world_size: int,
                    num_workers: int, multiprocessing_context: str | None = None,
                    require_caption: bool = False, limit: int | None = None) -> ShardLoader:
    """Validation loader: every sample (or the first `limit`) exactly once over all ranks, unshuffled, last
    batch partial."""
    dataset = ValStream(expand_urls(urls), batch_size, resolution, rank, world_size, require_caption, limit)
    return _loader(dataset, num_workers, multiprocessing_context)


def read_captions(urls: Any, limit: int | None = None) -> list[str]:
    """Captions (`txt` members) of successful rows, in shard order, read in the calling process.

    Samples without a caption are left out; corrupt shards are skipped.
    """
    counter = _SkipCounter()
    pipeline = wds.DataPipeline(
        wds.SimpleShardList(expand_urls(urls)),
        wds.tarfile_to_samples(handler=counter),
        wds.select(_is_success),
    )
    captions: list[str] = []
    for sample in pipeline:
        if limit is not None and len(captions) >= limit:
            break
        text = sample.get("txt")
        if text:
            captions.append(text.decode("utf-8", errors="replace").strip())
    return captions
