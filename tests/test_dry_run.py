"""`scripts.reproduce TABLE --scale S --dry-run`: every planned run composes, validates and builds (meta device),
and the sizes it prints are the model's (parameters, tokens, FLOPs against the 6 N L rule, memory by strategy)."""

from __future__ import annotations

from pathlib import Path

import pytest

from vistok.reproduce.dry_run import dry_run, render
from vistok.reproduce.runner import plan
from vistok.reproduce.tables import TABLES


def plans_of(table_name: str, scale: str, tmp_path: Path):
    table = TABLES[table_name]
    bases, rows = plan(table, scale, 1, tmp_path, table.stages)

    def job(label, j):
        return label, [o for o in j.overrides if not o.startswith("seed=")], 0, j.run_dir

    return dry_run([job("base", j) for j in bases] + [job(n, j) for n, js in rows.items() for j in js])


@pytest.mark.parametrize("scale", ["smoke", "mini", "paper"])
@pytest.mark.parametrize("table_name", sorted(TABLES))
def test_every_planned_run_composes_validates_and_builds(table_name, scale, tmp_path):
    plans = plans_of(table_name, scale, tmp_path)
    failed = {p.label: p.error for p in plans if p.error}
    assert not failed, render(plans)
    for p in plans:
        assert p.stages and all(s.flops_per_sample > 0 for s in p.stages), p.label
        assert p.params["tokenizer"] > 0 and p.tokens_per_image > 0


def test_ett_paper_sizes_follow_the_model(tmp_path):
    plans = {p.label: p for p in plans_of("ett_table5", "paper", tmp_path)}
    ett = plans["ett_mini"]  # ETT alpha 0.25 at paper scale: IBQ K = 131,072 + Qwen2.5-1.5B
    assert ett.tokens_per_image == 1024 and ett.llm_sequence == 1024 + 256
    assert ett.params["llm"] == pytest.approx(1.54e9, rel=0.01)
    assert ett.params["quantizer"] == 131072 * 256
    assert ett.world_size == 64
    assert any("llm.path" in i for i in ett.inputs) and any("data.train" in i for i in ett.inputs)
    stages = {s.name: s for s in ett.stages}
    # The LLM's forward + backward is about 6 N L (the attention term on top); the tokenizer adds its own:
    # IBQ's VQGAN CNN at 512 px (4-5 residual blocks of 128-512 channels per level, 18 3x3 convolutions at
    # full resolution alone, ~1.4 TFLOP forward) with LPIPS and the discriminator, about 0.8 x the LLM's.
    rule = 6 * ett.params["llm"] * ett.llm_sequence
    assert rule < stages["ett"].flops_per_sample < 2 * rule
    # Post-training trains the LLM only (tokenizer frozen): less work and less memory than ETT's stage.
    assert stages["post"].flops_per_sample < stages["ett"].flops_per_sample
    for stage in stages.values():
        assert stage.memory_gib["fsdp2"] < stage.memory_gib["ddp"]


def test_a_generation_stage_pays_for_the_visual_head(tmp_path):
    """ett_paper_gen's post stage trains a head over K = 131,072 codes: its parameters, optimiser state and
    the (N, K) logits of each sample are in the estimate, beside the same stage without generation."""
    init = f"init_from={tmp_path / 'pretrained.ckpt'}"
    gen, plain = dry_run([(name, [f"experiment={name}", init], 0, tmp_path / name)
                          for name in ("ett_paper_gen", "ett_paper")])
    assert not gen.error and not plain.error, (gen.error, plain.error)
    assert gen.params["visual_head"] == 1536 * 131072 + 131072 and "visual_head" not in plain.params
    post = {s.name: s for s in gen.stages}["post"]
    plain_post = {s.name: s for s in plain.stages}["post"]
    state = gen.params["visual_head"] * 4 * 4 / 1024 ** 3  # float32 weights, gradients, two AdamW moments
    logits = gen.batch_per_gpu * 1024 * 131072 * 4 / 1024 ** 3
    assert post.memory_gib["ddp"] - plain_post.memory_gib["ddp"] > state + logits


def test_a_broken_row_is_named_and_the_command_fails(tmp_path, capsys, monkeypatch):
    from scripts import reproduce
    from vistok.reproduce import tables

    broken = tables.Row("broken", "broken_row", ["tokenizer.quantizer.codebook_size=oops"])
    table = TABLES["ett_table4"]
    monkeypatch.setitem(TABLES, "ett_table4", type(table)(**{**table.__dict__, "rows": [*table.rows, broken]}))
    code = reproduce.main(["ett_table4", "--scale", "paper", "--dry-run", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 1
    assert "FAILED: broken_row" in out and "codebook_size" in out


def test_attention_memory_is_what_fused_kernels_save_not_the_weights():
    """On the meta device attention runs its math path, which saves the (B, h, L, L) softmax weights; the
    flash and memory-efficient kernels keep q, k, v, the output and a (B, h, L) log-sum-exp instead, so
    the estimate counts those (instella_paper, 4,096 patches at 1024 px, was 1.5x its measured peak)."""
    import torch

    from vistok.reproduce.dry_run import _measure_once
    from vistok.tokenizers.modules.vit import Attention

    heads, length, width = 4, 1024, 64
    with torch.device("meta"):
        attention = Attention(width, heads)
        x = torch.empty(1, length, width, requires_grad=True)
    cost = _measure_once(attention, x)
    weights = heads * length * length * 4  # bytes of the float32 softmax weights
    assert 0 < cost.saved < weights / 4, cost.saved
    assert cost.forward >= 4 * length * length * width  # QK^T and PV, 2 FLOPs per multiply-add
    assert cost.backward >= 2 * cost.forward * 0.9


def test_rows_that_differ_only_in_stages_share_one_measurement_and_a_new_model_gets_its_own(tmp_path,
                                                                                          monkeypatch):
    """The part costs are measured once per distinct model: two alphas of ett_mini share it (and size the same
    as a fresh measurement), a wider projector is measured again."""
    from vistok.reproduce import dry_run as module

    calls = []
    measure = module.part_costs
    monkeypatch.setattr(module, "part_costs", lambda cfg, model: calls.append(1) or measure(cfg, model))
    monkeypatch.setattr(module, "_measured", {})
    jobs = [(name, ["experiment=ett_mini", "debug=tiny", *extra], 0, tmp_path / name) for name, extra in
            [("a", ["stages.ett.alpha=0.25"]), ("b", ["stages.ett.alpha=1.0"]), ("wide", ["projector.depth=3"])]]
    shared, other, wide = dry_run(jobs)
    assert not (shared.error or other.error or wide.error) and len(calls) == 2
    assert [s.flops_per_sample for s in shared.stages] == [s.flops_per_sample for s in other.stages]
    assert wide.stages[-1].flops_per_sample > shared.stages[-1].flops_per_sample
    monkeypatch.setattr(module, "_measured", {})
    [fresh] = dry_run(jobs[1:2])
    assert [s.flops_per_sample for s in fresh.stages] == [s.flops_per_sample for s in other.stages]
    for fresh_stage, cached_stage in zip(fresh.stages, other.stages):  # the saved bytes vary by ~256 B
        assert fresh_stage.memory_gib == pytest.approx(cached_stage.memory_gib, rel=1e-3)
