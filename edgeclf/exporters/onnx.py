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
from edgeclf.calibration import CalibrationSet
from edgeclf.errors import ExportError
from edgeclf.exporters.base import ExportJob, ExportOutput

TARGET = "onnx"
MODEL_FILE = "model.onnx"
OPSET = 17
INPUT_NAME = "image"
BATCH_DIM = "batch"
CALIB_METHODS = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}
# Per-channel vs per-tensor is judged on every HOLDOUT_EVERY-th calibration image, after
# calibrating on the others; with fewer than MIN_HOLDOUT_SET images both roles use all of them.
HOLDOUT_EVERY = 3
MIN_HOLDOUT_SET = 12
QDQ_OPS = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"}
INTEGER_OPS = {"ConvInteger", "MatMulInteger", "DynamicQuantizeMatMul"}  # plus every QLinear* op
# Ops that only move or reshape data; they carry no arithmetic worth counting in coverage.
LAYOUT_OPS = {"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Identity", "Shape", "Gather", "Concat", "Cast"}


def export(job: ExportJob) -> ExportOutput:
    import onnx

    spec = job.spec
    details: dict = {"opset": OPSET, "batch": "dynamic" if spec.dynamic_batch else 1}
    versions = tool_versions()
    float_model = convert(job.model, job.run.img_size, spec.dynamic_batch)
    with tempfile.TemporaryDirectory(prefix="edgeclf-onnx-") as work:
        work = Path(work)
        if spec.quant == "fp32":
            model = float_model
        elif spec.quant == "fp16":
            model = _to_fp16(float_model, details)
            versions["onnxconverter-common"] = _version("onnxconverter-common")
        elif spec.quant == "dynamic":
            model = _dynamic_int8(float_model, spec.per_channel, work, details)
        else:
            model = _static_int8(float_model, job.calibration, spec.per_channel, spec.calib_method, work, details)
    model = checked(_with_metadata(model, job))
    onnx.save(model, job.staging / MODEL_FILE)
    tensors = io_tensors(model)
    details["ops"] = op_counts(model)
    details["quantization_coverage"] = quantization_coverage(model)
    details["shapes_inferred"] = shapes_inferred(model)
    return ExportOutput(MODEL_FILE, tensors["inputs"][0], tensors["outputs"][0], details, versions)


def tool_versions() -> dict:
    return {name: _version(name) for name in ("tf2onnx", "onnx", "onnxruntime")}


def _version(dist: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


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
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
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
    model.doc_string = f"edgeclf {job.run.info['config']['arch']} image classifier ({len(job.run.labels)} classes)"
    return model


# --------------------------------------------------------------------------------------
# fp16 and dynamic-range int8
# --------------------------------------------------------------------------------------
def _to_fp16(model, details: dict):
    from onnxconverter_common import float16

    try:
        with tfenv.quiet_tools("onnxconverter_common"):
            converted = float16.convert_float_to_float16(model, keep_io_types=True)
    except Exception as exc:
        raise ExportError(f"float16 conversion failed: {str(exc).strip()[:300]}", "use --quant fp32 or --quant dynamic") from exc
    details["weights"] = "float16 (onnxconverter-common), float32 input and output"
    return converted


def _dynamic_int8(model, per_channel: bool | None, work: Path, details: dict):
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    pre = _pre_processed(model, work)
    out = work / "dynamic.onnx"
    per_channel = bool(per_channel)
    try:
        with tfenv.quiet_tools("", "onnxruntime"):
            quantize_dynamic(str(pre), str(out), per_channel=per_channel, weight_type=QuantType.QInt8)
    except Exception as exc:
        raise ExportError(f"ONNX Runtime dynamic quantization failed: {str(exc).strip()[:300]}", "use --quant fp16") from exc
    details["quantization"] = {"tool": "onnxruntime.quantization.quantize_dynamic", "weights": "int8", "per_channel": per_channel}
    return onnx.load(str(out))


def _pre_processed(model, work: Path) -> Path:
    """ONNX Runtime's quantization pre-processing: symbolic shape inference and graph optimisation."""
    import onnx
    from onnxruntime.quantization.shape_inference import quant_pre_process

    src, pre = work / "float.onnx", work / "preprocessed.onnx"
    onnx.save(model, src)
    try:
        with tfenv.quiet_tools("", "onnxruntime"):
            quant_pre_process(str(src), str(pre))
    except Exception as exc:
        raise ExportError(f"ONNX Runtime quantization pre-processing failed: {str(exc).strip()[:300]}", "see --verbose") from exc
    return pre


# --------------------------------------------------------------------------------------
# Static int8 (QDQ) from the shared calibration set
# --------------------------------------------------------------------------------------
class CalibrationReader:
    """A CalibrationSet as ONNX Runtime's CalibrationDataReader: get_next() until None."""

    def __init__(self, calibration: CalibrationSet, input_name: str = INPUT_NAME):
        self.calibration = calibration
        self.input_name = input_name
        self.rewind()

    def get_next(self) -> dict | None:
        batch = next(self._batches, None)
        return None if batch is None else {self.input_name: batch}

    def rewind(self) -> None:
        self._batches = self.calibration.float_batches()

    def __len__(self) -> int:
        return len(self.calibration)


def subset(calibration: CalibrationSet, indices) -> CalibrationSet:
    """Some of a calibration set's images (the summary fields describe the whole set)."""
    return CalibrationSet(calibration.images[indices], calibration.source, calibration.seed, calibration.per_class, calibration.sample_hash)


def _static_int8(model, calibration: CalibrationSet, per_channel: bool | None, method: str, work: Path, details: dict):
    import onnx

    pre = _pre_processed(model, work)
    info = {
        "tool": "onnxruntime.quantization.quantize_static",
        "pre_processing": "onnxruntime quant_pre_process (symbolic shape inference, graph optimisation)",
        "format": "QDQ",
        "activations": "uint8 (asymmetric)",
        "weights": "int8 (symmetric)",
        "calib_method": method,
        "calibration_images": len(calibration),
        "input_quantization": {"scale": 1.0, "zero_point": 0, "why": "raw 0-255 pixels are exact with scale 1"},
    }
    out = None
    if per_channel is None:
        per_channel, info["per_channel_choice"], out = choose_per_channel(pre, calibration, method, work)
    else:
        info["per_channel_choice"] = {"chosen": per_channel, "why": "set by --per-channel/--per-tensor"}
    info["per_channel"] = per_channel
    if out is None:
        out = work / "int8.onnx"
        _quantize_static(pre, out, calibration, per_channel, method, work / "calibration-all.json")
    details["quantization"] = info
    return onnx.load(str(out))


def choose_per_channel(pre: Path, calibration: CalibrationSet, method: str, work: Path) -> tuple[bool, dict, Path | None]:
    """Quantize both ways from the same activation ranges and compare each with the float model.

    Ranges come from 2/3 of the calibration images; agreement (same top-1) and mean absolute
    probability difference are measured on the other third. Per-channel is kept unless
    per-tensor agrees more often, or as often with a smaller probability error.
    Returns the choice, the record for the manifest, and the chosen candidate's file when it
    was calibrated on the whole set (too few images to hold some out), else None.
    """
    n = len(calibration)
    if n >= MIN_HOLDOUT_SET:
        held = np.arange(n) % HOLDOUT_EVERY == HOLDOUT_EVERY - 1
        fit, judge = subset(calibration, np.flatnonzero(~held)), subset(calibration, np.flatnonzero(held))
        judged_on = f"{len(judge)} held-out calibration images (ranges from the other {len(fit)})"
    else:
        fit = judge = calibration
        judged_on = f"all {n} calibration images (too few to hold some out)"
    reference = _run_onnx(pre, judge.images)
    cache = work / "calibration-fit.json"
    scores, paths = {}, {}
    for candidate in (True, False):
        paths[candidate] = work / f"candidate-{'per-channel' if candidate else 'per-tensor'}.onnx"
        _quantize_static(pre, paths[candidate], fit, candidate, method, cache)
        probs = _run_onnx(paths[candidate], judge.images)
        scores[candidate] = {
            "agreement": float((probs.argmax(1) == reference.argmax(1)).mean()),
            "mean_abs_diff": float(np.abs(probs - reference).mean()),
            "max_abs_diff": float(np.abs(probs - reference).max()),
        }
    pc, pt = scores[True], scores[False]
    per_tensor_better = pt["agreement"] > pc["agreement"] or (
        pt["agreement"] == pc["agreement"] and pt["mean_abs_diff"] < pc["mean_abs_diff"]
    )
    chosen = not per_tensor_better
    if per_tensor_better:
        why = "per-tensor agreed with the float model more often" if pt["agreement"] > pc["agreement"] else "same agreement, smaller probability error with per-tensor"
    else:
        why = "per-channel (the default) agreed at least as often and its probability error was not larger"
    choice = {
        "chosen": chosen,
        "why": why,
        "judged_on": judged_on,
        "reference": "the fp32 ONNX model",
        "per_channel": pc,
        "per_tensor": pt,
    }
    return chosen, choice, paths[chosen] if fit is calibration else None


def _quantize_static(pre: Path, out: Path, calibration: CalibrationSet, per_channel: bool, method: str, cache: Path) -> None:
    """quantize_static in QDQ format; the activation ranges are cached so both candidates share them."""
    import inspect

    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    kwargs = {}
    if "calibration_cache_path" in inspect.signature(quantize_static).parameters:  # onnxruntime >= 1.32
        kwargs["calibration_cache_path"] = str(cache)
    try:
        with tfenv.quiet_tools("", "onnxruntime"):
            quantize_static(
                str(pre),
                str(out),
                CalibrationReader(calibration),
                quant_format=QuantFormat.QDQ,
                per_channel=per_channel,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=getattr(CalibrationMethod, CALIB_METHODS[method]),
                extra_options={"TensorQuantOverrides": {INPUT_NAME: [{"rmin": np.float32(0.0), "rmax": np.float32(255.0)}]}},
                **kwargs,
            )
    except Exception as exc:  # ValueError, RuntimeError... the last line of the message names the tensor or op
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        raise ExportError(
            f"ONNX Runtime static quantization failed: {(lines[-1] if lines else type(exc).__name__)[:300]}",
            "try another --calib-method, or --quant dynamic",
        ) from exc


def _run_onnx(path: Path, images: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: images[i : i + 1].astype(np.float32)})[0] for i in range(len(images))])


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
