"""Keep the console readable: one log line per event, no known-harmless library warnings."""

from __future__ import annotations

import logging
import warnings

# Each is understood and harmless here; see the comment beside it.
_HARMLESS_WARNINGS = (
    r".*IterableDataset.*has `__len__` defined.*",  # our streams have exact per-rank lengths by design
    r".*module\(s\) in eval mode at the start of training.*",  # frozen stage groups are in eval mode on purpose
    r".*LeafSpec.*is deprecated.*",  # lightning internals on recent torch
    r".*The anonymous setting has no effect.*",  # wandb offline
    r".*smaller than the logging interval.*",  # smoke runs
    r".*`weights_only` was not set.*",  # lightning loading our own checkpoints
)


def quiet_libraries() -> None:
    """Hydra already logs to the console and train.log; drop Lightning's second console handler."""
    for pattern in _HARMLESS_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
                logger.removeHandler(handler)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # "Loading weights" bars for a model of a few MB
    except ImportError:  # pragma: no cover - transformers is a dependency
        pass
