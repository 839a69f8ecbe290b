"""metrics.json, reconstruction grids and sample captions: what a run leaves for people to read."""

from __future__ import annotations

import json
from pathlib import Path

from vistok.atomic import write_text
from vistok.eval.images import captioned_images, image_grid
from vistok.training import prefix_eval


STAGE_RECORD = ("steps", "wall_seconds")  # what a stage's entry holds besides its metrics


class RunReport:
    """metrics.json = {"experiment", "steps", "wall_seconds", "complete", "final": {...}, "stages": {name: {...}}}.

    `complete` is false from the first stage written until every stage has finished: while it is false,
    `final` holds the newest finished stage's metrics, not the run's. Each stage's entry records the steps
    it actually trained and the wall time of its training and validation; the run's `steps` and
    `wall_seconds` are their sums over the experiment's stages. Written after every stage (so an
    interrupted run still shows what it finished) and re-read on resume.
    """

    def __init__(self, path: Path, experiment: str):
        self.path = Path(path)
        self.data = {"experiment": experiment, "steps": 0, "wall_seconds": 0.0, "complete": False, "final": {},
                     "stages": {}}
        if self.path.exists():
            previous = json.loads(self.path.read_text())
            if previous.get("experiment") == experiment:
                self.data.update({k: previous[k] for k in ("steps", "wall_seconds", "complete", "final", "stages")
                                  if k in previous})

    @property
    def final(self) -> dict:
        return self.data["final"]

    def add_stage(self, name: str, metrics: dict, steps: int, wall_seconds: float) -> None:
        self.data["stages"][name] = {"steps": int(steps), "wall_seconds": round(wall_seconds, 1), **metrics}
        self.data["final"] = dict(metrics)
        self.data["complete"] = False
        self._write()

    def finish(self, stage_names: list[str], data_skipped: int, nan_skipped: int = 0,
               captions_truncated: int | None = None, complete: bool = True) -> None:
        """Sum the experiment's stages into the run's totals; `final` = the last stage's metrics + counters.

        `complete=False` when run-level metrics are still to come (`add_final` completes the run).
        """
        recorded = [self.data["stages"][name] for name in stage_names if name in self.data["stages"]]
        self.data["steps"] = sum(int(entry.get("steps", 0)) for entry in recorded)
        self.data["wall_seconds"] = round(sum(float(entry.get("wall_seconds", 0.0)) for entry in recorded), 1)
        if recorded:
            self.data["final"] = {k: v for k, v in recorded[-1].items() if k not in STAGE_RECORD}
        self.data["final"]["data_skipped"] = data_skipped
        if nan_skipped:
            self.data["final"]["nan_skipped"] = nan_skipped
        if captions_truncated is not None:  # runs with an LLM
            self.data["final"]["captions_truncated"] = captions_truncated
        self.data["complete"] = complete
        self._write()

    def add_final(self, metrics: dict) -> None:
        """Run-level metrics measured after the last stage (mini-GenEval), merged into `final`; the run is
        complete once they are in."""
        self.data["final"].update(metrics)
        self.data["complete"] = True
        self._write()

    def _write(self) -> None:
        write_text(self.path, json.dumps(self.data, indent=2, sort_keys=False))


def save_stage_pictures(module, stage: str, out_dir: Path, loggers: list) -> None:
    """images/recon_<stage>.png (top: inputs, bottom: reconstructions) and sample captions beside metrics.json."""
    preview = module.val_preview
    if not preview:
        return
    images_dir = out_dir / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    grid = image_grid([preview["images"], preview["recon"]])
    grid.save(images_dir / f"recon_{stage}.png")
    if prefix_eval.applies(module.tokenizer):
        save_prefix_pictures(module, stage, images_dir, loggers)
    samples = getattr(module, "val_samples", [])
    if samples:
        caption_grid = captioned_images(preview["caption_images"][: len(samples)], [s.reference for s in samples],
                                        [s.generated for s in samples])
        caption_grid.save(images_dir / f"captions_{stage}.png")
        _append_captions(out_dir / "sample_captions.json", stage, samples)
    for logger in loggers:
        if hasattr(logger, "log_image"):
            logger.log_image(key=f"recon/{stage}", images=[grid])
        if samples and hasattr(logger, "log_table"):
            # One row per sample: the image, the caption it should get and the one the LLM wrote.
            rows = [[s.key, wandb_image(s.image), s.reference, s.generated] for s in samples]
            logger.log_table(key=f"captions/{stage}", columns=["key", "image", "reference", "generated"], data=rows)


def wandb_image(image):
    """A (3, H, W) image in [-1, 1] as a wandb image (wandb imported only when a wandb logger asks)."""
    import wandb

    return wandb.Image(image_grid([image[None]]))


def _append_captions(path: Path, stage: str, samples: list) -> None:
    data = json.loads(path.read_text()) if path.exists() else {}
    data[stage] = [{"key": s.key, "reference": s.reference, "generated": s.generated,
                    "image": f"images/captions_{stage}.png", "column": i} for i, s in enumerate(samples)]
    write_text(path, json.dumps(data, indent=2))


def save_prefix_pictures(module, stage: str, images_dir: Path, loggers: list) -> None:
    """Flexible-length tokenizers: images/psnr_vs_k_<stage>.png (from the stage's psnr@k) and
    images/prefix_<stage>.png (the preview images decoded from k = 1, 2, 4, ..., N tokens)."""
    from vistok.eval.prefix_plots import plot_psnr_vs_k, prefix_grid

    points = prefix_eval.curve(module.val_metrics)
    pictures = {}
    if points:
        pictures["psnr_vs_k"] = plot_psnr_vs_k(points, images_dir / f"psnr_vs_k_{stage}.png", title=f"PSNR@k ({stage})",
                                               baseline=module.val_metrics.get("psnr_mean_image"))
    preview = module.val_preview.get("prefix")  # this stage's last validation pass
    if preview:
        recons = {int(key[1:]): value for key, value in preview.items() if key.startswith("k")}
        prefix_grid(preview["images"], recons).save(images_dir / f"prefix_{stage}.png")
        pictures["prefix"] = images_dir / f"prefix_{stage}.png"
    for logger in loggers:
        if hasattr(logger, "log_image"):
            for key, path in pictures.items():
                logger.log_image(key=f"{key}/{stage}", images=[str(path)])
