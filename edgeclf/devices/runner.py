"""The on-device runner: runs one model over packed images and/or times it, and prints JSON.

This file is self-contained on purpose. It is pushed as-is to a Raspberry Pi or any Linux
board, with the export format's runtime file (edgeclf/devices/runtimes/<format>.py), and needs only Python 3,
numpy and that runtime there: ai_edge_litert or tflite_runtime (or full TensorFlow) for
.tflite, onnxruntime for .onnx, openvino for .xml. The host loads the very same files for
local evaluation, so quantized IO is handled identically everywhere.

    python3 runner.py MODEL --runtime RUNTIME.py [--inputs X.npy] [--predictions OUT.npy] [--raw-outputs]
                      [--runs N] [--warmup N] [--threads N]

--raw-outputs writes the output tensor as the model produced it (e.g. uint8 before
dequantization), which is what golden-vector checks compare.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import numpy as np

PROTOCOL = 1


class RuntimeMissing(Exception):
    """No runtime for this model format is installed."""


class ModelInvalid(Exception):
    """The runtime could not load the model file (corrupt, truncated, or not a model)."""


def open_model(path: str, runtime_file: str, threads=None, kernels=None):
    """Load `path` with the Model class of a runtime file (see edgeclf/devices/runtimes/__init__.py);
    `kernels` names another kernel set of that runtime (the format's kernel_sets)."""
    import importlib.util

    name = f"edgeclf_runtime_{os.path.basename(runtime_file)[:-3]}"
    module = sys.modules.get(name)
    if module is None or module.__file__ != runtime_file:
        spec = importlib.util.spec_from_file_location(name, runtime_file)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules[name] = module  # a module no one references loses its globals
    try:
        return module.Model(path, threads, kernels=kernels) if kernels else module.Model(path, threads)
    except ImportError as exc:
        raise RuntimeMissing(str(exc.name or exc)) from exc
    except Exception as exc:  # each runtime has its own error types for a file it cannot load
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        raise ModelInvalid(lines[-1] if lines else type(exc).__name__) from exc


def predict(model, images: np.ndarray, raw: bool = False, on_image=None) -> np.ndarray:
    """Probabilities (or raw outputs) for every image, one invocation per image (models have batch 1)."""
    invoke = model.invoke_raw if raw else model.invoke
    outputs = []
    for i in range(len(images)):
        outputs.append(invoke(images[i : i + 1]))
        if on_image is not None:
            on_image()
    return np.stack(outputs) if outputs else np.zeros((0, 0), np.float32)


def benchmark(model, sample: np.ndarray, warmup: int, runs: int) -> dict:
    first_started = time.perf_counter()
    model.invoke(sample)
    first_ms = (time.perf_counter() - first_started) * 1000
    for _ in range(max(0, warmup - 1)):
        model.invoke(sample)
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        model.invoke(sample)
        times.append((time.perf_counter() - started) * 1000)
    return latency_stats(times) | {"first_ms": round(first_ms, 3)}


def latency_stats(times_ms) -> dict:
    values = np.asarray(times_ms, dtype=np.float64)
    return {
        "count": int(values.size),
        "p50": round(float(np.percentile(values, 50)), 4),
        "p90": round(float(np.percentile(values, 90)), 4),
        "p99": round(float(np.percentile(values, 99)), 4),
        "mean": round(float(values.mean()), 4),
        "min": round(float(values.min()), 4),
        "std": round(float(values.std()), 4),
    }


def peak_rss_mb() -> float | None:
    try:
        import resource

        # ru_maxrss is KiB on Linux.
        return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    except (ImportError, AttributeError):
        return None


def device_info() -> dict:
    info = {
        "arch": platform.machine(),
        "os": f"{platform.system()} {platform.release()}",
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "cpu": _cpu_model(),
    }
    try:
        with open("/etc/os-release") as f:
            fields = dict(line.rstrip("\n").split("=", 1) for line in f if "=" in line)
        info["distro"] = fields.get("PRETTY_NAME", "").strip('"')
    except OSError:
        pass
    return info


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Hardware", "Model", "cpu model"):
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or None


def run(args) -> dict:
    model = open_model(args.model, args.runtime, args.threads)
    result = {
        "protocol": PROTOCOL,
        "runtime": {"name": model.runtime, "version": model.runtime_version},
        "threads": args.threads,
        "init_ms": round(model.init_ms, 3),
        "input_shape": model.input_shape,
        "model_bytes": os.path.getsize(args.model),
        "device": device_info(),
    }
    if args.inputs:
        images = np.load(args.inputs)
        outputs = predict(model, images, raw=args.raw_outputs)
        np.save(args.predictions, outputs if args.raw_outputs else outputs.astype(np.float32))
        result["n_images"] = int(len(images))
        sample = images[:1]
    else:
        sample = np.random.default_rng(0).integers(0, 256, model.input_shape, dtype=np.uint8)
    if args.runs > 0:
        result["latency_ms"] = benchmark(model, sample, args.warmup, args.runs)
    result["peak_rss_mb"] = peak_rss_mb()
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--inputs", help="uint8 .npy of shape (N, H, W, 3): raw RGB pixels")
    parser.add_argument("--predictions", help="where to write float32 .npy probabilities (N, classes)")
    parser.add_argument("--raw-outputs", action="store_true", help="write the raw output tensors (model dtype) instead")
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--runtime", required=True, help="the format's runtime file (edgeclf/devices/runtimes/<format>.py)")
    args = parser.parse_args(argv)
    if args.inputs and not args.predictions:
        parser.error("--inputs needs --predictions")
    try:
        result = run(args)
    except RuntimeMissing as exc:
        result = {"protocol": PROTOCOL, "error": "runtime_missing", "missing": str(exc), "device": device_info()}
        print(json.dumps(result))
        return 3
    except ModelInvalid as exc:
        print(json.dumps({"protocol": PROTOCOL, "error": "model_invalid", "message": str(exc), "device": device_info()}))
        return 4
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
