"""Linear probes of the caption attributes (a dataset's `CaptionSchema`) on frozen tokenizer outputs.

Three views of the same tokens, one linear classifier per caption slot on each:
- pooled    `probe_accuracy`:           mean of `out.embeddings` over valid tokens, (D,)
- histogram `probe_accuracy/histogram`: normalised histogram of the code ids, (codes seen in training,)
- flat      `probe_accuracy/flat`:      the whole embedding grid flattened, (N * D,)
Slot labels come from the captions through the data's caption schema (`data.caption_schema`; the generated
dataset ships one); samples whose caption does not name every slot are left out, and without a schema there is
no probe.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from vistok.data.schema import CaptionSchema
from vistok.tokenizers.base import TokenizerOutput

VIEWS = ("pooled", "histogram", "flat")


def slot_labels(caption: str, schema: CaptionSchema) -> list[int] | None:
    """Caption -> one class id per slot of the schema (in order), or None if any slot is not named."""
    values = schema.labels(caption)
    if values is None:
        return None
    return [schema.slots[slot].index(values[slot]) for slot in schema.slots]


def chance_accuracy(schema: CaptionSchema) -> float:
    """Mean over slots of 1 / (values in the slot): the score of guessing uniformly."""
    return sum(1 / len(values) for values in schema.slots.values()) / len(schema.slots)


@dataclass
class ProbeFeatures:
    """Per-sample probe inputs collected over an evaluation pass (CPU, at most `max_samples`)."""

    max_samples: int = 5000
    schema: CaptionSchema | None = None  # None: no caption names attributes, nothing is collected
    pooled: list[torch.Tensor] = field(default_factory=list)  # (b, D) chunks
    flat: list[torch.Tensor] = field(default_factory=list)  # (b, N * D) chunks
    codes: list[torch.Tensor] = field(default_factory=list)  # (b, N * C) chunks; -1 = masked-out token
    labels: list[torch.Tensor] = field(default_factory=list)  # (b, slots) chunks
    count: int = 0

    def update(self, out: TokenizerOutput, captions: list[str], codebook_sizes: tuple[int, ...]) -> None:
        if self.schema is None:
            return
        labelled = [(i, labels) for i, caption in enumerate(captions)
                    if (labels := slot_labels(caption, self.schema)) is not None]
        labelled = labelled[: self.max_samples - self.count]
        if not labelled:
            return
        rows = torch.tensor([i for i, _ in labelled])
        embeddings = out.embeddings.detach()[rows].float().cpu()  # (b, N, D)
        valid = _valid_tokens(out, rows)  # (b, N) bool
        masked = embeddings * valid[..., None]  # masked-out tokens reach no feature
        self.pooled.append(masked.sum(1) / valid.sum(1, keepdim=True).clamp_min(1))
        self.flat.append(masked.flatten(1))
        self.codes.append(_global_codes(out.indices.detach()[rows].cpu(), valid, codebook_sizes))
        self.labels.append(torch.tensor([labels for _, labels in labelled]))
        self.count += len(labelled)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {name: torch.cat(getattr(self, name)) for name in ("pooled", "flat", "codes", "labels")}


def _valid_tokens(out: TokenizerOutput, rows: torch.Tensor) -> torch.Tensor:
    """(b, N) bool: True = a real token (all True for fixed-length tokenizers, whose mask is None)."""
    if out.mask is None:
        return torch.ones(len(rows), out.embeddings.shape[1], dtype=torch.bool)
    return out.mask[rows].bool().cpu()


def _global_codes(indices: torch.Tensor, valid: torch.Tensor,
                  codebook_sizes: tuple[int, ...]) -> torch.Tensor:
    """(b, N, C) per-stream ids -> (b, N * C) ids in one space (stream c offset by the sizes before it)."""
    offsets = torch.tensor([0, *codebook_sizes[:-1]]).cumsum(0)[: indices.shape[-1]]  # (C,)
    codes = indices.long() + offsets
    return codes.masked_fill(~valid[..., None], -1).flatten(1)


def code_histograms(train_codes: torch.Tensor, test_codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised per-sample histograms over the codes seen in training (unseen codes carry no weight)."""
    vocabulary = torch.unique(train_codes[train_codes >= 0])  # (V,) sorted

    def histogram(codes: torch.Tensor) -> torch.Tensor:
        if len(vocabulary) == 0:
            return torch.zeros(codes.shape[0], 0)
        column = torch.searchsorted(vocabulary, codes.clamp_min(0)).clamp_max(len(vocabulary) - 1)
        known = (codes >= 0) & (vocabulary[column] == codes)  # (n, N * C)
        counts = torch.zeros(codes.shape[0], len(vocabulary)).scatter_add_(1, column, known.float())
        return counts / known.sum(1, keepdim=True).clamp_min(1)  # (n, V)

    return histogram(train_codes), histogram(test_codes)


def _slot_logits(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                 invalid: torch.Tensor) -> torch.Tensor:
    """(n, F) -> (n, slots, max classes) logits; classes a slot does not have are -inf."""
    logits = (x @ weight + bias).view(x.shape[0], *invalid.shape)
    return logits.masked_fill(invalid, float("-inf"))


def fit_and_score(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
                  sizes: list[int], steps: int = 300, lr: float = 0.05, l2: float = 1e-4) -> list[float]:
    """Multinomial logistic regression per slot, full-batch Adam on standardised features.

    All slots train side by side in one weight matrix: their logits and losses are independent and Adam's
    update is per parameter, so this is exactly one classifier per slot, at the cost of one.

    Args:
        train_x, test_x: (n, F) features. train_y, test_y: (n, slots) class ids per slot.
        sizes: the number of classes of each slot.
    Returns:
        held-out accuracy per slot.
    """
    mean, std = train_x.mean(0), train_x.std(0).clamp_min(1e-6)  # train statistics only
    train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
    invalid = torch.arange(max(sizes)) >= torch.tensor(sizes)[:, None]  # (slots, max classes)
    weight = torch.zeros(train_x.shape[1], invalid.numel(), requires_grad=True)
    bias = torch.zeros(invalid.numel(), requires_grad=True)
    optimizer = torch.optim.Adam([weight, bias], lr=lr)
    with torch.enable_grad():  # evaluation loops call this under no_grad
        for _ in range(steps):
            logits = _slot_logits(train_x, weight, bias, invalid)  # (n, slots, max classes)
            # Mean over samples and slots, times slots = the sum over slots of each slot's mean loss.
            loss = F.cross_entropy(logits.flatten(0, 1), train_y.flatten()) * len(sizes)
            loss = loss + l2 * weight.square().sum()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    with torch.no_grad():
        predicted = _slot_logits(test_x, weight, bias, invalid).argmax(-1)  # (n, slots)
        return (predicted == test_y).float().mean(0).tolist()


def probe_metrics(train: ProbeFeatures, test: ProbeFeatures) -> dict[str, float]:
    """`probe_accuracy[/<view>]` (mean over slots) and `probe_accuracy[/<view>]/<slot>`, held-out."""
    slots = train.schema.slots
    a, b = train.tensors(), test.tensors()
    inputs = {"pooled": (a["pooled"], b["pooled"]), "histogram": code_histograms(a["codes"], b["codes"]),
              "flat": (a["flat"], b["flat"])}
    metrics: dict[str, float] = {}
    for view in VIEWS:
        per_slot = fit_and_score(inputs[view][0], a["labels"], inputs[view][1], b["labels"],
                                 [len(values) for values in slots.values()])
        name = "probe_accuracy" if view == "pooled" else f"probe_accuracy/{view}"
        metrics[name] = sum(per_slot) / len(per_slot)
        metrics.update({f"{name}/{slot}": acc for slot, acc in zip(slots, per_slot)})
    return metrics


def split_every(features: ProbeFeatures, every: int) -> tuple[ProbeFeatures, ProbeFeatures]:
    """(train, held-out): every `every`-th sample (in data order) is held out, the rest train the probe."""
    if features.count == 0:
        return ProbeFeatures(features.max_samples, features.schema), ProbeFeatures(features.max_samples,
                                                                                  features.schema)
    tensors = features.tensors()
    held_out = torch.arange(features.count) % every == every - 1  # (n,)
    parts = []
    for rows in (~held_out, held_out):
        part = ProbeFeatures(features.max_samples, features.schema, count=int(rows.sum()))
        for name, tensor in tensors.items():
            getattr(part, name).append(tensor[rows])
        parts.append(part)
    return parts[0], parts[1]


@dataclass
class LinearProbe:
    """The probe as an evaluation metric: `update` per batch of the eval pass, then `compute`.

    Args:
        train: features to train the probes on (e.g. from the training shards); None = split the eval set,
            holding out every `holdout_every`-th sample.
        train_source: where `train` came from, for the protocol record.
        min_samples: fewer labelled train or held-out samples than this and no probe number is reported.
        schema: the attributes the captions name (None: no probe, `protocol` says why).
    """

    train: ProbeFeatures | None = None
    train_source: str = "eval set"
    holdout_every: int = 5
    min_samples: int = 20
    max_samples: int = 5000
    schema: CaptionSchema | None = None
    seen: ProbeFeatures = field(init=False)
    skipped: str | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.seen = ProbeFeatures(self.max_samples, self.schema)

    def update(self, out: TokenizerOutput, captions: list[str], codebook_sizes: tuple[int, ...]) -> None:
        self.seen.update(out, captions, codebook_sizes)

    def _train_and_test(self) -> tuple[ProbeFeatures, ProbeFeatures]:
        if self.train is None:
            return split_every(self.seen, self.holdout_every)
        return self.train, self.seen

    def compute(self) -> dict[str, float]:
        if self.schema is None:
            self.skipped = "not computed: the data has no caption schema (data.caption_schema)"
            return {}
        train, test = self._train_and_test()
        if min(train.count, test.count) < self.min_samples:
            self.skipped = (f"not computed: {train.count} train / {test.count} held-out samples whose "
                            f"caption names every slot {list(self.schema.slots)} (need {self.min_samples} each)")
            return {}
        return probe_metrics(train, test)

    def protocol(self) -> dict[str, object]:
        if self.skipped:
            return {"status": self.skipped}
        train, test = self._train_and_test()
        held_out = "eval set" if self.train is not None else f"eval set, every {self.holdout_every}th sample"
        train_split = self.train_source if self.train is not None else "eval set, the other samples"
        return {
            "implementation": "vistok.eval.probe: one multinomial logistic regression per caption slot "
                              "(full-batch Adam, 300 steps, lr 0.05, L2 1e-4, standardised features)",
            "labels": f"caption slots {list(self.schema.slots)} read by the data's caption schema",
            "features": "probe_accuracy: mean-pooled embeddings; /histogram: normalised code-id histogram; "
                        "/flat: flattened embedding grid",
            "train": f"{train_split} ({train.count} samples)",
            "held_out": f"{held_out} ({test.count} samples)",
            "chance": chance_accuracy(self.schema),
        }
