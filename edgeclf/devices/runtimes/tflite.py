"""TFLite on the device: ai_edge_litert, else tflite_runtime, else full TensorFlow.

Also the one place that maps raw pixels to a quantized input tensor and a quantized output
back to probabilities; Android's benchmark_model path imports the same two functions.
"""
import sys
import time

import numpy as np


def quantize_input(pixels: np.ndarray, dtype, quantization) -> np.ndarray:
    """Raw 0..255 pixels as the input tensor takes them, quantized with its own (scale, zero point)."""
    dtype = np.dtype(dtype)
    if dtype.kind in "iu" and quantization:
        scale, zero_point = quantization
        info = np.iinfo(dtype)
        values = np.round(pixels.astype(np.float32) / scale + zero_point)
        return np.clip(values, info.min, info.max).astype(dtype)
    return pixels.astype(dtype)


def dequantize_output(values: np.ndarray, quantization) -> np.ndarray:
    """An output tensor as float probabilities."""
    if values.dtype.kind in "iu" and quantization:
        scale, zero_point = quantization
        return (values.astype(np.float32) - zero_point) * scale
    return values.astype(np.float32)


def interpreter_class():
    """The first TFLite interpreter available: LiteRT, then tflite_runtime, then TensorFlow."""
    try:
        from importlib import metadata

        from ai_edge_litert.interpreter import Interpreter

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
        raise ImportError("ai-edge-litert or tflite-runtime") from exc


class Model:
    def __init__(self, path: str, threads=None, kernels=None):
        """kernels: an OpResolverType name, e.g. BUILTIN_REF for TFLite's reference kernels."""
        self.runtime, self.runtime_version, interpreter_cls = interpreter_class()
        kwargs = {"model_path": path}
        if threads:
            kwargs["num_threads"] = threads
        if kernels:
            resolvers = sys.modules[interpreter_cls.__module__].OpResolverType
            kwargs["experimental_op_resolver_type"] = getattr(resolvers, kernels)
        started = time.perf_counter()
        self.interpreter = interpreter_cls(**kwargs)
        self.interpreter.allocate_tensors()
        self.init_ms = (time.perf_counter() - started) * 1000
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]
        self.input_shape = [int(d) for d in self.input["shape"]]

    @staticmethod
    def _params(tensor):
        scale, zero_point = tensor["quantization"]
        return (scale, zero_point) if scale else None

    def invoke(self, pixels: np.ndarray) -> np.ndarray:
        """One image (1, H, W, 3) in, one probability vector out."""
        return dequantize_output(self.invoke_raw(pixels), self._params(self.output))

    def invoke_raw(self, pixels: np.ndarray) -> np.ndarray:
        """One image (1, H, W, 3) in, the output tensor's values in its own dtype out."""
        self.interpreter.set_tensor(self.input["index"], quantize_input(pixels, self.input["dtype"], self._params(self.input)))
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self.output["index"])[0]
