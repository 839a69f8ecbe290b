"""`scripts.reproduce --launcher slurm`: a table's runs become product sweeps whose jobs land in the same
run directories, with the same overrides, as the local launcher's runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from vistok.reproduce.runner import Job, plan
from vistok.reproduce.slurm import plan_sweeps
from vistok.reproduce.tables import TABLES


def _rows(table, scale, seeds, out):
    bases, rows = plan(table, scale, seeds, out, table.stages)
    return bases, [job for jobs in rows.values() for job in jobs]


@pytest.mark.parametrize("name", ["ett_table5", "instella_bits"])
def test_rows_sharing_their_stages_are_one_sweep(name, tmp_path):
    table = TABLES[name]
    bases, rows = _rows(table, "smoke", 2, tmp_path)
    [sweep] = plan_sweeps(rows, tmp_path)
    assert sweep.experiments == sorted(row.experiment for row in table.rows)
    assert sweep.seeds == [0, 1]
    assert len(plan_sweeps(bases, tmp_path)) == (1 if bases else 0)


def test_rows_sharing_fewer_stages_get_their_own_sweep(tmp_path):
    _, rows = _rows(TABLES["ett_table4"], "smoke", 1, tmp_path)
    sweeps = plan_sweeps(rows, tmp_path)
    assert len(sweeps) == 2
    swept = sorted(e for s in sweeps for e in s.experiments)
    assert swept == sorted(r.experiment for r in TABLES["ett_table4"].rows)


def test_each_sweep_job_gets_the_local_runs_overrides_and_directory(compose_cfg, tmp_path):
    """Expand every sweep into its jobs with Hydra and compare with the local launcher's plan."""
    table = TABLES["ett_table5"]
    out = tmp_path / "table"
    bases, rows = _rows(table, "smoke", 2, out)
    for jobs in (bases, rows):
        expected = {job.run_dir: job for job in jobs}
        for sweep in plan_sweeps(jobs, out):
            for experiment in sweep.experiments:
                for seed in sweep.seeds:
                    cfg = compose_cfg([f"experiment={experiment}", f"seed={seed}", *sweep.overrides,
                                       f"hydra.sweep.dir={out}", f"hydra.sweep.subdir={sweep.subdir}"])
                    run_dir = Path(cfg.hydra.sweep.dir) / cfg.hydra.sweep.subdir
                    job = expected.pop(run_dir)
                    local = compose_cfg(job.overrides)
                    for key in ("stages", "init_from", "seed", "name", "data", "llm"):
                        assert _plain(cfg[key]) == _plain(local[key]), key
        assert not expected, f"runs no sweep covers: {sorted(expected)}"


def _plain(value):
    from omegaconf import OmegaConf

    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def test_a_run_outside_the_seed_layout_is_refused(tmp_path):
    job = Job(tmp_path / "elsewhere", ["experiment=vq_mini", "seed=0"], ("tokenizer",))
    with pytest.raises(ValueError, match="seed0"):
        plan_sweeps([job], tmp_path)
