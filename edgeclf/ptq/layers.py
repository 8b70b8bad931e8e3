"""Small questions the Keras-level techniques ask of a layer in a functional graph."""
from __future__ import annotations


def kernel(layer):
    """The weight variable a Conv2D, DepthwiseConv2D or Dense multiplies its input by."""
    return layer.depthwise_kernel if hasattr(layer, "depthwise_kernel") else layer.kernel


def single_consumer(layer):
    """The one layer that reads `layer`'s output, or None when several (or none) do."""
    nodes = layer._outbound_nodes
    return nodes[0].outbound_layer if len(nodes) == 1 else None
