"""Training-step overhead: a vistok step (Lightning + the joint module) vs a bare PyTorch loop doing the same
forward, backward and optimiser step on the same model and batch (ett_mini sizes, the `ett` stage), on the
CPU or one CUDA device (fp32 on both sides; CUDA work is synchronised at each step boundary)."""

from __future__ import annotations

import statistics
import time

import torch

from scripts.benchmarks.common import joint_module_and_batch
from scripts.benchmarks.timing import verdict

TARGET = 1.05


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _StepClock:
    """Lightning callback: wall time between consecutive training-batch starts (loop + data + step)."""

    def __init__(self, device: torch.device):
        from lightning.pytorch.callbacks import Callback

        clock = self

        class _Callback(Callback):
            def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
                _sync(device)
                clock.starts.append(time.perf_counter())

        self.callback = _Callback()
        self.starts: list[float] = []

    def intervals(self, skip: int) -> list[float]:
        return [b - a for a, b in zip(self.starts[skip:], self.starts[skip + 1:])]


def _lightning_seconds(module, batch, steps: int, device: torch.device, skip: int = 3) -> float:
    import lightning as L

    clock = _StepClock(device)
    accelerator = "gpu" if device.type == "cuda" else "cpu"
    trainer = L.Trainer(accelerator=accelerator, devices=1, precision="32-true", max_steps=steps, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0, limit_val_batches=0, callbacks=[clock.callback])
    loader = torch.utils.data.DataLoader([batch] * steps, batch_size=None, collate_fn=lambda b: b)
    trainer.fit(module, train_dataloaders=loader)
    return statistics.median(clock.intervals(skip))


def _bare_seconds(module, batch, steps: int, device: torch.device, skip: int = 3) -> float:
    """The same math as `VistokModule.training_step` (encode, decode, losses, captions, clip, AdamW)."""
    module.to(device)  # Lightning's teardown moved it back to the CPU
    stage, images, captions = module.stage, batch["image"].to(device), batch["caption"]
    optimizer = module.configure_optimizers()[0][0]
    params = [p for group in optimizer.param_groups for p in group["params"]]
    times = []
    for _ in range(steps):
        _sync(device)
        start = time.perf_counter()
        out = module.tokenizer.encode(images)
        recon = module.tokenizer.decode(out.embeddings, out.mask)
        tok_loss, _ = module.loss(images, recon, out.losses, None)
        caption = module.model.caption_loss(out, captions)
        total = stage.alpha * tok_loss + stage.caption_weight * caption.loss
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(params, module.grad_clip)
        optimizer.step()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times[skip:])


def step_overhead(steps: int = 20, rounds: int = 2, device: str = "cpu") -> dict:
    target = torch.device(device)
    module, batch, _ = joint_module_and_batch("ett")
    module.train()
    lightning, bare = [], []
    for _ in range(rounds):  # alternate, so machine load falls on both sides
        lightning.append(_lightning_seconds(module, batch, steps, target))
        bare.append(_bare_seconds(module, batch, steps, target))
    result = {"vistok_step_s": statistics.median(lightning), "bare_step_s": statistics.median(bare),
              "batch_size": int(batch["image"].shape[0]), "device": target.type}
    result["ratio"] = result["vistok_step_s"] / result["bare_step_s"]
    print(f"step_overhead ({target.type}): vistok {result['vistok_step_s'] * 1e3:.1f} ms/step vs bare PyTorch "
          f"{result['bare_step_s'] * 1e3:.1f} ms/step (batch {result['batch_size']}): ratio {result['ratio']:.3f} "
          f"{verdict(result['ratio'], TARGET, higher_is_better=False)}")
    return result
