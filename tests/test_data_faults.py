"""Hostile and careless data: streams that never yield a sample, a stop signal while the loader is stuck,
validation sets with nothing usable, images in every mode, and images built to exhaust memory.

Every file is written by the test: webdataset shards in the img2dataset layout (`<key>.png`, `<key>.txt`,
`<key>.json` with "status"), PNGs written chunk by chunk, a FIFO that a `pipe:` shard's command hangs on.
Anything that hung before is run in a child process with a deadline. The tier is marked `faults`.
"""

from __future__ import annotations

import io
import json
import os
import signal
import struct
import subprocess
import sys
import textwrap
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import ROOT, run_train
from tests.test_data import _png, _row, _write_tar

pytestmark = pytest.mark.faults

# A training run on shards (vq_mini, 2 steps); data.train / data.val are added per test.
SHARD_RUN = ["experiment=vq_mini", "num_threads=1", "data=shards", "data.resolution=32", "data.batch_size=4",
             "data.val_batch_size=16", "data.num_workers=0", "max_steps_per_stage=2",
             "checkpoint_every=1000000", "logger=csv"]


# ---- helpers ----------------------------------------------------------------------------------------------


def _rows(keys, image: bytes | None = None, status: str = "success") -> list[tuple[str, bytes]]:
    return [m for key in keys for m in _row(key, image if image is not None else _png(), status)]


def _keys(count: int, start: int = 0) -> list[str]:
    return [f"{i:09d}" for i in range(start, start + count)]


def _run_python(code: str, timeout: float) -> subprocess.CompletedProcess | None:
    """Run `code` in a fresh interpreter in the repository root; None if it still runs at `timeout`."""
    try:
        return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, capture_output=True,
                              text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None


def _first_training_batch(urls: list[str], timeout: float = 60, setup: str = "", **options) -> str:
    """stderr of a process that asks a training loader for one batch; fails the test if the process hangs."""
    code = f"""
        from vistok.data import wds
        {setup}
        loader = wds.make_train_loader({urls!r}, 4, 32, 0, 1, 0, batches_per_rank=5, seed=0, **{options!r})
        next(iter(loader))
        print("GOT A BATCH")
    """
    result = _run_python(code, timeout)
    assert result is not None, f"asking for the first batch hung for {timeout} s"
    assert result.returncode != 0 and "GOT A BATCH" not in result.stdout, result.stdout[-2000:]
    return result.stderr


# ---- 1. a stream that never yields a usable sample stops with an error naming its shards ----------------


def _unusable_shard(path: Path, kind: str) -> str:
    keys = _keys(20)
    if kind == "every row failed the status filter":
        return _write_tar(path, _rows(keys, status="failed_to_download"))
    if kind == "empty shard":
        return _write_tar(path, [])
    if kind == "every image undecodable":
        return _write_tar(path, _rows(keys, image=b"not an image at all"))
    assert kind == "no captions in a caption-training run"
    return _write_tar(path, [m for m in _rows(keys) if not m[0].endswith(".txt")])


@pytest.mark.parametrize("kind", ["every row failed the status filter", "empty shard",
                                  "every image undecodable", "no captions in a caption-training run"])
def test_a_training_stream_with_no_usable_sample_stops_naming_the_shards(kind, tmp_path):
    shards = [_unusable_shard(tmp_path / f"bad-{i:05d}.tar", kind) for i in range(2)]
    started = time.monotonic()
    stderr = _first_training_batch(shards, require_caption=kind.startswith("no captions"))
    assert "NoUsableDataError" in stderr, stderr[-3000:]
    assert all(shard in stderr for shard in shards), stderr[-3000:]
    assert time.monotonic() - started < 60


def test_filtered_rows_count_toward_the_failure_stop_and_usable_rows_reset_it(tmp_path):
    # 1,500 failed downloads in a row, then good rows: the stop comes first.
    shard = _write_tar(tmp_path / "mostly-failed-00000.tar",
                       _rows(_keys(1500), status="failed_to_download") + _rows(_keys(50, 1500)))
    stderr = _first_training_batch([shard])
    assert "NoUsableDataError" in stderr and shard in stderr, stderr[-3000:]
    assert "1001 rows" in stderr or "status filter" in stderr, stderr[-3000:]
    # One usable row in 40 is a poor shard, not a broken one: it trains.
    from vistok.data.wds import make_train_loader

    members = []
    for block in range(60):
        members += _rows(_keys(39, block * 40), status="failed_to_download")
        members += _rows(_keys(1, block * 40 + 39))
    sparse = _write_tar(tmp_path / "sparse-00000.tar", members)
    batch = next(iter(make_train_loader([sparse], 4, 32, 0, 1, 0, batches_per_rank=2, seed=0)))
    assert batch["image"].shape == (4, 3, 32, 32) and batch["skipped"] == 0


def test_a_stream_without_usable_samples_for_too_long_stops(tmp_path):
    # Rows that fail slowly (here: a tiny time limit and no row limit) stop on the clock, naming the shard.
    shard = _write_tar(tmp_path / "failed-00000.tar", _rows(_keys(20), status="failed_to_download"))
    setup = "wds.MAX_CONSECUTIVE_FAILURES = 10**12; wds.STALL_SECONDS = 1.0"
    stderr = _first_training_batch([shard], setup=setup)
    assert "NoUsableDataError" in stderr and shard in stderr and "seconds" in stderr, stderr[-3000:]


@pytest.mark.slow
def test_training_on_a_shard_of_failed_rows_fails_instead_of_hanging(tmp_path):
    bad = _write_tar(tmp_path / "train-00000.tar", _rows(_keys(30), status="failed_to_download"))
    val = _write_tar(tmp_path / "val-00000.tar", _rows(_keys(8)))
    try:
        result = run_train([*SHARD_RUN, f"data.train={bad}", f"data.val={val}"], tmp_path / "run",
                           tmp_path / "c", timeout=240)
    except subprocess.TimeoutExpired:
        pytest.fail("the run hung at step 0 on a shard whose rows all failed the status filter")
    assert result.returncode != 0
    assert "NoUsableDataError" in result.stderr and bad in result.stderr, result.stderr[-3000:]
    assert not (tmp_path / "run" / "checkpoints" / "tokenizer" / "done").exists()


# ---- 2. SIGTERM while the loader is stuck producing the first batch --------------------------------------


def _hung_fifo(path: Path) -> Path:
    """A FIFO no one writes to: a `pipe:cat` shard reading it blocks, like a download that hangs."""
    os.mkfifo(path)
    return path


def _wait_for_reader(fifo: Path, process: subprocess.Popen, timeout: float) -> int:
    """Block until `process` opens `fifo` to read; returns the write end, which keeps its read blocked."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        try:
            return os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)  # ENXIO until a reader has it open
        except OSError:
            time.sleep(0.05)
    pytest.fail("the run never started reading its training shard")


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 1])
def test_sigterm_stops_a_run_whose_loader_is_stuck_on_the_first_batch(workers, tmp_path):
    hung = _hung_fifo(tmp_path / "train-00000.tar")
    val = _write_tar(tmp_path / "val-00000.tar", _rows(_keys(8)))
    args = [*SHARD_RUN, f"data.train='pipe:cat {hung}'", "data.train_samples=100", f"data.val={val}",
            f"data.num_workers={workers}"]
    env = {**os.environ, "VISTOK_CACHE": str(tmp_path / "cache"), "WANDB_MODE": "offline",
           "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, str(ROOT / "train.py"), *args, f"hydra.run.dir={tmp_path / 'run'}"]
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True, start_new_session=True)
    writer = _wait_for_reader(hung, process, timeout=240)
    try:
        time.sleep(1.0)  # the reader is now blocked in read(): nothing arrives, nothing ends the shard
        process.send_signal(signal.SIGTERM)
        try:
            _, stderr = process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail("SIGTERM was ignored while the loader waited for its first batch")
    finally:
        os.close(writer)
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert process.returncode != 0
    assert "stopped by SIGTERM" in stderr, stderr[-3000:]
    assert not (tmp_path / "run" / "checkpoints" / "tokenizer" / "done").exists()


# ---- 3. a validation set with nothing usable is an error naming its shards -------------------------------


@pytest.mark.parametrize("kind", ["every row failed the status filter", "empty shard",
                                  "every image undecodable"])
def test_an_empty_validation_set_is_an_error_naming_the_shards(kind, tmp_path):
    from vistok.data.wds import make_val_loader

    shards = [_unusable_shard(tmp_path / f"val-{i:05d}.tar", kind) for i in range(2)]
    with pytest.raises(Exception, match="no usable sample") as raised:
        list(make_val_loader(shards, 8, 32, 0, 1, 0))
    assert type(raised.value).__name__ == "NoUsableDataError"
    assert all(shard in str(raised.value) for shard in shards)


def test_every_rank_agrees_whether_a_validation_set_is_empty(tmp_path):
    from vistok.data.wds import make_val_loader

    # Three samples over two ranks: rank 1 owns only the undecodable one, rank 0 a good one. Nothing is
    # wrong with the set, so no rank may stop (a rank that stopped alone would hang the others).
    rows = _rows(_keys(1)) + _rows(_keys(1, 1), image=b"garbage") + _rows(_keys(1, 2), image=b"garbage")
    shard = _write_tar(tmp_path / "val-00000.tar", rows)
    per_rank = [list(make_val_loader([shard], 8, 32, rank, 2, 0)) for rank in (0, 1)]
    assert [sum(int(b["valid"].sum()) for b in batches) for batches in per_rank] == [1, 0]
    # With the good sample gone, every rank stops.
    bad = _write_tar(tmp_path / "bad-00000.tar", rows[3:])
    for rank in (0, 1):
        with pytest.raises(Exception, match="no usable sample"):
            list(make_val_loader([bad], 8, 32, rank, 2, 0))


@pytest.mark.slow
def test_training_with_an_empty_validation_set_fails_naming_it(tmp_path):
    train = _write_tar(tmp_path / "train-00000.tar", _rows(_keys(16)))
    val = _write_tar(tmp_path / "val-00000.tar", _rows(_keys(16), status="failed_to_download"))
    result = run_train([*SHARD_RUN, f"data.train={train}", f"data.val={val}"], tmp_path / "run",
                       tmp_path / "c", timeout=300)
    assert result.returncode != 0, "a run that validated on nothing must not succeed"
    assert "NoUsableDataError" in result.stderr and val in result.stderr, result.stderr[-3000:]
    assert not (tmp_path / "run" / "metrics.json").exists()


# ---- 4. image modes: real PNG (and JPEG) bytes, decoded values against ones computed here ----------------

SIZE = 8  # images at the loader's resolution: no resampling, so values compare exactly


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _raw_png(width: int, height: int, bit_depth: int, colour_type: int, rows, extra: bytes = b"") -> bytes:
    """A PNG written chunk by chunk (no Pillow writer involved); `rows` yields each row's bytes, streamed
    through zlib so that a huge image never exists in memory here."""
    compressor, idat = zlib.compressobj(9), []
    for row in rows:
        idat.append(compressor.compress(b"\x00" + row))  # filter type 0
    idat.append(compressor.flush())
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + extra + _chunk(b"IDAT", b"".join(idat))
            + _chunk(b"IEND", b""))


def _pixels(channels: int, high: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    values = rng.integers(0, high + 1, (SIZE, SIZE, channels))
    values[0, 0], values[0, 1] = 0, high  # both ends of the range
    if channels in (2, 4):  # alpha: fully transparent, half, opaque
        values[1, 0, -1], values[1, 1, -1], values[1, 2, -1] = 0, high // 2, high
    return values


def _over_white(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    a = alpha[..., None] / 255.0
    return rgb * a + 255.0 * (1 - a)


def _case_gray16():
    values = _pixels(1, 65535)[..., 0]
    data = _raw_png(SIZE, SIZE, 16, 0, (row.astype(">u2").tobytes() for row in values))
    return data, np.repeat(np.rint(values / 257.0)[..., None], 3, axis=2)


def _case_pillow_16bit(mode: str):
    values = _pixels(1, 65535)[..., 0]
    raw = values.astype(">u2" if mode.endswith("B") else "<u2").tobytes()
    image = Image.frombytes(mode, (SIZE, SIZE), raw)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue(), np.repeat(np.rint(values / 257.0)[..., None], 3, axis=2)


def _case_gray_alpha16():
    values = _pixels(2, 65535)
    data = _raw_png(SIZE, SIZE, 16, 4, (row.astype(">u2").tobytes() for row in values))
    grey, alpha = values[..., 0] / 257.0, values[..., 1] / 257.0
    return data, _over_white(np.repeat(grey[..., None], 3, axis=2), alpha)


def _case_rgb16():
    values = _pixels(3, 65535)
    return _raw_png(SIZE, SIZE, 16, 2, (row.astype(">u2").tobytes() for row in values)), values / 257.0


def _case_rgba16():
    values = _pixels(4, 65535)
    data = _raw_png(SIZE, SIZE, 16, 6, (row.astype(">u2").tobytes() for row in values))
    return data, _over_white(values[..., :3] / 257.0, values[..., 3] / 257.0)


def _case_pillow(mode: str):
    values = _pixels(4, 255).astype(np.uint8)
    image = Image.fromarray(values).convert(mode) if mode != "RGBA" else Image.fromarray(values)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    if mode == "RGBA":
        return buffer.getvalue(), _over_white(values[..., :3], values[..., 3])
    grey = np.asarray(image.convert("L"), dtype=np.float64)
    if mode == "LA":
        alpha = np.asarray(image.getchannel("A"), dtype=np.float64)
        return buffer.getvalue(), _over_white(np.repeat(grey[..., None], 3, axis=2), alpha)
    return buffer.getvalue(), np.asarray(image.convert("RGB"), dtype=np.float64)  # L, 1: no alpha to apply


def _case_palette_with_transparent_index():
    indices = _pixels(1, 3)[..., 0].astype(np.uint8)
    palette = [(200, 0, 0), (0, 200, 0), (0, 0, 200), (90, 90, 90)]
    image = Image.frombytes("P", (SIZE, SIZE), indices.tobytes())
    image.putpalette([c for colour in palette for c in colour])
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", transparency=2)  # index 2 (blue) is transparent
    colours = [palette[i] if i != 2 else (255, 255, 255) for i in indices.ravel()]
    expected = np.array(colours, dtype=np.float64)
    return buffer.getvalue(), expected.reshape(SIZE, SIZE, 3)


def _case_rgb_with_transparent_colour():
    values = _pixels(3, 255).astype(np.uint8)
    values[2, :] = (10, 20, 30)  # one row in the colour the tRNS chunk makes transparent
    trns = _chunk(b"tRNS", struct.pack(">HHH", 10, 20, 30))
    data = _raw_png(SIZE, SIZE, 8, 2, (row.tobytes() for row in values), extra=trns)
    expected = values.astype(np.float64)
    expected[(values == (10, 20, 30)).all(axis=2)] = 255.0
    return data, expected


def _case_cmyk_jpeg():
    values = _pixels(3, 255).astype(np.uint8)
    values[:] = values[0, 0] // 2 + 60  # flat colour: JPEG keeps it within a level or two
    buffer = io.BytesIO()
    Image.fromarray(values).convert("CMYK").save(buffer, format="JPEG", quality=100)
    return buffer.getvalue(), values.astype(np.float64)


IMAGE_CASES = {
    "16-bit grey (I;16, written by hand)": (_case_gray16, 0.5),
    "16-bit grey saved from I;16": (lambda: _case_pillow_16bit("I;16"), 0.5),
    "16-bit grey saved from I;16B": (lambda: _case_pillow_16bit("I;16B"), 0.5),
    "16-bit grey + alpha": (_case_gray_alpha16, 1.5),
    "16-bit RGB": (_case_rgb16, 1.0),
    "16-bit RGBA": (_case_rgba16, 1.5),
    "RGBA": (lambda: _case_pillow("RGBA"), 1.0),
    "LA": (lambda: _case_pillow("LA"), 1.0),
    "P with a transparent index": (_case_palette_with_transparent_index, 0.5),
    "RGB with a transparent colour": (_case_rgb_with_transparent_colour, 0.5),
    "L": (lambda: _case_pillow("L"), 0.5),
    "1": (lambda: _case_pillow("1"), 0.5),
    "CMYK JPEG": (_case_cmyk_jpeg, 3.0),
}


@pytest.mark.parametrize("case", list(IMAGE_CASES))
def test_every_image_mode_decodes_to_the_right_rgb_values(case):
    """Transparent pixels are composited over white; 16-bit values are scaled to 8 bits, never clipped."""
    from vistok.data.wds import load_image

    make, tolerance = IMAGE_CASES[case]
    data, expected = make()
    decoded = (load_image(data, SIZE).permute(1, 2, 0).numpy().astype(np.float64) + 1.0) * 127.5
    error = np.abs(decoded - expected)
    assert error.max() <= tolerance, f"{case}: off by up to {error.max():.1f} levels at {np.argmax(error)}"


def test_32_bit_integer_images_are_scaled_like_16_bit():
    from vistok.data.decode import to_rgb

    values = _pixels(1, 65535)[..., 0]
    image = Image.fromarray(values.astype(np.int32))
    assert image.mode == "I"
    rgb = to_rgb(image)
    assert np.array_equal(np.asarray(rgb)[..., 0], np.rint(values / 257.0).astype(np.uint8))


def test_only_jpeg_png_and_webp_are_decoded():
    """A `.png` member that is really another format is refused: each extra decoder is attack surface."""
    from vistok.data.wds import load_image

    for fmt in ("BMP", "TIFF", "GIF"):
        buffer = io.BytesIO()
        Image.new("RGB", (SIZE, SIZE), (1, 2, 3)).save(buffer, format=fmt)
        with pytest.raises(Exception, match="cannot identify image"):
            load_image(buffer.getvalue(), SIZE)


# ---- 5. images built to exhaust memory or time ----------------------------------------------------------


def _zlib_bomb_png(side: int) -> bytes:
    """A `side` x `side` greyscale PNG of zeros: a few hundred KB that decode to side^2 bytes and more."""
    zero_row = bytes(side)
    return _raw_png(side, side, 8, 0, (zero_row for _ in range(side)))


def _huge_jpeg(side: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (side, side), 90).save(buffer, format="JPEG", quality=50)
    return buffer.getvalue()


def _tall_png(height: int) -> bytes:
    return _raw_png(1, height, 8, 0, (bytes([i % 256]) for i in range(height)))


def _decode_cost(shard: str, resolution: int) -> dict:
    """Peak memory growth and time of one validation pass over `shard`, measured in a fresh process."""
    code = f"""
        import json, resource, time
        from vistok.data.wds import make_val_loader
        loader = make_val_loader([{shard!r}], 8, {resolution}, 0, 1, 0)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        started = time.perf_counter()
        batches = list(loader)
        seconds = time.perf_counter() - started
        grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
        keys = [k for b in batches for k in b["key"]]
        print(json.dumps({{"grown_mb": grown, "seconds": seconds, "keys": keys,
                          "skipped": sum(b["skipped"] for b in batches)}}))
    """
    result = _run_python(code, timeout=300)
    assert result is not None and result.returncode == 0, (result.stderr[-3000:] if result else "hung")
    return json.loads(result.stdout.strip().splitlines()[-1])


BOMBS = {  # name: (bytes, resolution, whether the image is kept (reduced cheaply) or skipped)
    "1 x 16000 PNG at resolution 128": (lambda: _tall_png(16000), 128, True),
    "12000 x 12000 zlib-bomb PNG": (lambda: _zlib_bomb_png(12000), 64, False),
    "12000 x 12000 JPEG": (lambda: _huge_jpeg(12000), 64, True),
}


@pytest.mark.parametrize("name", list(BOMBS))
def test_one_image_cannot_take_hundreds_of_megabytes(name, tmp_path):
    make, resolution, kept = BOMBS[name]
    rows = _row("000000000", make()) + _row("000000001", _png(size=(resolution, resolution)))
    shard = _write_tar(tmp_path / "val-00000.tar", rows)
    cost = _decode_cost(shard, resolution)
    print(f"{name}: +{cost['grown_mb']:.0f} MB peak, {cost['seconds']:.2f} s, skipped {cost['skipped']}")
    assert cost["grown_mb"] < 100, cost
    assert cost["seconds"] < 10, cost
    assert cost["keys"] == (["000000000", "000000001"] if kept else ["000000001"])
    assert cost["skipped"] == (0 if kept else 1)
