"""parse_benchmark_model on outputs in the real benchmark_model formats (tests/data/benchmark_model)."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeclf.devices.parsers import ParseError, parse_benchmark_model

DATA = Path(__file__).parent / "data" / "benchmark_model"


def sample(name: str) -> str:
    return (DATA / name).read_text()


def test_modern_android_xnnpack_with_percentiles():
    r = parse_benchmark_model(sample("android_xnnpack_percentiles.txt"))
    assert r["format"] == "tflite"
    assert r["init_ms"] == pytest.approx(41.207)
    assert r["first_inference_ms"] == pytest.approx(21.417)
    assert r["warmup_avg_ms"] == pytest.approx(10.4293)
    assert r["inference_avg_ms"] == pytest.approx(9.92146)
    assert r["count"] == 101 and r["warmup_count"] == 48
    assert (r["min_ms"], r["max_ms"], r["std_ms"]) == pytest.approx((9.587, 12.977, 0.418))
    assert r["avg_ms"] == pytest.approx(r["inference_avg_ms"])
    assert (r["p5_ms"], r["median_ms"], r["p95_ms"]) == pytest.approx((9.618, 9.822, 10.508))
    assert (r["init_mb"], r["overall_mb"], r["peak_mb"]) == pytest.approx((8.83594, 14.6914, None))
    assert r["num_threads"] == 4
    assert r["graph"] == "/data/local/tmp/edgeclf/mobilenet_v2_int8.tflite"
    assert r["delegates"] == ["XNNPACK"] and r["fully_delegated"] is True
    assert r["model_size_mb"] == pytest.approx(3.57762)
    assert r["session_init_ms"] == pytest.approx(41.207)
    assert r["errors"] == []


def test_scientific_notation_and_all_same_warmup():
    r = parse_benchmark_model(sample("linux_no_xnnpack_large_numbers.txt"))
    assert r["inference_avg_ms"] == pytest.approx(1254.73)
    assert r["warmup_avg_ms"] == pytest.approx(1402.22)
    assert r["first_inference_ms"] == pytest.approx(1402.215)
    assert r["warmup_count"] == 1 and r["warmup_min_ms"] == r["warmup_max_ms"] == pytest.approx(1402.215)
    assert r["warmup_std_ms"] == 0.0
    assert r["count"] == 50 and r["avg_ms"] == pytest.approx(1254.73)
    assert r["median_ms"] == pytest.approx(1254.407)
    assert (r["init_mb"], r["overall_mb"]) == pytest.approx((6.5, 110.207))
    assert r["delegates"] == [] and r["fully_delegated"] is None
    assert r["params"]["Use xnnpack"] == "0"


def test_default_xnnpack_peak_memory_without_percentiles():
    r = parse_benchmark_model(sample("chromeos_default_xnnpack_peak_memory.txt"))
    assert r["count"] == 1047 and r["std_ms"] == pytest.approx(0.911)
    assert r["p5_ms"] is None and r["median_ms"] is None and r["p95_ms"] is None
    assert r["peak_mb"] == pytest.approx(93.5117)
    assert r["overall_mb"] == pytest.approx(27.8672)
    assert r["delegates"] == ["XNNPACK"]  # applied by default, not explicitly
    assert r["fully_delegated"] is None
    assert r["num_threads"] is None


def test_legacy_format_without_prefix():
    r = parse_benchmark_model(sample("legacy_tf1x_no_prefix.txt"))
    assert r["format"] == "tflite-legacy"
    assert r["init_ms"] == pytest.approx(5.218)
    assert r["warmup_avg_ms"] == pytest.approx(73.5113)
    assert r["inference_avg_ms"] == pytest.approx(67.4019)
    assert r["first_inference_ms"] == pytest.approx(118.204)  # from the warm-up stat line
    assert r["count"] == 15 and r["warmup_count"] == 9
    assert r["num_threads"] == 2
    assert r["init_mb"] is None and r["peak_mb"] is None


def test_op_profiling_tables_do_not_confuse_run_stats():
    r = parse_benchmark_model(sample("gpu_op_profiling.txt"))
    # The profiler's "Timings (microseconds): count=112 first=1804 ..." must not replace the run stats.
    assert r["count"] == 112 and r["first_ms"] == pytest.approx(8.948)
    assert r["warmup_count"] == 44
    assert r["inference_avg_ms"] == pytest.approx(8.91506)
    assert r["delegates"] == ["GPU"] and r["fully_delegated"] is True
    assert r["init_ms"] == pytest.approx(412.906)


@pytest.mark.parametrize("name, needle", [
    ("failure_missing_model.txt", "Could not open '/data/local/tmp/edgeclf/missing.tflite'"),
    ("failure_gpu_delegate.txt", "Failed to apply GPU delegate"),
])
def test_failures_raise_parse_error_naming_what_is_missing(name, needle):
    with pytest.raises(ParseError) as info:
        parse_benchmark_model(sample(name))
    err = info.value
    assert isinstance(err, ValueError)
    assert err.missing == "inference timings"
    assert "Inference timings in us" in str(err)
    assert needle in str(err)
    assert any("Benchmarking failed." in line for line in err.errors)


def test_empty_and_garbage_inputs():
    with pytest.raises(ParseError):
        parse_benchmark_model("")
    with pytest.raises(ParseError):
        parse_benchmark_model("INFO: STARTING!\nSegmentation fault\n")
    with pytest.raises(TypeError):
        parse_benchmark_model(b"bytes are not accepted")  # type: ignore[arg-type]


def test_crlf_and_interleaved_stderr_lines():
    text = sample("android_xnnpack_percentiles.txt").replace("\n", "\r\n")
    text = text.replace("INFO: Initialized session", "INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\r\nINFO: Initialized session")
    r = parse_benchmark_model(text)
    assert r["count"] == 101 and r["inference_avg_ms"] == pytest.approx(9.92146)
    assert r["delegates"] == ["XNNPACK"]


def test_every_sample_file_is_covered():
    covered = {"android_xnnpack_percentiles.txt", "linux_no_xnnpack_large_numbers.txt",
               "chromeos_default_xnnpack_peak_memory.txt", "legacy_tf1x_no_prefix.txt", "gpu_op_profiling.txt",
               "failure_missing_model.txt", "failure_gpu_delegate.txt"}
    assert {p.name for p in DATA.glob("*.txt")} == covered
