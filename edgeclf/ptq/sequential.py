"""Sequential output-aware rounding: each layer's int8 weights chosen for the inputs the int8
network will really give it, not the float network's.

`round` minimises a layer's output error on the float model's inputs. In the converted model
every layer instead reads inputs already changed by the rounding upstream and by 8-bit
activations, which on EfficientNetB0 is most of the error. Here a simulation of the int8
network runs once over the calibration images: the weights rounded so far, and every tensor
the converter quantizes fake-quantized to 8 bits at the converter's own min/max range (LOGISTIC
and softmax at TFLite's fixed 1/256 scale). When the pass reaches a layer, its weights w are
rounded onto the converter's per-output-channel grid with the GPTQ-style update of
rounding.quantize_rows, weighted by E[x_q x_q^T] of the inputs x_q it got there, and its bias is
re-centred so that its mean output matches the float layer's (inputs x, measured beforehand on
the float model): b' = b + w E[x] - w_q E[x_q]. Then the layer runs with its rounded weights,
so each later layer sees the rounding of all those before it, and each bias takes out the mean
shift of everything upstream.

Refitting w itself to the quantized inputs (least squares of w' x_q on w x before rounding)
was tried and dropped: on the MobileNetV2 seed-42 run it changed 33 test predictions against
13 without it (it fits the 64 calibration images' noise).

The simulation is close to, not identical with, the converter's: a convolution with a built-in
swish or sigmoid (EfficientNet's squeeze-excitation) is quantized at its output only, layers
this cannot round (rounding.targets) keep float weights, and the ranges are the float model's,
not those the converter later measures on the rounded one.
Run on a BatchNorm-folded model.
"""
from __future__ import annotations

import numpy as np

from edgeclf import console, tfenv
from edgeclf.ptq import rounding
from edgeclf.ptq.bias_correction import _bias_slot
from edgeclf.ptq.layers import kernel as kernel_of

FIXED_UNIT_RANGE = (0.0, 255.0 / 256.0)  # TFLite's int8 LOGISTIC/SOFTMAX output: scale 1/256


def _activation_name(layer) -> str:
    activation = getattr(layer, "activation", None)
    return getattr(activation, "__name__", "") if activation is not None else ""


def _is_relu(layer) -> bool:
    keras = tfenv.keras()
    if isinstance(layer, keras.layers.ReLU):
        return float(getattr(layer, "negative_slope", 0.0) or 0.0) == 0.0
    return type(layer) is keras.layers.Activation and _activation_name(layer) in ("relu", "relu6")


def _fused_into_next(layer) -> bool:
    """True when the converter fuses this layer's output into its one consumer, so the tensor
    between them is never quantized: a conv or BatchNorm feeding a BatchNorm or a ReLU."""
    keras = tfenv.keras()
    if not isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.Dense,
                              keras.layers.BatchNormalization)):
        return False
    if _activation_name(layer) not in ("", "linear"):
        return False
    consumers = [node.outbound_layer for node in layer._outbound_nodes]
    return len(consumers) == 1 and (isinstance(consumers[0], keras.layers.BatchNormalization) or _is_relu(consumers[0]))


def _fixed_range(layer) -> bool:
    keras = tfenv.keras()
    return _activation_name(layer) in ("sigmoid", "softmax") or isinstance(layer, keras.layers.Softmax)


def output_ranges(model, images) -> dict[str, tuple[float, float]]:
    """Per layer whose output the converter quantizes, the (min, max) it calibrates: the float
    model's extremes over `images`, widened to contain 0 as TFLite does."""
    keras = tfenv.keras()
    tf = tfenv.tf()
    layers = [layer for layer in model.layers
              if not isinstance(layer, keras.layers.InputLayer) and not _fused_into_next(layer)
              and not _fixed_range(layer) and len(layer._inbound_nodes) == 1]
    probe = keras.Model(model.inputs, [layer.output for layer in layers])
    low = np.full(len(layers), np.inf)
    high = np.full(len(layers), -np.inf)
    for outputs in _batches(probe, images):
        for i, output in enumerate(outputs):
            low[i] = min(low[i], float(tf.reduce_min(output)))
            high[i] = max(high[i], float(tf.reduce_max(output)))
    return {layer.name: (min(lo, 0.0), max(hi, 0.0)) for layer, lo, hi in zip(layers, low, high)}


def _fake_quant(x, low: float, high: float):
    tf = tfenv.tf()
    if high - low <= 0:
        return x
    return tf.quantization.fake_quant_with_min_max_args(x, min=low, max=high, num_bits=8)


def simulated_int8(model, ranges: dict, before_layer=None):
    """A network sharing `model`'s layers (so its weights) whose quantized tensors are rounded
    to 8 bits: assigning a rounded kernel to `model` changes this network too. When it runs
    eagerly, `before_layer(layer, x)` is called with each layer's input before the layer runs."""
    keras = tfenv.keras()
    tf = tfenv.tf()

    class Quantized(keras.layers.Layer):
        def __init__(self, inner):
            super().__init__(name=inner.name)
            self.inner = inner

        def call(self, *args, **kwargs):
            inner = self.inner
            if before_layer is not None and tf.executing_eagerly():
                before_layer(inner, args[0])
            if type(inner) is keras.layers.Activation and _activation_name(inner) == "swish":
                x = args[0]  # TFLite: LOGISTIC (fixed 1/256 scale), then MUL, each quantized
                output = x * _fake_quant(tf.sigmoid(x), *FIXED_UNIT_RANGE)
            else:
                output = inner(*args, **kwargs)
            if _fixed_range(inner):
                return _fake_quant(output, *FIXED_UNIT_RANGE)
            if inner.name in ranges:
                return _fake_quant(output, *ranges[inner.name])
            return output

    with tfenv.native_stderr_silenced():
        return keras.models.clone_model(model, clone_function=Quantized)


def _batches(probe, images, batch_size: int = 8):
    tf = tfenv.tf()
    for start in range(0, len(images), batch_size):
        outputs = probe(tf.constant(np.asarray(images[start : start + batch_size], np.float32)), training=False)
        yield outputs if isinstance(outputs, (list, tuple)) else [outputs]


def float_input_means(model, layers, images) -> list[np.ndarray]:
    """Per layer, the mean (groups, d) of its input patches in the float model, in one pass."""
    probe = tfenv.keras().Model(model.inputs, [layer.input for layer in layers])
    sums, counts = [0.0] * len(layers), [0] * len(layers)
    for outputs in _batches(probe, images):
        for i, (layer, x) in enumerate(zip(layers, outputs)):
            patches = rounding.grouped_patches(layer, x)
            sums[i] = sums[i] + patches.sum(axis=0)
            counts[i] += len(patches)
    return [total / n for total, n in zip(sums, counts)]


def input_statistics(layer, x, chunk: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """E[x x^T] (groups, d, d) and the mean (groups, d) of the layer's input patches, `chunk`
    images at a time (a 3x3 patch array is nine times its input)."""
    x = np.asarray(x, np.float32)
    moments, sums, count = 0.0, 0.0, 0
    for start in range(0, len(x), chunk):
        patches = rounding.grouped_patches(layer, x[start : start + chunk])
        moments = moments + rounding.outer_sum(patches)
        sums = sums + patches.sum(axis=0)
        count += len(patches)
    return moments / count, sums / count


def round_sequentially(model, images, max_images: int = 64) -> dict:
    """Round every target kernel of `model` in place, in graph order, against the simulated int8
    network's inputs, and re-centre its bias; returns the details.

    The simulated network runs once over the images: each target layer, when its turn comes,
    is rounded against the input it was given and then computes its output with the rounded
    weights, so every later layer sees the rounding of all those before it."""
    tf = tfenv.tf()
    layers, skipped = rounding.targets(model)
    if not layers:
        return {"rounded": 0, "skipped": skipped}
    ranges_images, images = images, images[:max_images]
    bias_slots = {layer.name: _bias_slot(layer)[0] for layer in layers}  # before any graph is added
    float_means = dict(zip((layer.name for layer in layers), float_input_means(model, layers, images)))
    ranges = output_ranges(model, ranges_images)
    done = []

    def round_layer(layer, x) -> None:
        if layer.name not in float_means or layer.name in done:
            return
        moments, mean_q = input_statistics(layer, x)
        variable = kernel_of(layer)
        rows = rounding.kernel_rows(layer, variable.numpy().astype(np.float64))
        quantized = rounding.quantize_rows(rows, moments)
        slot = bias_slots[layer.name]
        if slot is not None:  # mean output: float w E[x] + b must equal w_q E[x_q] + b'
            shift = np.einsum("grd,gd->gr", rows, float_means[layer.name]) - np.einsum("grd,gd->gr", quantized, mean_q)
            slot.assign((slot.numpy() + shift.reshape(-1)).astype(np.float32))
        variable.assign(rounding.kernel_from_rows(layer, quantized, variable.shape).astype(np.float32))
        done.append(layer.name)

    simulated = simulated_int8(model, ranges, before_layer=round_layer)
    console.info(f"sequential rounding: {len(layers)} layers, each against the simulated int8 network")
    simulated(tf.constant(np.asarray(images, np.float32)), training=False)
    if len(done) != len(layers):
        raise RuntimeError(f"sequential rounding reached {len(done)} of {len(layers)} layers")
    return {
        "rounded": len(layers),
        "bias_recentred": sum(slot is not None for slot in bias_slots.values()),
        "images": len(images),
        "range_images": len(ranges_images),
        "method": "sequential: output-aware (GPTQ-style) rounding against a simulated int8 network's inputs, "
                  "bias re-centred on them; grid symmetric per output channel, max|w|/127",
        "skipped": skipped,
    }
