"""The on-device runner: runs one model over packed images and/or times it, and prints JSON.

This file is self-contained on purpose. It is pushed as-is to a Raspberry Pi or any Linux
board and needs only Python 3, numpy and one runtime there: ai_edge_litert or tflite_runtime
(or full TensorFlow) for .tflite, onnxruntime for .onnx, openvino for .xml. The host imports
the very same module for local evaluation, so quantized IO is handled identically everywhere.

    python3 runner.py MODEL [--inputs X.npy] [--predictions OUT.npy] [--runs N] [--warmup N] [--threads N]
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


# --------------------------------------------------------------------------------------
# Runtimes: each loads a model and maps raw uint8 pixels (N, H, W, 3) to float probabilities.
# --------------------------------------------------------------------------------------
class TFLiteModel:
    def __init__(self, path: str, threads: int | None):
        self.runtime, self.runtime_version, interpreter_cls = _tflite_interpreter()
        kwargs = {"model_path": path}
        if threads:
            kwargs["num_threads"] = threads
        started = time.perf_counter()
        self.interpreter = interpreter_cls(**kwargs)
        self.interpreter.allocate_tensors()
        self.init_ms = (time.perf_counter() - started) * 1000
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]
        self.input_shape = [int(d) for d in self.input["shape"]]

    def _quantize(self, pixels: np.ndarray) -> np.ndarray:
        dtype = self.input["dtype"]
        if dtype in (np.uint8, np.int8):
            scale, zero_point = self.input["quantization"]
            info = np.iinfo(dtype)
            values = np.round(pixels.astype(np.float32) / scale + zero_point)
            return np.clip(values, info.min, info.max).astype(dtype)
        return pixels.astype(dtype)

    def _dequantize(self, values: np.ndarray) -> np.ndarray:
        if self.output["dtype"] in (np.uint8, np.int8):
            scale, zero_point = self.output["quantization"]
            return (values.astype(np.float32) - zero_point) * scale
        return values.astype(np.float32)

    def invoke(self, pixels: np.ndarray) -> np.ndarray:
        """One image (1, H, W, 3) in, one probability vector out."""
        self.interpreter.set_tensor(self.input["index"], self._quantize(pixels))
        self.interpreter.invoke()
        return self._dequantize(self.interpreter.get_tensor(self.output["index"]))[0]


class ONNXModel:
    def __init__(self, path: str, threads: int | None):
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise RuntimeMissing("onnxruntime") from exc
        self.runtime, self.runtime_version = "onnxruntime", ort.__version__
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        started = time.perf_counter()
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self.init_ms = (time.perf_counter() - started) * 1000
        self.input_name = self.session.get_inputs()[0].name
        shape = self.session.get_inputs()[0].shape
        self.input_shape = [d if isinstance(d, int) else 1 for d in shape]

    def invoke(self, pixels: np.ndarray) -> np.ndarray:
        return np.asarray(self.session.run(None, {self.input_name: pixels.astype(np.float32)})[0], np.float32)[0]


class OpenVINOModel:
    def __init__(self, path: str, threads: int | None):
        try:
            import openvino as ov
        except ImportError as exc:
            raise RuntimeMissing("openvino") from exc
        self.runtime, self.runtime_version = "openvino", ov.get_version()
        core = ov.Core()
        # CPUs with AMX/AVX512-BF16 (and ARM) otherwise run float parts in bf16/f16 by default,
        # which would make an fp32 artefact score differently from what it is.
        config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        started = time.perf_counter()
        self.compiled = core.compile_model(path, "CPU", config)
        self.request = self.compiled.create_infer_request()
        self.init_ms = (time.perf_counter() - started) * 1000
        self.input_shape = [int(d) for d in self.compiled.input(0).get_shape()]

    def invoke(self, pixels: np.ndarray) -> np.ndarray:
        result = self.request.infer({0: pixels.astype(np.float32)})
        return np.asarray(next(iter(result.values())), np.float32)[0]


def _tflite_interpreter():
    """The first TFLite interpreter available: LiteRT, then tflite_runtime, then TensorFlow."""
    try:
        from ai_edge_litert.interpreter import Interpreter
        from importlib import metadata

        return "ai_edge_litert", metadata.version("ai-edge-litert"), Interpreter
    except ImportError:
        pass
    try:
        import tflite_runtime
        from tflite_runtime.interpreter import Interpreter

        return "tflite_runtime", getattr(tflite_runtime, "__version__", "unknown"), Interpreter
    except ImportError:
        pass
    try:
        import tensorflow as tf

        return "tensorflow", tf.__version__, tf.lite.Interpreter
    except ImportError as exc:
        raise RuntimeMissing("ai-edge-litert or tflite-runtime") from exc


RUNTIMES = {".tflite": TFLiteModel, ".onnx": ONNXModel, ".xml": OpenVINOModel}


def open_model(path: str, threads: int | None = None):
    extension = os.path.splitext(path)[1].lower()
    if extension not in RUNTIMES:
        raise ValueError(f"unsupported model file {path}: expected .tflite, .onnx or .xml")
    try:
        return RUNTIMES[extension](path, threads)
    except RuntimeMissing:
        raise
    except Exception as exc:  # each runtime has its own error types for a file it cannot load
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        raise ModelInvalid(lines[-1] if lines else type(exc).__name__) from exc


def predict(model, images: np.ndarray) -> np.ndarray:
    """Probabilities for every image, one invocation per image (models have batch 1)."""
    return np.stack([model.invoke(images[i : i + 1]) for i in range(len(images))]) if len(images) else np.zeros((0, 0))


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
    model = open_model(args.model, args.threads)
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
        probs = predict(model, images).astype(np.float32)
        np.save(args.predictions, probs)
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
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None)
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
