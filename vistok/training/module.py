"""The LightningModule: a `UnifiedModel` (tokenizer, optionally an LLM reading its tokens) trained stage by stage.

L = caption_weight * L_caption + generation_weight * L_generation + alpha * L_tokenizer (ETT, arXiv 2505.10562;
L_generation: the LLM's visual head predicting the tokenizer's codes from a caption, ETT stage 3 "Gen"). Everything that only
exists for training (loss weights, discriminator, optimisers, schedules) lives here; the model's forward
passes (visual inputs, caption and generation losses) live in `vistok.models.unified`.
"""

from __future__ import annotations

import logging
import math
import random
from functools import partial
from typing import Callable

import lightning as L
import torch
from torch import nn

from vistok.data.schema import CaptionSchema
from vistok.eval.streams import StreamMetrics
from vistok.losses.gan import LeCAM, hinge_d_loss
from vistok.losses.recon import TokenizerLoss
from vistok.models.llm import caption_length_summary
from vistok.models.sequence import drop_captions
from vistok.models.unified import PARTS, UnifiedModel
from vistok.tokenizers.base import TokenizerOutput, rename_legacy_keys
from vistok.training.budgets import TokenBudgetSampler
from vistok.training.evaluation import UsageWindow, ValidationAccumulator
from vistok.training.stages import Stage

log = logging.getLogger(__name__)


class VistokModule(L.LightningModule):
    """A `UnifiedModel` with stage-controlled freezing and manual optimisation.

    Its weights are under `model.` in checkpoints; `tokenizer`, `projector`, `llm` and `visual_head` name the
    model's parts (also the stage groups).

    Args:
        model: the `UnifiedModel` (tokenizer, adapter, LLM, visual head); `model.max_caption_tokens` also caps
            training captions, which are cut and counted (`captions_truncated`, a warning the first time).
        loss: the tokenizer loss (weights of its terms).
        optimizer: a partial optimiser class (`torch.optim.AdamW`, ...) taking param groups.
        discriminator: a PatchGAN for the GAN term, or None.
        lecam_weight: weight of the LeCAM regulariser on the discriminator.
        grad_clip: max global grad norm per optimiser (0 = off).
        usage_window: training steps over which codebook usage is logged.
        num_sample_captions: greedy captions kept per validation pass for inspection.
        nan_policy: "raise" stops at the first non-finite loss (naming the step and the loss terms);
            "skip" drops that batch without an update and counts it (up to `max_nan_skips`, then raises).
        token_budgets: TokenFLEX: visual-token counts the LLM reads, one drawn per training batch
            (None = all tokens); `budget_probs` their probabilities (uniform when None); `budget_mode`
            "expected" trains every batch at every budget, the losses weighted by those probabilities.
        eval_token_budgets: budgets at which validation also scores captions (`caption_token_accuracy@<n>`).
        semantic: a semantic distillation loss (frozen teacher), added to the tokenizer loss; None = off.
        probe: compute the linear probes (`probe_accuracy[/...]`) at validation.
        caption_schema: the attributes the data's captions name (`data.caption_schema`), scored per attribute on
            the greedy validation captions (`attribute_accuracy/<slot>`); None = free text, no attribute metrics.
        caption_dropout: probability that a generation-direction caption is replaced by "" in training
            (the unconditional branch of classifier-free guidance).
    """

    def __init__(self, model: UnifiedModel, loss: TokenizerLoss, optimizer: Callable,
                 discriminator: nn.Module | None = None, lecam_weight: float = 0.0, grad_clip: float = 1.0,
                 usage_window: int = 100, num_sample_captions: int = 8, nan_policy: str = "raise",
                 max_nan_skips: int = 10, token_budgets: list[int] | None = None,
                 budget_probs: list[float] | None = None, budget_mode: str = "batch",
                 eval_token_budgets: list[int] | None = None,
                 semantic: nn.Module | None = None, probe: bool = False, caption_dropout: float = 0.1,
                 caption_schema: CaptionSchema | None = None):
        super().__init__()
        self.budgets = None  # TokenFLEX: a budget per training batch, seeded from the run's seed
        if token_budgets:
            self.budgets = TokenBudgetSampler(token_budgets, budget_probs, torch.initial_seed(), budget_mode)
        self.eval_token_budgets = [int(n) for n in eval_token_budgets or []]
        model.check_budgets([*(token_budgets or []), *self.eval_token_budgets])
        if nan_policy not in ("raise", "skip"):
            raise ValueError(f"nan_policy must be 'raise' or 'skip', got '{nan_policy}'")
        self.nan_policy, self.max_nan_skips, self.nan_skips = nan_policy, max_nan_skips, 0
        self.automatic_optimization = False
        self.model, self.loss = model, loss
        # Checkpoints of earlier versions hold the parts at the top level (`tokenizer.*`): loaded under `model.`.
        self._register_load_state_dict_pre_hook(_move_parts_under_model)
        self.discriminator = discriminator
        self.semantic, self.probe, self.caption_schema = semantic, probe, caption_schema
        self.lecam = LeCAM() if discriminator is not None and lecam_weight > 0 else None
        self.optimizer_factory = optimizer
        self.lecam_weight, self.grad_clip, self.num_sample_captions = lecam_weight, grad_clip, num_sample_captions
        if not 0.0 <= caption_dropout <= 1.0:
            raise ValueError(f"caption_dropout must be in [0, 1], got {caption_dropout}")
        self.caption_dropout = caption_dropout
        self._dropout_rng = random.Random(torch.initial_seed())
        self.stage: Stage | None = None
        self.step_offset = 0  # generator steps taken in earlier stages (for a monotonic x-axis)
        # Generator steps in this stage. Lightning's global_step counts every optimiser's steps, which
        # would end GAN stages early; stages end on this counter instead (see on_train_batch_end).
        self.stage_step = 0
        self._usage = UsageWindow(model.tokenizer.codebook_size, usage_window)  # sparse: 2^K ids for K-bit tokens
        self.skipped_samples = 0
        self.captions_truncated = 0  # training captions cut to max_caption_tokens, each time one is met
        self._truncation_warned = False
        self.val_metrics: dict[str, float] = {}
        self.val_preview: dict = {}

    # ---- the model's parts (stage groups) ---------------------------------------------------------
    @property
    def tokenizer(self) -> nn.Module:
        return self.model.tokenizer

    @property
    def llm(self) -> nn.Module | None:
        return self.model.llm

    @property
    def projector(self) -> nn.Module | None:
        return self.model.projector

    @property
    def visual_head(self) -> nn.Module | None:
        return self.model.visual_head

    @property
    def max_caption_tokens(self) -> int:
        return self.model.max_caption_tokens

    # ---- stages -------------------------------------------------------------------------------
    def groups(self) -> dict[str, nn.Module | None]:
        return {**self.tokenizer.training_groups(), "projector": self.projector, "llm": self.llm,
                "visual_head": self.visual_head, "discriminator": self.discriminator}

    def set_stage(self, stage: Stage, step_offset: int = 0) -> None:
        """Freeze everything the stage does not train: no grads and eval mode (no EMA/codebook updates)."""
        if stage.trains("discriminator") and self.discriminator is None:
            raise ValueError(f"stage '{stage.name}' trains a discriminator but the module has none")
        if self.llm is None and (stage.trains("llm") or stage.trains("projector")):
            raise ValueError(f"stage '{stage.name}' trains the LLM/projector but the experiment has no llm")
        if self.visual_head is None and (stage.generation_weight > 0 or stage.trains("visual_head")):
            raise ValueError(f"stage '{stage.name}' trains generation (generation_weight="
                             f"{stage.generation_weight}, train={list(stage.train)}) but the module has no visual "
                             "head; set module.generation=true")
        self.stage, self.step_offset, self.stage_step = stage, step_offset, 0
        for name, module in self.groups().items():
            if module is not None:
                module.requires_grad_(stage.trains(name))
        self.train(self.training)

    def train(self, mode: bool = True):
        """Lightning switches the whole module to train mode each epoch; keep frozen groups in eval."""
        super().train(mode)
        if self.stage is not None:
            for name, module in self.groups().items():
                if module is not None and not self.stage.trains(name):
                    module.eval()
        return self

    def configure_model(self) -> None:
        """Under FSDP2 (`trainer=fsdp`) shard the module; every other strategy leaves it as is."""
        if self.device_mesh is None:
            return
        from vistok.training.sharding import shard_module

        options = getattr(self.trainer.strategy, "sharding_options", {})
        shard_module(self, self.device_mesh["data_parallel"], **options)

    # ---- optimisation -------------------------------------------------------------------------
    def configure_optimizers(self):
        stage = self.stage
        main = [{"params": [p for p in module.parameters() if p.requires_grad], "lr": stage.lr_for(name),
                 "name": name}
                for name, module in self.groups().items()
                if module is not None and name != "discriminator" and stage.trains(name)]
        main = [g for g in main if g["params"]]
        optimizers = [self.optimizer_factory(main or [{"params": [nn.Parameter(torch.zeros(1))], "lr": 0.0}])]
        if stage.trains("discriminator"):
            optimizers.append(self.optimizer_factory(self.discriminator.parameters(), lr=stage.lr_for("discriminator")))
        schedule = partial(_warmup_cosine, total=stage.steps, warmup=int(stage.warmup_ratio * stage.steps),
                           floor=stage.min_lr_ratio)
        schedulers = [torch.optim.lr_scheduler.LambdaLR(opt, schedule) for opt in optimizers]
        return optimizers, schedulers

    def _optimizers(self) -> list:
        opts = self.optimizers()
        return opts if isinstance(opts, list) else [opts]

    def _schedulers(self) -> list:
        schs = self.lr_schedulers()
        return schs if isinstance(schs, list) else [schs]

    # ---- captions ---------------------------------------------------------------------------------
    def count_truncated_captions(self, captions: list[str]) -> int:
        """Count the captions longer than `max_caption_tokens` (added to `captions_truncated`); the first
        time any is met, say so: a cut caption scores 0 on exact match whatever the model learns."""
        lengths = self.llm.caption_lengths(captions)
        cut = sum(n > self.max_caption_tokens for n in lengths)
        self.captions_truncated += cut
        if cut and not self._truncation_warned:
            self._truncation_warned = True
            log.warning("a training caption of %d tokens is cut to module.max_caption_tokens=%d (eos "
                        "included); cut captions are counted in captions_truncated, and the caption lengths "
                        "logged at the start of the run show what would keep them whole", max(lengths),
                        self.max_caption_tokens)
        return cut

    def log_caption_lengths(self, captions: list[str]) -> dict[str, int]:
        """Log the percentiles of the captions' lengths under the LLM's tokenizer against
        `max_caption_tokens` (to choose it before training); returns them."""
        summary = caption_length_summary(self.llm.caption_lengths(captions), self.max_caption_tokens)
        if not summary["captions"]:
            log.info("caption lengths: no training captions to measure")
            return summary
        log.info("caption lengths in tokens (eos included) over %d training captions: p50 %d, p90 %d, "
                 "p99 %d, max %d; module.max_caption_tokens=%d cuts %d of them (%.1f%%)", summary["captions"],
                 summary["p50"], summary["p90"], summary["p99"], summary["max"], self.max_caption_tokens,
                 summary["truncated"], 100.0 * summary["truncated"] / summary["captions"])
        return summary

    def _gan_active(self) -> bool:
        stage = self.stage
        return (self.discriminator is not None and stage.gan_start is not None
                and stage.trains("discriminator") and self.stage_step >= stage.gan_start)

    # ---- training -----------------------------------------------------------------------------
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        stage, images = self.stage, batch["image"]
        self.skipped_samples += int(batch.get("skipped", 0))
        with torch.set_grad_enabled(stage.trains_tokenizer):
            out = self.tokenizer.encode(images)
        self._usage.add(out.indices)
        total, logs, recon = images.new_zeros(()), {}, None
        use_gan = self._gan_active()
        if stage.trains_tokenizer and stage.alpha > 0:
            recon = self.tokenizer.decode(out.embeddings, out.mask)
            fake_logits = self.discriminator(recon) if use_gan else None
            tok_loss, terms = self.loss(images, recon, out.losses, fake_logits)
            if self.semantic is not None:
                semantic_loss, semantic_terms = self.semantic(self.tokenizer, images, out)
                tok_loss = tok_loss + semantic_loss
                terms.update({k: v.detach() for k, v in semantic_terms.items()})
            total = total + stage.alpha * tok_loss
            logs.update({f"train/tok/{k}": v for k, v in terms.items()})
            logs["train/tokenizer_loss"] = tok_loss.detach()
        if self.llm is not None and (stage.caption_weight > 0 or self._trains_generation()):
            self.count_truncated_captions(batch["caption"])
        if self.llm is not None and stage.caption_weight > 0:
            caption_loss = self._caption_loss(out, batch["caption"])
            total = total + stage.caption_weight * caption_loss
            logs["train/caption_loss"] = caption_loss.detach()
        if self._trains_generation():
            captions = drop_captions(batch["caption"], self.caption_dropout, self._dropout_rng)
            generation = self.model.generation_loss(out, captions)
            total = total + stage.generation_weight * generation.loss
            logs["train/generation_loss"] = generation.loss.detach()
            logs["train/generation_accuracy"] = generation.accuracy.detach()
        if not self._finite(total, logs):
            return None  # batch dropped: no update, no step counted
        self._generator_step(total)
        if use_gan and recon is not None:
            logs.update(self._discriminator_step(images, recon.detach()))
        logs["train/loss"] = total.detach()
        self.stage_step += 1
        self._log_training(logs, images.shape[0])
        return total.detach()

    def _caption_loss(self, out, captions: list[str]) -> torch.Tensor:
        """The caption loss at this batch's token budget(s) (TokenFLEX), or at every token without budgets."""
        budgets = self.budgets.batch_budgets() if self.budgets is not None else [(None, 1.0)]
        return sum(weight * self.model.caption_loss(out, captions, budget=budget).loss
                   for budget, weight in budgets)

    def _trains_generation(self) -> bool:
        return self.visual_head is not None and self.stage.generation_weight > 0

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        if self.stage_step >= self.stage.steps:
            self.trainer.should_stop = True

    def on_train_start(self) -> None:
        # Resumed from a checkpoint of the stage's last step (the run stopped before its `done` marker):
        # the stage is complete, so stop before a batch is drawn instead of training one step too many.
        if self.stage_step >= self.stage.steps:
            self.trainer.should_stop = True

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["vistok"] = {"stage": self.stage.name, "stage_step": self.stage_step,
                                "step_offset": self.step_offset}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint.get("vistok", {})
        if self.stage is not None and state.get("stage") == self.stage.name:
            self.stage_step = int(state["stage_step"])

    def _finite(self, total: torch.Tensor, logs: dict) -> bool:
        """Catch NaN/inf before any weight is touched, so no checkpoint ever holds NaN weights."""
        if torch.isfinite(total):
            return True
        bad = sorted(k for k, v in logs.items() if torch.is_tensor(v) and not torch.isfinite(v).all())
        message = (f"non-finite loss in stage '{self.stage.name}' at step {self.stage_step} "
                   f"(total step {self.step_offset + self.stage_step}); non-finite terms: {bad or ['train/loss']}")
        self.nan_skips += 1
        if self.nan_policy == "raise" or self.nan_skips > self.max_nan_skips:
            raise FloatingPointError(message + ("" if self.nan_policy == "raise" else
                                                f"; more than {self.max_nan_skips} batches skipped"))
        log.warning("%s: batch skipped (%d so far)", message, self.nan_skips)
        return False

    def _generator_step(self, total: torch.Tensor) -> None:
        opt, sch = self._optimizers()[0], self._schedulers()[0]
        opt.zero_grad(set_to_none=True)
        if total.requires_grad:
            self.manual_backward(total)
            if self.grad_clip:
                self.clip_gradients(opt, gradient_clip_val=self.grad_clip, gradient_clip_algorithm="norm")
            opt.step()
        sch.step()

    def _discriminator_step(self, images: torch.Tensor, fake: torch.Tensor) -> dict[str, torch.Tensor]:
        opt, sch = self._optimizers()[1], self._schedulers()[1]
        real_logits, fake_logits = self.discriminator(images), self.discriminator(fake)
        d_loss = hinge_d_loss(real_logits, fake_logits)
        logs = {"train/gan_d": d_loss.detach()}
        if self.lecam is not None:
            lecam = self.lecam(real_logits, fake_logits)
            d_loss = d_loss + self.lecam_weight * lecam
            logs["train/lecam"] = lecam.detach()
        opt.zero_grad(set_to_none=True)
        self.manual_backward(d_loss)
        opt.step()
        sch.step()
        return logs

    def _log_training(self, logs: dict, batch_size: int) -> None:
        self.log("loss", logs["train/loss"], prog_bar=True, logger=False, batch_size=batch_size)
        if not (self._logger_writes_this_step() or self.stage_step >= self.stage.steps):
            return  # each logged value costs Lightning bookkeeping; a step whose values nobody reads skips it
        stats = self._usage.stats()
        logs["train/codebook_usage"] = stats["codebook_usage"]
        logs["train/codebook_perplexity"] = stats["codebook_perplexity"]
        logs["train/lr"] = self._optimizers()[0].param_groups[0]["lr"]
        logs["train/total_step"] = float(self.step_offset + self.stage_step)
        # Lightning writes a logged "step" as the row's step: one x-axis across stages, whose Trainers
        # each count from 0 (wandb's trainer/global_step and the CSV's step column).
        logs["step"] = logs["train/total_step"]
        self.log_dict(logs, prog_bar=False, batch_size=batch_size)

    def _logger_writes_this_step(self) -> bool:
        """Whether Lightning's logger connector writes step metrics after this batch (every
        `log_every_n_steps`); True when there is no trainer to ask."""
        connector = getattr(self._trainer, "_logger_connector", None)
        return bool(getattr(connector, "should_update_logs", True))

    # ---- validation ---------------------------------------------------------------------------
    def on_validation_epoch_start(self) -> None:
        self._val = ValidationAccumulator(self.tokenizer.codebook_size, schema=self.caption_schema,
                                          tokenizer=self.tokenizer, token_budgets=self.eval_token_budgets)
        self._streams = StreamMetrics(self.tokenizer, probe=self.probe, schema=self.caption_schema)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        # Every rank runs the same number of full-batch forwards (collectives inside FSDP and synced
        # `generate`); only the `valid` rows (B,) count, the others pad the rank's last batches.
        images = batch["image"]
        valid = batch.get("valid", torch.ones(images.shape[0], dtype=torch.bool)).to(images.device)
        keep = valid.nonzero().flatten()
        self.skipped_samples += int(batch.get("skipped", 0))
        recon, out = self.tokenizer(images)
        self._val.add_reconstruction(images[keep], recon[keep], out.indices[keep])
        self._streams.update(_rows(out, keep), [batch["caption"][i] for i in keep.tolist()]
                             if "caption" in batch else [])
        if batch_idx == 0:
            self.val_preview = {"images": images[keep][:8].cpu(), "recon": recon[keep][:8].cpu()}
        if self.llm is None:
            return
        caption = self.model.caption_loss(out, batch["caption"], valid)
        self._val.caption_tokens.update(*self.llm.token_accuracy(caption), caption.loss.detach())
        if self.visual_head is not None:  # the full batch on every rank (FSDP collectives), padding rows unscored
            generation = self.model.generation_loss(out, batch["caption"], valid)
            self._val.generation_tokens.update(generation.correct, generation.count, generation.loss.detach())
        for budget in self.eval_token_budgets:  # TokenFLEX: the same captions at every token budget
            scored = self.model.caption_loss(out, batch["caption"], valid, budget=budget)
            self._val.budget_tokens[budget].update(*self.llm.token_accuracy(scored), scored.loss.detach())
        generated = self.model.generate_captions(out)
        rows = keep.tolist()
        self._val.add_captions([batch["key"][i] for i in rows], [batch["caption"][i] for i in rows],
                               [generated[i] for i in rows], keep=self.num_sample_captions,
                               images=images[keep])

    def on_validation_epoch_end(self) -> None:
        self.val_metrics = {**self._val.compute(), **self._streams.compute()}
        self.val_samples = self._val.samples
        if self.val_samples:  # each sample's own image, whichever batch it came from
            self.val_preview["caption_images"] = torch.stack([s.image for s in self.val_samples])
        if self._val.prefix is not None:  # flexible length: the preview images decoded from k = 1, 2, 4, ... tokens
            self.val_preview["prefix"] = self._val.prefix.preview
        logs = {f"val/{k}": v for k, v in self.val_metrics.items()}
        if self.stage is not None:  # per stage too: a run's summary keeps every stage's final numbers
            logs.update({f"val/{self.stage.name}/{k}": v for k, v in self.val_metrics.items()})
        logs["step"] = float(self.step_offset + self.stage_step)  # the shared x-axis (see _log_training)
        self.log_dict(logs, sync_dist=False, rank_zero_only=True)


def with_current_names(module: VistokModule, state_dict: dict) -> dict:
    """A checkpoint's weights under today's names, as a strict load would see them after its hooks: the
    parts of earlier versions moved under `model.`, the tokenizer's earlier names renamed. For a partial
    load (init_from), which must choose tensors by name before loading."""
    state = dict(state_dict)
    _move_parts_under_model(state, "")
    rename_legacy_keys(module.tokenizer, state, "model.tokenizer.")
    return state


def _move_parts_under_model(state_dict: dict, prefix: str, *_) -> None:
    """Load-state-dict pre-hook: keys `<prefix><part>.*` of a checkpoint from an earlier version (the model's
    parts at the top level) become `<prefix>model.<part>.*`, in place."""
    for key in [k for k in state_dict if k.startswith(prefix) and k[len(prefix):].split(".", 1)[0] in PARTS]:
        state_dict[f"{prefix}model.{key[len(prefix):]}"] = state_dict.pop(key)


def _rows(out: TokenizerOutput, keep: torch.Tensor) -> TokenizerOutput:
    """The rows `keep` (K,) of a batch's tokenizer output (the validation batch without its padding rows)."""
    mask = None if out.mask is None else out.mask[keep]
    return TokenizerOutput(indices=out.indices[keep], embeddings=out.embeddings[keep], mask=mask, losses=out.losses)


def _warmup_cosine(step: int, total: int, warmup: int, floor: float) -> float:
    """LR multiplier: linear warm-up over `warmup` steps, then cosine from 1 to `floor` at `total`."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
