"""How the LLM reads visual tokens: the one place where a tokenizer's output becomes LLM input embeddings.

An experiment picks the adapter by config `_target_` (configs/llm_input/):
- `ProjectedEmbeddings` (ETT): the codebook embeddings (B, N, D) go through the model's projector, so the caption
  loss reaches the tokenizer.
- `CodeRows` (ETT Table 4's discrete-index baseline): each code id is a new row of the LLM's embedding table; the
  tokenizer gets no caption gradient through ids.

Both also embed ids the LLM wrote itself (`from_indices`), so generation feeds its tokens back exactly as
training read them.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING

import torch

from vistok.tokenizers.base import TokenizerOutput

if TYPE_CHECKING:
    from vistok.models.unified import UnifiedModel


class VisualInput:
    """Base adapter. `name` is what exports record as `llm_input` (vistok.json)."""

    name = ""
    needs_projector = False

    def attach(self, model: UnifiedModel) -> None:
        """Check the model's parts once, when the model is built (and add what the adapter needs to them)."""

    def from_output(self, model: UnifiedModel, out: TokenizerOutput, budget: int | None = None) -> torch.Tensor:
        """Tokenizer output -> (B, N', hidden); N' = `budget` tokens when given (TokenFLEX)."""
        raise NotImplementedError

    def from_indices(self, model: UnifiedModel, indices: torch.Tensor) -> torch.Tensor:
        """Ids (B, n, C) -> (B, n, hidden), exactly as `from_output` reads the same tokens in eval mode."""
        raise NotImplementedError

    def check_budgets(self, model: UnifiedModel, budgets: list[int]) -> None:
        """Fail at construction, not mid-run, when the LLM cannot read `budgets` visual tokens."""
        tokenizer = model.tokenizer
        if tokenizer.ordered and max(budgets) > tokenizer.num_tokens:
            raise ValueError(f"token budgets {budgets} exceed the tokenizer's {tokenizer.num_tokens} tokens")


class ProjectedEmbeddings(VisualInput):
    """Codebook embeddings through the projector. A budget keeps the first tokens of an ordered (flex) tokenizer;
    on a 2-D grid the projector pools the grid to the budget."""

    name = "embeddings"
    needs_projector = True

    def attach(self, model: UnifiedModel) -> None:
        if model.projector is None:
            raise ValueError("llm_input=embeddings feeds codebook embeddings through a projector, but the model "
                             "has none; choose one (projector=mlp) or use llm_input=indices")

    def from_output(self, model: UnifiedModel, out: TokenizerOutput, budget: int | None = None) -> torch.Tensor:
        if budget is None or model.tokenizer.ordered:
            return model.projector(out.embeddings[:, :budget])
        return model.projector(out.embeddings, num_tokens=budget)

    def from_indices(self, model: UnifiedModel, indices: torch.Tensor) -> torch.Tensor:
        return model.projector(model.tokenizer.lookup(indices))

    def check_budgets(self, model: UnifiedModel, budgets: list[int]) -> None:
        super().check_budgets(model, budgets)
        pools = "num_tokens" in inspect.signature(model.projector.forward).parameters
        if not model.tokenizer.ordered and not pools:
            raise ValueError(f"token budgets on a 2-D grid need a pooling projector (projector=swiglu), "
                             f"got {type(model.projector).__name__}")


class CodeRows(VisualInput):
    """Code ids (the first stream) as new rows of the LLM's embedding table, added when the model is built."""

    name = "indices"

    def attach(self, model: UnifiedModel) -> None:
        if model.projector is not None:
            raise ValueError("llm_input=indices reads code ids, not embeddings: set projector=null")
        model.llm.add_visual_vocab(model.tokenizer.codebook_size)

    def from_output(self, model: UnifiedModel, out: TokenizerOutput, budget: int | None = None) -> torch.Tensor:
        return self.from_indices(model, out.indices[:, :budget])

    def from_indices(self, model: UnifiedModel, indices: torch.Tensor) -> torch.Tensor:
        return model.llm.embed_visual_ids(indices[..., 0])

    def check_budgets(self, model: UnifiedModel, budgets: list[int]) -> None:
        super().check_budgets(model, budgets)
        if not model.tokenizer.ordered:
            raise ValueError("token budgets on a 2-D grid tokenizer need llm_input=embeddings (pooled embeddings)")


ADAPTERS = {adapter.name: adapter for adapter in (ProjectedEmbeddings, CodeRows)}


def adapter_from_config(node) -> VisualInput:
    """The adapter a stored config names: `{_target_: <one of the two classes>}`, or the name a checkpoint of an
    earlier version stored under `module.llm_input` ("embeddings" | "indices"). Nothing else is imported."""
    if isinstance(node, str):
        name = node
    else:
        target = (node or {}).get("_target_", "")
        name = next((a.name for a in ADAPTERS.values() if target == f"{a.__module__}.{a.__qualname__}"), target)
    if name not in ADAPTERS:
        raise ValueError(f"llm_input: unknown visual-input adapter '{name}' (known: {sorted(ADAPTERS)})")
    return ADAPTERS[name]()
