"""TokenFLEX (arXiv 2504.03154): the number of visual tokens the LLM reads is drawn per training batch.

`mode="expected"` trains every batch at every budget instead, each loss weighted by its budget's probability:
the expected loss of the per-batch draw without its variance, at one LLM pass per budget (a vistok option,
not the paper's recipe: each budget gets a gradient on every step rather than on 20-50% of them).

Budgets come from a configured set with configured probabilities (paper: {64, 144, 256} with 2:3:5). A 2-D
grid tokenizer reaches a budget by adaptive pooling in the projector; an ordered (flex) tokenizer by
keeping the first k tokens. Validation scores the LLM at every budget (`caption_token_accuracy@<n>`).
"""

from __future__ import annotations

import torch


class TokenBudgetSampler:
    """Draws one token budget per call from `budgets` with probabilities `probs` (uniform when None).

    Its own seeded generator: the draws do not move the global RNG, and every rank draws the same budget.
    """

    MODES = ("batch", "expected")

    def __init__(self, budgets: list[int], probs: list[float] | None = None, seed: int = 0, mode: str = "batch"):
        if mode not in self.MODES:
            raise ValueError(f"budget mode must be one of {self.MODES}, got '{mode}'")
        self.mode = mode
        if not budgets or any(int(b) < 1 for b in budgets):
            raise ValueError(f"token budgets must be positive integers, got {budgets}")
        probs = [1.0] * len(budgets) if probs is None else list(probs)
        if len(probs) != len(budgets) or any(p < 0 for p in probs) or sum(probs) <= 0:
            raise ValueError(f"budget probabilities {probs} do not fit budgets {budgets}")
        self.budgets = [int(b) for b in budgets]
        self.probs = torch.tensor(probs, dtype=torch.float64) / sum(probs)
        self.generator = torch.Generator().manual_seed(seed)

    def sample(self) -> int:
        return self.budgets[int(torch.multinomial(self.probs, 1, generator=self.generator))]

    def batch_budgets(self) -> list[tuple[int, float]]:
        """The budgets one training batch is trained at, with the weight of each one's caption loss."""
        if self.mode == "expected":
            return list(zip(self.budgets, self.probs.tolist()))
        return [(self.sample(), 1.0)]
