"""Bias correction: take the mean output shift that int8 weight rounding causes back out of the bias.

The TFLite converter quantizes convolution and dense kernels per output channel on a symmetric
grid (scale = max|w| / 127). Rounding makes each channel's output wrong by conv(x, w_q - w),
whose mean over real inputs is not zero: a systematic shift that the next layers carry on
(Nagel et al. 2019, "Data-Free Quantization", empirical variant). We measure that mean on the
calibration images and subtract it from the channel's bias. The kernel itself is untouched,
so the converter rounds it exactly as we predicted and the corrected bias ships as it is.

Run on a BatchNorm-folded model (batchnorm.fold_batchnorm): there the kernel is the one
the converter quantizes, and the folded BatchNorm's beta is the channel's bias.
"""
from __future__ import annotations

import numpy as np

from edgeclf import tfenv
from edgeclf.ptq.layers import kernel as kernel_of

INT8_MAX = 127


def rounding_delta(kernel: np.ndarray, depthwise: bool = False) -> np.ndarray:
    """w_q - w for the converter's symmetric per-output-channel int8 grid."""
    # Output channel axis: last for Conv2D (h, w, in, out) and Dense (in, out); a depthwise
    # kernel (h, w, channels, multiplier) has output channel c * multiplier + m.
    flat = kernel.reshape(*kernel.shape[:2], -1) if depthwise else kernel
    axes = tuple(range(flat.ndim - 1))
    scale = np.abs(flat).max(axis=axes) / INT8_MAX
    safe = np.where(scale > 0, scale, 1.0)
    quantized = np.clip(np.round(flat / safe), -INT8_MAX, INT8_MAX) * safe
    delta = np.where(scale > 0, quantized - flat, 0.0)
    return delta.reshape(kernel.shape).astype(np.float32)


def _is_identity_batchnorm(layer) -> bool:
    keras = tfenv.keras()
    if type(layer) is not keras.layers.BatchNormalization:
        return False
    gamma = layer.gamma.numpy() if layer.scale else 1.0
    factor = gamma / np.sqrt(layer.moving_variance.numpy() + layer.epsilon)
    return np.allclose(factor, 1.0, atol=1e-6) and np.allclose(layer.moving_mean.numpy(), 0.0)


def _bias_slot(layer):
    """The variable holding the layer's per-channel bias, or (None, why not)."""
    keras = tfenv.keras()
    consumers = [node.outbound_layer for node in layer._outbound_nodes]
    if len(consumers) == 1 and isinstance(consumers[0], keras.layers.BatchNormalization):
        if layer.activation is not keras.activations.linear:
            return None, "an activation sits between it and its BatchNorm"
        if not _is_identity_batchnorm(consumers[0]):
            return None, "its BatchNorm is not folded, so the converter rescales the kernel"
        if not consumers[0].center:
            return None, "its BatchNorm has no beta"
        return consumers[0].beta, ""
    if layer.use_bias:
        return layer.bias, ""
    return None, "no bias and no BatchNorm after it"


def _candidates(model) -> tuple[list, dict]:
    keras = tfenv.keras()
    kinds = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.Dense)
    targets, skipped = [], {}
    for layer in model.layers:
        if type(layer) not in kinds and not isinstance(layer, keras.layers.SeparableConv2D):
            continue
        why = ""
        if isinstance(layer, keras.layers.SeparableConv2D):
            why = "separable convolution: the converter splits it in two and only the pointwise half has a bias"
        elif len(layer._inbound_nodes) != 1:
            why = "the layer is shared"
        elif getattr(layer, "groups", 1) != 1:
            why = "grouped convolution"
        elif type(layer) is keras.layers.Dense and len(layer.input_shape) != 2:
            why = "dense layer on a tensor of rank above 2"
        else:
            slot, why = _bias_slot(layer)
        if why:
            skipped.setdefault(why, []).append(layer.name)
        else:
            targets.append(layer)
    return targets, skipped


def _delta_layer(layer, delta: np.ndarray):
    """The layer's linear operation with kernel `delta` and no bias or activation."""
    config = {**layer.get_config(), "use_bias": False, "activation": "linear", "name": f"{layer.name}__rounding"}
    config.pop("bias_initializer", None)
    twin = type(layer).from_config(config)
    twin.build(layer.input_shape)
    twin.set_weights([delta])
    return twin


def expected_shifts(model, images, targets, reference: dict | None = None, batch_size: int = 8) -> list[np.ndarray]:
    """Per target layer, the mean over images and positions of conv(x, w_q - w), per channel.
    `reference` holds float kernels by layer name for layers whose kernel was already moved
    (output-aware rounding): there w is the reference and w_q the grid value of the kernel now."""
    keras = tfenv.keras()
    tf = tfenv.tf()
    outputs = []
    for layer in targets:
        kernel = kernel_of(layer).numpy()
        delta = rounding_delta(kernel, hasattr(layer, "depthwise_kernel"))
        if reference and layer.name in reference:
            delta = delta + (kernel - reference[layer.name])
        shifted = _delta_layer(layer, delta)(layer.input)
        if len(shifted.shape) == 4:
            shifted = keras.layers.GlobalAveragePooling2D()(shifted)
        outputs.append(shifted)
    probe = keras.Model(model.inputs, outputs)
    sums = [np.zeros(o.shape[-1], np.float64) for o in outputs]
    for start in range(0, len(images), batch_size):
        batch = tf.constant(np.asarray(images[start : start + batch_size], np.float32))
        results = probe(batch, training=False)
        results = results if isinstance(results, (list, tuple)) else [results]
        for i, result in enumerate(results):
            sums[i] += np.asarray(result, np.float64).sum(axis=0)
    return [s / len(images) for s in sums]


def correct_biases(model, images, max_images: int = 64, reference: dict | None = None) -> dict:
    """Subtract each layer's expected rounding shift from its bias, in place; returns the details."""
    targets, skipped = _candidates(model)
    if not targets:
        return {"corrected": 0, "skipped": skipped}
    images = images[:max_images]
    shifts = expected_shifts(model, images, targets, reference)
    largest = []
    for layer, shift in zip(targets, shifts):
        slot, _ = _bias_slot(layer)
        slot.assign((slot.numpy() - shift).astype(np.float32))
        largest.append((float(np.abs(shift).max()), layer.name))
    largest.sort(reverse=True)
    return {
        "corrected": len(targets),
        "images": len(images),
        "grid": "symmetric per output channel, max|w|/127 (the TFLite converter's)",
        "largest_shifts": [{"layer": name, "max_abs_shift": round(value, 6)} for value, name in largest[:5]],
        "skipped": skipped,
    }
