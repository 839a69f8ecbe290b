"""Exports, run directories and checkpoints from elsewhere are data, not code; exports delete no one's files.

Every hostile file here is written by the test itself: pickles whose unpickling touches a marker file, configs
whose targets would run a command or overwrite a file. The marker must never appear, the victim file never
change. Run directories are made by hand (a `.hydra/config.yaml` and a weights-only checkpoint), so the module
needs no training run.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from tests.conftest import ROOT
from tests.test_export import CONFIG, DIFFUSERS_CONFIG
from vistok import load_tokenizer, save_tokenizer
from vistok.export import build_from_config, cpu_state

pytestmark = pytest.mark.faults


class TouchesMarker:
    """Unpickling this creates `marker`: proof that code from a file ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (Path(self.marker),)


def write_pickle_bomb(path: Path, marker: Path) -> Path:
    """A file that `torch.load(path, weights_only=False)` unpickles (and so touches `marker`)."""
    torch.save(TouchesMarker(marker), path)
    return path


def tiny_tokenizer(config: dict = CONFIG) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_from_config(config).eval()


def make_run_dir(run_dir: Path, tokenizer_config: dict | None = None, extra_config: dict | None = None,
                 checkpoint_extra: dict | None = None) -> Path:
    """A run directory as train.py leaves it, as far as scripts.export / scripts.generate read it."""
    (run_dir / ".hydra").mkdir(parents=True)
    config = {"tokenizer": tokenizer_config or CONFIG, "stages": {"tokenizer": {"steps": 1}},
              **(extra_config or {})}
    (run_dir / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    state = {f"tokenizer.{k}": v for k, v in cpu_state(tiny_tokenizer()).items()}
    ckpt = run_dir / "checkpoints" / "tokenizer" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    torch.save({"state_dict": state, "global_step": 1, **(checkpoint_extra or {})}, ckpt)
    return run_dir


def export_script(*args) -> int:
    from scripts.export import main

    return main([str(a) for a in args])


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.fixture
def run_dir(tmp_path) -> Path:
    return make_run_dir(tmp_path / "runs" / "vq_mini" / "2026-01-01_00-00-00")


# ---- 1. exports never delete a user's files ---------------------------------------------------------------


def test_export_into_a_directory_of_runs_touches_nothing(run_dir, tmp_path, capsys):
    runs = run_dir.parent  # outputs/vq_mini: every run of the experiment
    sentinel = runs / "other-run" / "metrics.json"
    sentinel.parent.mkdir()
    sentinel.write_text("{}")
    before = sorted(p.relative_to(runs) for p in runs.rglob("*"))
    assert export_script(run_dir, runs) == 2
    assert "is not a vistok export: it was not touched" in capsys.readouterr().err
    assert sorted(p.relative_to(runs) for p in runs.rglob("*")) == before
    assert leftovers(runs.parent) == []


def test_export_to_the_current_directory_or_above_is_refused(run_dir, tmp_path, monkeypatch, capsys):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    for target in (".", "..", work, Path.home()):
        assert export_script(run_dir, target) == 2, target
        assert "export to a new directory" in capsys.readouterr().err
    empty = tmp_path / "empty-cwd"  # even an empty current directory is not replaced under the shell's feet
    empty.mkdir()
    monkeypatch.chdir(empty)
    assert export_script(run_dir, ".") == 2
    assert empty.is_dir() and not any(empty.iterdir()) and leftovers(tmp_path) == []


def test_export_to_a_symlink_or_onto_a_file_leaves_nothing_behind(run_dir, tmp_path, capsys):
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "link"
    link.symlink_to(real, target_is_directory=True)
    victim = tmp_path / "notes.txt"
    victim.write_text("keep me")
    assert export_script(run_dir, link) == 2
    assert "is a symlink" in capsys.readouterr().err
    assert export_script(run_dir, victim) == 2
    assert "is not a directory" in capsys.readouterr().err
    assert victim.read_text() == "keep me" and not any(real.iterdir()) and link.is_symlink()
    assert leftovers(tmp_path) == []


def test_overwriting_an_export_needs_overwrite_and_replaces_it_whole(run_dir, tmp_path, capsys):
    out = tmp_path / "tok"
    assert export_script(run_dir, out) == 0
    (out / "eval").mkdir()  # what scripts.evaluate leaves in an export
    first = json.loads((out / "meta.json").read_text())
    assert export_script(run_dir, out) == 2
    assert "pass --overwrite" in capsys.readouterr().err
    assert json.loads((out / "meta.json").read_text()) == first
    assert export_script(run_dir, out, "--overwrite") == 0
    assert not (out / "eval").exists() and load_tokenizer(out) is not None
    assert leftovers(tmp_path) == []
    (out / "notes.txt").write_text("mine")  # an export with a user's file in it is no longer only an export
    assert export_script(run_dir, out, "--overwrite") == 2
    assert (out / "notes.txt").read_text() == "mine"


def test_a_failed_export_removes_its_temporary_directory_and_keeps_the_old_one(tmp_path, monkeypatch):
    import vistok.export

    tokenizer, out = tiny_tokenizer(), tmp_path / "tok"
    save_tokenizer(tokenizer, CONFIG, out, {"step": 1})

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(vistok.export, "save_file", disk_full)
    with pytest.raises(OSError, match="No space left"):
        save_tokenizer(tokenizer, CONFIG, out, {"step": 2}, overwrite=True)
    assert json.loads((out / "meta.json").read_text())["step"] == 1
    assert leftovers(tmp_path) == []


def test_exports_are_readable_by_the_group_like_other_outputs(tmp_path):
    old = os.umask(0o022)
    try:
        out = save_tokenizer(tiny_tokenizer(), CONFIG, tmp_path / "tok")
    finally:
        os.umask(old)
    assert out.stat().st_mode & 0o777 == 0o755
    assert (out / "model.safetensors").stat().st_mode & 0o777 == 0o644


def test_the_diffusers_format_has_the_same_protection(tmp_path):
    from vistok.export_diffusers import save_vqmodel

    tokenizer = tiny_tokenizer(DIFFUSERS_CONFIG)
    runs = tmp_path / "runs"
    (runs / "a-run").mkdir(parents=True)
    with pytest.raises(ValueError, match="is not a vistok export: it was not touched"):
        save_vqmodel(tokenizer, runs)
    assert [p.name for p in runs.iterdir()] == ["a-run"]
    out = save_vqmodel(tokenizer, tmp_path / "vq")
    with pytest.raises(ValueError, match="pass --overwrite"):
        save_vqmodel(tokenizer, out)
    save_vqmodel(tokenizer, out, overwrite=True)
    assert leftovers(tmp_path) == []


# ---- 2. an export's config never runs code --------------------------------------------------------------


def hostile_export(tmp_path: Path, encoder: dict, yaml_encoder: dict | None = None) -> Path:
    """A real tiny export whose config's encoder is replaced (config.json and config.yaml agree as read)."""
    out = save_tokenizer(tiny_tokenizer(), CONFIG, tmp_path / "export")
    (out / "config.json").write_text(json.dumps({"tokenizer": {**CONFIG, "encoder": encoder}}))
    (out / "config.yaml").write_text(yaml.safe_dump({**CONFIG, "encoder": yaml_encoder or encoder}))
    return out


def oc_create_unpickler(tmp_path: Path) -> tuple[Path, Path]:
    """An export whose encoder is Hydra's instantiate (re-exported under `vistok.`) given an
    `${oc.create:...}` that builds `torch.load(weights_only=False)` of a pickle touching a marker. In
    config.yaml the interpolation is escaped, so it survives a resolving read and reaches Hydra as the same
    string."""
    marker = tmp_path / "code-ran"
    bomb = write_pickle_bomb(tmp_path / "bomb.pt", marker)
    payload = f"{{_target_: torch.load, f: '{bomb}', weights_only: false}}"
    encoder = {"_target_": "vistok.generation.loading.instantiate",
               "config": {"x": f"${{oc.create:{payload}}}"}}
    escaped = {**encoder, "config": {"x": f"\\${{oc.create:{payload}}}"}}
    return hostile_export(tmp_path, encoder, escaped), marker


def load_through_hub(path):
    from vistok.hub import HubTokenizer

    return HubTokenizer.from_pretrained(path)


def evaluate_script(path):
    from scripts.evaluate import main

    if main([str(path), f"data={path}/no-shards-*.tar"]) == 2:
        raise ValueError("scripts.evaluate: refusing the export (exit code 2)")


def load_as_teacher(path):
    from vistok.teachers import load_teacher

    return load_teacher(str(path))


@pytest.mark.parametrize("load", [load_tokenizer, load_through_hub, evaluate_script, load_as_teacher],
                         ids=["load_tokenizer", "HubTokenizer", "scripts.evaluate", "teacher"])
def test_an_export_cannot_unpickle_through_an_interpolation(tmp_path, load):
    path, marker = oc_create_unpickler(tmp_path)
    with pytest.raises(ValueError, match="refusing"):
        load(path)
    assert not marker.exists()


def test_an_export_cannot_overwrite_a_file(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    writer = {"_target_": "vistok.export.save_file", "tensors": {}, "filename": str(victim)}
    path = hostile_export(tmp_path, writer)
    for load in (load_tokenizer, load_through_hub):
        with pytest.raises(ValueError, match="refusing to instantiate 'vistok.export.save_file'"):
            load(path)
    assert victim.read_text() == "keep me"


@pytest.mark.parametrize("key", ["_partial_", "_args_", "_recursive_", "_convert_"])
def test_hydra_special_keys_are_refused(key):
    from vistok import untrusted

    with pytest.raises(untrusted.UntrustedConfigError, match=key):
        untrusted.check_config({**CONFIG, "encoder": {**CONFIG["encoder"], key: True}})


def test_a_huge_codebook_fails_fast_without_allocating(tmp_path):
    """codebook_size 10**10 would be 320 GB of codebook; the check reads the weights file's header instead.
    The loads run under an address-space limit, so a build that allocates fails instead of exhausting
    memory."""
    out = save_tokenizer(tiny_tokenizer(), CONFIG, tmp_path / "export")
    huge = {**CONFIG, "quantizer": {**CONFIG["quantizer"], "codebook_size": 10**10}}
    (out / "config.json").write_text(json.dumps({"tokenizer": huge}))
    (out / "config.yaml").write_text(yaml.safe_dump(huge))
    code = ("import resource, sys, time, vistok; from vistok.hub import HubTokenizer\n"
            "resource.setrlimit(resource.RLIMIT_AS, (32 * 2**30, resource.RLIM_INFINITY))\n"
            "for load in (vistok.load_tokenizer, HubTokenizer.from_pretrained):\n"
            "    start = time.time()\n"
            "    try:\n"
            f"        load({str(out)!r})\n"
            "    except ValueError as error:\n"
            "        print('REFUSED', round(time.time() - start, 1), error)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            cwd=ROOT)
    refusals = [line for line in result.stdout.splitlines() if line.startswith("REFUSED")]
    assert len(refusals) == 2, result.stdout + result.stderr
    assert all("does not describe its weights" in r and "10000000000" in r for r in refusals), refusals
    assert all(float(line.split()[1]) < 5 for line in refusals), refusals


def test_fsq_sizes_are_bounded_before_it_is_built():
    from vistok import untrusted

    config = {"_target_": "vistok.tokenizers.quantizers.fsq.FiniteScalarQuantizer", "dim": 8,
              "levels": [10**5, 10**5, 10**5]}
    with pytest.raises(untrusted.UntrustedConfigError, match="would allocate"):
        untrusted.check_sizes(config, {})


# ---- 3. a run directory or a checkpoint never runs code ---------------------------------------------------


def test_a_run_directory_config_cannot_run_a_command(tmp_path, capsys):
    marker = tmp_path / "code-ran"
    run = make_run_dir(tmp_path / "run", {"_target_": "subprocess.getoutput", "cmd": f"touch {marker}"})
    assert export_script(run, tmp_path / "out") == 2
    assert "refusing to instantiate 'subprocess.getoutput'" in capsys.readouterr().err
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_a_run_directory_config_resolves_no_resolver(tmp_path, capsys):
    marker = tmp_path / "code-ran"
    bomb = write_pickle_bomb(tmp_path / "bomb.pt", marker)
    payload = f"${{oc.create:{{_target_: torch.load, f: '{bomb}', weights_only: false}}}}"
    encoder = {**CONFIG["encoder"], "base_channels": "${oc.env:HOME}", "ch_mult": payload}
    config = {**CONFIG, "encoder": encoder}
    run = make_run_dir(tmp_path / "run", config)
    assert export_script(run, tmp_path / "out") == 2
    assert "only plain references" in capsys.readouterr().err
    assert not marker.exists()


def test_a_run_directory_plain_references_are_followed(tmp_path):
    """What train.py writes: `${tokenizer.embed_dim}`, `${..x}`, `${data.resolution}` between its own keys."""
    config = {**CONFIG, "resolution": "${data.resolution}",
              "encoder": {**CONFIG["encoder"], "out_dim": "${tokenizer.embed_dim}", "base_channels": 8},
              "quantizer": {**CONFIG["quantizer"], "dim": "${..embed_dim}"}}
    run = make_run_dir(tmp_path / "run", config, {"data": {"resolution": 16}})
    assert export_script(run, tmp_path / "out") == 0
    assert yaml.safe_load((tmp_path / "out" / "config.yaml").read_text()) == CONFIG


def hostile_generation_checkpoint(tmp_path: Path, marker: Path) -> Path:
    """A checkpoint that loads with weights_only=True but whose stored config unpickles a file when built."""
    bomb = write_pickle_bomb(tmp_path / "bomb.pt", marker)
    command = {"_target_": "torch.load", "f": str(bomb), "weights_only": False}
    checkpoint_extra = {"vistok_config": {"tokenizer": command, "llm": {"path": str(tmp_path)},
                                          "projector": command, "module": {}}}
    run = make_run_dir(tmp_path / "run", checkpoint_extra=checkpoint_extra)
    ckpt = run / "checkpoints" / "tokenizer" / "last.ckpt"
    checkpoint = torch.load(ckpt, weights_only=True)
    checkpoint["state_dict"]["visual_head.weight"] = torch.zeros(1)
    torch.save(checkpoint, ckpt)
    return run


def test_a_weights_only_checkpoint_config_cannot_run_a_command(tmp_path, capsys):
    from scripts.generate import main
    from vistok.generation.loading import load_generator

    marker = tmp_path / "code-ran"
    run = hostile_generation_checkpoint(tmp_path, marker)
    with pytest.raises(ValueError, match="refusing to instantiate 'torch.load'"):
        load_generator(run)
    assert main([str(run), "--num", "1"]) == 2
    assert "refusing to instantiate 'torch.load'" in capsys.readouterr().err
    assert not marker.exists()


# ---- the one loader: the allow-list fits what vistok ships, and nothing else builds outside configs -------


def shipped_experiments() -> list[str]:
    return sorted(p.stem for p in (ROOT / "configs" / "experiment").glob("*.yaml"))


def test_every_shipped_tokenizer_and_projector_passes_the_loader():
    """Each experiment's config, as a run directory holds it (unresolved), reads through the loader to the
    same tree OmegaConf resolves, and builds on the meta device with its own shapes."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from vistok import untrusted

    for experiment in shipped_experiments():
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
            cfg = compose("train", overrides=[f"experiment={experiment}"])
        raw = OmegaConf.to_container(cfg, resolve=False)
        for key in ("tokenizer", "projector"):
            if cfg.get(key) is None:
                continue
            tree = untrusted.resolve_references(raw, key)
            assert tree == OmegaConf.to_container(cfg[key], resolve=True), (experiment, key)
            untrusted.check_config(tree, f"{experiment}: {key}")
        if experiment.endswith("_paper"):
            continue  # paper sizes: the meta build below covers the mini configs, in seconds
        fsq = "fsq" in str(cfg.tokenizer.quantizer._target_)  # FSQ cannot be built on the meta device
        with torch.device("cpu" if fsq else "meta"):
            reference = instantiate(cfg.tokenizer)
        tree = untrusted.resolve_references(raw, "tokenizer")
        untrusted.check_sizes(tree, untrusted.weight_shapes(reference.state_dict()), experiment)


def test_every_allowed_target_is_a_module_class():
    import importlib

    from vistok import untrusted

    for target in untrusted.ALLOWED_TARGETS:
        module, _, name = target.rpartition(".")
        found = getattr(importlib.import_module(module), name)
        assert isinstance(found, type) and issubclass(found, torch.nn.Module), target


# Files that build the process's OWN composed config (train.py's Hydra tree) may call Hydra's instantiate;
# the loader is the only other place that imports classes by name.
OWN_CONFIG_BUILDERS = {"vistok/training/runner.py", "vistok/training/prepare.py", "vistok/config.py",
                       "vistok/reproduce/dry_run.py", "scripts/benchmarks/common.py", "scripts/benchmarks/data.py"}
LOADER = "vistok/untrusted.py"


def builders_in(path: Path) -> list[str]:
    """Calls and imports in `path` that can build a class named in a config."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module in ("hydra.utils", "importlib"):
            found += [f"from {node.module} import {a.name}" for a in node.names
                      if a.name in ("instantiate", "call", "get_class", "get_method", "import_module")]
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name in ("instantiate", "import_module", "get_class", "get_method", "_locate", "__import__"):
                found.append(f"{name}() at line {node.lineno}")
    return found


def test_no_path_builds_an_outside_config_except_through_the_loader():
    offenders = {}
    for path in sorted([*ROOT.glob("vistok/**/*.py"), *ROOT.glob("scripts/**/*.py")]):
        rel = path.relative_to(ROOT).as_posix()
        if rel not in OWN_CONFIG_BUILDERS and rel != LOADER and builders_in(path):
            offenders[rel] = builders_in(path)
    assert not offenders, offenders
    assert builders_in(ROOT / LOADER), "the loader itself must be found by this scan"
