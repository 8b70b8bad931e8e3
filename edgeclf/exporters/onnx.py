"""ONNX exporter: Keras to ONNX with tf2onnx; fp16 with onnxconverter-common; dynamic and static
int8 (QDQ) with ONNX Runtime's quantization tools.

The model keeps raw 0..255 float pixels as input (preprocessing is inside the graph), named
"image", with batch 1 unless --dynamic-batch. Static int8 reads the shared CalibrationSet,
quantizes the input with exactly scale 1 and zero point 0, and, unless --per-channel or
--per-tensor says otherwise, measures per-channel against per-tensor weights on held-out
calibration images and keeps the better one (onnxruntime issue 11415: per-channel can hurt
MobileNetV3). Work files live in a temp dir; only model.onnx is written to the staging dir.

Only numpy and edgeclf are imported at module level, so `edgeclf inspect` can use the
readers below without loading TensorFlow.
"""
from __future__ import annotations

import json
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np

from edgeclf import __version__, tfenv
from edgeclf.errors import ExportError, MissingDependency, ModelError, first_line
from edgeclf.exporters import RUNTIMES, Format
from edgeclf.exporters.recipes import ANY_RUN, EVERY_IMAGE, MORE_IMAGES, QAT_RUN, Budget, Step
from edgeclf.exporters.base import ExportJob, ExportOutput
from edgeclf.pipeline.backbones import INPUT_NAME

MODEL_FILE = "model.onnx"
OPSET = 17
BATCH_DIM = "batch"
QDQ_OPS = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"}
INTEGER_OPS = {"ConvInteger", "MatMulInteger", "DynamicQuantizeMatMul"}  # plus every QLinear* op
# Ops that only move or reshape data; they carry no arithmetic worth counting in coverage.
LAYOUT_OPS = {"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Identity", "Shape", "Gather", "Concat", "Cast"}


def export(job: ExportJob) -> ExportOutput:
    import onnx

    from edgeclf import ptq
    from edgeclf.exporters import onnx_quantize

    spec = job.spec
    details: dict = {"opset": OPSET, "batch": "dynamic" if spec.dynamic_batch else 1}
    versions = tfenv.versions("tf2onnx", "onnx", "onnxruntime")
    per_channel = spec.per_channel
    if spec.quant == "int8":
        # Bias correction and output-aware rounding work on a per-channel weight grid (symmetric, max|w|/127).
        excluded = {name: f"not with --per-tensor (the {what} assumes per-channel weights)"
                    for name, what in (("round", "rounding"), ("sequential", "rounding"), ("bias", "correction"))} \
            if per_channel is False else {}
        job, techniques = ptq.prepare(job, details, excluded)
        if {"bias", "round"} & set(techniques):
            per_channel = True
    float_model = convert(job.model, job.run.img_size, spec.dynamic_batch)
    with tempfile.TemporaryDirectory(prefix="edgeclf-onnx-") as work:
        work = Path(work)
        if spec.quant == "fp32":
            model = float_model
        elif spec.quant == "fp16":
            model = onnx_quantize.to_fp16(float_model, details)
            versions |= tfenv.versions("onnxconverter-common")
        elif spec.quant == "dynamic":
            model = onnx_quantize.dynamic_int8(float_model, spec.per_channel, work, details)
        else:
            why = None
            if per_channel and spec.per_channel is None:
                needs = [what for name, what in (("round", "output-aware rounding"), ("bias", "bias correction")) if name in techniques]
                why = f"{' and '.join(needs)} assume{'s' if len(needs) == 1 else ''} per-channel weights"
            model = onnx_quantize.static_int8(float_model, job.calibration, per_channel, spec.calib_method, work, details, why)
    model = checked(_with_metadata(model, job))
    onnx.save(model, job.staging / MODEL_FILE)
    tensors = io_tensors(model)
    details["ops"] = op_counts(model)
    details["quantization_coverage"] = quantization_coverage(model)
    details["shapes_inferred"] = shapes_inferred(model)
    return ExportOutput(MODEL_FILE, tensors["inputs"][0], tensors["outputs"][0], details, versions)


# --------------------------------------------------------------------------------------
# Keras -> ONNX
# --------------------------------------------------------------------------------------
def convert(model, img_size: int, dynamic_batch: bool = False):
    """The Keras model as a checked, shape-inferred fp32 ONNX model with input "image"."""
    tf = tfenv.tf()
    import tf2onnx

    batch = None if dynamic_batch else 1
    signature = (tf.TensorSpec((batch, img_size, img_size, 3), tf.float32, name=INPUT_NAME),)
    try:
        with tfenv.quiet_tools("tf2onnx"):
            proto, _ = tf2onnx.convert.from_keras(model, input_signature=signature, opset=OPSET)
    except Exception as exc:  # tf2onnx raises ValueError, RuntimeError, KeyError... with the TF op in the text
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]  # the TF op is on the last line
        raise ExportError(
            f"tf2onnx could not convert the model: {(lines[-1] if lines else type(exc).__name__)[:300]}",
            "see --verbose for tf2onnx's log, or use --target tflite",
        ) from exc
    _require_known_ops(proto, model)
    if dynamic_batch:
        for value in list(proto.graph.input) + list(proto.graph.output):
            dim = value.type.tensor_type.shape.dim[0]
            dim.Clear()
            dim.dim_param = BATCH_DIM
    return checked(proto)


def _require_known_ops(proto, keras_model) -> None:
    """tf2onnx leaves TF ops it cannot map in the graph (and logs them); name them here."""
    import onnx.defs

    unknown = [
        node for node in proto.graph.node
        if not onnx.defs.has(node.op_type, "" if node.domain in ("", "ai.onnx") else node.domain)
    ]
    if not unknown:
        return
    layer_names = {layer.name for layer in keras_model.layers}
    found = []
    for node in unknown:
        layers = [part for part in node.name.split("/") if part in layer_names]
        found.append(f"{node.op_type} (layer {layers[0]})" if layers else f"{node.op_type} ({node.name})")
    raise ExportError(
        f"ONNX opset {OPSET} has no equivalent for TensorFlow op(s): {', '.join(dict.fromkeys(found))}",
        "replace those layers with standard ones, or use --target tflite",
    )


def checked(model):
    """The model after onnx.checker (full check) and strict shape inference, inferred shapes included."""
    import onnx

    try:
        onnx.checker.check_model(model, full_check=True)
        return onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        raise ExportError(f"the ONNX model is not valid: {' '.join(lines)[:300]}", "see --verbose, or use --target tflite") from exc


def _with_metadata(model, job: ExportJob):
    """Labels and input convention in metadata_props, so the file describes itself."""
    del model.metadata_props[:]
    size = job.run.img_size
    props = {
        "edgeclf.version": __version__,
        "edgeclf.labels": json.dumps(job.run.labels),
        "edgeclf.input": f"{INPUT_NAME}: raw RGB pixels 0-255, float32, NHWC {size}x{size}; normalisation is inside the model",
        "edgeclf.quant": job.spec.quant,
    }
    for key, value in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    model.doc_string = f"edgeclf {job.run.arch} image classifier ({len(job.run.labels)} classes)"
    return model


# --------------------------------------------------------------------------------------
# Readers shared with `edgeclf inspect`
# --------------------------------------------------------------------------------------
def _tensor_info(value) -> dict:
    import onnx.helper

    tensor_type = value.type.tensor_type
    shape = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor_type.shape.dim]
    return {
        "name": value.name,
        "shape": shape,
        "dtype": onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type).name,
        "quantization": None,
    }


def io_tensors(model) -> dict:
    initializers = {init.name for init in model.graph.initializer}
    return {
        "inputs": [_tensor_info(v) for v in model.graph.input if v.name not in initializers],
        "outputs": [_tensor_info(v) for v in model.graph.output],
    }


def opset(model) -> int | None:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)


def op_counts(model) -> dict[str, int]:
    return dict(Counter(node.op_type for node in model.graph.node).most_common())


def quantization_coverage(model) -> dict:
    """How much of the graph computes on quantized values, and how weights are stored.

    An op counts as quantized when it is an integer op (ConvInteger, QLinear*...) or, in QDQ
    format, when each of its non-constant float inputs comes from a DequantizeLinear. Q/DQ
    ops themselves and pure layout ops are not counted.
    """
    import onnx

    producers = {out: node for node in model.graph.node for out in node.output}
    initializers = {init.name: init for init in model.graph.initializer}
    compute = [n for n in model.graph.node if n.op_type not in QDQ_OPS and n.op_type not in LAYOUT_OPS]

    def quantized(node) -> bool:
        if node.op_type in INTEGER_OPS or node.op_type.startswith("QLinear"):
            return True
        activations = [name for name in node.input if name and name not in initializers]
        return bool(activations) and all(
            producers.get(name) is not None and producers[name].op_type == "DequantizeLinear" for name in activations
        )

    n_quantized = sum(1 for n in compute if quantized(n))
    by_dtype: Counter = Counter()
    for init in model.graph.initializer:
        by_dtype[onnx.TensorProto.DataType.Name(init.data_type)] += int(np.prod(init.dims)) if init.dims else 1
    weights = sum(by_dtype.values())
    return {
        "ops_compute": len(compute),
        "ops_quantized": n_quantized,
        "ops_quantized_fraction": round(n_quantized / len(compute), 4) if compute else None,
        "float_ops": dict(Counter(n.op_type for n in compute if not quantized(n)).most_common()),
        "qdq_ops": sum(1 for n in model.graph.node if n.op_type in QDQ_OPS),
        "weight_values_by_dtype": dict(by_dtype.most_common()),
        "weights_int8_fraction": round((by_dtype.get("INT8", 0) + by_dtype.get("UINT8", 0)) / weights, 4) if weights else None,
    }


def shapes_inferred(model) -> dict:
    """Whether every tensor has a fully known shape after shape inference."""
    known = {}
    for value in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output):
        dims = value.type.tensor_type.shape.dim
        known[value.name] = value.type.tensor_type.HasField("shape") and all(d.HasField("dim_value") or d.dim_param == BATCH_DIM for d in dims)
    initializers = {init.name for init in model.graph.initializer}
    tensors = {out for node in model.graph.node for out in node.output if out} - initializers
    missing = sorted(t for t in tensors if not known.get(t))
    return {"tensors": len(tensors), "with_shape": len(tensors) - len(missing), "missing": missing[:5]}


def metadata(model) -> dict:
    return {prop.key: prop.value for prop in model.metadata_props}


def inspect_file(path: Path) -> dict:
    try:
        import onnx
    except ImportError:
        raise MissingDependency("onnx", FORMAT.extra) from None
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # DecodeError, or a missing external-data file
        raise ModelError(f"cannot read {path.name} as ONNX: {first_line(exc, 200)}", "pass a valid .onnx file") from exc
    # Protobuf reads an empty (or all-default) file as an empty model without complaint.
    if not model.graph.output:
        what = "is empty" if not path.stat().st_size else "has no graph outputs"
        raise ModelError(f"{path.name} is not an ONNX model (the file {what})",
                         "pass a valid .onnx file, e.g. one from `edgeclf export --target onnx`")
    try:
        model = onnx.shape_inference.infer_shapes(model)
    except Exception:  # a foreign model may not infer; inspect what is there
        pass
    io = io_tensors(model)
    props = metadata(model)
    return {
        "path": str(path),
        "format": "onnx",
        "bytes": path.stat().st_size,
        "opset": opset(model),
        "producer": f"{model.producer_name} {model.producer_version}".strip() or None,
        "inputs": io["inputs"],
        "outputs": io["outputs"],
        "ops": op_counts(model),
        "quantization": quantization_coverage(model),
        "metadata": ({"name": model.doc_string or None, "description": props.get("edgeclf.input"),
                      "version": props.get("edgeclf.version")} | props) if props else None,
        "labels": json.loads(props["edgeclf.labels"]) if "edgeclf.labels" in props else None,
    }


# ORT static int8 with min/max ranges (plain, then the default techniques, which later recipes
# keep), then ORT's other range methods, then more calibration images.
BUDGET = Budget(steps=(
    Step("ort minmax, ptq none", {"ptq": "none"}),
    Step("ort minmax, ptq {ptq}"),
    Step("ort minmax", runs_on=QAT_RUN),
    Step("ort percentile", {"calib_method": "percentile"}, runs_on=ANY_RUN),
    Step("ort entropy", {"calib_method": "entropy"}, runs_on=ANY_RUN),
    Step("ort minmax, calibration {images} images", {"calib_size": EVERY_IMAGE}, when=MORE_IMAGES, runs_on=ANY_RUN),
))

FORMAT = Format(
    name="onnx",
    suffixes=(".onnx",),
    quant_modes=("fp32", "fp16", "dynamic", "int8"),
    options={"calib_method": ("int8",), "per_channel": ("dynamic", "int8"),
             "dynamic_batch": ("fp32", "fp16", "dynamic", "int8"), "ptq": ("int8",)},
    ptq=("input", "cle", "round", "sequential", "bias"),
    # Measured on the flowers reference run (benchmarks/ptq.py --target onnx, README): agreement
    # with float on test / val 92.8% / 93.6% plain, 94.5% / 96.9% bias, 96.6% / 97.8% input,bias,
    # 98.2% / 98.2% input,round,bias.
    ptq_default=("input", "round", "bias"),
    extra="onnx",
    requires=("tf2onnx", "onnx", "onnxruntime"),
    export=export,
    inspect=inspect_file,
    runtime_file=RUNTIMES / "onnx.py",
    runtime_hint="onnxruntime",
    runtime_modules=("onnxruntime",),
    budget=BUDGET,
    golden_loader="onnx",
)
