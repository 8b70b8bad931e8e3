"""Magnitude pruning with tfmot: the schedule, the wrapping (all prunable kernels, or only
the 1x1 convolutions XNNPACK's sparse kernels use), and the sparsity reached per layer."""
from __future__ import annotations

import numpy as np

from edgeclf import console, tfenv
from edgeclf.errors import ModelError, first_line
from edgeclf.pipeline import quant_aware

# The polynomial schedule reaches its target after this fraction of the pruning steps, so the
# last part of the fine-tune recovers accuracy at the final sparsity.
RAMP_FRACTION = 0.7
PRUNED_KERNELS = quant_aware.KERNELS


def pruning_schedule(target: float, kind: str, total_steps: int):
    """tfmot's schedule reaching `target` within the fine-tune; mask updates at least ~10 times."""
    sparsity = quant_aware.tfmot().sparsity.keras
    ramp = max(1, int(total_steps * RAMP_FRACTION))
    frequency = max(1, min(100, ramp // 10))
    end_step = max(frequency, (ramp // frequency) * frequency)  # a mask update lands exactly on the target
    if kind == "constant":
        return sparsity.ConstantSparsity(target, begin_step=0, frequency=frequency), {"frequency": frequency}
    return (
        sparsity.PolynomialDecay(initial_sparsity=0.0, final_sparsity=target, begin_step=0, end_step=end_step, frequency=frequency),
        {"begin_step": 0, "end_step": end_step, "frequency": frequency, "total_steps": total_steps},
    )


def prune(model, tuner, config, lr: float):
    """Magnitude-prune `model` to config.prune over config.prune_epochs epochs; returns the stripped model.

    `tuner` runs the fine-tune epochs (`steps_per_epoch`, `fit`); `config` is the optimize
    command's record (`prune`, `prune_schedule`, `prune_for`, `prune_epochs`).
    """
    sparsity = quant_aware.tfmot().sparsity.keras
    from tensorflow_model_optimization.python.core.sparsity.keras.pruning_wrapper import (
        PruneLowMagnitude,
    )

    schedule, schedule_steps = pruning_schedule(config.prune, config.prune_schedule, tuner.steps_per_epoch * config.prune_epochs)
    policy, policy_note = None, None
    if config.prune_for == "xnnpack":
        policy, policy_note = xnnpack_policy(model)
    wrapped = wrap_for_pruning(model, schedule, policy)
    layers = {
        layer.layer.name: names
        for layer in wrapped.layers
        if isinstance(layer, PruneLowMagnitude) and (names := _short_names(layer.layer.get_prunable_weights()))
    }  # DepthwiseConv2D is wrapped but tfmot prunes nothing in it
    tuner.fit(wrapped, "prune", config.prune_epochs, lr, callbacks=[sparsity.UpdatePruningStep()])
    stripped = sparsity.strip_pruning(wrapped)
    reached = kernel_sparsity(stripped, layers)
    console.info(f"pruning reached {100 * reached['overall']:.1f}% sparsity (target {100 * config.prune:.0f}%) over {len(layers)} layers")
    return stripped, {
        "target": config.prune,
        "schedule": config.prune_schedule,
        "schedule_steps": schedule_steps,
        "for": config.prune_for,
        "xnnpack_policy": policy_note,
        "sparsity": reached,
        "layers": layers,
    }


def wrap_for_pruning(model, schedule, policy=None):
    """`prune_low_magnitude` on each trainable layer that has kernels to prune (and that the policy
    allows). Frozen layers are left dense: they could not recover from losing weights.

    Wrapping the whole model would fail on layers tfmot's PruneRegistry does not know, such as
    the in-graph Rescaling and Normalization, although they have nothing to prune.
    """
    keras = tfenv.keras()
    sparsity = quant_aware.tfmot().sparsity.keras
    from tensorflow_model_optimization.python.core.sparsity.keras.prune_registry import (
        PruneRegistry,
    )

    def wrap(layer):
        if isinstance(layer, keras.Model):
            raise ModelError(f"cannot prune the nested model {layer.name}", "flatten it first")
        prunable = layer.trainable and any(hasattr(layer, attr) for attr in PRUNED_KERNELS) and PruneRegistry.supports(layer)
        if prunable and (policy is None or policy.allow_pruning(layer)):
            return sparsity.prune_low_magnitude(layer, pruning_schedule=schedule)
        return layer

    with tfenv.native_stderr_silenced():
        return keras.models.clone_model(model, clone_function=wrap)


def xnnpack_policy(model):
    """tfmot's PruneForLatencyOnXNNPack, and whether the model has the subgraph XNNPACK's sparse path needs.

    The policy's own check wants the model to start with a 3x3 stride-2 VALID convolution after
    ZeroPadding2D(1); Keras MobileNetV2 and EfficientNetB0 start with a SAME-padded one. The
    1x1 convolutions are pruned either way; whether XNNPACK then runs them sparse is measured
    on the exported model, not assumed.
    """
    sparsity = quant_aware.tfmot().sparsity.keras

    class OnlyOneByOne(sparsity.PruneForLatencyOnXNNPack):
        def ensure_model_supports_pruning(self, model):  # checked (and reported) below instead
            return None

    try:
        sparsity.PruneForLatencyOnXNNPack().ensure_model_supports_pruning(model)
        return sparsity.PruneForLatencyOnXNNPack(), {"policy": "PruneForLatencyOnXNNPack", "model_supported": True}
    except ValueError as exc:
        reason = first_line(exc)
        console.warn(f"PruneForLatencyOnXNNPack: {reason}; pruning the 1x1 convolutions anyway "
                     "(XNNPACK may not run this model sparse: the export's latency tells)")
        return OnlyOneByOne(), {"policy": "PruneForLatencyOnXNNPack", "model_supported": False, "reason": reason}


def _inner(layer):
    return getattr(layer, "layer", layer)  # a QuantizeWrapper or pruning wrapper holds the real layer


def _short_names(weights) -> list[str]:
    return [quant_aware.short_name(weight) for weight in weights]


def _kernels(layer, attrs: list[str]) -> list[np.ndarray]:
    """The layer's kernel variables by name, also inside a QuantizeWrapper (whose inner layer's
    kernel attribute is then a quantized tensor, not the variable)."""
    found = []
    for weight, short in zip(layer.weights, _short_names(layer.weights)):
        if short in attrs:
            found.append(np.asarray(weight.numpy()))
    return found


def kernel_sparsity(model, layers: dict[str, list[str]]) -> dict:
    """Fraction of exact zeros in the pruned kernels: per layer and over all of them."""
    by_name = {_inner(layer).name: layer for layer in model.layers}
    per_layer, zeros, total = {}, 0, 0
    for name, attrs in layers.items():
        layer = by_name.get(name)
        if layer is None:
            continue
        values = _kernels(layer, attrs)
        n_zero = int(sum((v == 0).sum() for v in values))
        n = int(sum(v.size for v in values))
        per_layer[name] = round(n_zero / n, 4) if n else None
        zeros += n_zero
        total += n
    all_weights = int(sum(np.asarray(w).size for w in model.get_weights()))
    return {
        "overall": round(zeros / total, 4) if total else None,
        "zeros": zeros,
        "pruned_weights": total,
        "fraction_of_all_weights_zero": round(zeros / all_weights, 4) if all_weights else None,
        "per_layer": per_layer,
    }


def pruned_layers(prune_record: dict | None, previous: dict) -> dict[str, list[str]]:
    """Layer name -> pruned kernel names, from this optimization or the run it started from."""
    if prune_record is not None:
        return prune_record["layers"]
    return {name: list(PRUNED_KERNELS) for name in previous["prune"]["sparsity"]["per_layer"]}
