"""tfmot's 8-bit QAT schemes, with depthwise weights quantized per channel as TFLite does.

tfmot's conv weight quantizer takes one range per slice of the kernel's last axis. For a
DepthwiseConv2D kernel (h, w, channels, multiplier) that axis is the multiplier, usually 1,
so every depthwise kernel gets a single range for all its channels. The TFLite converter then
quantizes the same weights per output channel, so the model QAT trained is not the model that
ships, and channels with small weights lose all their precision during training. Here the
depthwise kernel is viewed as (h, w, 1, channels * multiplier), which is TFLite's output
channel order, and quantized along that last axis.

Importing this module imports tfmot; `custom_objects()` is what loading a saved QAT model needs.
"""
from __future__ import annotations

import tensorflow as tf
from tensorflow_model_optimization.python.core.keras.compat import keras
from tensorflow_model_optimization.python.core.quantization.keras import quant_ops, quantize_registry, quantizers
from tensorflow_model_optimization.python.core.quantization.keras.collab_opts.prune_preserve import (
    default_8bit_prune_preserve_quantize_scheme as prune_preserve,
)
from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import (
    default_8bit_quantize_registry as default_registry,
)
from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import (
    default_8bit_quantize_scheme as default_scheme,
)


class DepthwisePerChannelWeightsQuantizer(quantizers.LastValueQuantizer):
    """Symmetric int8 ([-127, 127]) with one range per depthwise output channel."""

    def __init__(self, num_bits=8, per_axis=True, symmetric=True, narrow_range=True):
        super().__init__(num_bits=num_bits, per_axis=per_axis, symmetric=symmetric, narrow_range=narrow_range)

    def build(self, tensor_shape, name, layer):
        channels = int(tensor_shape[-2]) * int(tensor_shape[-1])
        return {
            "min_var": layer.add_weight(name + "_min", shape=(channels,), initializer=keras.initializers.Constant(-6.0), trainable=False),
            "max_var": layer.add_weight(name + "_max", shape=(channels,), initializer=keras.initializers.Constant(6.0), trainable=False),
        }

    def __call__(self, inputs, training, weights, **kwargs):
        height, width, channels, multiplier = inputs.shape
        by_output_channel = tf.reshape(inputs, (height, width, 1, channels * multiplier))
        quantized = quant_ops.LastValueQuantize(
            by_output_channel, weights["min_var"], weights["max_var"], is_training=training,
            num_bits=self.num_bits, per_channel=True, symmetric=True, narrow_range=True,
        )
        return tf.reshape(quantized, (height, width, channels, multiplier))


class DepthwisePerChannelQuantizeConfig(default_registry.Default8BitQuantizeConfig):
    """tfmot's DepthwiseConv2D config with the per-channel weight quantizer above."""

    def __init__(self, weight_attrs=("depthwise_kernel",), activation_attrs=("activation",), quantize_output=False):
        super().__init__(list(weight_attrs), list(activation_attrs), quantize_output)
        self.weight_quantizer = DepthwisePerChannelWeightsQuantizer()


class _PerChannelDepthwiseRegistry(quantize_registry.QuantizeRegistry):
    """Delegates to a tfmot registry, except for DepthwiseConv2D."""

    def __init__(self, base):
        self.base = base

    def supports(self, layer):
        return self.base.supports(layer)

    def get_quantize_config(self, layer):
        if type(layer) is keras.layers.DepthwiseConv2D:  # noqa: E721 (subclasses keep tfmot's handling)
            return DepthwisePerChannelQuantizeConfig()
        return self.base.get_quantize_config(layer)


class PerChannelQuantizeScheme(default_scheme.Default8BitQuantizeScheme):
    def get_quantize_registry(self):
        return _PerChannelDepthwiseRegistry(super().get_quantize_registry())


class PerChannelPrunePreserveQuantizeScheme(prune_preserve.Default8BitPrunePreserveQuantizeScheme):
    """PQAT: pruned weights stay zero. tfmot never prunes depthwise kernels, so nothing is lost there."""

    def get_quantize_registry(self):
        return _PerChannelDepthwiseRegistry(super().get_quantize_registry())


def custom_objects() -> dict:
    return {cls.__name__: cls for cls in (DepthwisePerChannelWeightsQuantizer, DepthwisePerChannelQuantizeConfig)}
