"""`scripts.reproduce TABLE --dry-run`: compose and check every planned run, then size it, without training.

Each run of the plan (bases and rows; seeds differ only in `seed`, so one seed per run is built) is
composed with Hydra exactly as `train.py` composes it and passed through the same `validate`. Its model
is then built on the meta device (shapes only: no memory, no weights, nothing read) and measured:

- parameters per module group, tokens per image, the LLM's sequence length (visual + caption tokens);
- model FLOPs per training sample, per stage: torch's `FlopCounterMode` counts the forward of every part
  the stage runs (encoder, decoder when the tokenizer loss is on, projector, LLM when a caption or
  generation loss is on, the discriminator twice when it trains), the full backward of every trained
  part, and the input-gradient backward of a frozen part the gradient crosses to a trained one upstream;
- the expected peak memory per GPU, per stage, under DDP and FSDP2: parameters (in the LLM's dtype for
  the LLM, float32 elsewhere), gradients of trained parameters, AdamW's two moments, plus activations:
  the bytes autograd saves for backward in one sample's forward (measured on the meta device, each
  storage once, attention as the fused GPU kernels save it, with the LLM's gradient checkpointing as
  configured, halved for float32 parts under 16-bit mixed precision) times the per-GPU batch. Model
  FLOPs leave out checkpointing's recomputed forward.
  FSDP2 shards parameters, gradients and optimiser state over every rank and adds the largest unsharded
  unit while it is gathered.

Inputs a run needs but this machine may not have (the LLM directory, `init_from`, data shards, a teacher)
are listed, not failures: an LLM config that names its architecture (`llm.expected`) is sized from it.
"""

from __future__ import annotations

import json
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf, open_dict

ROOT = Path(__file__).resolve().parents[2]
ADAM_MOMENTS = 2
GIB = 1024 ** 3


@dataclass
class StagePlan:
    name: str
    steps: int
    train: list[str]
    flops_per_sample: float
    memory_gib: dict[str, float]  # {"ddp": ..., "fsdp2": ...} per GPU


@dataclass
class RunPlan:
    label: str
    overrides: list[str]
    seeds: list[int]
    error: str | None = None
    inputs: list[str] = field(default_factory=list)  # what the run needs from the user's machine
    params: dict[str, int] = field(default_factory=dict)
    tokens_per_image: int | None = None
    llm_sequence: int | None = None
    world_size: int = 1
    batch_per_gpu: int = 1
    stages: list[StagePlan] = field(default_factory=list)


# ---- composing ----------------------------------------------------------------------------------------


@contextmanager
def config_dir():
    """Hydra's compose API over the project's configs (what `train.py` reads)."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        yield
    GlobalHydra.instance().clear()


def compose_run(overrides: list[str], run_dir: Path) -> DictConfig:
    """The config `python train.py OVERRIDES hydra.run.dir=RUN_DIR` would run (inside `config_dir()`)."""
    from hydra import compose
    from hydra.core.hydra_config import HydraConfig

    cfg = compose("train", overrides=[*overrides, f"hydra.run.dir={run_dir}"], return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(run_dir)
    return cfg


def missing_inputs(cfg: DictConfig, stand_in_dir: Path) -> list[str]:
    """The run's inputs absent here. A missing LLM directory is replaced in `cfg` by a config-only stand-in
    written from `llm.expected`, so that validation and sizing see the architecture the run will load."""
    inputs = []
    if cfg.get("requires_init") and not cfg.get("init_from"):
        inputs.append("init_from=??? (the pre-trained tokenizer run this experiment starts from)")
        with open_dict(cfg):
            cfg.init_from = "(given by the user)"
    elif cfg.get("init_from") and not Path(str(cfg.init_from)).exists():
        inputs.append(f"init_from={cfg.init_from}")
    llm = cfg.get("llm")
    if llm is not None and not llm.get("build") and not Path(str(llm.path)).expanduser().is_dir():
        inputs.append(f"llm.path={llm.path}")
        expected = llm.get("expected")
        if expected is not None:
            stand_in_dir.mkdir(parents=True, exist_ok=True)
            (stand_in_dir / "config.json").write_text(json.dumps(OmegaConf.to_container(expected)))
            with open_dict(cfg):
                cfg.llm.path = str(stand_in_dir)
    teacher = OmegaConf.select(cfg, "module.semantic.teacher", default=None)
    if teacher is not None and "path" in teacher and (OmegaConf.is_missing(teacher, "path")
                                                      or not Path(str(teacher.path)).exists()):
        shown = "???" if OmegaConf.is_missing(teacher, "path") else teacher.path
        inputs.append(f"module.semantic.teacher.path={shown} (the frozen teacher)")
    if OmegaConf.select(cfg, "data._target_", default="").endswith("ShardDataModule"):
        for key in ("train", "val"):
            pattern = OmegaConf.select(cfg, f"data.{key}", throw_on_missing=False)
            if pattern is None or OmegaConf.is_missing(cfg.data, key):
                inputs.append(f"data.{key}=??? (img2dataset shards)")
    return inputs


# ---- building on the meta device ---------------------------------------------------------------------


@dataclass
class MetaModel:
    tokenizer: torch.nn.Module
    llm: torch.nn.Module | None
    projector: torch.nn.Module | None
    discriminator: torch.nn.Module | None
    llm_dtype: torch.dtype
    llm_inputs: int  # visual positions the LLM reads (after any pooling)
    visual_head: torch.nn.Module | None = None  # module.generation: the LLM writes visual tokens


def _llm_config(cfg: DictConfig):
    from transformers import AutoConfig, LlamaConfig

    build = cfg.llm.get("build")
    if build:
        return LlamaConfig(hidden_size=build.hidden_size, num_hidden_layers=build.num_layers,
                           num_attention_heads=build.num_heads,
                           intermediate_size=build.intermediate_size or 4 * build.hidden_size,
                           vocab_size=build.vocab_size, max_position_embeddings=build.max_position_embeddings)
    return AutoConfig.from_pretrained(str(cfg.llm.path), local_files_only=True)


def _meta_tokenizer(cfg: DictConfig) -> torch.nn.Module:
    """The tokenizer on the meta device. A few quantizers compute sizes from tensors while they are built
    (FSQ's codebook size from its levels): those are built on the CPU, then moved (one tokenizer's weights)."""
    from hydra.utils import instantiate

    try:
        with torch.device("meta"):
            return instantiate(cfg.tokenizer)
    except Exception as error:  # noqa: BLE001 - retried on the CPU, where a real problem raises again
        if "meta" not in str(error):
            raise
    return instantiate(cfg.tokenizer).to("meta")


def build_meta(cfg: DictConfig) -> MetaModel:
    from hydra.utils import get_class, instantiate
    from transformers import AutoModelForCausalLM

    dtype = getattr(torch, str(cfg.llm.dtype)) if cfg.get("llm") else torch.float32
    tokenizer = _meta_tokenizer(cfg)
    with torch.device("meta"):
        llm = projector = discriminator = None
        if cfg.get("llm"):
            llm = AutoModelForCausalLM.from_config(_llm_config(cfg), dtype=dtype)
            reads_embeddings = get_class(cfg.llm_input._target_).needs_projector
            if not reads_embeddings:  # the discrete-index arm: one new embedding row per code
                llm.resize_token_embeddings(llm.get_input_embeddings().num_embeddings
                                            + int(tokenizer.codebook_size), mean_resizing=False)
            if cfg.llm.get("gradient_checkpointing"):
                llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            if reads_embeddings and cfg.get("projector"):
                projector = instantiate(cfg.projector, in_dim=tokenizer.embed_dim, out_dim=llm.config.hidden_size)
        if OmegaConf.select(cfg, "module.discriminator") is not None:
            discriminator = instantiate(cfg.module.discriminator)
    # The LLM reads the pooled tokens, or at most the largest TokenFLEX budget.
    budgets = OmegaConf.select(cfg, "module.token_budgets", default=None)
    visual = getattr(projector, "pool_tokens", None) or (max(budgets) if budgets else tokenizer.num_tokens)
    head = None
    if llm is not None and OmegaConf.select(cfg, "module.generation", default=False):
        from vistok.models.visual_head import build_visual_head

        with torch.device("meta"):
            head = build_visual_head(tokenizer, llm.config.hidden_size)
    return MetaModel(tokenizer, llm, projector, discriminator, dtype, int(visual), head)


def group_parameters(model: MetaModel) -> dict[str, int]:
    tok = model.tokenizer
    parts = {"encoder": tok.encoder, "quantizer": tok.quantizer, "decoder": tok.decoder,
             "projector": model.projector, "llm": model.llm, "discriminator": model.discriminator,
             "visual_head": model.visual_head}
    counts = {name: sum(p.numel() for p in part.parameters()) for name, part in parts.items() if part is not None}
    counts["tokenizer"] = sum(p.numel() for p in tok.parameters())
    return counts


# ---- measuring one sample ----------------------------------------------------------------------------


@dataclass
class Cost:
    forward: float = 0.0          # FLOPs
    backward: float = 0.0         # FLOPs, weight and input gradients
    backward_inputs: float = 0.0  # FLOPs, input gradients only (a frozen part the gradient crosses)
    saved: float = 0.0            # bytes autograd keeps for backward


def _measure(run, inputs: torch.Tensor, part: torch.nn.Module) -> Cost:
    """FLOPs of run(inputs) forward and backward (with `part`'s weights trained, then frozen), and the bytes
    saved for backward, on the meta device."""
    cost = _measure_once(run, inputs)
    trainable = [p for p in part.parameters() if p.requires_grad]
    for p in trainable:
        p.requires_grad_(False)
    cost.backward_inputs = _measure_once(run, inputs).backward
    for p in trainable:
        p.requires_grad_(True)
    return cost


NATIVE_SDPA = torch.nn.functional.scaled_dot_product_attention
SDPA_ARGS = ("attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")  # after query, key, value


class _FusedAttention(torch.autograd.Function):
    """Attention as the fused kernels (flash, memory-efficient) run it: forward keeps q, k, v, the output
    and one float32 log-sum-exp per query row, (B, h, L), for backward, not the (B, h, L, L) softmax
    weights that the math path (the only one on the meta device) saves. Backward recomputes the weights,
    as those kernels do; the recompute is not counted as model FLOPs."""

    @staticmethod
    def forward(ctx, query, key, value, options: dict):
        with torch.no_grad():
            out = NATIVE_SDPA(query, key, value, **options)
        log_sum_exp = query.new_empty(query.shape[:-1], dtype=torch.float32)
        ctx.save_for_backward(query, key, value, out, log_sum_exp)
        ctx.options = options
        return out

    @staticmethod
    def backward(ctx, grad_out):
        from torch.utils._python_dispatch import _disable_current_modes

        query, key, value, _, _ = ctx.saved_tensors
        leaves = [t.detach().requires_grad_(True) for t in (query, key, value)]
        with _disable_current_modes(), torch.enable_grad():  # the FLOP counter does not see the recompute
            out = NATIVE_SDPA(*leaves, **ctx.options)
        return (*torch.autograd.grad(out, leaves, grad_out), None)


@contextmanager
def _fused_attention():
    """Every `F.scaled_dot_product_attention` (the tokenizers' and the Hugging Face LLM's, both looked up at
    call time; also in gradient checkpointing's recompute) runs as `_FusedAttention` while one sample is
    measured."""
    functional = torch.nn.functional

    def attention(query, key, value, *args, **kwargs):
        kwargs.update(zip(SDPA_ARGS, args))
        if not torch.is_grad_enabled():
            return NATIVE_SDPA(query, key, value, **kwargs)
        return _FusedAttention.apply(query, key, value, kwargs)

    functional.scaled_dot_product_attention = attention
    try:
        yield
    finally:
        functional.scaled_dot_product_attention = NATIVE_SDPA


def _measure_once(run, inputs: torch.Tensor) -> Cost:
    from torch.utils.flop_counter import FlopCounterMode

    saved = {}  # storage -> bytes: a tensor saved by two ops (a conv's output read by the next) counts once

    def pack(tensor):
        saved[tensor.untyped_storage()._cdata] = tensor.untyped_storage().nbytes()
        return tensor

    with FlopCounterMode(display=False) as forward:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor), _fused_attention():
            out = run(inputs)
    with FlopCounterMode(display=False) as backward, _fused_attention():  # checkpointing recomputes here
        out.float().sum().backward()
    return Cost(forward.get_total_flops(), backward.get_total_flops(), saved=float(sum(saved.values())))


def _settle_flags(module: torch.nn.Module) -> None:
    """One-element bool buffers (a codebook's "k-means init done" flag) become plain True: forward code
    branches on them, and a meta tensor has no value to branch on."""
    for sub in module.modules():
        for name, buffer in list(sub._buffers.items()):
            if buffer is not None and buffer.dtype == torch.bool and buffer.numel() == 1:
                del sub._buffers[name]
                setattr(sub, name, True)


def _check_loss_weights(cfg: DictConfig, losses: dict) -> None:
    """Every loss the tokenizer returns has a weight in `loss.quantizer_weights` (else the first step fails)."""
    weights = OmegaConf.select(cfg, "loss.quantizer_weights", default=None) or {}
    missing = sorted(name for name in losses if name.split("/")[-1] not in weights)
    if missing:
        raise ValueError(f"tokenizer losses {missing} have no weight in loss.quantizer_weights")


def part_costs(cfg: DictConfig, model: MetaModel) -> dict[str, Cost]:
    """One sample through each part (meta device): encoder, decoder, projector, LLM, discriminator."""
    res = int(cfg.data.resolution)
    image = torch.empty(1, 3, res, res, device="meta", requires_grad=True)
    tok = model.tokenizer.eval()
    _settle_flags(tok)
    encoded = tok.encode(image.detach())
    _check_loss_weights(cfg, encoded.losses)
    embeddings = encoded.embeddings.detach().requires_grad_(True)  # (1, N, D)
    costs = {"encoder": _measure(lambda x: tok.encode(x).embeddings, image, tok),
             "decoder": _measure(lambda e: tok.decode(e), embeddings, tok)}
    if model.discriminator is not None:
        costs["discriminator"] = _measure(model.discriminator, image, model.discriminator)
    if model.llm is not None:
        hidden = model.llm.config.hidden_size
        if model.projector is not None:
            costs["projector"] = _measure(model.projector, embeddings, model.projector)
        caption = int(cfg.module.max_caption_tokens)
        sequence = torch.empty(1, model.llm_inputs + caption, hidden, device="meta", dtype=model.llm_dtype,
                               requires_grad=True)
        # A ready 4-D causal mask: building one from a 2-D mask branches on its values, which meta lacks.
        length = sequence.shape[1]
        mask = torch.ones(1, 1, length, length, dtype=torch.bool, device="meta").tril()
        model.llm.train()

        def llm(e):
            return model.llm(inputs_embeds=e, attention_mask=mask).logits

        checkpointing = model.llm.is_gradient_checkpointing
        if checkpointing:  # model FLOPs leave out the recomputed forward; memory keeps what checkpointing saves
            model.llm.gradient_checkpointing_disable()
        costs["llm"] = _measure(llm, sequence, model.llm)
        if model.visual_head is not None:
            costs["visual_head"] = _head_cost(model, hidden)
        if checkpointing:
            model.llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            costs["llm"].saved = _measure_once(llm, sequence).saved
    return costs


def _head_cost(model: MetaModel, hidden: int) -> Cost:
    """The visual head and its loss on one sample's visual positions: at K = 131,072 the (N, C, K) logits
    and their log-softmax are among the largest tensors a generation stage keeps. The loss is written out
    here (`visual_token_loss` selects positions by value, which the meta device cannot)."""
    import torch.nn.functional as F

    head = model.visual_head
    states = torch.empty(1, model.llm_inputs, hidden, device="meta", dtype=model.llm_dtype, requires_grad=True)

    def loss(h):
        logits = head(h)  # (1, N, C, V) codes or (1, N, K) bits
        if logits.dim() == 4:
            targets = torch.zeros(logits.shape[:-1], dtype=torch.long, device="meta")
            return F.cross_entropy(logits.flatten(0, -2), targets.flatten())
        return F.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits))

    return _measure(loss, states, head)


# ---- per stage ----------------------------------------------------------------------------------------

TOKENIZER_GROUPS = ("encoder", "quantizer", "decoder", "tokenizer")


TRAIN, PASS = "train", "pass"  # a part's backward: weight and input gradients, or input gradients only


def _used_parts(stage, model: MetaModel) -> dict[str, str | None]:
    """part -> its backward in this stage: TRAIN (it is trained), PASS (frozen, but the gradient crosses it
    to a trained part upstream) or None (forward only). Parts the stage does not run are absent."""
    trained = set(stage.train)
    encoder_trained = bool(trained & {"encoder", "quantizer"})
    decoder_trained = "decoder" in trained
    reads_llm = model.llm is not None and (stage.caption_weight > 0 or stage.generation_weight > 0)
    used: dict[str, str | None] = {"encoder": TRAIN if encoder_trained else None}
    if stage.alpha > 0 or stage.generation_weight > 0 or not reads_llm:
        used["decoder"] = TRAIN if decoder_trained else PASS if encoder_trained else None
    if reads_llm:
        if model.projector is not None:
            used["projector"] = TRAIN if "projector" in trained else PASS if encoder_trained else None
        upstream = encoder_trained or "projector" in trained
        used["llm"] = TRAIN if "llm" in trained else PASS if upstream else None
    if "discriminator" in trained and model.discriminator is not None:
        used["discriminator"] = TRAIN
    if model.visual_head is not None and stage.generation_weight > 0:
        used["visual_head"] = TRAIN if "visual_head" in trained else PASS if "llm" in trained else None
    return used


def stage_flops(stage, model: MetaModel, costs: dict[str, Cost]) -> float:
    total = 0.0
    for part, backward in _used_parts(stage, model).items():
        runs = 2 if part == "discriminator" else 1  # real and reconstructed images
        cost = costs[part]
        total += runs * (cost.forward + {TRAIN: cost.backward, PASS: cost.backward_inputs, None: 0.0}[backward])
    return total


def stage_memory(stage, model: MetaModel, costs: dict[str, Cost], batch: int, world: int,
                 half: float = 1.0) -> dict[str, float]:
    """Expected peak bytes per GPU under DDP and FSDP2 (see the module docstring). `half` scales the float32
    parts' activations: 0.5 under 16-bit mixed precision (autocast keeps their activations in 16 bits)."""
    parts = {"tokenizer": model.tokenizer, "projector": model.projector, "llm": model.llm,
             "discriminator": model.discriminator, "visual_head": model.visual_head}
    trained = set(stage.train)
    weights = trained_bytes = 0
    largest_unit = 0
    for name, part in parts.items():
        if part is None:
            continue
        size = sum(p.numel() * p.element_size() for p in part.parameters())
        weights += size
        largest_unit = max(largest_unit, _largest_unit(part))
        if name in trained or (name == "tokenizer" and trained & set(TOKENIZER_GROUPS)):
            trained_bytes += size
    state = weights + trained_bytes * (1 + ADAM_MOMENTS)  # parameters, gradients, AdamW moments
    used = _used_parts(stage, model)
    activations = batch * sum(costs[p].saved * (2 if p == "discriminator" else 1) * (1 if p == "llm" else half)
                              for p, backward in used.items() if backward)
    return {"ddp": (state + activations) / GIB,
            "fsdp2": (state / world + largest_unit + activations) / GIB}


def _largest_unit(module: torch.nn.Module) -> int:
    """Bytes of the largest block FSDP2 gathers at once: a ModuleList entry (a transformer or res block),
    else the largest direct child."""
    def size(m: torch.nn.Module) -> int:
        return sum(p.numel() * p.element_size() for p in m.parameters())

    blocks = [size(block) for m in module.modules() if isinstance(m, torch.nn.ModuleList) for block in m]
    return max(blocks or [size(child) for child in module.children()] or [0])


# ---- the plan -----------------------------------------------------------------------------------------


# What one sample through each part costs depends on these entries and the LLM's architecture only, so the
# rows of a table that differ in stages, loss weights or seeds share one measurement (seconds to minutes each
# at paper sizes).
COST_KEYS = ("tokenizer", "llm_input", "projector", "module.discriminator", "module.generation",
             "module.token_budgets", "module.max_caption_tokens", "data.resolution", "loss.quantizer_weights")
_measured: dict[str, dict[str, Cost]] = {}  # _costs_key -> part_costs, for this process


def _costs_key(cfg: DictConfig) -> str:
    picked = {}
    for key in COST_KEYS:
        value = OmegaConf.select(cfg, key, default=None)
        picked[key] = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
    if cfg.get("llm"):
        # The LLM's directory is not part of the key (a stand-in's differs per run), its architecture is.
        llm = {k: v for k, v in OmegaConf.to_container(cfg.llm, resolve=True).items() if k != "path"}
        architecture = _llm_config(cfg).to_dict()
        architecture.pop("_name_or_path", None)
        picked["llm"] = {**llm, "architecture": architecture}
    return json.dumps(picked, sort_keys=True, default=str)


def measured_part_costs(cfg: DictConfig, model: MetaModel) -> dict[str, Cost]:
    """part_costs, measured once per distinct model in this process (copies: callers may change them)."""
    key = _costs_key(cfg)
    if key not in _measured:
        _measured[key] = part_costs(cfg, model)
    return {part: replace(cost) for part, cost in _measured[key].items()}


def size_run(cfg: DictConfig, plan: RunPlan) -> None:
    from vistok.training.stages import stages_from_config

    model = build_meta(cfg)
    plan.params = group_parameters(model)
    plan.tokens_per_image = int(model.tokenizer.num_tokens)
    if model.llm is not None:
        plan.llm_sequence = model.llm_inputs + int(cfg.module.max_caption_tokens)
    plan.world_size = _ranks(cfg.trainer.get("devices")) * _ranks(cfg.trainer.get("num_nodes"))
    plan.batch_per_gpu = int(cfg.data.batch_size)
    costs = measured_part_costs(cfg, model)
    half = 0.5 if "16" in str(cfg.trainer.get("precision", "32")) else 1.0
    for stage in stages_from_config(cfg.stages, cfg.get("max_steps_per_stage"), cfg.get("stage_defaults")):
        plan.stages.append(StagePlan(stage.name, stage.steps, list(stage.train), stage_flops(stage, model, costs),
                                     stage_memory(stage, model, costs, plan.batch_per_gpu, plan.world_size, half)))


def _ranks(value) -> int:
    """trainer.devices / num_nodes as a count ("auto" and lists of ids count as what they name, else 1)."""
    if isinstance(value, int):
        return max(1, value)
    if OmegaConf.is_list(value) or isinstance(value, list):
        return max(1, len(value))
    return int(value) if str(value).isdigit() else 1


def dry_run(jobs: list[tuple[str, list[str], int, Path]]) -> list[RunPlan]:
    """jobs: (label, overrides without the seed, seed, run_dir). Runs with equal overrides are built once."""
    from vistok.config import validate

    plans: dict[tuple, RunPlan] = {}
    with config_dir(), tempfile.TemporaryDirectory(prefix="vistok-dry-run-") as scratch:
        for label, overrides, seed, run_dir in jobs:
            key = (label, tuple(overrides))
            if key in plans:
                plans[key].seeds.append(seed)
                continue
            plan = plans[key] = RunPlan(label, overrides, [seed])
            try:
                cfg = compose_run([*overrides, f"seed={seed}"], run_dir)
                plan.inputs = missing_inputs(cfg, Path(scratch) / f"llm-{len(plans)}")
                validate(cfg)
                size_run(cfg, plan)
            except Exception as error:  # noqa: BLE001 - every failing run is named, none stops the plan
                plan.error = f"{type(error).__name__}: {error}".strip().splitlines()[0][:400]
    return list(plans.values())


def _count(n: float) -> str:
    for unit, size in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.3g}{unit}"
    return f"{n:.3g}"


def render(plans: list[RunPlan]) -> str:
    lines = []
    for plan in plans:
        seeds = ",".join(str(s) for s in plan.seeds)
        lines.append(f"{plan.label}  (seeds {seeds})  {' '.join(plan.overrides)}")
        if plan.error:
            lines.append(f"  FAIL  {plan.error}")
            continue
        if plan.inputs:
            lines.append(f"  needs  {'; '.join(plan.inputs)}")
        params = ", ".join(f"{k} {_count(v)}" for k, v in plan.params.items())
        lines.append(f"  params  {params}")
        sequence = f", LLM sequence {plan.llm_sequence}" if plan.llm_sequence else ""
        lines.append(f"  tokens/image {plan.tokens_per_image}{sequence}; {plan.world_size} GPU(s) x batch "
                     f"{plan.batch_per_gpu}")
        for stage in plan.stages:
            lines.append(f"  stage {stage.name:<10} {stage.steps:>7} steps  train [{', '.join(stage.train)}]  "
                         f"{_count(stage.flops_per_sample)}FLOP/sample  memory/GPU ddp "
                         f"{stage.memory_gib['ddp']:.2f} GiB, fsdp2 {stage.memory_gib['fsdp2']:.2f} GiB")
    failed = [p.label for p in plans if p.error]
    lines.append(f"dry run: {len(plans) - len(failed)}/{len(plans)} runs compose and build"
                 + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    return "\n".join(lines)
