"""Fold the in-graph pixel scaling into the first convolution, so int8 sees the pixels as they are.

Models take raw 0..255 pixels and scale them in the graph (MobileNetV2: x / 127.5 - 1). The
TFLite converter turns that Rescaling into a MUL and an ADD, each with its own int8 output;
the MUL's range is widened to the ADD's ([-1, 2] for [0, 2]), so the 256 pixel levels land on
about 170 int8 steps before the first convolution sees them. On the flowers reference run that
one rounding doubled the first convolution's output error and changed 12 more test predictions.

Here the per-channel affine map a*x + b is folded into the convolution after it:
conv(a*x + b, w) = conv(x, a*w) + sum(w*b), exact wherever the kernel sees real pixels. Padding
is the only place it is not: the convolution padded with zeros in scaled space, so the folded
model pads explicitly with the raw value that scales to zero, -b/a (127.5 for MobileNetV2). The
float model is unchanged (up to float rounding); in int8 the input is quantized once, with the
pixels' own scale, and the pad value lands on the nearest int8 step (at most half a pixel level).
"""
from __future__ import annotations

import numpy as np

from edgeclf import tfenv
from edgeclf.ptq.layers import single_consumer


def _layer_class():
    keras = tfenv.keras()
    tf = tfenv.tf()

    class ConstantPad2D(keras.layers.Layer):
        """Spatial padding with a constant other than zero, one value or one per channel.
        One value is one PAD with a constant in every format; per-channel values (EfficientNet's
        normalisation) become a channel split, one such PAD per channel and a concatenation,
        all of which int8 runs at the input's own scale, without requantizing."""

        def __init__(self, padding, value, **kwargs):
            super().__init__(**kwargs)
            self.padding = tuple(tuple(int(v) for v in pair) for pair in padding)
            self.value = [float(v) for v in value] if isinstance(value, (list, tuple)) else float(value)

        def call(self, inputs):
            (top, bottom), (left, right) = self.padding
            paddings = [[0, 0], [top, bottom], [left, right], [0, 0]]
            if not isinstance(self.value, list):
                return tf.pad(inputs, paddings, constant_values=self.value)
            channels = tf.split(inputs, len(self.value), axis=-1)
            return tf.concat([tf.pad(c, paddings, constant_values=v) for c, v in zip(channels, self.value)], axis=-1)

        def get_config(self):
            return {**super().get_config(), "padding": self.padding, "value": self.value}

    return ConstantPad2D


def _affine(layer, channels: int):
    """(a, b) per channel for a Rescaling or an adapted Normalization, or None."""
    keras = tfenv.keras()
    if type(layer) is keras.layers.Rescaling:
        a = np.broadcast_to(np.asarray(layer.scale, np.float64), (channels,))
        b = np.broadcast_to(np.asarray(layer.offset, np.float64), (channels,))
        return a.copy(), b.copy()
    if type(layer) is keras.layers.Normalization and getattr(layer, "axis", None) in ((-1,), (3,)) \
            and not getattr(layer, "invert", False):
        mean = np.asarray(layer.mean, np.float64).reshape(-1)
        std = np.sqrt(np.maximum(np.asarray(layer.variance, np.float64).reshape(-1), 1e-7))
        a, b = 1.0 / std, -mean / std
        return np.broadcast_to(a, (channels,)).copy(), np.broadcast_to(b, (channels,)).copy()
    return None


def _same_padding(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    """TensorFlow's SAME padding along one axis: (before, after)."""
    effective = (kernel - 1) * dilation + 1
    out = -(-size // stride)
    total = max((out - 1) * stride + effective - size, 0)
    return total // 2, total - total // 2


def find_chain(model):
    """(scaling layers, ZeroPadding2D or None, first Conv2D), or (None, why not)."""
    keras = tfenv.keras()
    inputs = [layer for layer in model.layers if isinstance(layer, keras.layers.InputLayer)]
    if len(inputs) != 1:
        return None, "the model does not have exactly one input"
    channels = model.input_shape[-1]
    scaling, layer = [], single_consumer(inputs[0])
    while layer is not None and _affine(layer, channels) is not None:
        scaling.append(layer)
        layer = single_consumer(layer)
    if not scaling:
        return None, "no in-graph pixel scaling (Rescaling/Normalization) right after the input"
    pad = None
    if layer is not None and type(layer) is keras.layers.ZeroPadding2D:
        pad, layer = layer, single_consumer(layer)
    if layer is None or type(layer) is not keras.layers.Conv2D:
        return None, "the scaling does not feed a single plain Conv2D"
    if getattr(layer, "groups", 1) != 1 or len(layer._inbound_nodes) != 1 or layer.data_format != "channels_last":
        return None, "the first convolution is grouped, shared or not channels-last"
    if any(len(node._inbound_nodes) != 1 for node in scaling + [pad] if node is not None):
        return None, "a scaling layer is shared"
    if pad is not None and layer.padding != "valid":
        return None, "the input is padded twice (ZeroPadding2D, then SAME padding)"
    return (scaling, pad, layer), ""


def fold_input_scaling(model, images=None):
    """A new model with the pixel scaling folded into the first convolution, and the details.
    Returns (model, details); the model is `model` itself when nothing could be folded. With
    `images`, the folded model must give the same outputs on them or the fold is not used."""
    keras = tfenv.keras()
    chain, why = find_chain(model)
    if chain is None:
        return model, {"folded": False, "skipped": why}
    scaling, pad, conv = chain
    channels = model.input_shape[-1]
    a, b = np.ones(channels), np.zeros(channels)
    for layer in scaling:  # compose x -> a2 * (a1 x + b1) + b2
        a2, b2 = _affine(layer, channels)
        a, b = a * a2, b * a2 + b2
    if np.any(a == 0):
        return model, {"folded": False, "skipped": "a channel is scaled by zero"}
    pad_value = -b / a
    if pad is not None:
        padding = pad.padding
    elif conv.padding == "same":
        height, width = conv.input_shape[1:3]
        if height is None or width is None:
            return model, {"folded": False, "skipped": "SAME padding on an input of unknown size"}
        padding = tuple(_same_padding(size, k, s, d) for size, k, s, d in
                        zip((height, width), conv.kernel_size, conv.strides, conv.dilation_rate))
    else:
        padding = ((0, 0), (0, 0))
    needs_pad = any(v for pair in padding for v in pair)
    per_channel = needs_pad and not np.allclose(pad_value, pad_value[0])

    kernel = conv.kernel.numpy().astype(np.float64)
    bias = conv.bias.numpy().astype(np.float64) if conv.use_bias else np.zeros(kernel.shape[-1])
    config = {**conv.get_config(), "padding": "valid", "use_bias": True}
    folded_conv = keras.layers.Conv2D.from_config(config)
    replacement = []
    if needs_pad:
        value = [float(v) for v in pad_value] if per_channel else float(pad_value[0])
        replacement.append(_layer_class()(padding, value, name=f"{conv.name}_pad"))
    replacement.append(folded_conv)

    def rebuild_first(tensor):
        for layer in replacement:
            tensor = layer(tensor)
        return tensor

    skip = {layer.name for layer in scaling} | ({pad.name} if pad is not None else set())
    try:
        rebuilt = rebuild(model, skip, {conv.name: rebuild_first})
    except Exception as exc:  # a graph this simple rebuilder does not understand: keep the model as it is
        return model, {"folded": False, "skipped": f"the graph could not be rebuilt ({type(exc).__name__}: {exc})"[:300]}
    folded_conv.set_weights([(kernel * a[None, None, :, None]).astype(np.float32),
                             (bias + np.einsum("hwco,c->o", kernel, b)).astype(np.float32)])
    if images is not None and len(images):
        sample = np.asarray(images[:4], np.float32)
        before, after = np.asarray(model(sample, training=False)), np.asarray(rebuilt(sample, training=False))
        difference = float(np.abs(after - before).max())
        if difference > 1e-3 * max(float(np.abs(before).max()), 1.0):
            return model, {"folded": False, "skipped": f"the folded model's outputs moved by {difference:.3g} on calibration images"}
    return rebuilt, {
        "folded": True,
        "layers": [layer.name for layer in scaling] + ([pad.name] if pad is not None else []),
        "into": conv.name,
        "pad_value": ([round(float(v), 4) for v in pad_value] if per_channel else round(float(pad_value[0]), 4)) if needs_pad else None,
    }


def rebuild(model, skip: set[str], replace: dict):
    """The functional graph of `model` again, layers in `skip` passed through (their single input
    goes on), and layers in `replace` swapped for a function of their input tensor."""
    keras = tfenv.keras()
    tensors = {}
    new_inputs = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            fresh = keras.Input(batch_shape=layer.output.shape, dtype=layer.output.dtype, name=layer.name)
            tensors[id(layer.output)] = fresh
            new_inputs.append(fresh)
            continue
        node = layer._inbound_nodes[0]
        sources = node.input_tensors
        mapped = [tensors[id(t)] for t in sources] if isinstance(sources, (list, tuple)) else tensors[id(sources)]
        if layer.name in skip:
            out = mapped
        elif layer.name in replace:
            out = replace[layer.name](mapped)
        else:
            out = layer(mapped, **node.call_kwargs) if node.call_kwargs else layer(mapped)
        tensors[id(layer.output)] = out
    outputs = [tensors[id(t)] for t in model.outputs]
    return keras.Model(new_inputs, outputs if len(outputs) > 1 else outputs[0], name=model.name)
