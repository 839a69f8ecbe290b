"""rFID, LPIPS and linear probes: exact on known inputs, from local weight files only, with clear errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from vistok.data.generated import SLOTS, caption_from_attributes
from vistok.eval.features import ConvFeatures, load_feature_extractor
from vistok.eval.fid import RFID, FeatureStats, frechet_distance
from vistok.eval.inception import FIDInception
from vistok.data.schema import generated_captions
from vistok.eval.probe import LinearProbe, ProbeFeatures, chance_accuracy, slot_labels

SCHEMA = generated_captions()
from vistok.eval.tokenizer_eval import evaluate_tokenizer
from vistok.tokenizers.base import Tokenizer, TokenizerOutput


@pytest.fixture(autouse=True)
def one_thread():
    """Small ops: one thread is as fast, and far faster when other work shares the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---------------------------------------------------------------- Fréchet distance


def numpy_reference(a: np.ndarray, b: np.ndarray) -> float:
    """Brute force from the definition: general (non-symmetric) eigendecomposition of sigma_a @ sigma_b."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    sigma_a, sigma_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    values, vectors = np.linalg.eig(sigma_a @ sigma_b)
    sqrt_product = (vectors * np.sqrt(values.astype(complex))) @ np.linalg.inv(vectors)
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(sigma_a + sigma_b - 2 * sqrt_product).real)


def stats_of(features: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.from_numpy(features.mean(0)), torch.from_numpy(np.cov(features, rowvar=False))


def test_frechet_distance_matches_brute_force_reference_on_random_gaussians():
    rng = np.random.default_rng(0)
    for dim in (2, 8, 32):
        a = rng.normal(size=(500, dim)) @ rng.normal(size=(dim, dim))
        b = rng.normal(size=(400, dim)) @ rng.normal(size=(dim, dim)) + rng.normal(size=dim)
        ours = frechet_distance(*stats_of(a), *stats_of(b))
        assert ours == pytest.approx(numpy_reference(a, b), rel=1e-8)
        assert ours > 1.0


def test_frechet_distance_of_diagonal_gaussians_is_closed_form():
    mu1, mu2 = torch.tensor([0.0, 1.0, 2.0]), torch.tensor([1.0, 1.0, 0.0])
    var1, var2 = torch.tensor([1.0, 4.0, 9.0]), torch.tensor([4.0, 4.0, 1.0])
    expected = 1 + 0 + 4 + ((var1.sqrt() - var2.sqrt()) ** 2).sum()  # |mu1-mu2|^2 + sum (s1 - s2)^2
    got = frechet_distance(mu1, torch.diag(var1), mu2, torch.diag(var2))
    assert got == pytest.approx(float(expected), rel=1e-12)


def test_frechet_distance_of_identical_rank_deficient_statistics_is_zero():
    features = torch.randn(10, 64, dtype=torch.float64) * 3  # 10 samples, 64 dims: covariance of rank 9
    stats = FeatureStats()
    stats.update(features)
    mean, cov = stats.mean(), stats.covariance()
    assert frechet_distance(mean, cov, mean, cov) == pytest.approx(0.0, abs=1e-6)


def test_streaming_statistics_match_the_whole_set_even_far_from_zero():
    rng = np.random.default_rng(1)
    features = rng.normal(size=(300, 6)) * 0.01 + 1e4  # a large offset: naive sums would lose the covariance
    stats = FeatureStats()
    for chunk in np.array_split(features, 7):
        stats.update(torch.from_numpy(chunk))
    np.testing.assert_allclose(stats.mean().numpy(), features.mean(0), rtol=1e-12)
    expected = np.cov(features, rowvar=False)
    np.testing.assert_allclose(stats.covariance().numpy(), expected, rtol=1e-6, atol=1e-12)


# ---------------------------------------------------------------- feature extractors from local files


@pytest.fixture
def conv_weights(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "conv_features.safetensors"
    save_file(ConvFeatures([8, 16]).state_dict(), str(path))
    return path


def test_conv_features_load_from_safetensors_with_widths_from_the_file(conv_weights):
    extractor = load_feature_extractor(conv_weights)
    assert isinstance(extractor, ConvFeatures) and extractor.feature_dim == 16
    assert extractor(torch.rand(3, 3, 16, 16)).shape == (3, 16)


def test_missing_weight_file_names_the_path_and_what_to_put_there(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.pth.*pt_inception-2015-12-05"):
        RFID(tmp_path / "nope.pth")


def test_weight_file_of_unknown_layout_is_refused(tmp_path):
    save_file({"encoder.weight": torch.zeros(2, 2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="neither FID Inception nor ConvFeatures"):
        load_feature_extractor(tmp_path / "other.safetensors")
    save_file({"convs.0.weight": torch.zeros(4, 3, 3, 3)}, str(tmp_path / "partial.safetensors"))
    with pytest.raises(ValueError, match=r"missing \['convs.0.bias'\]"):
        load_feature_extractor(tmp_path / "partial.safetensors")


def test_fid_inception_has_the_checkpoint_layout_and_gives_2048_features(tmp_path):
    torch.manual_seed(0)
    model = FIDInception()
    state = {k: v for k, v in model.state_dict().items() if "num_batches_tracked" not in k}
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    # Names and shapes of the FID Inception checkpoint (torchvision Inception3 naming, no aux head).
    assert shapes["Conv2d_1a_3x3.conv.weight"] == (32, 3, 3, 3)
    assert shapes["Mixed_6e.branch7x7dbl_5.conv.weight"] == (192, 192, 1, 7)
    assert shapes["Mixed_7c.branch3x3dbl_3b.conv.weight"] == (384, 384, 3, 1)
    assert shapes["Mixed_7c.branch_pool.conv.weight"] == (192, 2048, 1, 1)
    weights = sum(v.numel() for k, v in state.items() if "running_" not in k)
    assert weights == 21_785_568  # Inception-v3 without the aux head and the classifier
    state.update({"fc.weight": torch.zeros(1008, 2048), "fc.bias": torch.zeros(1008)})  # as the file holds
    torch.save(state, tmp_path / "pt_inception.pth")
    extractor = load_feature_extractor(tmp_path / "pt_inception.pth")
    assert isinstance(extractor, FIDInception)
    assert torch.equal(extractor.Mixed_6b.branch7x7_2.conv.weight, state["Mixed_6b.branch7x7_2.conv.weight"])
    features = extractor(torch.rand(1, 3, 16, 16) * 2 - 1)
    assert features.shape == (1, 2048) and torch.isfinite(features).all()


# ---------------------------------------------------------------- rFID and LPIPS end to end


class PixelTokenizer(Tokenizer):
    """Every pixel is a token (N = H*W, D = 3); decode adds `noise`: a reconstruction error we control."""

    def __init__(self, noise: float = 0.0, resolution: int = 16):
        super().__init__()
        self.noise, self.resolution = noise, resolution
        self.num_tokens, self.embed_dim, self.codebook_sizes = resolution * resolution, 3, (8,)

    def encode(self, images, num_tokens=None):
        embeddings = images.flatten(2).transpose(1, 2)  # (B, H*W, 3)
        indices = ((embeddings[..., :1] + 1) * 4).long().clamp(0, 7)  # (B, H*W, 1): brightness bins
        return TokenizerOutput(indices, embeddings)

    def decode(self, embeddings, mask=None):
        images = embeddings.transpose(1, 2).reshape(-1, 3, self.resolution, self.resolution)
        return images + self.noise * torch.randn(images.shape, generator=torch.Generator().manual_seed(0))


def smooth_images(count: int, seed: int) -> torch.Tensor:
    """(count, 3, 16, 16) in [-1, 1]: low-frequency colour fields (not noise)."""
    coarse = torch.rand(count, 3, 4, 4, generator=torch.Generator().manual_seed(seed)) * 2 - 1
    return torch.nn.functional.interpolate(coarse, size=16, mode="bilinear", align_corners=False)


@pytest.fixture
def lpips_weights(tmp_path):
    from vistok.losses.perceptual import _CHANNELS, _vgg_features

    torch.manual_seed(0)
    torch.save({f"features.{k}": v for k, v in _vgg_features().state_dict().items()}, tmp_path / "vgg16.pth")
    torch.save({f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1) for i, c in enumerate(_CHANNELS)},
               tmp_path / "lpips_vgg.pth")
    return str(tmp_path / "vgg16.pth"), str(tmp_path / "lpips_vgg.pth")


def evaluate_with(noise: float, conv_weights, lpips_weights) -> dict[str, float]:
    from vistok.losses.perceptual import LPIPS

    loader = [{"image": smooth_images(32, seed)} for seed in range(3)]
    return evaluate_tokenizer(PixelTokenizer(noise), loader, LPIPS(*lpips_weights), RFID(conv_weights))


def test_rfid_and_lpips_are_zero_for_identical_images_and_grow_with_the_error(conv_weights, lpips_weights):
    exact = evaluate_with(0.0, conv_weights, lpips_weights)
    assert exact["images"] == 96
    assert exact["rfid"] == pytest.approx(0.0, abs=1e-6) and exact["lpips"] == pytest.approx(0.0, abs=1e-6)
    slight = evaluate_with(0.05, conv_weights, lpips_weights)
    strong = evaluate_with(0.5, conv_weights, lpips_weights)
    assert 0 < slight["rfid"] < strong["rfid"] and 0 < slight["lpips"] < strong["lpips"]


# ---------------------------------------------------------------- linear probes


def random_attributes(rng: np.random.Generator, count: int) -> list[dict[str, str]]:
    return [{slot: values[rng.integers(len(values))] for slot, values in SLOTS.items()} for _ in range(count)]


def encoded_batch(attributes: list[dict[str, str]], informative: bool, rng: np.random.Generator):
    """Token s holds slot s's value: one-hot in that slot's own dims (informative) or pure noise."""
    sizes = [len(v) for v in SLOTS.values()]
    offsets = np.cumsum([0, *sizes[:-1]])
    noise = rng.normal(scale=0.1, size=(len(attributes), len(SLOTS), sum(sizes)))
    embeddings = torch.from_numpy(noise).float()  # (B, slots, D)
    indices = torch.from_numpy(rng.integers(sum(sizes), size=(len(attributes), len(SLOTS), 1)))
    if informative:
        for b, attrs in enumerate(attributes):
            for s, (slot, values) in enumerate(SLOTS.items()):
                code = offsets[s] + values.index(attrs[slot])
                embeddings[b, s, code] += 1.0
                indices[b, s, 0] = int(code)
    captions = [caption_from_attributes(a) for a in attributes]
    return TokenizerOutput(indices, embeddings), captions


def probe_on(informative: bool, seed: int = 0) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    codebook_sizes = (sum(len(v) for v in SLOTS.values()),)
    train, probe = ProbeFeatures(schema=SCHEMA), LinearProbe(schema=SCHEMA)
    for _ in range(4):
        out, captions = encoded_batch(random_attributes(rng, 100), informative, rng)
        train.update(out, captions, codebook_sizes)
        out, captions = encoded_batch(random_attributes(rng, 100), informative, rng)
        probe.update(out, captions, codebook_sizes)
    probe.train = train
    return probe.compute()


def test_probe_reads_attributes_that_embeddings_encode_linearly():
    metrics = probe_on(informative=True)
    for name in ("probe_accuracy", "probe_accuracy/histogram", "probe_accuracy/flat"):
        assert metrics[name] > 0.95, (name, metrics[name])
    assert all(metrics[f"probe_accuracy/{slot}"] > 0.9 for slot in SLOTS)


def test_probe_is_at_chance_on_random_embeddings():
    metrics = probe_on(informative=False)
    chance = chance_accuracy(SCHEMA)
    assert chance == pytest.approx((1 / 2 + 1 / 6 + 1 / 4 + 1 / 5 + 1 / 4) / 5)
    for name in ("probe_accuracy", "probe_accuracy/histogram", "probe_accuracy/flat"):
        assert abs(metrics[name] - chance) < 0.08, (name, metrics[name], chance)


def test_probe_ignores_masked_tokens_and_captions_without_every_slot():
    assert slot_labels("a photo of a dog", SCHEMA) is None
    assert slot_labels("a large red circle at left with blue mark", SCHEMA) == [1, 0, 0, 0, 2]
    rng = np.random.default_rng(0)
    out, captions = encoded_batch(random_attributes(rng, 4), True, rng)
    mask = torch.tensor([[True, True, True, False, False]]).expand(4, -1)
    changed = out.embeddings.clone()
    changed[:, 3:] = 100.0  # behind the mask: must not reach any feature
    a, b = ProbeFeatures(schema=SCHEMA), ProbeFeatures(schema=SCHEMA)
    a.update(TokenizerOutput(out.indices, out.embeddings, mask), captions, (19,))
    b.update(TokenizerOutput(out.indices, changed, mask), [*captions[:3], "no slots here"], (19,))
    assert b.count == 3
    for name in ("pooled", "flat", "codes"):
        assert torch.equal(a.tensors()[name][:3], b.tensors()[name]), name
    assert (a.tensors()["codes"][:, 3:] == -1).all()


def test_probe_reports_nothing_for_data_without_generated_captions():
    probe = LinearProbe(schema=SCHEMA)
    out, captions = encoded_batch(random_attributes(np.random.default_rng(0), 50), True, np.random.default_rng(0))
    probe.update(out, ["a photo"] * 50, (19,))
    assert probe.compute() == {} and "not computed" in probe.protocol()["status"]
    no_schema = LinearProbe()  # plain shards: the data config has no caption schema
    no_schema.update(out, captions, (19,))
    assert no_schema.compute() == {} and "no caption schema" in no_schema.protocol()["status"]


# ---------------------------------------------------------------- scripts.evaluate records every protocol

TINY_VQ = {
    "_target_": "vistok.tokenizers.vq.VQTokenizer",
    "resolution": 16,
    "embed_dim": 8,
    "encoder": {"_target_": "vistok.tokenizers.modules.conv.ConvEncoder", "out_dim": 8, "base_channels": 8,
                "ch_mult": [1, 2]},
    "quantizer": {"_target_": "vistok.tokenizers.quantizers.vq.VectorQuantizer", "dim": 8,
                  "codebook_size": 32},
    "decoder": {"_target_": "vistok.tokenizers.modules.conv.ConvDecoder", "in_dim": 8, "base_channels": 8,
                "ch_mult": [1, 2]},
}


def test_evaluate_script_reports_rfid_lpips_and_probes_with_protocols(tmp_path, conv_weights, lpips_weights):
    from scripts.evaluate import main
    from vistok import save_tokenizer
    from vistok.data.generated import write_shards
    from vistok.export import build_from_config

    torch.manual_seed(0)
    tokenizer = save_tokenizer(build_from_config(TINY_VQ).eval(), TINY_VQ, tmp_path / "tok", {"step": 0})
    write_shards(str(tmp_path / "val"), "val", 60, seed=1, resolution=16, samples_per_shard=30)
    write_shards(str(tmp_path / "train"), "train", 120, seed=2, resolution=16, samples_per_shard=60)
    args = [str(tokenizer), f"data={tmp_path / 'val'}", "--out", str(tmp_path / "eval"),
            "--fid-weights", str(conv_weights), "--probe-train", str(tmp_path / "train"),
            "--lpips-vgg", lpips_weights[0], "--lpips-heads", lpips_weights[1]]
    assert main(args) == 0
    report = json.loads((tmp_path / "eval" / "eval.json").read_text())
    metrics, protocol = report["metrics"], report["protocol"]
    assert metrics["rfid"] > 0 and metrics["lpips"] > 0 and 0 <= metrics["probe_accuracy/flat"] <= 1
    assert {"probe_accuracy", "probe_accuracy/histogram", "probe_accuracy/mark"} <= set(metrics)
    for name in ("psnr", "ssim", "codebook", "lpips", "rfid", "probe_accuracy"):
        assert {"split", "resolution", "resize", "implementation"} <= set(protocol[name]), name
        assert protocol[name]["resolution"] == 16
    assert protocol["rfid"]["feature_weights"] == "conv_features.safetensors"
    assert protocol["probe_accuracy"]["train"].startswith(str(tmp_path / "train"))
    assert "60 samples" in protocol["probe_accuracy"]["held_out"]
