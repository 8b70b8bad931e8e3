"""Folding BatchNorm into the convolution before it, before QAT or pruning (and before PTQ's
equalization): afterwards the kernel is the kernel that ships and BatchNorm an exact bias."""
from __future__ import annotations

import numpy as np

from edgeclf import tfenv


def fold_batchnorm(model) -> list[str]:
    """Fold each frozen BatchNorm into the convolution before it, in place; returns their names.

    The TFLite converter folds BatchNorm into the conv weights and then quantizes the folded
    weights per channel. tfmot fake-quantizes the unfolded kernel and applies BatchNorm after
    it in float, so QAT would learn around a rounding that is not the one that ships, and the
    converter's requantization of the folded kernel adds a second one. After this fold the
    kernel already is the folded kernel and the BatchNorm is an exact per-channel bias (scale 1,
    mean 0, variance 1 - epsilon), which the converter folds without changing a weight.
    Magnitude pruning also judges the weights that ship. BatchNorm layers must stay frozen
    (inference mode) afterwards, or they would re-normalise with batch statistics.
    """
    keras = tfenv.keras()
    convs = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D)
    folded = []
    for layer in model.layers:
        if not isinstance(layer, keras.layers.BatchNormalization) or len(layer._inbound_nodes) != 1:
            continue
        source = layer._inbound_nodes[0].inbound_layers
        # Exact types: Conv2DTranspose subclasses Conv2D but keeps its output channels elsewhere.
        if type(source) not in convs or len(source._outbound_nodes) != 1 or source.activation is not keras.activations.linear:
            continue
        if tuple(layer.axis) not in ((3,), (-1,)) or not layer.center:
            continue
        folded.append(layer.name)
        _fold(source, layer)
    return folded


def _fold(conv, bn) -> None:
    epsilon = np.float32(bn.epsilon)
    gamma = bn.gamma.numpy() if bn.scale else np.ones(bn.moving_mean.shape, np.float32)
    scale = gamma / np.sqrt(bn.moving_variance.numpy() + epsilon)
    bias = conv.bias.numpy() if conv.use_bias else 0.0
    kernel_var = conv.depthwise_kernel if hasattr(conv, "depthwise_kernel") else conv.kernel
    kernel = kernel_var.numpy()
    if hasattr(conv, "depthwise_kernel"):  # (h, w, channels, multiplier): output channel c*m + j
        kernel = kernel * scale.reshape(kernel.shape[2:])
    else:
        kernel = kernel * scale
    kernel_var.assign(kernel.astype(np.float32))
    if conv.use_bias:
        conv.bias.assign(np.zeros_like(conv.bias.numpy()))
    bn.beta.assign((bn.beta.numpy() + (bias - bn.moving_mean.numpy()) * scale).astype(np.float32))
    if bn.scale:
        bn.gamma.assign(np.ones_like(gamma))
    bn.moving_mean.assign(np.zeros_like(scale))
    bn.moving_variance.assign(np.full_like(scale, np.float32(1.0) - epsilon))
    bn.trainable = False
