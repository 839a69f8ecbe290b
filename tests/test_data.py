"""Tests for the shapes-cap generator, the webdataset pipelines and the data modules."""

from __future__ import annotations

import io
import itertools
import json
import os
import re
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from vistok.data.datamodule import GeneratedDataModule, ShardDataModule
from vistok.data.generated import (
    _BACKGROUNDS,
    _RGB,
    SLOTS,
    _mark_box,
    caption_from_attributes,
    ensure_generated,
    parse_caption,
    render_sample,
    write_shards,
)
from vistok.data.wds import (
    _is_success,
    count_samples,
    expand_urls,
    load_image,
    make_train_loader,
    make_val_loader,
    read_captions,
)

RES = 32


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------


@pytest.fixture
def shards(tmp_path):
    """Five small generated shards (20 samples) in tmp_path/shards."""
    out = tmp_path / "shards"
    paths = write_shards(str(out), "train", num_samples=20, seed=3, samples_per_shard=4)
    return out, paths


def _png(color=(200, 10, 10), size=(RES, RES)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def _write_tar(path, members: list[tuple[str, bytes]]) -> str:
    with tarfile.open(path, "w") as tar:
        for name, payload in members:
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return str(path)


def _row(key: str, image: bytes, status: str = "success") -> list[tuple[str, bytes]]:
    meta = json.dumps({"key": key, "status": status}).encode()
    return [(f"{key}.png", image), (f"{key}.txt", f"caption {key}".encode()), (f"{key}.json", meta)]


def _collect(loader) -> tuple[list[str], int, list[dict]]:
    batches = list(loader)
    keys = [k for b in batches for k in b["key"]]
    return keys, sum(b["skipped"] for b in batches), batches


# ------------------------------------------------------------------------------------------------
# generated dataset
# ------------------------------------------------------------------------------------------------


def test_render_is_deterministic_from_seed():
    first = [render_sample(np.random.default_rng(7)) for _ in range(3)]
    again = [render_sample(np.random.default_rng(7)) for _ in range(3)]
    for (img_a, attrs_a), (img_b, attrs_b) in zip(first, again):
        assert img_a.shape == (RES, RES, 3) and img_a.dtype == np.uint8
        np.testing.assert_array_equal(img_a, img_b)
        assert attrs_a == attrs_b
    rng_a, rng_b = np.random.default_rng(1), np.random.default_rng(2)
    assert any(not np.array_equal(render_sample(rng_a)[0], render_sample(rng_b)[0]) for _ in range(5))


def test_caption_round_trip_for_every_combination():
    for values in itertools.product(*SLOTS.values()):
        attrs = dict(zip(SLOTS, values))
        assert parse_caption(caption_from_attributes(attrs)) == attrs
    assert caption_from_attributes(
        dict(size="large", colour="red", shape="circle", position="left", mark="blue")
    ) == "a large red circle at left with blue mark"


@pytest.mark.parametrize("text", ["", "at", "with", "at with", "a a a a at at with", "\x00\xff ☃",
                                  "mark mark mark", "with mark at", None, 42])
def test_parse_caption_on_garbage_returns_nones(text):
    parsed = parse_caption(text)
    assert set(parsed) == set(SLOTS)
    assert all(v is None or v in SLOTS[slot] for slot, v in parsed.items())
    if text in ("", None, 42, "at", "with"):
        assert all(v is None for v in parsed.values())


def test_parse_caption_scores_slots_independently():
    parsed = parse_caption("a large purple circle at nowhere with blue mark")
    assert parsed == dict(size="large", colour=None, shape="circle", position=None, mark="blue")


@pytest.mark.parametrize("resolution,contrast", [(32, 0.5), (64, 0.25)])
def test_mark_is_dim_and_never_covered(resolution, contrast):
    rng = np.random.default_rng(0)
    start, stop = _mark_box(resolution, 2)
    assert stop - start == 2 * resolution // 32
    guard = resolution // 32
    for _ in range(200):
        image, attrs = render_sample(rng, resolution=resolution, mark_contrast=contrast)
        background = image[0, 0].astype(int)
        assert tuple(background) in _BACKGROUNDS
        mark = image[start:stop, start:stop].reshape(-1, 3).astype(int)
        expected = np.rint(background * (1 - contrast) + np.asarray(_RGB[attrs["mark"]]) * contrast)
        assert np.abs(mark - expected).max() <= 1  # uniform, with the documented contrast
        diff = np.abs(mark[0] - background).max()
        assert 0 < diff <= contrast * 255 + 1
        # Everything around the mark (its margin ring) is plain background: the shape stays away.
        region = image[start - guard:, start - guard:].astype(int).copy()
        region[guard:guard + stop - start, guard:guard + stop - start] = background
        assert (region == background).all()
        assert (image != background).any(axis=-1).sum() > (stop - start) ** 2  # a shape was drawn


def test_write_shards_is_byte_identical_for_a_seed(tmp_path):
    a = write_shards(str(tmp_path / "a"), "val", num_samples=6, seed=5, samples_per_shard=4)
    b = write_shards(str(tmp_path / "b"), "val", num_samples=6, seed=5, samples_per_shard=4)
    assert [os.path.basename(p) for p in a] == ["val-00000.tar", "val-00001.tar"]
    for pa, pb in zip(a, b):
        assert open(pa, "rb").read() == open(pb, "rb").read()
    with tarfile.open(a[0]) as tar:
        names = tar.getnames()
        meta = json.load(tar.extractfile("000000000.json"))
    assert names[:3] == ["000000000.png", "000000000.txt", "000000000.json"]
    assert meta["status"] == "success" and meta["key"] == "000000000"
    assert parse_caption(meta["caption"]) == meta["attributes"]
    assert meta["width"] == meta["height"] == RES


# ------------------------------------------------------------------------------------------------
# shards round trip
# ------------------------------------------------------------------------------------------------


def test_shard_round_trip_through_val_loader(shards):
    out, paths = shards
    assert len(paths) == 5
    for path in paths:
        stats = json.load(open(path[:-4] + "_stats.json"))
        assert stats == {"count": 4, "successes": 4, "failed_to_download": 0, "failed_to_resize": 0}
    assert count_samples(str(out)) == 20
    keys, skipped, batches = _collect(make_val_loader(str(out), 6, RES, 0, 1, 0))
    expected = [f"{s:05d}{i:04d}" for s in range(5) for i in range(4)]
    assert sorted(keys) == expected and len(set(keys)) == 20
    assert skipped == 0
    assert [len(b["key"]) for b in batches] == [6, 6, 6, 2]
    for batch in batches:
        assert batch["image"].shape == (len(batch["key"]), 3, RES, RES)
        assert batch["image"].dtype == torch.float32
        assert batch["image"].min() >= -1 and batch["image"].max() <= 1
        assert all(parse_caption(c)["shape"] is not None for c in batch["caption"])
    assert len(read_captions(str(out))) == 20 and len(read_captions(str(out), limit=3)) == 3


def test_count_samples_unknown_without_stats(shards):
    out, paths = shards
    os.remove(paths[0][:-4] + "_stats.json")
    assert count_samples(str(out)) is None


def test_ensure_generated_reuses_cache(tmp_path):
    kwargs = dict(num_train=30, num_val=10, seed=1, samples_per_shard=10)
    train, val = ensure_generated(str(tmp_path), **kwargs)
    assert len(expand_urls(train)) == 3 and len(expand_urls(val)) == 1
    assert count_samples(train) == 30 and count_samples(val) == 10
    first_shard = expand_urls(train)[0]
    stamp = os.stat(first_shard).st_mtime_ns
    os.utime(first_shard, ns=(stamp - 10**9, stamp - 10**9))  # any rewrite would move it forward
    assert ensure_generated(str(tmp_path), **kwargs) == (train, val)
    assert os.stat(first_shard).st_mtime_ns == stamp - 10**9
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".")]  # no temporary left behind
    other_train, _ = ensure_generated(str(tmp_path), **{**kwargs, "seed": 2})
    assert os.path.dirname(other_train) != os.path.dirname(train)
    # Train and validation come from different derived seeds.
    assert read_captions(train, limit=10) != read_captions(val, limit=10)


# ------------------------------------------------------------------------------------------------
# expand_urls
# ------------------------------------------------------------------------------------------------


def test_expand_urls_forms(shards):
    out, paths = shards
    paths = sorted(os.path.abspath(p) for p in paths)
    assert expand_urls(str(out / "train-*.tar")) == paths
    assert expand_urls(str(out)) == paths
    assert expand_urls(out) == paths
    assert expand_urls(str(out / "train-{00000..00004}.tar")) == paths
    assert expand_urls([paths[3], str(out / "train-0000[0-1].tar"), paths[0]]) == [paths[0], paths[1], paths[3]]
    assert expand_urls((paths[2],)) == [paths[2]]
    remote = ["pipe:curl -s http://host/a-000.tar", "s3://bucket/b.tar", "https://x/c.tar", "gs://g/d.tar"]
    assert expand_urls(remote + [paths[0]]) == [paths[0]] + remote
    assert expand_urls("s3://bucket/train-{0..2}.tar") == [f"s3://bucket/train-{i}.tar" for i in range(3)]


def test_expand_urls_accepts_listconfig(shards):
    omegaconf = pytest.importorskip("omegaconf")
    out, paths = shards
    listconfig = omegaconf.OmegaConf.create([paths[1], paths[0]])
    assert expand_urls(listconfig) == sorted(os.path.abspath(p) for p in paths[:2])


@pytest.mark.parametrize("suffix", ["missing-*.tar", "missing-{00000..00003}.tar", "missing.tar", "empty_dir"])
def test_expand_urls_missing_pattern_names_it(tmp_path, suffix):
    (tmp_path / "empty_dir").mkdir()
    pattern = str(tmp_path / suffix)
    with pytest.raises(FileNotFoundError, match=re.escape(pattern)):
        expand_urls(pattern)
    with pytest.raises(FileNotFoundError):
        expand_urls([pattern])


def test_expand_urls_partially_missing_brace_raises(shards):
    out, _ = shards
    with pytest.raises(FileNotFoundError):
        expand_urls(str(out / "train-{00000..00009}.tar"))


# ------------------------------------------------------------------------------------------------
# robustness
# ------------------------------------------------------------------------------------------------


def test_failed_status_rows_are_skipped_silently(tmp_path):
    members = _row("000000000", _png()) + _row("000000001", _png(), "failed_to_download") + _row("000000002", _png())
    path = _write_tar(tmp_path / "s-00000.tar", members)
    keys, skipped, _ = _collect(make_val_loader(path, 8, RES, 0, 1, 0))
    assert keys == ["000000000", "000000002"]
    assert skipped == 0
    assert read_captions(path) == ["caption 000000000", "caption 000000002"]


def test_corrupt_samples_are_skipped_and_counted(tmp_path):
    rows = [_row(f"0000000{i:02d}", b"not a png at all" if i in (1, 4) else _png()) for i in range(7)]
    path = _write_tar(tmp_path / "s-00000.tar", [m for row in rows for m in row])
    keys, skipped, batches = _collect(make_val_loader(path, 2, RES, 0, 1, 0))
    assert keys == [f"0000000{i:02d}" for i in (0, 2, 3, 5, 6)]
    assert skipped == 2
    assert all(isinstance(b["skipped"], int) for b in batches)


def test_sample_without_image_or_caption(tmp_path):
    members = [("000000000.txt", b"only text"), ("000000001.png", _png())]
    path = _write_tar(tmp_path / "s-00000.tar", members)
    keys, skipped, batches = _collect(make_val_loader(path, 8, RES, 0, 1, 0))
    assert keys == ["000000001"] and batches[0]["caption"] == [""] and skipped == 1


def test_truncated_shard_is_not_fatal(shards, tmp_path):
    _, paths = shards
    with tarfile.open(paths[0]) as tar:
        third_png = tar.getmember("000000002.png")
    data = open(paths[0], "rb").read()
    broken = tmp_path / "broken-00000.tar"
    # Cut inside a member's data: tarfile raises there. (A cut exactly between members looks like a
    # clean end of archive to tarfile's stream mode and cannot be detected.)
    broken.write_bytes(data[: third_png.offset_data + third_png.size // 2])
    keys, skipped, _ = _collect(make_val_loader([str(broken), paths[1]], 4, RES, 0, 1, 0))
    assert skipped >= 1  # tarfile may raise once for the member and once more for the stream
    assert sorted(keys) == ["000000000", "000000001"] + [f"00001{i:04d}" for i in range(4)]


def test_load_image_resizes_and_crops():
    image = load_image(_png(size=(50, 30)), RES)
    assert image.shape == (3, RES, RES)
    assert torch.allclose(image[:, 0, 0], torch.tensor([200, 10, 10]) / 127.5 - 1, atol=1e-5)
    buffer = io.BytesIO()
    Image.new("L", (64, 64), 255).save(buffer, format="JPEG")
    assert load_image(buffer.getvalue(), RES).shape == (3, RES, RES)
    # An extreme aspect ratio resamples only the crop window, and keeps the centre of the picture.
    column = np.zeros((4000, 2), dtype=np.uint8)
    column[2000:] = 255
    buffer = io.BytesIO()
    Image.fromarray(column).save(buffer, format="PNG")
    tall = load_image(buffer.getvalue(), 16)
    assert tall.shape == (3, 16, 16)
    assert tall[:, :4].max() < -0.9 and tall[:, -4:].min() > 0.9  # black above the middle, white below


def _reference_image(data: bytes) -> torch.Tensor:
    """The straightforward decode: RGBA over white as floats, rounded to uint8, then `x / 127.5 - 1`."""
    with Image.open(io.BytesIO(data)) as img:
        rgba = np.asarray(img.convert("RGBA"), dtype=np.float64)
    alpha = rgba[..., 3:] / 255.0
    array = np.rint(rgba[..., :3] * alpha + 255.0 * (1 - alpha)).astype(np.uint8)
    return torch.from_numpy(array).permute(2, 0, 1).float() / 127.5 - 1


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "P", "LA"])
def test_load_image_equals_the_straightforward_decode(mode):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (RES, RES, 4), dtype=np.uint8)
    image = Image.fromarray(pixels, "RGBA").convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    decoded = load_image(buffer.getvalue(), RES)
    assert decoded.dtype == torch.float32 and decoded.shape == (3, RES, RES)
    reference = _reference_image(buffer.getvalue())
    if mode in ("RGB", "L"):
        assert torch.equal(decoded, reference)
    else:  # transparency: Pillow's integer blend may round the other way
        assert (decoded - reference).abs().max() <= 1 / 127.5 + 1e-6


@pytest.mark.parametrize("meta", [
    b'{"key": "1", "status": "success"}',
    b'{"key": "1", "status": "failed_to_download"}',
    b'{"key": "1", "status":"failed"}',
    b'{"status": "failed", "status": "success"}',
    b'{"status": "success", "status": "failed"}',
    b'{"extra": {"status": "success"}, "status": "failed"}',
    b'{"extra": {"status": "success"}}',
    b'{"note": "\\"status\\": \\"success\\"", "status": "failed"}',
    b'{"key": "1"}',
    b'{"status": "success", "\\u0073tatus": "failed"}',
    b'["status", "failed"]',
    b'{"status": "success"',
    b'not json',
    '{"status": "failed"}'.encode("utf-16"),
    '{"key": "1", "status": "success"}'.encode("utf-16"),
])
def test_status_filter_agrees_with_parsing_the_json(meta):
    try:
        parsed = json.loads(meta)
        expected = not isinstance(parsed, dict) or parsed.get("status", "success") == "success"
    except (ValueError, UnicodeDecodeError):
        expected = True
    assert _is_success({"json": meta}) is expected


# ------------------------------------------------------------------------------------------------
# distribution over ranks and workers
# ------------------------------------------------------------------------------------------------


def _train_keys(paths, rank, num_workers, batches_per_rank=5, seed=0):
    loader = make_train_loader(paths, 3, RES, rank, 2, num_workers, batches_per_rank, seed, shuffle_buffer=8)
    assert len(loader) == batches_per_rank
    epochs = []
    for _ in range(2):
        batches = list(loader)
        assert len(batches) == batches_per_rank
        assert all(b["image"].shape == (3, 3, RES, RES) for b in batches)
        epochs.append([k for b in batches for k in b["key"]])
    return epochs


@pytest.mark.filterwarnings("ignore:This DataLoader will create")
def test_train_loader_exact_epoch_length_and_distinct_ranks(shards):
    _, paths = shards
    rank0 = _train_keys(paths, 0, num_workers=2)
    rank1 = _train_keys(paths, 1, num_workers=2)
    assert rank0[0] != rank1[0]
    assert rank0[0] != rank0[1]  # each epoch draws a new stream
    assert _train_keys(paths, 0, num_workers=2) == rank0  # runs repeat
    for workers, batches in [(0, 5), (3, 5), (4, 2), (2, 1)]:
        _train_keys(paths, 0, num_workers=workers, batches_per_rank=batches)


def test_val_loader_splits_ranks_exactly_with_spawned_workers(shards):
    _, paths = shards
    all_keys = {f"{s:05d}{i:04d}" for s in range(5) for i in range(4)}
    per_rank = []
    for rank in (0, 1):
        loader = make_val_loader(paths, 3, RES, rank, 2, num_workers=2, multiprocessing_context="spawn")
        keys, skipped, batches = _collect(loader)
        assert len(keys) == len(set(keys)) and skipped == 0
        assert all(b["valid"].all() for b in batches)  # 20 samples fill 4 slots evenly
        per_rank.append(set(keys))
    assert per_rank[0] | per_rank[1] == all_keys
    assert not per_rank[0] & per_rank[1]


@pytest.mark.slow  # spawned workers import torch afresh
def test_train_ranks_read_disjoint_shards_with_spawned_workers(shards):
    _, paths = shards  # five shards of four samples: rank 0 gets shards 0, 2, 4 and rank 1 shards 1, 3
    loaders = [make_train_loader(paths, 3, RES, rank, 2, 2, 6, 0, shuffle_buffer=8, multiprocessing_context="spawn")
               for rank in (0, 1)]
    shard_of = [{key[:5] for batch in loader for key in batch["key"]} for loader in loaders]
    assert shard_of[0] <= {"00000", "00002", "00004"} and shard_of[1] <= {"00001", "00003"}
    assert shard_of[0] and shard_of[1]


def test_val_loader_gives_every_rank_the_same_batches(tmp_path, shards):
    """11 good samples + 2 corrupt over 3 ranks x 2 workers: equal batch counts, each sample once."""
    _, paths = shards
    rows = [_row(f"9000000{i:02d}", b"not a png" if i in (2, 5) else _png()) for i in range(9)]
    bad = _write_tar(tmp_path / "bad-00000.tar", [m for row in rows for m in row])
    urls = [paths[0], bad]  # 4 + 9 samples; 7 of the bad shard decode
    good = {f"00000{i:04d}" for i in range(4)} | {f"9000000{i:02d}" for i in range(9) if i not in (2, 5)}
    counts, seen, skipped = [], [], 0
    for rank in range(3):
        batches = list(make_val_loader(urls, 2, RES, rank, 3, num_workers=2))
        counts.append(len(batches))
        for batch in batches:
            valid = batch["valid"]
            assert valid.dtype == torch.bool and valid.shape == (len(batch["key"]),)
            assert batch["image"][~valid].abs().sum() == 0  # padding rows are blank
            seen += [k for k, v in zip(batch["key"], valid.tolist()) if v]
            skipped += batch["skipped"]
    # 13 samples over 6 slots -> 3 rows per slot -> 2 batches of 2 per worker, 4 per rank
    assert counts == [4, 4, 4]
    assert sorted(seen) == sorted(good)
    assert skipped == 2


def test_val_loader_with_more_ranks_than_samples(shards):
    _, paths = shards
    per_rank = [list(make_val_loader(paths[:1], 8, RES, rank, 6, 0)) for rank in range(6)]
    assert [len(b) for b in per_rank] == [1] * 6  # 4 samples, 6 ranks: two ranks get one blank row
    assert [int(b[0]["valid"].sum()) for b in per_rank] == [1, 1, 1, 1, 0, 0]


# ------------------------------------------------------------------------------------------------
# data modules
# ------------------------------------------------------------------------------------------------


def test_shard_datamodule_missing_pattern_fails_in_prepare(tmp_path, shards):
    pattern = str(tmp_path / "nowhere" / "train-*.tar")
    module = ShardDataModule(train=pattern, val=str(shards[0]))  # constructing is cheap and lazy
    with pytest.raises(FileNotFoundError, match="nowhere"):
        module.prepare()
    with pytest.raises(FileNotFoundError) as info:
        ShardDataModule(train=str(shards[0]), val=pattern).prepare()
    assert pattern in str(info.value)


def test_shard_datamodule_loaders(shards):
    out, _ = shards
    module = ShardDataModule(train=str(out / "train-*.tar"), val=str(out), batch_size=3, val_batch_size=8)
    module.setup("fit")
    assert module.batches_per_rank(1) == 7 and module.batches_per_rank(2) == 4  # ceil(20 / (3 * ws))
    assert len(list(module.train_dataloader())) == 7
    assert sum(len(b["key"]) for b in module.val_dataloader()) == 20
    assert len(module.train_captions()) == 20


def test_generated_datamodule(tmp_path):
    module = GeneratedDataModule(str(tmp_path), num_train=40, num_val=10, batch_size=8, val_batch_size=4)
    assert not os.listdir(tmp_path)  # nothing generated at construction
    module.prepare()
    module.prepare()
    assert len(os.listdir(tmp_path)) == 1
    assert len(list(module.train_dataloader())) == 5
    val_batches = list(module.val_dataloader())
    assert [len(b["key"]) for b in val_batches] == [4, 4, 2]
    assert val_batches[0]["image"].shape == (4, 3, 32, 32)
    captions = module.train_captions()
    assert len(captions) == 40 and all(None not in parse_caption(c).values() for c in captions)
