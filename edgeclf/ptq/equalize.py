"""Cross-layer equalization (Nagel et al. 2019) on a BatchNorm-folded Keras model.

For two convolutions in a chain, conv1 -> [bias] -> ReLU -> conv2, multiplying conv1's output
channel c (kernel and bias) by t and dividing conv2's input channel c by t leaves the model's
output unchanged, because ReLU(t x) = t ReLU(x) for t > 0. With t = sqrt(r2 / r1) (r: the
channel's max |weight| in each layer) both layers get the same per-channel range, and the
tensor between them gets channels of more even size, which its single int8 scale serves better.

ReLU6 is not scale-invariant: min(t x, 6) = t min(x, 6) only while t x and x both stay below 6.
Scaling only channels that stayed below 6 on the calibration images is not exact: on held-out
flowers images such channels crossed 6 and MobileNetV2's logits moved by up to 1.7. So links
through ReLU6 are skipped (reported), and only linear and plain-ReLU links are equalized.
Chains never cross a residual Add (a tensor with more than one consumer ends the chain) or
an activation that is not a (capped) ReLU.
"""
from __future__ import annotations

import numpy as np

from edgeclf import tfenv
from edgeclf.ptq.layers import kernel as kernel_of, single_consumer

PASSES = 4
RELU6_WHY = ("a capped ReLU (ReLU6) sits between them: not scale-invariant, and calibration maxima do not "
             "bound unseen images (shrinking channels below 1.5x their calibration max moved MobileNetV2 logits by up to 1.7)")


class Link:
    """conv1 -> [BatchNorm] -> [ReLU/ReLU6] -> [ZeroPadding2D] -> conv2."""

    def __init__(self, first, bias, second):
        self.first, self.bias, self.second = first, bias, second


def _relu_cap(layer):
    """(is a plain ReLU, its cap or None)."""
    keras = tfenv.keras()
    if type(layer) is keras.layers.ReLU:
        cfg = layer.get_config()
        plain = not cfg.get("negative_slope") and not cfg.get("threshold")
        return plain, (float(cfg["max_value"]) if cfg.get("max_value") is not None else None)
    if type(layer) is keras.layers.Activation:
        name = getattr(layer.activation, "__name__", "")
        return name in ("relu", "relu6"), (6.0 if name == "relu6" else None)
    return False, None


def find_links(model) -> tuple[list[Link], dict]:
    """Every equalizable conv -> conv link, and why each other convolution's output is not one."""
    keras = tfenv.keras()
    convs = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D)
    links, skipped = [], {}

    def skip(why, name):
        skipped.setdefault(why, []).append(name)

    for first in model.layers:
        if type(first) not in convs:
            continue
        if getattr(first, "groups", 1) != 1 or getattr(first, "depth_multiplier", 1) != 1:
            skip("grouped or multiplier > 1 convolution", first.name)
            continue
        if first.activation is not keras.activations.linear:
            skip("activation fused into the layer", first.name)
            continue
        bias, cap, layer = (first.bias if first.use_bias else None), None, first
        nxt = single_consumer(layer)
        why = ""
        if nxt is None:
            why = "its output feeds several layers (a residual branch) or none"
        elif isinstance(nxt, keras.layers.BatchNormalization):
            if first.use_bias or type(nxt) is not keras.layers.BatchNormalization or not nxt.center \
                    or not _folded(nxt):
                why = "BatchNorm after it is not folded into a plain bias"
            else:
                bias, layer = nxt.beta, nxt
                nxt = single_consumer(layer)
        if not why and nxt is not None:
            plain, cap_value = _relu_cap(nxt)
            if plain:
                cap, layer = cap_value, nxt
                nxt = single_consumer(layer)
            if nxt is not None and type(nxt) is keras.layers.ZeroPadding2D:
                nxt = single_consumer(nxt)
        if why:
            pass  # already explained
        elif nxt is None:
            why = "its output feeds several layers (a residual branch) or none"
        elif type(nxt) not in convs:
            why = f"its output goes to {type(nxt).__name__} (not scale-equivariant or not a convolution)"
        elif getattr(nxt, "groups", 1) != 1 or getattr(nxt, "depth_multiplier", 1) != 1 or len(nxt._inbound_nodes) != 1:
            why = "the next convolution is grouped, has a depth multiplier or is shared"
        elif cap is not None:
            why = RELU6_WHY
        if why:
            skip(why, first.name)
            continue
        links.append(Link(first, bias, nxt))
    return links, skipped


def _folded(bn) -> bool:
    gamma = bn.gamma.numpy() if bn.scale else 1.0
    factor = gamma / np.sqrt(bn.moving_variance.numpy() + bn.epsilon)
    return bool(np.allclose(factor, 1.0, atol=1e-6) and np.allclose(bn.moving_mean.numpy(), 0.0))


def _ranges(link: Link) -> tuple[np.ndarray, np.ndarray]:
    first, second = kernel_of(link.first).numpy(), kernel_of(link.second).numpy()
    # Output channels: the last axis of a conv kernel (h, w, in, out), axis 2 of a depthwise
    # kernel (h, w, channels, 1). Input channels: axis 2 of both.
    r1 = np.abs(first).max(axis=(0, 1, 3) if hasattr(link.first, "depthwise_kernel") else (0, 1, 2))
    r2 = np.abs(second).max(axis=(0, 1, 3))
    return r1, r2


def _scales(link: Link) -> np.ndarray:
    r1, r2 = _ranges(link)
    scales = np.where((r1 > 0) & (r2 > 0), np.sqrt(r2 / np.where(r1 > 0, r1, 1.0)), 1.0)
    return scales.astype(np.float32)


def _apply(link: Link, scales: np.ndarray) -> None:
    first = kernel_of(link.first)
    kernel = first.numpy()
    if hasattr(link.first, "depthwise_kernel"):
        first.assign(kernel * scales.reshape(1, 1, -1, 1))
    else:
        first.assign(kernel * scales)
    if link.bias is not None:
        link.bias.assign(link.bias.numpy() * scales)
    second = kernel_of(link.second)
    second.assign(second.numpy() / scales.reshape(1, 1, -1, 1))


def equalize(model) -> dict:
    """Equalize every link of a BatchNorm-folded model in place; returns the details."""
    links, skipped = find_links(model)
    if not links:
        return {"links": 0, "skipped": skipped}
    spread_before = _spread(links)
    # Scaling a layer's input channels leaves its outputs (and so the maxima measured
    # there) unchanged; scaling its output channels is tracked in Link.channel_max.
    for _ in range(PASSES):
        for link in links:
            _apply(link, _scales(link))
    return {
        "links": len(links),
        "pairs": [f"{link.first.name} -> {link.second.name}" for link in links],
        "weight_range_spread": {"before": spread_before, "after": _spread(links)},
        "skipped": skipped,
    }


def _spread(links: list[Link]) -> float:
    """Median over links of (largest / median) per-channel weight range of the first layer."""
    ratios = []
    for link in links:
        r1, _ = _ranges(link)
        positive = r1[r1 > 0]
        if positive.size:
            ratios.append(float(positive.max() / np.median(positive)))
    return round(float(np.median(ratios)), 2) if ratios else 0.0
