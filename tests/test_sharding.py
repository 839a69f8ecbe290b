"""FSDP2 pieces that need no process group: shard units cover every parameter; DCP checkpoints consolidate."""

from __future__ import annotations

import pytest
import torch
import torch.distributed.checkpoint as dcp

from vistok.checkpoint_files import consolidate_checkpoint, load_checkpoint
from vistok.training.prepare import prepare_run
from vistok.training.runner import build_module
from vistok.training.sharding import _uncovered_parameters, shard_units


def _ett_module(compose_cfg):
    cfg = compose_cfg(["experiment=ett_mini", "debug=tiny"])
    from hydra.utils import instantiate

    datamodule = instantiate(cfg.data)
    datamodule.prepare()
    prepare_run(cfg, datamodule)  # the tiny LLM
    return build_module(cfg, datamodule)


def test_shard_units_cover_every_parameter_of_the_joint_module(compose_cfg):
    module = _ett_module(compose_cfg)
    units = shard_units(module)
    names = [name for name, _, _ in units]
    assert "llm.embedding" in names and "llm" in names and "projector" in names
    assert "tokenizer.encoder" in names and "tokenizer.decoder" in names
    assert names.index("llm.block0") < names.index("llm")  # leaves before their parent
    assert _uncovered_parameters(module, [u for _, u, _ in units]) == []
    fp32 = {name for name, _, keep in units if keep}
    assert not any(name.startswith("llm") for name in fp32)


def test_uncovered_parameters_are_named(compose_cfg):
    module = _ett_module(compose_cfg)
    module.stray = torch.nn.Parameter(torch.zeros(3))
    assert _uncovered_parameters(module, [u for _, u, _ in shard_units(module)]) == ["stray"]


def test_distributed_checkpoint_consolidates_and_loads_strictly(compose_cfg, tmp_path):
    module = _ett_module(compose_cfg)
    state = {k: v.clone() for k, v in module.state_dict().items()}
    ckpt = tmp_path / "last.ckpt"
    dcp.save({"state_dict": state}, checkpoint_id=str(ckpt))
    torch.save({"global_step": 7, "vistok": {"stage": "ett", "stage_step": 3}}, ckpt / "meta.pt")
    out = consolidate_checkpoint(ckpt)
    loaded = torch.load(out, map_location="cpu", weights_only=True)
    assert loaded["global_step"] == 7 and loaded["vistok"]["stage"] == "ett"
    fresh = _ett_module(compose_cfg)
    fresh.load_state_dict(loaded["state_dict"], strict=True)
    for key, value in state.items():
        assert torch.equal(fresh.state_dict()[key], value), key
    assert load_checkpoint(ckpt)["state_dict"].keys() == state.keys()
    assert consolidate_checkpoint(ckpt, out) == out  # an earlier consolidated file is replaced
    precious = tmp_path / "precious"  # a directory named as the output is never replaced or deleted
    precious.mkdir()
    (precious / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a file"):
        consolidate_checkpoint(ckpt, precious)
    assert (precious / "keep.txt").read_text() == "mine"
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left behind
