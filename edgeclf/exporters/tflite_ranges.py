"""Activation ranges for TFLite int8 that minimise quantization error instead of keeping extremes.

The TFLite converter calibrates by running the float model on the representative images and
recording each tensor's absolute min and max over all of them; one rare outlier image
stretches a range and costs every other value resolution. Here the converter only
calibrates (`_experimental_calibrate_only`, as tf.lite's QuantizationDebugger does), we
histogram every recorded tensor over the same images, replace the ranges with the clipping
range that minimises the expected squared error (clipping plus rounding), and hand the edited
model to the converter's own quantizer (`mlir_quantize`), exactly as `convert()` would.
"""
from __future__ import annotations

import numpy as np

from edgeclf import tfenv
from edgeclf.exporters import tflite_flatbuffer

BINS = 2048
LEVELS = 255  # int8 activations: 256 values, 255 steps
# Candidate clipping ranges, as fractions of the recorded (min, max).
FRACTIONS = np.concatenate([np.linspace(0.2, 0.9, 36), np.linspace(0.9, 1.0, 21)[1:]])
# Ops whose output range the quantizer fixes or ties to the input anyway.
FIXED_RANGE_CONSUMERS = ("SOFTMAX", "LOGISTIC")


def calibrate_only(converter) -> bytes:
    """The float model with the converter's recorded min/max per tensor, not yet quantized."""
    converter._experimental_calibrate_only = True  # noqa: SLF001 - the debugger's documented route
    converter.experimental_new_quantizer = True
    with tfenv.native_stderr_silenced():
        return converter.convert()


def quantize(calibrated: bytes, io_type) -> bytes:
    """What `converter.convert()` does with a calibrated model: the MLIR quantizer, per channel."""
    tfenv.tf()  # our silenced TensorFlow import comes first
    from tensorflow.lite.python import convert

    with tfenv.native_stderr_silenced():
        return convert.mlir_quantize(calibrated, False, input_data_type=io_type, output_data_type=io_type)


def recorded_ranges(model) -> dict[int, tuple[float, float]]:
    """Tensor index -> (min, max) the calibrator recorded (unpacked ModelT, first subgraph)."""
    ranges = {}
    for index, tensor in enumerate(model.subgraphs[0].tensors):
        q = tensor.quantization
        if q is not None and q.min is not None and q.max is not None and len(q.min) == 1:
            ranges[index] = (float(q.min[0]), float(q.max[0]))
    return ranges


def _protected(model) -> set[int]:
    """Tensors left at min/max: graph inputs and outputs, and inputs of fixed-range ops (the logits)."""
    ops, _ = tflite_flatbuffer._enum_names()
    graph = model.subgraphs[0]
    keep = set(graph.inputs.tolist()) | set(graph.outputs.tolist())
    for op in graph.operators:
        code = model.operatorCodes[op.opcodeIndex]
        name = ops.get(max(code.builtinCode, code.deprecatedBuiltinCode), "")
        if name in FIXED_RANGE_CONSUMERS:
            keep |= set(op.inputs.tolist())
    return keep


def histograms(calibrated: bytes, images, tensors: dict[int, tuple[float, float]]) -> dict[int, np.ndarray]:
    """Per tensor, a BINS-bin histogram over its recorded range, summed over `images`."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=calibrated, experimental_preserve_all_tensors=True, num_threads=2)
    interpreter.allocate_tensors()
    input_index = interpreter.get_input_details()[0]["index"]
    counts = {i: np.zeros(BINS, np.int64) for i in tensors}
    for image in images:
        interpreter.set_tensor(input_index, np.asarray(image, np.float32)[None])
        interpreter.invoke()
        for index, (low, high) in tensors.items():
            values = interpreter.get_tensor(index).ravel()
            width = (high - low) or 1.0
            bins = np.clip(((values - low) * (BINS / width)).astype(np.int64), 0, BINS - 1)
            counts[index] += np.bincount(bins, minlength=BINS)
    return counts


def mse_optimal(counts: np.ndarray, low: float, high: float) -> tuple[float, float, float]:
    """The (min, max) among FRACTIONS of the recorded range with the least expected squared error,
    and that error relative to min/max's. Zero stays inside the range (int8 needs it exact)."""
    centres = low + (np.arange(BINS) + 0.5) * (high - low) / BINS
    weights = counts / max(counts.sum(), 1)
    errors = []
    for fraction in FRACTIONS:
        lo, hi = min(low * fraction, 0.0), max(high * fraction, 0.0)
        step = (hi - lo) / LEVELS
        clipped = np.clip(centres, lo, hi)
        inside = (centres >= lo) & (centres <= hi)
        errors.append(float(np.sum(weights * ((centres - clipped) ** 2 + inside * step * step / 12))))
    best = int(np.argmin(errors))
    fraction = FRACTIONS[best]
    return min(low * fraction, 0.0), max(high * fraction, 0.0), errors[best] / errors[-1] if errors[-1] else 1.0


def swish(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-np.clip(x, -60, 60)))


def swish_slope(x: np.ndarray) -> np.ndarray:
    sigmoid = 1.0 / (1.0 + np.exp(-np.clip(x, -60, 60)))
    return sigmoid * (1.0 + x * (1.0 - sigmoid))


# Candidate fractions of the recorded min for a swish input: swish flattens below about -6, so
# the negative side can be cut far harder than any plain tensor's.
SWISH_LOW_FRACTIONS = np.concatenate([np.geomspace(0.02, 0.9, 40), np.linspace(0.9, 1.0, 11)[1:]])


def swish_optimal(counts: np.ndarray, low: float, high: float) -> tuple[float, float, float]:
    """The (min, max) for a tensor that only feeds swish (x * sigmoid(x)) with the least expected
    squared error of swish's output, not of the tensor: clipping swish(x) plus rounding noise
    scaled by swish's slope. Low and high are chosen separately (low from SWISH_LOW_FRACTIONS)."""
    centres = low + (np.arange(BINS) + 0.5) * (high - low) / BINS
    weights = counts / max(counts.sum(), 1)
    exact, slope2 = swish(centres), swish_slope(centres) ** 2
    lows = np.minimum(low * SWISH_LOW_FRACTIONS, 0.0)[:, None, None]
    highs = np.maximum(high * FRACTIONS, 0.0)[None, :, None]
    step = (highs - lows) / LEVELS
    clipped = np.clip(centres[None, None, :], lows, highs)
    inside = (centres >= lows) & (centres <= highs)
    errors = np.sum(weights * ((exact - swish(clipped)) ** 2 + inside * slope2 * step * step / 12), axis=2)
    i, j = np.unravel_index(int(np.argmin(errors)), errors.shape)
    return float(lows[i, 0, 0]), float(highs[0, j, 0]), float(errors[i, j] / errors[-1, -1]) if errors[-1, -1] else 1.0


def swish_inputs(model) -> set[int]:
    """Tensors read only by a swish written as LOGISTIC + MUL (x * sigmoid(x)), the way the
    converter writes Keras's swish/silu."""
    ops, _ = tflite_flatbuffer._enum_names()
    graph = model.subgraphs[0]
    readers: dict[int, list] = {}
    for op in graph.operators:
        for index in op.inputs.tolist():
            readers.setdefault(index, []).append(op)

    def name(op):
        code = model.operatorCodes[op.opcodeIndex]
        return ops.get(max(code.builtinCode, code.deprecatedBuiltinCode), "")

    found = set()
    for index, consumers in readers.items():
        if len(consumers) != 2:
            continue
        logistic = [op for op in consumers if name(op) == "LOGISTIC"]
        mul = [op for op in consumers if name(op) == "MUL"]
        if len(logistic) == 1 and len(mul) == 1 and set(mul[0].inputs.tolist()) == {index, logistic[0].outputs[0]}:
            found.add(index)
    return found


def with_mse_ranges(calibrated: bytes, images, max_images: int = 100, plain: bool = True, swish_aware: bool = False) -> tuple[bytes, dict]:
    """The calibrated model with error-minimising activation ranges, and what changed (for the
    manifest): `plain` for every tensor by its own MSE, `swish_aware` for swish inputs by the
    error of swish's output (those tensors then are not in the plain set)."""
    model = tflite_flatbuffer.unpack(calibrated)
    ranges = recorded_ranges(model)
    swish_set = swish_inputs(model) if swish_aware else set()
    protected = _protected(model) - swish_set  # a swish's LOGISTIC reads its input at the input's own scale
    tensors = {i: r for i, r in ranges.items() if i not in protected and r[1] > r[0] and (plain or i in swish_set)}
    counts = histograms(calibrated, images[:max_images], tensors)
    graph = model.subgraphs[0]
    narrowed = []
    for index, (low, high) in tensors.items():
        chooser = swish_optimal if index in swish_set else mse_optimal
        new_low, new_high, ratio = chooser(counts[index], low, high)
        if (new_low, new_high) == (low, high):
            continue
        q = graph.tensors[index].quantization
        q.min, q.max = [new_low], [new_high]
        narrowed.append({"tensor": graph.tensors[index].name.decode("utf-8", "replace"),
                         "minmax": [round(low, 4), round(high, 4)], "chosen": [round(float(new_low), 4), round(float(new_high), 4)],
                         "mse_vs_minmax": round(float(ratio), 3)})
    details = {
        "method": "+".join(m for m, on in (("mse", plain), ("swish-output mse", swish_aware)) if on),
        "images": min(len(images), max_images),
        "tensors": len(tensors),
        "swish_inputs": len(swish_set),
        "narrowed": len(narrowed),
        "kept_minmax": "graph inputs/outputs and inputs of SOFTMAX/LOGISTIC",
        "largest_changes": sorted(narrowed, key=lambda r: r["mse_vs_minmax"])[:5],
    }
    return tflite_flatbuffer.pack(model, "record the new ranges"), details
