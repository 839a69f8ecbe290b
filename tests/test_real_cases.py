"""scripts.make_real_cases: real-image cases whose captions say what the images show, readable as shards."""

from __future__ import annotations

import io
import json
import re
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from scripts.make_real_cases import COLOURS, PHOTOS, REGIONS, load_glyphs, load_photos, main, make_case

DIGIT_CAPTION = re.compile(r"a (\w+) (\d) left of a (\w+) (\d)")
PHOTO_CAPTION = re.compile(r"the (.+) of the (\w+) photograph(, mirrored)?")


def read_split(folder: Path) -> list[tuple[np.ndarray, str]]:
    """(H, W, 3) uint8 image and caption of every sample in a split's shards."""
    samples = []
    for shard in sorted(folder.glob("*.tar")):
        with tarfile.open(shard) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
        for name in sorted(n for n in members if n.endswith(".png")):
            key = name[:-4]
            image = np.asarray(Image.open(io.BytesIO(members[name])).convert("RGB"))
            caption = members[f"{key}.txt"].decode()
            assert json.loads(members[f"{key}.json"])["caption"] == caption
            samples.append((image, caption))
    return samples


def test_digit_captions_name_the_colours_drawn_and_validation_glyphs_are_held_out(tmp_path):
    make_case(tmp_path, "digits", num_train=60, num_val=20, per_shard=25)
    train = read_split(tmp_path / "train")
    assert len(train) == 60 and len(read_split(tmp_path / "val")) == 20
    assert sorted(p.name for p in (tmp_path / "train").iterdir())[:2] == ["00000.tar", "00000_stats.json"]
    palette = {name: np.array(rgb, dtype=float) for name, rgb in COLOURS.items()}
    for image, caption in train:
        left_colour, _, right_colour, _ = DIGIT_CAPTION.fullmatch(caption).groups()
        for half, named in ((image[:, :16], left_colour), (image[:, 16:], right_colour)):
            pixels = half.reshape(-1, 3).astype(float)
            ink = pixels[pixels.max(1) > 120]  # the glyph's strokes, brighter than the grey ground
            nearest = min(palette, key=lambda c: np.linalg.norm(ink.mean(0) - palette[c]))
            assert nearest == named, caption
    train_glyphs, _ = load_glyphs("train")
    val_glyphs, _ = load_glyphs("val")
    assert len(train_glyphs) + len(val_glyphs) == 1797
    assert not {g.tobytes() for g in val_glyphs} & {g.tobytes() for g in train_glyphs}  # no glyph in both


def test_photo_crops_come_from_the_region_their_caption_names(tmp_path):
    size = 48
    make_case(tmp_path, "photos", resolution=size, num_train=40, num_val=4)
    photos = load_photos()
    assert set(photos) == set(PHOTOS.values())
    hits = 0
    samples = read_split(tmp_path / "train")
    for image, caption in samples:
        region, name, mirrored = PHOTO_CAPTION.fullmatch(caption).groups()
        crop = image[:, ::-1] if mirrored else image
        photo = photos[name]
        h, w = photo.shape[:2]
        side = min(h, w) // 3

        def distance(r: int) -> float:  # the crop against the unjittered cell of region r
            top = int(np.clip((r // 3 + 0.5) / 3 * h - side / 2, 0, h - side))
            left = int(np.clip((r % 3 + 0.5) / 3 * w - side / 2, 0, w - side))
            cell = Image.fromarray(photo[top:top + side, left:left + side]).resize((size, size), Image.BICUBIC)
            return float(np.abs(np.asarray(cell, dtype=float) - crop.astype(float)).mean())

        hits += min(range(len(REGIONS)), key=distance) == REGIONS.index(region)
    # Chance is 1 in 9; crops jitter in place and size and some regions look alike (a dark sky, a star field).
    assert hits >= 0.5 * len(samples), f"{hits}/{len(samples)} crops closest to the region their caption names"


def test_a_written_case_is_not_overwritten_and_bad_arguments_are_clear(tmp_path, capsys):
    make_case(tmp_path, "digits", num_train=4, num_val=2)
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")}
    assert main([str(tmp_path), "--case", "digits", "--num-train", "4", "--num-val", "2"]) == 2
    assert "not empty" in capsys.readouterr().err
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")} == before
    assert main([str(tmp_path / "new"), "--case", "digits", "--resolution", "8"]) == 2
    assert "resolution >= 16" in capsys.readouterr().err
    with pytest.raises(ValueError, match="unknown case"):
        make_case(tmp_path / "other", "faces")


@pytest.mark.slow
def test_ett_real_table_runs_on_the_shards_and_reports_no_caption_slot_metrics(tmp_path, cache_dir, monkeypatch):
    """The table's smoke scale on a digits case: every row trains on the shards (free-text captions), the gates
    get a verdict, and no metric of the generated set's caption slots appears."""
    from scripts.reproduce import main as reproduce

    monkeypatch.setenv("VISTOK_CACHE", str(cache_dir))
    make_case(tmp_path / "digits", "digits", num_train=128, num_val=32, per_shard=64)
    out = tmp_path / "table"
    assert reproduce(["ett_real", "--scale", "smoke", "--out", str(out),
                      "--set", f"data.train={tmp_path / 'digits' / 'train'}",
                      "--set", f"data.val={tmp_path / 'digits' / 'val'}"]) == 0
    result = json.loads((out / "ett_real.json").read_text())
    assert set(result["means"]) == {"ett_mini_frozen", "ett_mini_alpha0", "ett_mini", "ett_mini_alpha1"}
    assert len(result["trends"]) == 2
    for run in out.glob("seed0/ett_mini*/metrics.json"):
        final = json.loads(run.read_text())["final"]
        assert "caption_exact_match" in final and "psnr" in final
        assert not any(k.startswith("attribute_accuracy") for k in final), run
        overrides = json.loads((run.parent / "reproduce.json").read_text())["overrides"]
        assert "data=shards" in overrides
