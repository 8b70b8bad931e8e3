"""Quantization-aware training with tfmot: the pre-flight, `quantize`, and QAT's starting ranges.

Can tfmot quantization-aware training take this model as it is? If not, what will we do about it?

tfmot's `quantize_model` fails at the first layer it cannot handle, with a message that names
one layer and says nothing of the rest. The pre-flight here asks tfmot's own machinery the
same question for every layer at once: it applies the 8-bit scheme's layout transform (which
folds Conv+BatchNorm+activation patterns) and then asks the scheme's registry about each
layer that is left. Every problem layer gets one of three handlings:

- a model nested inside the model: `flatten` it into one functional graph;
- a layer with no weights to quantize whose output can simply be quantized (Rescaling,
  Normalization, Multiply, an unfused BatchNormalization): give it a `QuantizeConfig`
  that quantizes only its output;
- anything else: QAT is impossible, and `require_quantizable` fails with one error that
  names the layers and suggests post-training int8 instead.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from edgeclf import tfenv
from edgeclf.errors import ModelError

# Weight-free layers (or layers whose weights are constants) that are safe to run in int8
# with only their output quantized: TFLite lowers them to MUL/ADD/SUB on int8 tensors.
OUTPUT_ONLY = ("Rescaling", "Normalization", "Multiply", "BatchNormalization")

FLATTEN = "flatten"
OUTPUT_CONFIG = "quantize_config"
IMPOSSIBLE = "impossible"

# The weight variables that convolution and dense layers multiply with: what magnitude
# pruning zeroes and what tfmot's weight quantizers keep a (min, max) range for.
KERNELS = ("kernel", "depthwise_kernel", "pointwise_kernel")


@dataclass(frozen=True)
class Finding:
    layer: str
    kind: str  # the layer's class name
    problem: str
    handling: str  # FLATTEN, OUTPUT_CONFIG or IMPOSSIBLE
    how: str  # what the pipeline does about it, in words

    def to_dict(self) -> dict:
        return asdict(self)


def tfmot():
    tfenv.tf()
    import tensorflow_model_optimization as tfmot

    return tfmot


def nested_models(model) -> list:
    keras = tfenv.keras()
    return [layer for layer in model.layers if isinstance(layer, keras.Model)]


def preflight(model, scheme=None) -> list[Finding]:
    """Every layer that tfmot cannot quantize as-is, with how the pipeline will handle it."""
    findings = [
        Finding(
            layer.name, type(layer).__name__,
            f"a {type(layer).__name__} nested inside the model ({len(layer.layers)} layers); "
            "tfmot cannot quantize a model inside a model",
            FLATTEN, "flatten it into one functional model",
        )
        for layer in nested_models(model)
    ]
    flat = flatten(model) if findings else model
    for layer in unsupported_layers(flat, scheme):
        kind = type(layer).__name__
        if kind in OUTPUT_ONLY:
            findings.append(Finding(
                layer.name, kind, f"tfmot's 8-bit registry has no QuantizeConfig for {kind}",
                OUTPUT_CONFIG, "QuantizeConfig that quantizes only its output (Default8BitOutputQuantizeConfig)",
            ))
        else:
            findings.append(Finding(
                layer.name, kind, f"tfmot cannot quantize {kind} and no generic QuantizeConfig fits it",
                IMPOSSIBLE, "none: QAT is not possible for this layer",
            ))
    return findings


def unsupported_layers(model, scheme=None) -> list:
    """The layers `quantize_apply` would reject, found the way it finds them, all at once."""
    keras = tfenv.keras()
    scheme = scheme or default_scheme()
    quantize_map = {layer.name: {"quantize_config": None} for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)}
    with tfenv.native_stderr_silenced():
        transformed, quantize_map = scheme.get_layout_transformer().apply(model, quantize_map)
    registry = scheme.get_quantize_registry()
    return [
        layer
        for layer in transformed.layers
        if layer.name in quantize_map
        and not isinstance(layer, keras.layers.InputLayer)
        and not quantize_map[layer.name].get("quantize_config")
        and not registry.supports(layer)
    ]


def default_scheme(preserve_sparsity: bool = False):
    """tfmot's 8-bit scheme (or PQAT's, which keeps pruned weights at zero), with depthwise
    weights quantized per channel like TFLite does (see qat_schemes)."""
    tfmot()
    from edgeclf.pipeline import qat_schemes

    if preserve_sparsity:
        return qat_schemes.PerChannelPrunePreserveQuantizeScheme()
    return qat_schemes.PerChannelQuantizeScheme()


def quantize_scope():
    """What deserializing a QAT model needs: tfmot's objects and ours."""
    tfmot()
    from edgeclf.pipeline import qat_schemes

    return tfmot().quantization.keras.quantize_scope(qat_schemes.custom_objects())


def require_quantizable(findings: list[Finding]) -> None:
    impossible = [f for f in findings if f.handling == IMPOSSIBLE]
    if impossible:
        names = ", ".join(f"{f.layer} ({f.kind})" for f in impossible[:8])
        more = f" and {len(impossible) - 8} more" if len(impossible) > 8 else ""
        raise ModelError(
            f"quantization-aware training is not possible for this model: tfmot cannot quantize {names}{more}",
            "drop --qat and export with `edgeclf export RUN --quant int8` (post-training int8) instead",
        )


# --------------------------------------------------------------------------------------
# Flattening nested models
# --------------------------------------------------------------------------------------
def flatten(model):
    """The same computation as one functional graph: every nested functional/Sequential model
    is replaced by its own layers. Layers (and so weights) are shared with `model`, not copied."""
    keras = tfenv.keras()
    if not nested_models(model):
        return model
    inputs = [keras.Input(shape=t.shape[1:], dtype=t.dtype, name=layer.name)
              for t, layer in zip(model.inputs, model._input_layers)]
    outputs = _replay(model, inputs)
    flat = keras.Model(inputs if len(inputs) > 1 else inputs[0], outputs if len(outputs) > 1 else outputs[0], name=model.name)
    names = [layer.name for layer in flat.layers]
    if len(names) != len(set(names)):
        raise ModelError("cannot flatten the nested model: an inner layer has the same name as an outer one",
                         "rename the clashing layers, or build the classifier as one functional model")
    return flat


def _replay(model, inputs: list) -> list:
    """Call `model`'s layers, in graph order, on `inputs`; nested graph models are replayed in turn."""
    keras = tfenv.keras()
    tf = tfenv.tf()
    if not getattr(model, "_is_graph_network", False):
        raise ModelError(f"cannot flatten {model.name}: it is a subclassed model, not a functional graph",
                         "build it with the functional API, or use post-training int8 instead of --qat")
    tensors = {id(t): new for t, new in zip(model.inputs, inputs)}
    for depth in sorted(model._nodes_by_depth, reverse=True):
        for node in model._nodes_by_depth[depth]:
            layer = node.layer
            if isinstance(layer, keras.layers.InputLayer) or node.is_input:
                continue
            if any(id(t) not in tensors for t in tf.nest.flatten(node.keras_inputs)):
                continue  # a node of a layer shared with another graph
            args, kwargs = tf.nest.map_structure(
                lambda x: tensors.get(id(x), x) if hasattr(x, "_keras_history") else x, (node.call_args, node.call_kwargs)
            )
            if isinstance(layer, keras.Model) and getattr(layer, "_is_graph_network", False):
                outputs = _replay(layer, tf.nest.flatten(args))
                outputs = outputs if len(outputs) > 1 else outputs[0]
            else:
                outputs = layer(*args, **kwargs)
            for old, new in zip(tf.nest.flatten(node.outputs), tf.nest.flatten(outputs)):
                tensors[id(old)] = new
    return [tensors[id(t)] for t in model.outputs]


# --------------------------------------------------------------------------------------
# Quantize: annotate with the configs the pre-flight chose, then apply the scheme
# --------------------------------------------------------------------------------------
def quantize(model, findings: list[Finding], preserve_sparsity: bool = False, calibration_images=None):
    """A QAT model (tfmot QuantizeWrappers) of `model`; PQAT's scheme when preserving sparsity.

    With `calibration_images`, every activation range starts at what the float model really
    produces (see `initialize_ranges`) instead of tfmot's [-6, 6].
    """
    require_quantizable(findings)
    keras = tfenv.keras()
    q = tfmot().quantization.keras
    from tensorflow_model_optimization.python.core.quantization.keras.default_8bit.default_8bit_quantize_configs import (
        Default8BitOutputQuantizeConfig,
    )

    model = flatten(model)
    output_only = {f.layer for f in findings if f.handling == OUTPUT_CONFIG}

    def annotate(layer):
        if isinstance(layer, keras.layers.InputLayer):
            return layer
        if layer.name in output_only:
            return q.quantize_annotate_layer(layer, Default8BitOutputQuantizeConfig())
        return q.quantize_annotate_layer(layer)

    annotated = keras.models.clone_model(model, clone_function=annotate)
    scheme = default_scheme(preserve_sparsity)
    with quantize_scope(), tfenv.native_stderr_silenced():
        quantized = q.quantize_apply(annotated, scheme)
    if calibration_images is not None:
        initialize_ranges(quantized, model, calibration_images)
    return quantized


# Quantizer variables that hold a weight's range (set from the weights at every step anyway)
# or a pre-activation range (not the layer's output): left to tfmot.
_NOT_OUTPUT_RANGES = (*KERNELS, "bias", "pre_activation")


def independent_copy(model):
    """The same graph with new layers holding the same weight values (no shared variables)."""
    keras = tfenv.keras()
    with tfenv.native_stderr_silenced():
        copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    return copy


def short_name(weight) -> str:
    """A variable's own name without its layer path or device suffix: 'kernel', 'kernel_min'..."""
    return weight.name.split("/")[-1].split(":")[0]


def weights_by_name(layer) -> dict:
    return {short_name(w): w for w in layer.weights}


def _output_ranges(layer) -> list[tuple]:
    """(min, max) variable pairs of a QuantizeWrapper/QuantizeLayer that bound its output tensor."""
    named = weights_by_name(layer)
    pairs = []
    for name, variable in named.items():
        if name.endswith("_min") and name[: -len("_min")] not in _NOT_OUTPUT_RANGES and name[: -len("_min")] + "_max" in named:
            pairs.append((variable, named[name[: -len("_min")] + "_max"]))
    return pairs


def initialize_ranges(quantized, float_model, images, batch_size: int = 32) -> int:
    """Start every activation range at the min/max the float model produces on `images`.

    tfmot's moving-average quantizers start at [-6, 6] and move with decay 0.999, so a short
    fine-tune (a few hundred steps) keeps ranges near [-6, 6]: wide where values are small,
    clipping where they are large (MobileNetV2's linear bottlenecks). Each QuantizeWrapper's
    output is its wrapped layer's output, which the float model (same layer names) computes;
    the input QuantizeLayer gets the pixels' own range. Returns the number of ranges set.
    """
    keras = tfenv.keras()
    # A fresh copy: layers shared with earlier graphs (the pruned and stripped models reuse the
    # same layer objects) would hand back `.output` tensors of those other graphs.
    float_model = independent_copy(float_model)
    targets = []  # (float tensor, pairs)
    for layer in quantized.layers:
        pairs = _output_ranges(layer)
        if not pairs:
            continue
        if type(layer).__name__ == "QuantizeLayer":
            targets.append((float_model.inputs[0], pairs))
            continue
        inner = getattr(layer, "layer", None)
        if inner is None or inner.name not in {known.name for known in float_model.layers}:
            continue
        targets.append((float_model.get_layer(inner.name).output, pairs))
    if not targets:
        return 0
    probe = keras.Model(float_model.inputs, [t for t, _ in targets])
    lows = np.full(len(targets), np.inf)
    highs = np.full(len(targets), -np.inf)
    for start in range(0, len(images), batch_size):
        outputs = probe(np.asarray(images[start : start + batch_size], np.float32), training=False)
        outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
        for i, out in enumerate(outputs):
            values = np.asarray(out)
            lows[i] = min(lows[i], float(values.min()))
            highs[i] = max(highs[i], float(values.max()))
    for (_, pairs), low, high in zip(targets, lows, highs):
        for min_var, max_var in pairs:
            min_var.assign(min(low, 0.0))
            max_var.assign(max(high, 0.0))
    # Weight ranges (LastValueQuantizer) are set from the weights only in a training step;
    # until then they hold tfmot's [-6, 6]. One forward pass in training mode sets them (and
    # moves the activation ranges by only 0.1% of the way, their moving-average decay).
    quantized(np.asarray(images[:batch_size], np.float32), training=True)
    return sum(len(p) for _, p in targets)


def widen_collapsed_weight_ranges(quantized) -> int:
    """Give every all-zero output channel of a QAT kernel a nonzero range; returns how many.

    A channel whose weights are all zero (pruned away, or folded from a BatchNorm with gamma 0)
    gets the range [0, 0] from tfmot. TensorFlow's fake-quant copes, but the TFLite converter
    turns it into weight scale 0 and so bias scale 0, and the channel's folded bias becomes
    garbage in the int8 model. Zero stays exactly zero under any symmetric range, so the
    channel gets the median range of its layer's other channels: Keras outputs do not change.
    """
    widened = 0
    for layer in quantized.layers:
        named = weights_by_name(layer)
        for weight in KERNELS:
            low, high = named.get(weight + "_min"), named.get(weight + "_max")
            if low is None or high is None or len(high.shape) != 1:
                continue
            lows, highs = low.numpy(), high.numpy()
            collapsed = (highs - lows) <= 0
            if not collapsed.any() or collapsed.all():
                continue
            half_width = float(np.median(np.maximum(np.abs(lows), np.abs(highs))[~collapsed]))
            low.assign(np.where(collapsed, -half_width, lows).astype(np.float32))
            high.assign(np.where(collapsed, half_width, highs).astype(np.float32))
            widened += int(collapsed.sum())
    return widened
