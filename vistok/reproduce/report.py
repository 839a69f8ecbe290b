"""Turn per-seed metrics into the paper's table layout: ours (mean +- std) beside the paper's numbers."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

from vistok.atomic import write_text
from vistok.reproduce.tables import FAIL, PASS, Table, verdict


def summarise(per_row: dict[str, list[dict]]) -> tuple[dict, dict]:
    """-> (means, stds): {row: {metric: value}} over seeds."""
    means, stds = {}, {}
    for row, runs in per_row.items():
        keys = sorted(set.intersection(*(set(r) for r in runs)))
        means[row] = {k: statistics.fmean(r[k] for r in runs) for k in keys}
        stds[row] = {k: statistics.stdev([r[k] for r in runs]) if len(runs) > 1 else 0.0 for k in keys}
    return means, stds


def _cell(mean: float, std: float, metric: str) -> str:
    if math.isnan(mean):  # a metric this row does not measure (e.g. geneval_accuracy without a generation stage)
        return "-"
    if metric.startswith(("attribute", "caption_token", "caption_exact", "codebook_usage", "probe_accuracy",
                          "geneval_")):
        return f"{100 * mean:.1f} ± {100 * std:.1f}"
    return f"{mean:.2f} ± {std:.2f}"


def _paper_cell(row, column: str) -> str:
    """The paper's number, marked when it could not be confirmed against the paper itself."""
    if column not in row.paper:
        return "-"
    return f"{row.paper[column]:g}" + (" (unconfirmed)" if row.paper_unconfirmed else "")


def render(table: Table, scale: str, seeds: int, means: dict, stds: dict) -> tuple[str, list[dict]]:
    """Markdown: the table, then each trend with PASS/FAIL and its numbers."""
    header = ["row", "experiment", *[f"{m} (ours)" for m in table.ours], *[f"{c} (paper)" for c in table.paper_columns]]
    lines = [f"## {table.title}", "", f"scale: {scale}, seeds: {seeds}; ours = mean ± std over seeds "
             "(accuracies and usage in %, psnr in dB)", "",
             "| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for row in table.rows:
        ours = [_cell(means[row.experiment].get(m, float("nan")), stds[row.experiment].get(m, 0.0), m)
                for m in table.ours]
        paper = [_paper_cell(row, c) for c in table.paper_columns]
        lines.append("| " + " | ".join([row.label, row.experiment, *ours, *paper]) + " |")
    if table.paper_note:
        lines += ["", f"Paper numbers: {table.paper_note}"]
    rule = ("A trend passes when it holds on the means and clears its threshold by more than the seed std "
            "(pooled over the rows compared); with one seed the spread is unknown and nothing passes.")
    lines += ["", rule, "",
              "| expected trend (mini scale) | result | numbers |", "| --- | --- | --- |"]
    verdicts = [judge(trend, means, stds, seeds) for trend in table.trends]
    lines += [f"| {v['trend']} | {v['result']} | {v['numbers']} |" for v in verdicts]
    return "\n".join(lines) + "\n", verdicts


def judge(trend, means: dict, stds: dict, seeds: int) -> dict:
    """One trend's verdict: {"trend", "result", "passed", "numbers"}.

    A metric a row lacks is a FAIL naming it.
    """
    try:
        comparisons = trend.check(means, stds)
    except KeyError as missing:
        return {"trend": trend.text, "result": FAIL, "passed": False, "numbers": f"missing metric {missing}"}
    result = verdict(comparisons, seeds)
    return {"trend": trend.text, "result": result, "passed": result == PASS,
            "numbers": "; ".join(c.describe() for c in comparisons)}


def write(out: Path, table: Table, markdown: str, means: dict, stds: dict, verdicts: list, per_row: dict) -> None:
    write_text(out / f"{table.name}.md", markdown)
    write_text(out / f"{table.name}.json", json.dumps(
        {"table": table.name, "means": means, "stds": stds, "trends": verdicts, "runs": per_row}, indent=2))


def plot(out: Path, table: Table, means: dict, stds: dict) -> Path:
    """Attribute (and mark) accuracy against PSNR per row: the trade-off at a glance. Tables of
    flexible-length tokenizers (psnr@<k> columns) plot PSNR against k per row instead."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    if any(m.startswith("psnr@") for m in table.ours):
        return _plot_psnr_vs_k(out, table, means, stds, fig, ax, plt)
    for i, row in enumerate(table.rows):
        m, s = means[row.experiment], stds[row.experiment]
        for metric, marker in (("attribute_accuracy", "o"), ("attribute_accuracy/mark", "^")):
            if metric in m and "psnr" in m:  # one colour per row: circle = all slots, triangle = mark slot
                ax.errorbar(m["psnr"], 100 * m[metric], xerr=s["psnr"], yerr=100 * s[metric], fmt=marker,
                            color=f"C{i}", capsize=3,
                            label=f"{row.label} ({'mark' if 'mark' in metric else 'all slots'})")
    ax.set_xlabel("PSNR (dB)")
    ax.set_ylabel("caption attribute accuracy (%)")
    return _save_plot(out, table, fig, ax, plt)


def _plot_psnr_vs_k(out: Path, table: Table, means: dict, stds: dict, fig, ax, plt) -> Path:
    ks = sorted(int(m.split("@")[1]) for m in table.ours if m.startswith("psnr@"))
    for i, row in enumerate(table.rows):
        m, s = means[row.experiment], stds[row.experiment]
        points = [k for k in ks if f"psnr@{k}" in m]
        ax.errorbar(points, [m[f"psnr@{k}"] for k in points], yerr=[s[f"psnr@{k}"] for k in points], marker="o",
                    color=f"C{i}", capsize=3, label=row.label)
        if "psnr_mean_image" in m and i == 0:
            ax.axhline(m["psnr_mean_image"], linestyle="--", color="grey", label="dataset-mean image")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("tokens kept (k)")
    ax.set_ylabel("PSNR (dB)")
    return _save_plot(out, table, fig, ax, plt)


def _save_plot(out: Path, table: Table, fig, ax, plt) -> Path:
    """Title, legend and `<out>/<table>.png`."""
    ax.set_title(table.name)
    ax.legend(fontsize=6)
    fig.tight_layout()
    path = out / f"{table.name}.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
