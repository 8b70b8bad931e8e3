"""TFLite on the device: ai_edge_litert, else tflite_runtime, else full TensorFlow.

Also the one place that maps raw pixels to a quantized input tensor and a quantized output
back to probabilities; Android's benchmark_model path imports the same two functions.
"""
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
    def __init__(self, path: str, threads=None):
        self.runtime, self.runtime_version, interpreter_cls = interpreter_class()
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

    @staticmethod
    def _params(tensor):
        scale, zero_point = tensor["quantization"]
        return (scale, zero_point) if scale else None

    def invoke(self, pixels: np.ndarray) -> np.ndarray:
        """One image (1, H, W, 3) in, one probability vector out."""
        self.interpreter.set_tensor(self.input["index"], quantize_input(pixels, self.input["dtype"], self._params(self.input)))
        self.interpreter.invoke()
        raw = self.interpreter.get_tensor(self.output["index"])
        return dequantize_output(raw, self._params(self.output))[0]
