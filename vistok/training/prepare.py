"""The prepare phase of a run: what the run reads from disk is built before any model is built.

- The tiny LLM (`llm.build`): a Llama-architecture model built from config and a BPE tokenizer trained on the
  training captions, saved at `llm.path`; the model then loads it like any Hugging Face directory.
- A semantic teacher with a `build` section (`module/semantic=mini_clip`): trained on the dataset's image-caption
  pairs and saved; its folder goes into the teacher's `path`, which the module then loads.
- The mini-GenEval judge (`geneval.enabled`): an attribute classifier trained on the dataset's real images.

Each is cached and reused by later runs (a second run with the same settings builds nothing). Instantiating the
config afterwards only builds objects: nothing in `build_module` trains or writes anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict


@dataclass
class Prepared:
    """What the prepare phase built that the run passes on (the LLM is passed on by `llm.path`)."""

    judge: object | None = None  # vistok.eval.attribute_classifier.TrainedClassifier, with geneval


def prepare_run(cfg: DictConfig, datamodule) -> Prepared:
    """Build the run's prerequisites (module docstring). `datamodule` must be prepared (`prepare()`)."""
    if cfg.get("llm") and cfg.llm.get("build"):
        from vistok.models.llm import build_tiny_llm

        build_tiny_llm(cfg.llm.path, datamodule.train_captions(), **cfg.llm.build)
    _build_teacher(cfg, datamodule)
    prepared = Prepared()
    if OmegaConf.select(cfg, "geneval.enabled", default=False):
        if not OmegaConf.select(cfg, "module.generation", default=False):
            raise ValueError("geneval.enabled=true needs a model that generates (module.generation=true)")
        from vistok.eval.attribute_classifier import ensure_classifier

        prepared.judge = ensure_classifier(Path(cfg.paths.cache_dir) / "geneval", datamodule.train_urls,
                                           datamodule.val_urls, datamodule.resolution)
    return prepared


def _build_teacher(cfg: DictConfig, datamodule) -> None:
    """Build the teacher that `module.semantic.teacher.build` describes and point `teacher.path` at it."""
    teacher = OmegaConf.select(cfg, "module.semantic.teacher")
    if teacher is None or not teacher.get("build"):
        return
    from hydra.utils import instantiate

    with open_dict(teacher):
        teacher.path = str(instantiate(teacher.build, data=datamodule))
