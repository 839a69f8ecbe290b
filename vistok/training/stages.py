"""Training stages are data: which module groups train, with which loss weights and learning rates."""

from __future__ import annotations

from dataclasses import dataclass, field
from collections.abc import Mapping
from typing import Any

# Groups a stage may name. "tokenizer" is shorthand for the three tokenizer groups.
TOKENIZER_GROUPS = ("encoder", "quantizer", "decoder")
ALL_GROUPS = TOKENIZER_GROUPS + ("projector", "llm", "visual_head", "discriminator")


@dataclass
class Stage:
    """One stage of an experiment (ETT: alignment -> end-to-end -> post-training).

    Attributes:
        name: used for checkpoint folders and the per-stage entry of metrics.json.
        steps: optimiser steps in this stage.
        train: groups that receive updates; everything else is frozen (no grads, eval mode, so no
            EMA / codebook / dead-code updates either).
        caption_weight: weight of the LLM caption loss (understanding: image -> caption).
        generation_weight: weight of the visual-token loss (generation: caption -> the tokenizer's codes,
            predicted by the `visual_head` group); 0 = no generation direction in this stage.
        alpha: weight of the whole tokenizer loss (reconstruction + quantizer + GAN terms).
        lr: learning rate per optimiser group: "tokenizer", "projector", "llm", "visual_head", "discriminator";
            "visual_head" falls back to the "llm" rate (the head is the LLM's second output).
        gan_start: step within the stage at which the discriminator switches on; None = no GAN.
        warmup_ratio: linear warm-up fraction of `steps`, then cosine decay to `min_lr_ratio`.
    """

    name: str
    steps: int
    train: tuple[str, ...]
    caption_weight: float = 1.0
    generation_weight: float = 0.0
    alpha: float = 1.0
    lr: dict[str, float] = field(default_factory=dict)
    gan_start: int | None = None
    warmup_ratio: float = 0.03
    min_lr_ratio: float = 0.1

    def __post_init__(self) -> None:
        groups: list[str] = []
        for name in self.train:
            groups.extend(TOKENIZER_GROUPS if name == "tokenizer" else [name])
        unknown = sorted(set(groups) - set(ALL_GROUPS))
        if unknown:
            raise ValueError(f"stage '{self.name}': unknown module group(s) {unknown} in 'train'; "
                             f"choose from {['tokenizer', *ALL_GROUPS]}")
        if self.generation_weight < 0 or self.caption_weight < 0:
            raise ValueError(f"stage '{self.name}': loss weights must be >= 0, got caption_weight="
                             f"{self.caption_weight}, generation_weight={self.generation_weight}")
        if not groups:
            raise ValueError(f"stage '{self.name}': 'train' is empty; a stage trains at least one group of "
                             f"{['tokenizer', *ALL_GROUPS]} (remove the stage with stages.{self.name}=null)")
        if self.steps <= 0:
            raise ValueError(f"stage '{self.name}': steps must be positive, got {self.steps}")
        self.train = tuple(dict.fromkeys(groups))

    def trains(self, group: str) -> bool:
        return group in self.train

    @property
    def trains_tokenizer(self) -> bool:
        return any(g in self.train for g in TOKENIZER_GROUPS)

    def lr_for(self, group: str) -> float:
        key = "tokenizer" if group in TOKENIZER_GROUPS else group
        if key == "visual_head" and key not in self.lr:
            key = "llm"
        if key not in self.lr:
            raise KeyError(f"stage '{self.name}' trains '{group}' but sets no lr.{key}")
        return float(self.lr[key])


def stages_from_config(stages: Mapping[str, Any], max_steps: int | None = None,
                       defaults: Mapping[str, Any] | None = None) -> list[Stage]:
    """Build stages, in order, from a {name: fields} mapping (Hydra config: `stages.<name>.steps=...`).

    `defaults` fills fields a stage leaves out (`stage_defaults` in the config); a null entry removes a
    stage; `max_steps` caps every stage (smoke runs).
    """
    built = []
    for name, fields in stages.items():
        if fields is None:
            continue
        fields = {**dict(defaults or {}), **dict(fields)}
        fields = {k: (tuple(v) if k == "train" else dict(v) if k == "lr" else v) for k, v in fields.items()}
        if max_steps:
            fields["steps"] = min(int(fields.get("steps", max_steps)), max_steps)
        built.append(Stage(name=name, **fields))
    if not built:
        raise ValueError("the experiment defines no stages")
    return built
