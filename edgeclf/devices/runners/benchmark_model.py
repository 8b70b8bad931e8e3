"""Android: latency with TFLite's own `benchmark_model`, accuracy through its tensor file options.

`--input_layer_value_files` feeds raw tensor bytes and `--output_filepath` writes the raw
output after the last run, so one invocation with the batch resized to N scores every image
on the phone's own TFLite runtime.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from edgeclf.devices.base import DeviceRun, remove_quietly
from edgeclf.devices.parsers import ParseError, parse_benchmark_model
from edgeclf.errors import DeviceError, UsageError
from edgeclf.devices.runtimes.tflite import dequantize_output, quantize_input

BINARY_ENV = "EDGECLF_BENCHMARK_MODEL"
DELEGATES = ("xnnpack", "gpu", "nnapi", "none")


def find_binary(option: str | None) -> Path:
    path = option or os.environ.get(BINARY_ENV)
    if not path:
        raise UsageError(
            "Android validation needs TFLite's benchmark_model binary, which cannot be downloaded offline",
            f"build or download benchmark_model for android_arm64 and pass --benchmark-binary PATH or set {BINARY_ENV}",
        )
    if not Path(path).is_file():
        raise UsageError(f"benchmark_model binary {path} does not exist", f"fix --benchmark-binary or {BINARY_ENV}")
    return Path(path)


def delegate_flags(delegate: str) -> list[str]:
    if delegate not in DELEGATES:
        raise UsageError(f"--delegate {delegate} is not supported", f"choose one of {', '.join(DELEGATES)}")
    return [
        f"--use_xnnpack={'true' if delegate == 'xnnpack' else 'false'}",
        f"--use_gpu={'true' if delegate == 'gpu' else 'false'}",
        f"--use_nnapi={'true' if delegate == 'nnapi' else 'false'}",
    ]


def _quantization(tensor: dict):
    q = tensor.get("quantization")
    return (q["scale"], q["zero_point"]) if q and "scale" in q else None


def _input_bytes(images: np.ndarray, tensor: dict) -> bytes:
    """Raw pixels as the model's input tensor expects them (quantized with its own params)."""
    return quantize_input(images, tensor["dtype"], _quantization(tensor)).tobytes()


def _output_probs(raw: bytes, tensor: dict, n: int, dequantize: bool = True) -> np.ndarray:
    values = np.frombuffer(raw, dtype=np.dtype(tensor["dtype"]))
    if values.size % n:
        raise DeviceError(f"benchmark_model wrote {values.size} output values for {n} images", "check the model has one output")
    if not dequantize:
        return values.reshape(n, -1).copy()
    return dequantize_output(values.reshape(n, -1), _quantization(tensor))


def run(device, fmt, model_files: list[Path], inputs: np.ndarray | None, runs: int, warmup: int, threads: int | None,
        raw_outputs: bool = False) -> DeviceRun:
    """benchmark_model on `device` (devices.Device): latency, and accuracy through its tensor files."""
    options = device.options
    binary = find_binary(options.benchmark_binary)
    return run_on_android(device.transport, binary, model_files[0], fmt.io_tensors(model_files[0]), inputs,
                          runs, warmup, threads, options.delegate, options.timeout, raw_outputs)


def run_on_android(transport, binary: Path, model_file: Path, io: dict, inputs: np.ndarray | None,
                   runs: int, warmup: int, threads: int | None, delegate: str, timeout: float,
                   raw_outputs: bool = False) -> DeviceRun:
    remote_dir = transport.make_temp_dir()
    tool = f"{remote_dir}/benchmark_model"
    graph = f"{remote_dir}/{model_file.name}"
    try:
        transport.push(binary, tool)
        transport.push(model_file, graph)
        chmod = transport.run(["chmod", "755", tool], timeout)
        if chmod.returncode != 0:
            raise DeviceError(f"cannot make benchmark_model executable on {transport.name}", "check /data/local/tmp is writable")
        common = [tool, f"--graph={graph}", *delegate_flags(delegate)]
        if threads:
            common.append(f"--num_threads={threads}")
        timing = transport.run(common + [f"--num_runs={runs}", f"--warmup_runs={warmup}", "--min_secs=0",
                                          "--warmup_min_secs=0", "--report_peak_memory_footprint=true"], timeout)
        stats = _parse(timing, transport.name)
        predictions = None
        if inputs is not None:
            predictions = _predict(transport, common, remote_dir, io, inputs, timeout, raw_outputs)
    finally:
        remove_quietly(transport, remote_dir)
    props = transport.properties()
    latency = None
    if stats.get("avg_ms") is not None:
        # benchmark_model prints p5/median/p95 (newer builds) but no p90/p99.
        latency = {
            "p50": stats.get("median_ms"),
            "p90": None,
            "p95": stats.get("p95_ms"),
            "p99": None,
            "mean": stats.get("avg_ms"),
            "min": stats.get("min_ms"),
            "std": stats.get("std_ms"),
            "count": stats.get("count"),
        }
    return DeviceRun(
        runtime={"name": "tflite benchmark_model", "version": None, "delegate": delegate},
        device={"kind": "adb", "name": transport.name, "arch": _arch(props.get("abi")), **props},
        latency_ms=latency,
        init_ms=stats.get("init_ms"),
        predictions=predictions,
        peak_rss_mb=stats.get("peak_mb") or stats.get("overall_mb"),
        threads=stats.get("num_threads") or threads,
        extra={"benchmark_model": {k: v for k, v in stats.items() if k not in ("warnings", "params")},
               "emulator": props.get("qemu") == "1"},
    )


def _parse(result, name: str) -> dict:
    text = result.stdout + "\n" + result.stderr
    try:
        stats = parse_benchmark_model(text)
    except ParseError as exc:
        raise DeviceError(f"benchmark_model failed on {name}: {exc}", "check the model and delegate are supported on this phone") from None
    if result.returncode != 0:
        raise DeviceError(f"benchmark_model exited {result.returncode} on {name}", "run it by hand with adb shell to see why")
    return stats


def _predict(transport, common: list[str], remote_dir: str, io: dict, inputs: np.ndarray, timeout: float,
             raw_outputs: bool = False) -> np.ndarray:
    tensor_in, tensor_out = io["inputs"][0], io["outputs"][0]
    name = tensor_in["name"]
    escaped = name.replace(":", "::")  # --input_layer_value_files separates name:path with ':'

    n = len(inputs)
    with tempfile.TemporaryDirectory(prefix="edgeclf-adb-") as local:
        values = Path(local) / "inputs.bin"
        values.write_bytes(_input_bytes(inputs, tensor_in))
        transport.push(values, f"{remote_dir}/inputs.bin")
        shape = ",".join(str(d) for d in [n, *tensor_in["shape"][1:]])
        result = transport.run(common + [
            f"--input_layer={name}", f"--input_layer_shape={shape}",
            f"--input_layer_value_files={escaped}:{remote_dir}/inputs.bin",
            f"--output_filepath={remote_dir}/outputs.bin",
            "--num_runs=1", "--warmup_runs=0", "--min_secs=0", "--warmup_min_secs=0",
        ], timeout)
        _parse(result, transport.name)
        transport.pull(f"{remote_dir}/outputs.bin", Path(local) / "outputs.bin")
        return _output_probs((Path(local) / "outputs.bin").read_bytes(), tensor_out, n, dequantize=not raw_outputs)


def _arch(abi: str | None) -> str | None:
    return {"arm64-v8a": "aarch64", "armeabi-v7a": "armv7l", "x86_64": "x86_64", "x86": "i686"}.get(abi or "", abi)
