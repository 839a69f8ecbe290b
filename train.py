"""Train a vistok experiment: `python train.py [experiment=NAME] [key=value ...]`.

The default experiment is `ett_mini`: a 2-D VQ tokenizer and a tiny LLM trained jointly (ETT) on the
embedded generated dataset, on CPU, in a few minutes. See README.md and configs/experiment/.
"""

import os

import hydra
from omegaconf import DictConfig

# Offline by default: nothing is ever uploaded or downloaded unless the user asks for it.
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_SILENT", "true")


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> dict:
    from vistok.config import validate  # imported here so `--help` stays fast

    validate(cfg)
    from vistok.training.runner import run

    metrics = run(cfg)
    if metrics:
        shown = {k: round(v, 4) for k, v in metrics.items() if "/" not in k}
        print(f"final metrics: {shown}")
    return metrics  # a sweep's launcher (submitit) hands it back to the driver


if __name__ == "__main__":
    main()
