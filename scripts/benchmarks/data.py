"""Data: vistok's shard pipeline vs raw webdataset decoding of the same shards, and the pipeline's images/s
vs what a training step consumes."""

from __future__ import annotations

import itertools

import numpy as np
import torch
import webdataset as wds
from PIL import Image

from scripts.benchmarks.common import compose
from scripts.benchmarks.timing import interleaved, verdict

PIPELINE_TARGET = 0.9
HEADROOM_TARGET = 10.0
SHUFFLE_BUFFER = 1000  # make_train_loader's default


def _raw_batches(urls: list[str], batch_size: int):
    """Plain webdataset: read, decode PNG with PIL, to a float tensor in [-1, 1], stack. Nothing else.

    The tensor is made the way vistok's `load_image` makes it (one float array scaled in place, no copy
    of an image that is already RGB), so the ratio measures the pipeline around the decode, not two
    ways of writing the conversion.
    """
    def to_tensor(image: Image.Image) -> torch.Tensor:
        array = np.asarray(image if image.mode == "RGB" else image.convert("RGB"), dtype=np.float32)
        array /= 127.5
        array -= 1.0
        return torch.from_numpy(array).permute(2, 0, 1)

    dataset = wds.WebDataset(urls, shardshuffle=False, empty_check=False).decode("pil").to_tuple("png", "txt")
    samples = iter(dataset)
    while True:
        chunk = list(itertools.islice(samples, batch_size))
        if len(chunk) < batch_size:
            samples = iter(dataset)
            continue
        yield torch.stack([to_tensor(image) for image, _ in chunk]), [text for _, text in chunk]


def data_pipeline(batches: int = 5, rounds: int = 21, train_step_s: float | None = None) -> dict:
    from hydra.utils import instantiate

    from vistok.data.wds import make_train_loader

    cfg = compose(["experiment=ett_mini"])
    datamodule = instantiate(cfg.data)
    datamodule.prepare()
    urls, size = datamodule.train_urls, int(cfg.data.batch_size)
    vistok_batches = iter(make_train_loader(urls, size, int(cfg.data.resolution), 0, 1, 0, 10 ** 6, 0))
    raw_batches = _raw_batches(urls, size)
    for _ in range(SHUFFLE_BUFFER // size + 2):  # steady state: the shuffle buffer is full before timing
        next(vistok_batches)
    # Seconds raw / seconds vistok in each round is vistok's throughput relative to the baseline's.
    raw_s, vistok_s, ratio = interleaved(lambda: next(raw_batches), lambda: next(vistok_batches),
                                         batches, rounds)
    result = {"vistok_images_per_s": size / vistok_s, "raw_wds_images_per_s": size / raw_s, "ratio": ratio}
    print(f"data_pipeline: vistok {result['vistok_images_per_s']:.0f} images/s vs raw webdataset "
          f"{result['raw_wds_images_per_s']:.0f} images/s (one process, batch {size}): ratio {ratio:.2f} "
          f"(median of {rounds} rounds) "
          f"{verdict(result['ratio'], PIPELINE_TARGET, higher_is_better=True)}")
    if train_step_s:
        result["train_images_per_s"] = size / train_step_s
        result["headroom"] = result["vistok_images_per_s"] / result["train_images_per_s"]
        print(f"  training consumes {result['train_images_per_s']:.0f} images/s: the pipeline has "
              f"{result['headroom']:.1f}x headroom {verdict(result['headroom'], HEADROOM_TARGET, True)}")
    return result
