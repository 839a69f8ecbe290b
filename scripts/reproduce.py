"""Reproduce a paper table: `python -m scripts.reproduce TABLE --scale smoke|mini|paper [--seeds N]
[--launcher local|slurm] [--dry-run]`.

Runs (or reuses) the table's training runs, then prints the table in the paper's layout with the
paper's numbers beside ours and, at mini scale, each expected trend with PASS/FAIL. Writes
<out>/<table>.md, .json and .png.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

from vistok.reproduce.report import plot, render, summarise, write
from vistok.reproduce.runner import collect, plan, run_all
from vistok.reproduce.slurm import submit_all
from vistok.reproduce.tables import TABLES


def positive(text: str) -> int:
    """An argparse type: an integer >= 1 (`--seeds 0` would plan the default number of seeds)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("table", choices=sorted(TABLES))
    parser.add_argument("--scale", choices=["smoke", "mini", "paper"], default="mini")
    parser.add_argument("--seeds", type=positive, default=None, help="default: 3 at mini scale, 1 otherwise")
    parser.add_argument("--launcher", choices=["local", "slurm"], default="local")
    parser.add_argument("--parallel", type=positive, default=1, help="runs at once (local launcher)")
    parser.add_argument("--launcher-config", default="slurm",
                        help="slurm launcher: a hydra/launcher config (presets: configs/hydra/launcher/)")
    parser.add_argument("--launcher-arg", action="append", default=[], metavar="KEY=VALUE",
                        help="slurm launcher: an override for every sweep, e.g. hydra.launcher.partition=gpu")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="an override for every run, e.g. --set trainer=gpu (runs reused only if equal)")
    parser.add_argument("--rows", default=None, help="comma-separated experiments: run only these rows")
    parser.add_argument("--out", type=Path, default=None, help="default: outputs/reproduce/<table>/<scale>")
    parser.add_argument("--dry-run", action="store_true",
                        help="compose, validate and size every planned run (meta device), train nothing")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    table = TABLES[args.table]
    if args.rows:
        wanted = args.rows.split(",")
        unknown = sorted(set(wanted) - {row.experiment for row in table.rows})
        if unknown:
            sys.exit(f"--rows: {unknown} are not rows of {table.name}")
        table = dataclasses.replace(table, rows=[r for r in table.rows if r.experiment in wanted],
                                    trends=[t for t in table.trends if all(w in wanted for w in t.arms)])
    seeds = args.seeds or (3 if args.scale == "mini" else 1)
    out = args.out or Path("outputs") / "reproduce" / table.name / args.scale
    start = time.time()

    def log(message: str) -> None:
        print(f"[{time.time() - start:7.1f}s] {message}", flush=True)

    if args.launcher == "slurm":
        out = out.resolve()  # jobs may start in another directory
    bases, rows = plan(table, args.scale, seeds, out, table.stages, args.overrides)
    if args.dry_run:
        return print_dry_run(bases, rows)
    if args.launcher == "slurm":  # the base runs (shared stages) first: the rows start from their checkpoints
        launcher = (args.launcher_config, args.launcher_arg, log)
        submit_all(bases, out, *launcher)
        submit_all([job for jobs in rows.values() for job in jobs], out, *launcher)
    else:
        run_all(bases, args.parallel, log)
        run_all([job for jobs in rows.values() for job in jobs], args.parallel, log)
    per_row = collect(rows)
    means, stds = summarise(per_row)
    markdown, verdicts = render(table, args.scale, seeds, means, stds)
    write(out, table, markdown, means, stds, verdicts, per_row)
    picture = plot(out, table, means, stds)
    print(markdown)
    print(f"written: {out / (table.name + '.md')}, {out / (table.name + '.json')}, {picture}")
    return 0


def print_dry_run(bases: list, rows: dict) -> int:
    """The plan, run by run; non-zero when any run fails to compose, validate or build."""
    from vistok.reproduce.dry_run import dry_run, render

    def job(label, j):
        seed = next(int(o.split("=", 1)[1]) for o in j.overrides if o.startswith("seed="))
        return label, [o for o in j.overrides if not o.startswith("seed=")], seed, j.run_dir

    jobs = [job("base", j) for j in bases] + [job(name, j) for name, js in rows.items() for j in js]
    plans = dry_run(jobs)
    print(render(plans))
    return 1 if any(p.error for p in plans) else 0


if __name__ == "__main__":
    raise SystemExit(main())
