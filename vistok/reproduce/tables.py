"""Paper tables as data: rows (experiment arms), the paper's numbers, and the trends expected at mini scale."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable


@dataclass
class Row:
    """One table row.

    Attributes:
        label: the row's name in the paper's layout.
        experiment: the mini-scale experiment config (configs/experiment/<experiment>.yaml).
        arm: overrides that turn the table's base experiment into this row (used at paper scale).
        shared: leading stages identical across rows, trained once per seed and reused (equal steps).
        paper: the paper's reported numbers for this row.
    """

    label: str
    experiment: str
    arm: list[str] = field(default_factory=list)
    shared: tuple[str, ...] = ("tokenizer", "align")
    paper: dict[str, float] = field(default_factory=dict)
    paper_experiment: str | None = None  # at paper scale: this config + `arm` instead of the table's paper_base
    paper_unconfirmed: bool = False  # not confirmed against the paper (secondary source, or at odds with it)


@dataclass
class Comparison:
    """One inequality a gate needs: `value` (a mean, or a difference of means) against `threshold`.

    `spread` is the seed std the value carries: a row's std for one row's mean, the pooled std
    sqrt((s_a^2 + s_b^2) / 2) for a difference of two rows. A gate passes only when every comparison clears
    its threshold by more than its spread, so a gap that the seeds alone could produce does not pass.
    """

    what: str  # e.g. "ett_mini - ett_mini_frozen"
    value: float
    threshold: float
    spread: float
    unit: str = ""
    at_most: bool = False  # value <= threshold instead of value >= threshold
    operands: str = ""  # the means +- stds the value comes from, when it is a difference

    @property
    def margin(self) -> float:
        """How far the mean clears the threshold (negative: it does not, even on the means)."""
        return self.threshold - self.value if self.at_most else self.value - self.threshold

    def beyond_spread(self) -> bool:
        return self.margin > self.spread or (self.spread == 0.0 and self.margin >= 0.0)

    def describe(self) -> str:
        sign = "<=" if self.at_most else ">="
        operands = f"{self.operands}; " if self.operands else ""
        return (f"{self.what} = {self.value:+.2f}{self.unit} ({operands}need {sign} {self.threshold:+g}, "
                f"margin {self.margin:+.2f} vs std {self.spread:.2f})")


PASS, FAIL = "PASS", "FAIL"
WITHIN_SPREAD, SPREAD_UNKNOWN = "FAIL (within the seed spread)", "n=1: spread unknown"


def verdict(comparisons: list[Comparison], seeds: int) -> str:
    """PASS only when every comparison holds on the means by more than the seed spread.

    With one seed the spread is unknown: a trend that holds on the means is reported as such, never as PASS.
    """
    if any(c.margin < 0 for c in comparisons):
        return FAIL
    if seeds < 2:
        return SPREAD_UNKNOWN
    return PASS if all(c.beyond_spread() for c in comparisons) else WITHIN_SPREAD


@dataclass
class Trend:
    """An expected qualitative result; `check(means, stds) -> the comparisons it needs`."""

    text: str
    check: Callable[[dict[str, dict[str, float]], dict[str, dict[str, float]]], list[Comparison]]
    arms: tuple[str, ...] = ()  # the rows it compares (a trend is dropped when one of them is not run)


@dataclass
class Table:
    name: str
    title: str
    rows: list[Row]
    ours: list[str]  # metric columns measured by vistok
    paper_columns: list[str]
    trends: list[Trend]
    base_experiment: str = "ett_mini"  # trains the shared stages at mini/smoke scale
    paper_base: str = "ett_paper"
    stages: tuple[str, ...] = ("tokenizer", "align", "ett", "post")  # every stage a row may run
    scale_overrides: dict[str, list[str]] | None = None  # per scale; None = the runner's (tiny LLM at smoke)
    paper_stages: tuple[str, ...] | None = None  # the paper base's stages, when they differ from `stages`
    paper_note: str = ""  # where the paper numbers come from, and which could not be confirmed
    base_overrides: tuple[str, ...] = ()  # for the base runs only (e.g. no GenEval after the shared stages)
    data: tuple[str, ...] = ()  # at smoke and mini scale, the data source of every run (paper configs set theirs)


def _pooled(*stds: float) -> float:
    """The pooled std of rows with equal seed counts: sqrt(mean of the variances)."""
    return math.sqrt(sum(s * s for s in stds) / len(stds))


def _difference(means, stds, metric: str, a: str, b: str, threshold: float, scale: float = 1.0,
                unit: str = "", what: str | None = None) -> Comparison:
    """mean[a][metric] - mean[b][metric] (times `scale`) against `threshold`, with the pooled std."""
    (ma, sa), (mb, sb) = ((means[r][metric] * scale, stds[r][metric] * scale) for r in (a, b))
    return Comparison(what or f"{a} - {b}", ma - mb, threshold, _pooled(sa, sb), unit,
                      operands=f"{a} {ma:.2f} ± {sa:.2f}, {b} {mb:.2f} ± {sb:.2f}")


def _gap(metric: str, a: str, b: str, at_least: float, scale: float = 100.0) -> Trend:
    """mean[a][metric] - mean[b][metric] >= at_least (in points when scale=100)."""
    unit = " pts" if scale == 100.0 else " dB"

    def check(m, s):
        return [_difference(m, s, metric, a, b, at_least, scale, unit)]

    return Trend(f"{metric}: {a} beats {b} by >= {at_least:g}{unit}", check, (a, b))


def _psnr_within(a: str, b: str, tolerance: float) -> Trend:
    def check(m, s):
        return [_difference(m, s, "psnr", a, b, -tolerance, unit=" dB", what=f"psnr {a} - {b}")]

    return Trend(f"psnr: {a} within {tolerance:g} dB of {b} (or better)", check, (a, b))


def _psnr_drop(a: str, b: str, at_least: float) -> Trend:
    def check(m, s):
        return [_difference(m, s, "psnr", b, a, at_least, unit=" dB", what=f"psnr {b} - {a}")]

    return Trend(f"psnr: {a} at least {at_least:g} dB below {b}", check, (a, b))


def _highest(metric: str, best: str) -> Trend:
    """`best` beats every other row run, each by more than the pair's seed spread."""

    def check(m, s):
        return [_difference(m, s, metric, best, other, 0.0, 100.0, " pts") for other in m if other != best]

    return Trend(f"{metric}: {best} is the highest of the rows run", check, (best,))


def _increasing(metric: str, arms: list[str], scale: float = 1.0, unit: str = "") -> Trend:
    """mean[arms[0]][metric] < mean[arms[1]][metric] < ... (strictly), each step beyond the seed spread."""

    def check(m, s):
        return [_difference(m, s, metric, b, a, 0.0, scale, unit) for a, b in zip(arms, arms[1:])]

    return Trend(f"{metric} rises strictly: {' < '.join(arms)}", check, tuple(arms))


def _every_at_least(metric: str, arms: list[str], bound: float) -> Trend:
    def check(m, s):
        return [Comparison(f"{a} {metric}", m[a][metric], bound, s[a][metric]) for a in arms]

    return Trend(f"{metric} >= {bound:g} in every row of {', '.join(arms)}", check, tuple(arms))


def _every_abs_at_most(metric: str, arms: list[str], bound: float) -> Trend:
    def check(m, s):
        return [Comparison(f"|{a} {metric}|", abs(m[a][metric]), bound, s[a][metric], at_most=True)
                for a in arms]

    return Trend(f"|{metric}| <= {bound:g} in every row of {', '.join(arms)}", check, tuple(arms))


def _understanding_gain(ett: str, frozen: str) -> list[Trend]:
    """ETT's understanding claim at mini scale: >= 3 pts of attribute accuracy, >= 20 on the mark slot."""
    return [_gap("attribute_accuracy", ett, frozen, 3.0), _gap("attribute_accuracy/mark", ett, frozen, 20.0)]


PAPER4 = ["SEED-I", "GQA", "TQA", "MME-P", "GenEval"]
PAPER5 = ["SEED-I", "GQA", "TQA", "MME-P", "rFID"]
OURS = ["attribute_accuracy", "attribute_accuracy/mark", "caption_token_accuracy", "caption_exact_match", "psnr",
        "codebook_usage"]
FROZEN = ["stages.ett.train=[projector,llm]", "stages.ett.alpha=0.0"]
# ett_paper starts from a pre-trained IBQ tokenizer (init_from), so its stages are the three after it.
ETT_PAPER_STAGES = ("align", "ett", "post")
# ETT Table 5's frozen and alpha = 0.25 rows (also the IBQ arm's paper rows).
PAPER5_FROZEN = {"SEED-I": 54.8, "GQA": 52.6, "TQA": 40.9, "MME-P": 1034.0, "rFID": 1.033}
PAPER5_ALPHA025 = {"SEED-I": 60.0, "GQA": 54.8, "TQA": 46.9, "MME-P": 1124.7, "rFID": 1.648}
ETT_PAPER_NOTE = "ETT Tables 4 and 5 (arXiv 2505.10562); the rows the two tables share agree."

TABLES = {
    "ett_table4": Table(
        name="ett_table4",
        title="ETT Table 4 - what the LLM reads: discrete ids vs codebook embeddings, frozen vs ETT-tuned",
        rows=[
            Row("discrete index, frozen", "ett_mini_index", ["llm_input=indices", "stages.align.train=[llm]",
                "+stages.align.lr.llm=4.0e-5", "stages.ett.train=[llm]", "stages.ett.alpha=0.0",
                "stages.post.train=[llm]"], shared=("tokenizer",),
                paper={"SEED-I": 54.8, "GQA": 50.9, "TQA": 40.1, "MME-P": 1028.7, "GenEval": 0.40}),
            Row("codebook embedding, frozen", "ett_mini_frozen", FROZEN,
                paper={"SEED-I": 54.8, "GQA": 52.6, "TQA": 40.9, "MME-P": 1034.0, "GenEval": 0.34}),
            Row("codebook embedding, ETT", "ett_mini", [],
                paper={"SEED-I": 60.0, "GQA": 54.8, "TQA": 46.9, "MME-P": 1124.7, "GenEval": 0.43}),
        ],
        ours=[*OURS, "geneval_accuracy"],  # "-" for rows without a generation stage (see ett_mini_gen)
        paper_columns=PAPER4,
        paper_stages=ETT_PAPER_STAGES,
        trends=[
            *_understanding_gain("ett_mini", "ett_mini_frozen"),
            _gap("attribute_accuracy", "ett_mini", "ett_mini_index", 3.0),
            # The paper's frozen rows: codebook embeddings read better than discrete ids (GQA 52.6 vs 50.9).
            _gap("attribute_accuracy", "ett_mini_frozen", "ett_mini_index", 0.0),
        ],
        paper_note=ETT_PAPER_NOTE,
    ),
    "ett_table5": Table(
        name="ett_table5",
        title="ETT Table 5 - the understanding / reconstruction trade-off against alpha",
        rows=[
            Row("frozen", "ett_mini_frozen", FROZEN,
                paper=PAPER5_FROZEN),
            Row("frozen, wide projector (control)", "ett_mini_frozen_wide",
                [*FROZEN, "projector.hidden_dim=4096", "projector.depth=3"]),
            Row("und only, alpha 0", "ett_mini_alpha0", ["stages.ett.alpha=0.0"],
                paper={"SEED-I": 61.2, "GQA": 55.2, "TQA": 48.0, "MME-P": 1164.3, "rFID": 45.701}),
            Row("und + rec, alpha 0.25", "ett_mini", [],
                paper=PAPER5_ALPHA025),
            Row("und + rec, alpha 0.5", "ett_mini_alpha05", ["stages.ett.alpha=0.5"],
                paper={"SEED-I": 59.9, "GQA": 54.7, "TQA": 46.9, "MME-P": 1118.1, "rFID": 1.655}),
            Row("und + rec, alpha 1.0", "ett_mini_alpha1", ["stages.ett.alpha=1.0"],
                paper={"SEED-I": 59.3, "GQA": 53.9, "TQA": 45.7, "MME-P": 1088.2, "rFID": 1.500}),
        ],
        ours=OURS,
        paper_columns=PAPER5,
        paper_stages=ETT_PAPER_STAGES,
        trends=[
            *_understanding_gain("ett_mini", "ett_mini_frozen"),
            *_understanding_gain("ett_mini", "ett_mini_frozen_wide"),
            _psnr_within("ett_mini", "ett_mini_frozen", 1.0),
            _highest("caption_token_accuracy", "ett_mini_alpha0"),
            _psnr_drop("ett_mini_alpha0", "ett_mini_frozen", 3.0),
            # The alpha ordering: understanding falls and reconstruction recovers as alpha grows (paper SEED-I
            # 61.2 / 60.0 / 59.3, rFID 45.7 / 1.648 / 1.500 at alpha 0 / 0.25 / 1).
            _increasing("caption_token_accuracy", ["ett_mini_alpha1", "ett_mini", "ett_mini_alpha0"], 100.0,
                        " pts"),
            _increasing("psnr", ["ett_mini_alpha0", "ett_mini", "ett_mini_alpha1"], unit=" dB"),
        ],
        paper_note=ETT_PAPER_NOTE,
    ),
}

# ETT Table 5's IBQ arm: the paper's quantizer, whose codebook is a trained parameter that the caption loss
# reaches in the ETT stage (ett_mini's EMA codebook is held fixed there). Its own table because the rows share
# an IBQ pre-training that the EMA rows cannot reuse; at paper scale ett_paper is IBQ already.
TABLES["ett_table5_ibq"] = Table(
    name="ett_table5_ibq",
    title="ETT Table 5 with IBQ - frozen vs ETT-tuned tokenizer when the caption loss reaches the codebook",
    rows=[
        Row("IBQ, frozen", "ett_mini_ibq_frozen", FROZEN,
            paper=PAPER5_FROZEN),
        Row("IBQ, und + rec, alpha 0.25", "ett_mini_ibq", [],
            paper=PAPER5_ALPHA025),
    ],
    ours=OURS,
    paper_columns=PAPER5,
    paper_stages=ETT_PAPER_STAGES,
    trends=[
        *_understanding_gain("ett_mini_ibq", "ett_mini_ibq_frozen"),
        _psnr_within("ett_mini_ibq", "ett_mini_ibq_frozen", 1.0),
    ],
    base_experiment="ett_mini_ibq",
    paper_note=ETT_PAPER_NOTE,
)

# ETT on real images (scripts.make_real_cases): the mini recipe, unchanged, on scanned digits or photographs
# instead of the generated shapes. Free-text captions: exact match and token accuracy, no attribute metrics.
TABLES["ett_real"] = Table(
    name="ett_real",
    title="ETT on real images - caption gain against reconstruction cost, frozen vs tuned tokenizer",
    rows=[
        Row("frozen", "ett_mini_frozen", FROZEN),
        Row("und only, alpha 0", "ett_mini_alpha0", ["stages.ett.alpha=0.0"]),
        Row("und + rec, alpha 0.25", "ett_mini", []),
        Row("und + rec, alpha 1.0", "ett_mini_alpha1", ["stages.ett.alpha=1.0"]),
    ],
    ours=["caption_token_accuracy", "caption_exact_match", "psnr", "codebook_usage"],
    paper_columns=[],
    trends=[
        _gap("caption_exact_match", "ett_mini", "ett_mini_frozen", 0.0),
        _psnr_within("ett_mini", "ett_mini_frozen", 1.0),
    ],
    paper_stages=ETT_PAPER_STAGES,
    data=("data=shards",),  # needs --set data.train=DIR/train --set data.val=DIR/val
    paper_note="No paper numbers: the paper does not train on these images.",
)

# ETT Table 4's GenEval column, measured on one unified model that also captions: ett_mini_gen's gen stage
# trains both directions. The caption bound is ett_mini's attribute accuracy (97.1 over 3 seeds, README)
# less the 3 points the generation stage may cost it.
TABLES["ett_generation"] = Table(
    name="ett_generation",
    title="ETT Table 4, GenEval - generation from a frozen vs an ETT-tuned tokenizer, captioning kept",
    rows=[
        Row("codebook embedding, frozen", "ett_mini_gen_frozen", FROZEN, paper={"GenEval": 0.34}),
        Row("codebook embedding, ETT", "ett_mini_gen", [], paper={"GenEval": 0.43}),
    ],
    ours=["attribute_accuracy", "caption_exact_match", "psnr", "geneval_accuracy", "geneval_shuffled_accuracy",
          "geneval_recon_accuracy"],
    paper_columns=["GenEval"],
    trends=[
        _gap("geneval_accuracy", "ett_mini_gen", "ett_mini_gen_frozen", 0.0),
        _every_at_least("attribute_accuracy", ["ett_mini_gen", "ett_mini_gen_frozen"], 0.941),
    ],
    base_experiment="ett_mini_gen",
    paper_base="ett_paper_gen",
    stages=("tokenizer", "align", "ett", "gen"),
    paper_stages=ETT_PAPER_STAGES,
    base_overrides=("geneval.enabled=false",),
    paper_note=ETT_PAPER_NOTE,
)


BITS_ARMS = ["binary1d_mini_bits4", "binary1d_mini", "binary1d_mini_bits16"]
TABLES["instella_bits"] = Table(
    name="instella_bits",
    title="Instella-T2I 1D-BIT - bits per token at equal token count (16 tokens), and VQ at equal bits",
    rows=[
        Row("binary, 4 bits / token", "binary1d_mini_bits4", ["tokenizer.quantizer.bits=4"], shared=()),
        Row("binary, 8 bits / token", "binary1d_mini", ["tokenizer.quantizer.bits=8"], shared=()),
        Row("binary, 16 bits / token", "binary1d_mini_bits16", ["tokenizer.quantizer.bits=16"], shared=()),
        Row("1-D VQ, K = 256 (8 bits / token)", "binary1d_mini_vq1d",
            ["tokenizer/quantizer=vq", "tokenizer.quantizer.codebook_size=256"], shared=()),
        # Bits per image of binary-8. Mini: a 4 x 4 grid with K = 256; paper: an 8 x 8 grid with K = 2^16 at 1024 px.
        Row("2-D VQ at binary-8's bits per image", "binary1d_mini_vq2d", shared=(),
            paper_experiment="instella_paper_vq2d"),
    ],
    ours=["psnr", "ssim", "bit_entropy", "token_bit_entropy", "token_bit_entropy/min_position", "train_eval_psnr_gap",
          "codebook_usage"],
    paper_columns=[],  # the paper reports one operating point (128 tokens x 64 bits), no sweep over bits
    trends=[
        _increasing("psnr", BITS_ARMS),
        _every_at_least("bit_entropy", BITS_ARMS, 0.8),
        # Per (position, bit), so a bit constant at each position but different between positions counts as
        # dead. It is still a mean over positions, which one collapsed position barely moves; the minimum over
        # positions of a position's mean bit entropy sees it (0 = a position whose bits never vary). The
        # bound, half of a position's maximum, was set before any run measured the metric.
        _every_at_least("token_bit_entropy", BITS_ARMS, 0.8),
        _every_at_least("token_bit_entropy/min_position", BITS_ARMS, 0.5),
        _every_abs_at_most("train_eval_psnr_gap", BITS_ARMS, 0.5),
    ],
    base_experiment="binary1d_mini",
    paper_base="instella_paper",
    stages=("tokenizer",),
    scale_overrides={"smoke": ["debug=tiny"], "mini": [], "paper": []},
)


# ---- flexible-length tokenizers and TokenFLEX budgets (FlexTok, One-D-Piece, TokenFLEX) -------------------
FLEX_KS = [1, 2, 4, 8, 16, 32]
FLEX_FULL = f"psnr@{FLEX_KS[-1]}"


def _never_falls(arm: str, ks: list[int], tolerance: float) -> Trend:
    """psnr@k never falls by more than `tolerance` dB as k doubles (each step beyond the seed spread)."""

    def check(m, s):
        return [Comparison(f"psnr@{b} - psnr@{a}", m[arm][f"psnr@{b}"] - m[arm][f"psnr@{a}"], -tolerance,
                           _pooled(s[arm][f"psnr@{a}"], s[arm][f"psnr@{b}"]), " dB")
                for a, b in zip(ks, ks[1:])]

    return Trend(f"{arm}: psnr@k never falls by more than {tolerance:g} dB as k doubles", check, (arm,))


def _metric_gap(metric: str, a: str, b: str, at_least: float, unit: str = "dB") -> Trend:
    """mean[a][metric] - mean[b][metric] >= at_least (a negative bound = 'at most that much worse')."""

    def check(m, s):
        return [_difference(m, s, metric, a, b, at_least, unit=f" {unit}")]

    return Trend(f"{metric}: {a} - {b} >= {at_least:+g} {unit}", check, (a, b))


def _above_mean_image(arm: str, metric: str, at_least: float) -> Trend:
    def check(m, s):
        return [Comparison(f"{metric} - mean image", m[arm][metric] - m[arm]["psnr_mean_image"], at_least,
                           _pooled(s[arm][metric], s[arm]["psnr_mean_image"]), " dB")]

    return Trend(f"{arm}: {metric} >= dataset-mean image + {at_least:g} dB (capacity)", check, (arm,))


def _within_best(budgets: list[int], arm: str, fixed: list[str], points: float) -> Trend:
    """At every budget n, caption_token_accuracy@n of `arm` >= the best fixed-budget arm's - `points`."""

    def check(m, s):
        comparisons = []
        for n in budgets:
            metric = f"caption_token_accuracy@{n}"
            best = max(fixed, key=lambda f: m[f][metric])
            comparisons.append(_difference(m, s, metric, arm, best, -points, 100.0, " pts",
                                           what=f"@{n}: {arm} - {best}"))
        return comparisons

    return Trend(f"{arm} within {points:g} pt of the best fixed-budget arm at every budget", check, (arm, *fixed))


FLEX_TOKENIZER_ONLY = dict(base_experiment="flex_mini", paper_base="flextok_paper", stages=("tokenizer",),
                           scale_overrides={"smoke": ["debug=tiny"], "mini": [], "paper": []})
TABLES["flextok_k"] = Table(
    name="flextok_k",
    title="FlexTok - nested dropout vs none: PSNR@k from the first k of 32 tokens",
    rows=[
        Row("no dropout (control; tail masked out of attention)", "flex_mini_nodrop", ["tokenizer.dropout=null"],
            shared=()),
        Row("nested dropout, 3/4 full length, else k ~ U{1..32}, mask token", "flex_mini",
            ["tokenizer/dropout=nested"], shared=()),
        Row("nested dropout, k ~ pow2 {1, 2, 4, ..., 32} (FlexTok's modes)", "flex_mini_pow2",
            ["tokenizer/dropout=nested", "tokenizer.dropout.sampling=pow2",
             "tokenizer.dropout.full_prob=0.0"], shared=()),
        Row("nested dropout, k ~ U{1..32} rounded up to a power of two (ml-flextok)", "flex_mini_uniform_pow2",
            ["tokenizer/dropout=nested", "tokenizer.dropout.sampling=uniform_pow2",
             "tokenizer.dropout.full_prob=0.0"],
            shared=()),
    ],
    ours=[*(f"psnr@{k}" for k in FLEX_KS), "psnr_mean_image"],
    paper_columns=[],  # the paper reports rFID against k on ImageNet, not comparable with PSNR on shapes
    trends=[
        _never_falls("flex_mini", FLEX_KS, 0.1),
        _metric_gap("psnr@4", "flex_mini", "flex_mini_nodrop", 2.0),
        _metric_gap(FLEX_FULL, "flex_mini", "flex_mini_nodrop", -1.5),
        _above_mean_image("flex_mini", FLEX_FULL, 3.0),
        # FlexTok's own sampling modes: the ordered curve is the paper's claim for them too.
        _never_falls("flex_mini_pow2", FLEX_KS, 0.1),
        _never_falls("flex_mini_uniform_pow2", FLEX_KS, 0.1),
    ],
    **FLEX_TOKENIZER_ONLY,
)
TABLES["onedpiece_k"] = Table(
    name="onedpiece_k",
    title="One-D-Piece - tail-token truncation vs fixed length: PSNR@k, and bytes against Pillow JPEG (exploratory)",
    rows=[
        Row("fixed length 32 (TiTok)", "flex_mini_nodrop", ["tokenizer.dropout=null"], shared=()),
        Row("tail token drop, L ~ U{1..32} per batch", "flex_mini_tail", ["tokenizer/dropout=tail"], shared=()),
    ],
    ours=[*(f"psnr@{k}" for k in FLEX_KS), "bytes@full", "jpeg_bytes@q1", "jpeg_psnr@q1", "jpeg_bytes@q10",
          "jpeg_psnr@q10"],
    paper_columns=[],
    trends=[
        _never_falls("flex_mini_tail", FLEX_KS, 0.1),
        # The mini plan asks for >= -0.5 dB; a first prototype measured -3.6 dB; reported as it comes.
        _metric_gap(FLEX_FULL, "flex_mini_tail", "flex_mini_nodrop", -0.5),
    ],
    **FLEX_TOKENIZER_ONLY,
)
TOKENFLEX_BUDGETS = [4, 16, 64]
TOKENFLEX_FIXED = [f"tokenflex_mini_fixed{n}" for n in TOKENFLEX_BUDGETS]
# Paper scale: ett_paper's IBQ grid (32 x 32 = 1024 tokens at 512 px) pooled to TokenFLEX's 64 / 144 / 256
# tokens (8 x 8, 12 x 12, 16 x 16), a SwiGLU projector, projector + LLM trained in one stage from init_from.
TOKENFLEX_PAPER_BUDGETS = {4: 64, 16: 144, 64: 256}
_PAPER_ALL = list(TOKENFLEX_PAPER_BUDGETS.values())
_PAPER_ALL_LIST = f"[{','.join(map(str, _PAPER_ALL))}]"
TOKENFLEX_PAPER_ARM = ["projector=swiglu", "stages.ett=null", "stages.post=null",
                       "stages.align.train=[projector,llm]", "+stages.align.lr.llm=4.0e-5",
                       f"module.eval_token_budgets={_PAPER_ALL_LIST}"]
# The paper's stochastic budgets: {64, 144, 256} at 2:3:5.
TOKENFLEX_PAPER_STOCHASTIC = [*TOKENFLEX_PAPER_ARM, f"module.token_budgets={_PAPER_ALL_LIST}",
                              "module.budget_probs=[0.2,0.3,0.5]"]
TABLES["tokenflex_budget"] = Table(
    name="tokenflex_budget",
    title="TokenFLEX - fixed-budget LLMs vs stochastic budgets (2:3:5), each scored at every budget",
    rows=[
        *(Row(f"fixed {n} tokens (paper: {TOKENFLEX_PAPER_BUDGETS[n]})", f"tokenflex_mini_fixed{n}",
              [*TOKENFLEX_PAPER_ARM, f"module.token_budgets=[{TOKENFLEX_PAPER_BUDGETS[n]}]",
               "module.budget_probs=null"],
              shared=("tokenizer",)) for n in TOKENFLEX_BUDGETS),
        Row("stochastic {4, 16, 64} @ {0.2, 0.3, 0.5} (paper: {64, 144, 256})", "tokenflex_mini",
            TOKENFLEX_PAPER_STOCHASTIC, shared=("tokenizer",),
            paper={"64 tok": 58.7, "144 tok": 60.0, "256 tok": 60.7}, paper_unconfirmed=True),
        # Not in the paper: the same budgets, every batch trained at all of them (losses weighted 2:3:5).
        Row("every budget each batch, losses 0.2 / 0.3 / 0.5 (vistok's budget_mode=expected)",
            "tokenflex_mini_expected",
            [*TOKENFLEX_PAPER_STOCHASTIC, "module.budget_mode=expected"], shared=("tokenizer",)),
    ],
    ours=[f"caption_token_accuracy@{n}" for n in TOKENFLEX_BUDGETS],
    paper_columns=["64 tok", "144 tok", "256 tok"],  # OpenCompass average (S); fixed-N models 57.5 / 58.6 / 60.6
    trends=[
        _within_best(TOKENFLEX_BUDGETS, "tokenflex_mini", TOKENFLEX_FIXED, 1.0),
        _gap("caption_token_accuracy@4", "tokenflex_mini", "tokenflex_mini_fixed64", 3.0),
        _within_best(TOKENFLEX_BUDGETS, "tokenflex_mini_expected", TOKENFLEX_FIXED, 1.0),
    ],
    paper_note="TokenFLEX's 58.7 / 60.0 / 60.7 (fixed-N models 57.5 / 58.6 / 60.6) come from a secondary "
               "compilation, not the paper: their gains over the fixed models "
               "(+1.2 / +1.4 / +0.1) disagree with the abstract's +1.6 / +1.0 / +0.4, so they are marked "
               "unconfirmed.",
    base_experiment="tokenflex_mini",
    paper_base="ett_paper",
    stages=("tokenizer", "align"),
    paper_stages=("align",),
)


# Dual-codebook family (TokenFlow, DualToken). Tokenizer-only rows trained from scratch at equal steps;
# probe_accuracy = linear probe of the caption attributes on mean-pooled embeddings (gated), /histogram on the
# code histogram (gated), /flat on the whole grid (reported only: pixel codes already saturate it).
DUAL_OURS = ["probe_accuracy", "probe_accuracy/histogram", "probe_accuracy/flat", "psnr", "ssim", "codebook_usage",
             "codebook_perplexity"]
# Paper-scale arms on tokenflow_paper (multi-scale by default): Table 5's first rows quantize at one scale,
# and the one-codebook row feeds its 40-d semantic code to the pixel decoder.
SINGLE_SCALE = ["tokenizer.quantizer.scales=null", "tokenizer.quantizer.scale_drop=0.0"]
ONE_CODEBOOK = ["tokenizer.semantic_dim=40", "tokenizer.pixel_dim=0", "tokenizer.encoder.pixel=null",
                "tokenizer.quantizer.dims=[40]", "tokenizer.quantizer.weights=[1.0]",
                "tokenizer.decoder.pixel_reads=both", "tokenizer.decoder.pixel.in_dim=40"]
TABLES["tokenflow_table5"] = Table(
    name="tokenflow_table5",
    title="TokenFlow Table 5 - one codebook vs dual codebooks with a shared index (+ MSVQ); pixel-only VQ controls",
    rows=[
        Row("pixel-only VQ (D = 16; paper: the pixel half's 8)", "dual_mini_vq", shared=(),
            paper_experiment="tokenflow_paper_vq"),
        Row("pixel-only VQ as wide as the pair (D = 24; paper: 40)", "dual_mini_vq_wide", ["tokenizer.embed_dim=40"],
            shared=(), paper_experiment="tokenflow_paper_vq"),
        Row("one codebook + semantic loss", "dual_mini_single", [*SINGLE_SCALE, *ONE_CODEBOOK], shared=(),
            paper={"MME-P": 1252, "SEED": 57.8, "TQA": 49.2, "rFID": 8.07}),
        Row("dual codebooks, shared index", "dual_mini", SINGLE_SCALE, shared=(),
            paper={"MME-P": 1213, "SEED": 56.0, "TQA": 47.4, "rFID": 3.96}),
        # tokenflow_paper's own multi-scale setting (scales that divide its 16 x 16 grid).
        Row("+ multi-scale VQ", "dual_mini_msvq", [], shared=(),
            paper={"MME-P": 1210, "SEED": 56.1, "TQA": 47.4, "rFID": 2.18}),
        Row("dual, taught by the LLM caption loss only", "dual_mini_llm", ["module.semantic=null"], shared=()),
    ],
    ours=DUAL_OURS,
    paper_columns=["MME-P", "SEED", "TQA", "rFID"],
    trends=[
        _gap("probe_accuracy", "dual_mini", "dual_mini_vq", 10.0),
        _gap("probe_accuracy", "dual_mini", "dual_mini_vq_wide", 10.0),
        _gap("probe_accuracy/histogram", "dual_mini", "dual_mini_vq", 5.0),
        _gap("probe_accuracy/histogram", "dual_mini", "dual_mini_vq_wide", 5.0),
        _psnr_within("dual_mini", "dual_mini_vq", 1.0),
        _psnr_within("dual_mini", "dual_mini_vq_wide", 1.0),
        _gap("codebook_usage", "dual_mini", "dual_mini_vq", 0.0),
        # Table 5's own claims: the shared mapping beats one codebook on reconstruction (rFID 8.07 -> 3.96),
        # and multi-scale VQ improves it further (3.96 -> 2.18).
        _metric_gap("psnr", "dual_mini", "dual_mini_single", 0.0),
        _metric_gap("psnr", "dual_mini_msvq", "dual_mini", 0.0),
    ],
    paper_note="TokenFlow Table 5 (arXiv 2412.03069).",
    base_experiment="dual_mini",
    paper_base="tokenflow_paper",
    stages=("tokenizer",),
    scale_overrides={"smoke": ["debug=tiny"], "mini": [], "paper": []},
)
TABLES["dualtoken_conflict"] = Table(
    name="dualtoken_conflict",
    title="DualToken - reconstruction and semantics on the same layer vs pixel (shallow) + semantic (deep) layers",
    rows=[
        Row("recon + sem on the same (last) layer", "dualtoken_mini_same", ["tokenizer.encoder.pixel_layer=26"],
            shared=(), paper={"Zero-shot": 72.3, "rFID": 3.86, "PSNR": 12.64, "SSIM": 0.574},
            paper_unconfirmed=True),
        Row("recon (shallow) + sem (deep)", "dualtoken_mini", [], shared=(),
            paper={"Zero-shot": 82.0, "rFID": 0.25, "PSNR": 28.69, "SSIM": 0.744}),
    ],
    ours=DUAL_OURS,
    paper_columns=["Zero-shot", "rFID", "PSNR", "SSIM"],
    trends=[
        _gap("probe_accuracy", "dualtoken_mini", "dualtoken_mini_same", 5.0),
        _psnr_drop("dualtoken_mini_same", "dualtoken_mini", 1.0),
    ],
    paper_note="DualToken's conflict ablation (arXiv 2503.14324): the separate-layers row's 0.25 rFID, "
               "28.69 PSNR, 0.744 SSIM and 82.0% zero-shot are the project page's headline numbers; the "
               "same-layer row comes from a paper note, not checked against the paper's table (unconfirmed).",
    base_experiment="dualtoken_mini",
    paper_base="dualtoken_paper",
    stages=("tokenizer",),
    scale_overrides={"smoke": ["debug=tiny"], "mini": [], "paper": []},
)
