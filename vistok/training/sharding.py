"""FSDP2 for the joint module: the strategy, how the module is cut into shard units, and checkpoint conversion.

All sharding code lives here; model code stays single-device code. Lightning's `ModelParallelStrategy`
runs FSDP2 (`fully_shard`) on CPU (gloo) and GPU (nccl). Lightning calls `training_step`, not the
root's `forward`, so every sub-module the step calls must be its own shard unit (a unit only gathers
its parameters when *its* forward runs): each LLM block, the LLM's input embedding, the LLM itself,
the tokenizer's encoder, quantizer and decoder, the projector, the visual head, the discriminator and
the loss; the root is sharded last. `shard_module` refuses a module with parameters outside any unit, naming them,
instead of failing later with "mixed torch.Tensor and DTensor".

Codebooks are buffers, which FSDP2 neither shards nor synchronises: vistok's quantizers all-reduce
their EMA statistics themselves (bound at the first training forward, see quantizers/vq.py), and
every rank starts from the same seed, so codebooks stay identical across ranks.

Checkpoints of an FSDP2 run are directories (`.metadata`, one `__<rank>_0.distcp` per rank and
Lightning's `meta.pt`), written whole or not at all (`vistok.atomic`); vistok.checkpoint_files reads those and
single files alike, and consolidates a directory into one file that loads strictly into a single-process
module.
"""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

import torch
from lightning.pytorch.strategies import ModelParallelStrategy
from torch import nn

from vistok.atomic import atomic_path


class FSDP2Strategy(ModelParallelStrategy):
    """Pure FSDP2: one data-parallel dimension over every process of every node (no tensor parallelism).

    Args:
        mixed_precision: "bf16" gathers parameters and runs compute in bfloat16 with fp32 gradient
            reduction; quantizer and loss units stay fp32 (codebooks, EMA statistics). None = fp32.
        activation_checkpointing: recompute each LLM block in the backward pass (saves activation memory).
        reshard_after_forward: free gathered parameters after each unit's forward (ZeRO-3); False keeps
            them until the backward (ZeRO-2-like: more memory, fewer all-gathers).
        process_group_backend: None picks gloo on CPU and nccl on CUDA.
        save_distributed_checkpoint: one shard file per rank (True) or a gathered single file (False).
    """

    def __init__(self, mixed_precision: str | None = None, activation_checkpointing: bool = False,
                 reshard_after_forward: bool = True, process_group_backend: str | None = None,
                 save_distributed_checkpoint: bool = True):
        if mixed_precision not in (None, "bf16"):
            raise ValueError(f"mixed_precision must be null or 'bf16', got '{mixed_precision}'")
        super().__init__(data_parallel_size="auto", tensor_parallel_size=1,
                         save_distributed_checkpoint=save_distributed_checkpoint,
                         process_group_backend=process_group_backend)
        self.sharding_options = {"mixed_precision": mixed_precision,
                                 "activation_checkpointing": activation_checkpointing,
                                 "reshard_after_forward": reshard_after_forward}

    def setup_environment(self) -> None:
        # "auto" would mean one data-parallel rank per node; FSDP over everything is nodes x processes.
        self._data_parallel_size = self.num_nodes * self.num_processes
        super().setup_environment()

    def save_checkpoint(self, checkpoint: dict, filepath, storage_options=None) -> None:
        """Every rank writes its shard into one hidden directory beside the final path, which rank 0 then
        renames into place: a kill during the save leaves the previous checkpoint intact (and a hidden
        partial directory that resume removes)."""
        if not self._save_distributed_checkpoint:
            return super().save_checkpoint(checkpoint, filepath, storage_options)
        final = Path(self.broadcast(str(filepath)))
        with atomic_path(final, directory=True) if self.global_rank == 0 else nullcontext() as created:
            partial = Path(self.broadcast(str(created) if created is not None else None))  # rank 0's on all
            super().save_checkpoint(checkpoint, partial, storage_options)
            self.barrier("vistok_ckpt_written")  # every shard is on disk before rank 0 renames the directory
        self.barrier("vistok_ckpt_published")


# ---- shard units ------------------------------------------------------------------------------
def _has_params(module: nn.Module | None) -> bool:
    return module is not None and any(True for _ in module.parameters())


def llm_units(llm) -> tuple[list[nn.Module], nn.Module, nn.Module]:
    """(blocks, input embedding, HF model) of a `vistok.models.llm.CausalLM`."""
    hf = llm.model
    blocks = getattr(getattr(hf, "model", None), "layers", None)
    if blocks is None:
        raise TypeError(f"cannot find the decoder blocks of {type(hf).__name__} (expected .model.layers)")
    return list(blocks), hf.get_input_embeddings(), hf


def _checkpoint_blocks(hf: nn.Module) -> None:
    """Wrap each LLM block so its activations are recomputed in the backward pass."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

    layers = hf.model.layers
    for i, block in enumerate(layers):
        layers[i] = checkpoint_wrapper(block)


def shard_units(module: nn.Module) -> list[tuple[str, nn.Module, bool]]:
    """The module's shard units in sharding order (leaves first): (name, module, keep_fp32)."""
    units: list[tuple[str, nn.Module, bool]] = []
    if getattr(module, "llm", None) is not None:
        blocks, embedding, hf = llm_units(module.llm)
        units += [(f"llm.block{i}", b, False) for i, b in enumerate(blocks)]
        units += [("llm.embedding", embedding, False), ("llm", hf, False)]
    tokenizer = module.tokenizer
    for name, child in tokenizer.named_children():
        # Quantizers keep fp32: codebook distances and EMA statistics lose too much in bf16.
        units.append((f"tokenizer.{name}", child, name == "quantizer"))
    for name in ("projector", "visual_head", "discriminator"):
        units.append((name, getattr(module, name, None), False))
    units.append(("semantic", getattr(module, "semantic", None), True))  # distillation loss + frozen teacher
    units.append(("loss", getattr(module, "loss", None), True))
    return [(name, unit, fp32) for name, unit, fp32 in units if _has_params(unit)]


def _uncovered_parameters(module: nn.Module, units: list[nn.Module]) -> list[str]:
    covered = {id(p) for unit in units for p in unit.parameters()}
    return [name for name, p in module.named_parameters() if id(p) not in covered]


def shard_module(module: nn.Module, mesh, mixed_precision: str | None = None,
                 activation_checkpointing: bool = False, reshard_after_forward: bool = True) -> list[str]:
    """Apply `fully_shard` to every unit of `module`, then to the root. Idempotent. Returns the unit names."""
    from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

    if isinstance(module, FSDPModule):  # a later stage of the same run: already sharded
        refresh_trainable(module)
        return []
    if activation_checkpointing and getattr(module, "llm", None) is not None:
        _checkpoint_blocks(module.llm.model)
    units = shard_units(module)
    missing = _uncovered_parameters(module, [u for _, u, _ in units])
    if missing:
        raise TypeError(
            "FSDP2 needs every parameter inside a module whose forward the training step calls; these are not: "
            f"{missing[:8]}{' ...' if len(missing) > 8 else ''}. Move them into the encoder/quantizer/decoder.")
    bf16 = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    # The fp32 units also cast their floating inputs to fp32 (the encoder's bf16 output into the quantizer,
    # the decoder's bf16 reconstruction into the loss): their math, and its backward, then sees one dtype.
    fp32 = MixedPrecisionPolicy(param_dtype=torch.float32, reduce_dtype=torch.float32)
    for _, unit, keep_fp32 in units:
        policy = MixedPrecisionPolicy() if mixed_precision != "bf16" else fp32 if keep_fp32 else bf16
        fully_shard(unit, mesh=mesh, reshard_after_forward=reshard_after_forward, mp_policy=policy)
    fully_shard(module, mesh=mesh, reshard_after_forward=reshard_after_forward)
    # FSDP2 makes the first unit whose forward runs the root. Lightning calls `training_step`, never the
    # root's forward, so a unit called on its own first (the LLM's embedding) would become a root and the
    # LLM's forward would then fail ("requires running forward through the root module first").
    # Initialise the real root now; every unit's forward then runs under it.
    module._get_fsdp_state()._lazy_init()
    if getattr(module, "llm", None) is not None:
        # transformers' generate then runs forwards until every rank has finished its captions
        # (`synced_gpus`): each forward all-gathers parameters, so ranks must run the same number.
        module.llm.model._is_fsdp_managed_module = True
    return [name for name, _, _ in units]


def refresh_trainable(module: nn.Module) -> None:
    """Re-read which parameters require grad, for every unit (call when a new stage trains other groups).

    FSDP2 fixes each unit's gradient dtypes when it is first initialised, from the parameters that require
    grad then; a unit frozen in the first stage has none, so when a later stage trains it under bf16 its
    bf16 gradients would be reduced in bf16 and stored into fp32 parameters (an error).
    """
    from torch.distributed.fsdp import FSDPModule

    for unit in module.modules():
        if isinstance(unit, FSDPModule):
            group = unit._get_fsdp_state()._fsdp_param_group
            if group is not None:
                group._init_mp_dtypes()
