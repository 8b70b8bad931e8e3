"""ONNX on the device: onnxruntime's CPU execution provider."""
import time

import numpy as np


class Model:
    def __init__(self, path: str, threads=None):
        import onnxruntime as ort  # ImportError: the runner reports the runtime as missing

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

    invoke_raw = invoke  # float output: the raw values are the probabilities
