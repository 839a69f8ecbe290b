"""Paper tables: trend checks, every row an experiment, and smoke-scale runs end to end (rows, reuse, markdown,
JSON, plot)."""

from __future__ import annotations

import json
import os

import pytest

from vistok.reproduce.report import render, summarise
from vistok.reproduce.tables import TABLES


def test_trend_checks_can_fail_and_pass():
    table = TABLES["ett_table5"]
    good = {"attribute_accuracy": 0.99, "attribute_accuracy/mark": 0.99, "psnr": 28.0, "caption_token_accuracy": 0.95}
    frozen = {"attribute_accuracy": 0.90, "attribute_accuracy/mark": 0.55, "psnr": 28.2, "caption_token_accuracy": 0.93}
    alpha0 = {"attribute_accuracy": 0.99, "attribute_accuracy/mark": 0.99, "psnr": 20.0, "caption_token_accuracy": 0.96}

    def three_seeds(metrics):  # a seed spread far below every gap
        return [{k: v + jitter for k, v in metrics.items()} for jitter in (-0.001, 0.0, 0.001)]

    runs = {"ett_mini_frozen": three_seeds(frozen), "ett_mini_frozen_wide": three_seeds(frozen),
            "ett_mini_alpha0": three_seeds(alpha0), "ett_mini": three_seeds(good),
            "ett_mini_alpha05": three_seeds(good), "ett_mini_alpha1": three_seeds(frozen)}
    means, stds = summarise(runs)
    _, verdicts = render(table, "mini", 3, means, stds)
    assert all(v["passed"] for v in verdicts), verdicts
    runs["ett_mini"] = three_seeds(frozen)  # no gain over the frozen arm: the gap trends must fail
    _, verdicts = render(table, "mini", 3, *summarise(runs))
    assert not any(v["passed"] for v in verdicts if "beats" in v["trend"])


# End-to-end smoke runs for one table of each kind (shared stages, no shared stages, psnr@k rows, dual
# family); the rows of every table are composed and built by tests/test_configs.py, and the remaining tables
# only combine the same runner paths with other experiments (a smoke run of all of them costs ~10 minutes).
SMOKE_RUN = ("ett_table5", "instella_bits", "flextok_k", "tokenflow_table5")


def test_every_table_row_is_an_experiment_config():
    from tests.conftest import ROOT

    for name, table in TABLES.items():
        for row in table.rows:
            assert (ROOT / "configs" / "experiment" / f"{row.experiment}.yaml").is_file(), (name, row.experiment)


def test_user_overrides_reach_every_run_and_change_what_counts_as_done(tmp_path):
    from vistok.reproduce.runner import plan

    table = TABLES["tokenflex_budget"]
    bases, rows = plan(table, "mini", 2, tmp_path, table.stages, ["trainer=gpu"])
    jobs = [*bases, *(job for jobs in rows.values() for job in jobs)]
    assert len(bases) == 2 and len(jobs) == 2 + 2 * len(table.rows)
    assert all(job.overrides.count("trainer=gpu") == 1 for job in jobs)
    plain_bases, _ = plan(table, "mini", 2, tmp_path, table.stages)
    assert "trainer=gpu" not in plain_bases[0].overrides
    assert [b.run_dir for b in plain_bases] == [b.run_dir for b in bases]  # same dirs: a rerun must not reuse them
    base = bases[0]
    for stage in base.stages:
        (base.run_dir / "checkpoints" / stage).mkdir(parents=True)
        (base.run_dir / "checkpoints" / stage / "done").touch()
    (base.run_dir / "reproduce.json").write_text(json.dumps({"overrides": base.overrides}))
    assert base.done() and not plain_bases[0].done()


def test_a_tables_data_source_reaches_every_mini_run_but_not_the_paper_configs(tmp_path):
    from vistok.reproduce.runner import plan

    table = TABLES["ett_real"]
    for scale, expected in (("smoke", 1), ("mini", 1), ("paper", 0)):
        bases, rows = plan(table, scale, 1, tmp_path, table.stages, ["data.train=T", "data.val=V"])
        jobs = [*bases, *(job for jobs in rows.values() for job in jobs)]
        assert all(job.overrides.count("data=shards") == expected for job in jobs), scale
        # the user's shards come after the table's source, so they fill it in
        assert all(job.overrides.index("data.train=T") > job.overrides.index("data=shards")
                   for job in jobs if expected)


@pytest.mark.parametrize("user", [[], ["num_threads=1"]])
def test_threads_per_run_follow_parallel_unless_the_user_pins_them(tmp_path, monkeypatch, user):
    import subprocess
    from types import SimpleNamespace

    from vistok.reproduce import runner

    commands = []
    monkeypatch.setattr(subprocess, "run", lambda cmd, **_: commands.append(cmd) or SimpleNamespace(returncode=0))
    job = runner.Job(run_dir=tmp_path / "run", overrides=["experiment=flex_mini", *user], stages=("tokenizer",))
    runner.run_job(job, threads=2, log=lambda _: None)
    threads = [arg for arg in commands[0] if arg.startswith("num_threads=")]
    assert threads == (user or ["num_threads=2"])


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in sorted(TABLES) if n in SMOKE_RUN])
def test_smoke_scale_runs_the_table(name, tmp_path, cache_dir, monkeypatch):
    from scripts.reproduce import main

    monkeypatch.setenv("VISTOK_CACHE", str(cache_dir))
    out = tmp_path / name
    assert main([name, "--scale", "smoke", "--out", str(out)]) == 0
    result = json.loads((out / f"{name}.json").read_text())
    assert set(result["means"]) == {row.experiment for row in TABLES[name].rows}
    markdown = (out / f"{name}.md").read_text()  # one verdict line per gate (PASS, FAIL or n=1 at one seed)
    assert len(result["trends"]) == len(TABLES[name].trends)
    assert all(f"| {t['trend']} | {t['result']} |" in markdown for t in result["trends"])
    assert (out / f"{name}.png").stat().st_size > 0
    stamp = {p: os.path.getmtime(p) for p in out.rglob("metrics.json")}
    assert main([name, "--scale", "smoke", "--out", str(out)]) == 0  # finished rows are reused, not re-run
    assert stamp == {p: os.path.getmtime(p) for p in out.rglob("metrics.json")}


@pytest.mark.parametrize("flag", ["--seeds", "--parallel"])
@pytest.mark.parametrize("value", ["0", "-2"])
def test_zero_or_negative_counts_are_refused_before_any_run(flag, value, tmp_path, capsys):
    from scripts import reproduce

    with pytest.raises(SystemExit) as exit_info:
        reproduce.main(["ett_table5", "--scale", "smoke", flag, value, "--out", str(tmp_path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert flag in err and "must be at least 1" in err, err
    assert not any(tmp_path.iterdir()), "nothing may be planned or run"
