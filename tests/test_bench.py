"""The benchmark runner: names are checked, and each measurement returns the numbers it prints.

Timings themselves are not asserted here (performance targets live in `python -m scripts.bench`)."""

from __future__ import annotations

import pytest

from scripts import bench


def test_unknown_benchmark_is_an_error_naming_the_choices(capsys):
    with pytest.raises(SystemExit) as info:
        bench.main(["no_such_bench"])
    assert info.value.code == 2
    assert "step_overhead" in capsys.readouterr().err


def test_an_unavailable_device_is_an_error_before_any_measurement(capsys):
    import torch

    devices = ["tpu"] + ([] if torch.cuda.is_available() else ["cuda"])
    for device in devices:
        with pytest.raises(SystemExit) as info:
            bench.main(["step_overhead", "--device", device])
        assert info.value.code == 2
        assert f"--device {device}" in capsys.readouterr().err


def test_quantizer_adapter_measures_both_sides(tmp_path):
    from scripts.benchmarks.quantizer import quantizer_adapter

    result = quantizer_adapter(batch=2, tokens=4, dim=4, codebook_size=8, calls=1, rounds=1)
    assert result["adapter_ms"] > 0 and result["direct_ms"] > 0
    assert result["ratio"] == pytest.approx(result["adapter_ms"] / result["direct_ms"])


def test_interleaved_timing_swaps_the_order_each_round_and_takes_medians():
    from scripts.benchmarks.timing import interleaved

    order = []
    paired = interleaved(lambda: order.append("a"), lambda: order.append("b"), calls=2, rounds=3, warmup=0)
    assert order == ["a", "a", "b", "b", "b", "b", "a", "a", "a", "a", "b", "b"]
    assert paired.a_s > 0 and paired.b_s > 0 and paired.ratio > 0


def test_generation_measures_the_cached_loop_the_rerun_and_generate():
    from scripts.benchmarks.generation import generation

    tiny = {"tokens": 4, "llm": {"hidden_size": 32, "num_layers": 1, "num_heads": 2}, "rounds": 1}
    results = generation({"with_rerun": {**tiny, "rerun_rounds": 1}, "without": {**tiny, "rerun_rounds": 0}})
    measured = results["with_rerun"]
    assert measured["tokens"] == 4 and measured["hidden_size"] == 32 and measured["num_layers"] == 1
    for key in ("cached_tokens_per_s", "uncached_tokens_per_s", "generate_tokens_per_s", "cache_speedup",
                "generate_ratio"):
        assert measured[key] > 0, key
    assert "cache_speedup" not in results["without"] and results["without"]["generate_ratio"] > 0


def test_generation_is_a_long_benchmark():
    assert "generation" in bench._benchmarks() and "generation" in bench.LONG
