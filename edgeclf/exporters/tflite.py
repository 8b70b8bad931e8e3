"""TFLite exporter: fp32, fp16, dynamic-range, full-integer int8 and 16x8 (int16 activations,
int8 weights), with embedded metadata."""
from __future__ import annotations

import csv
import re
from pathlib import Path

from edgeclf import __version__, console, ptq, tfenv
from edgeclf.errors import ExportError, UsageError
from edgeclf.exporters import RUNTIMES, Format, tflite_flatbuffer
from edgeclf.exporters.base import ExportJob, ExportOutput
from edgeclf.exporters.recipes import (DEFAULT_PTQ, DEFAULT_PTQ_WITHOUT_RANGES, EVERY_IMAGE, WITH_FLOAT_LAYERS, MORE_IMAGES,
                                       QAT_RUN, Budget, Step)
from edgeclf.exporters.tflite_metadata import (
    ImageClassifierMetadata,
    embed_metadata,
    read_associated_files,
    read_metadata,
)
from edgeclf.pipeline.resize import words as resize_words

MODEL_FILE = "model.tflite"
DEBUG_FILE = "quant_debug.csv"
# Raw 0..255 pixels quantize exactly with scale 1: uint8 zero point 0, int8 zero point -128.
EXACT_INPUT_QUANT = {"uint8": (1.0, 0), "int8": (1.0, -128)}
# Ops allowed to stay float in an int8 model: only the IO conversions of --io float32.
IO_CONVERSION_OPS = {"QUANTIZE", "DEQUANTIZE"}
# Measured (README, "16-bit activations"): tiny MobileNetV2 1.27 ms against 0.05 ms fp32,
# EfficientNetB0 at 160 px 161 ms against 6.9 ms, one thread on x86.
SLOW_ON_CPU = ("LiteRT runs 16x8 on its reference kernels on a CPU, far slower than fp32 (24x on EfficientNetB0 here); "
               "it pays on accelerators that run 16-bit activations natively (check with edgeclf bench on the device)")
# What 16x8 cannot use: the range techniques edit int8 ranges, and the input fold is not needed
# (16-bit activations keep the scaled pixels' 256 levels apart) while its per-channel border
# (EfficientNet's normalisation) keeps a float pad value that 16x8's PAD cannot run.
NOT_WITH_16X8 = {
    "input": "16-bit activations keep every pixel level without it, and its per-channel pad does not run in 16x8",
    **{name: "it edits int8 activation ranges" for name in ptq.RANGE_TECHNIQUES},
    "sequential": "it rounds against a simulation of 8-bit activations",
}


def export(job: ExportJob) -> ExportOutput:
    tf = tfenv.tf()
    spec = job.spec
    details: dict = {}
    techniques = ()
    if spec.quant == "int16x8" and job.run.qat:
        raise UsageError("a QAT run learned int8 ranges, so it exports to --quant int8, not int16x8",
                         "export it with --quant int8, or export its float source run with --quant int16x8")
    if spec.needs_calibration:
        if spec.quant == "int16x8":
            excluded = NOT_WITH_16X8
            details["int16x8"] = {"activations": "int16", "weights": "int8", "biases": "int64", "cpu": SLOW_ON_CPU}
            console.warn(f"int16x8: {SLOW_ON_CPU}")
        elif spec.float_layers:
            excluded = {name: "not with --float-layers (the debugger calibrates those models)" for name in ptq.RANGE_TECHNIQUES}
        else:
            excluded = {}
        job, techniques = ptq.prepare(job, details, excluded)
    if spec.float_layers:
        model_bytes = _selectively_quantized(job, details)
    elif set(techniques) & set(ptq.RANGE_TECHNIQUES):
        model_bytes = _convert_with_ranges(job, details, techniques)
    else:
        model_bytes = _convert(_converter(job))
    model_bytes = tflite_flatbuffer.set_serving_signature(model_bytes, job.model.input_names[0], job.model.output_names[0])
    if spec.needs_calibration:
        model_bytes = _exact_input_quantization(model_bytes, spec.io, details)
        if not spec.float_layers:
            _require_integer_ops(model_bytes, spec.quant)
        if spec.debug_quant:
            details["quant_debug"] = debug_quantization(job, job.staging / DEBUG_FILE)
    size = job.run.img_size
    meta = ImageClassifierMetadata(
        name=f"edgeclf {job.run.arch} image classifier",
        description=(
            f"Classifies a {size}x{size} RGB image into {len(job.run.labels)} classes. "
            f"Input: raw RGB pixels 0-255 (normalisation happens inside the model), "
            f"resized with {resize_words(job.run.resize)}. "
            f"Quantization: {spec.quant}, IO {spec.io}."
        ),
        version=__version__,
        author="edgeclf",
        license="",
        labels=job.run.labels,
        width=size,
        height=size,
        input_mean=[0.0, 0.0, 0.0],
        input_std=[1.0, 1.0, 1.0],
    )
    model_bytes = embed_metadata(model_bytes, meta)
    (job.staging / MODEL_FILE).write_bytes(model_bytes)
    io = tflite_flatbuffer.io_tensors(model_bytes)
    details["metadata"] = {"embedded": True, "associated_files": ["labels.txt"]}
    if spec.quant in ("fp32", "fp16") and xnnpack_sparse(job):
        details["xnnpack_sparse"] = {"converter": "EXPERIMENTAL_SPARSITY",
                                     "densify_ops": tflite_flatbuffer.op_counts(model_bytes).get("DENSIFY", 0)}
    details["ops"] = tflite_flatbuffer.op_counts(model_bytes)
    details["quantization_coverage"] = tflite_flatbuffer.quantization_coverage(model_bytes)
    return ExportOutput(MODEL_FILE, io["inputs"][0], io["outputs"][0], details, {"tensorflow-lite-converter": tf.__version__})


def _converter(job: ExportJob, io: str | None = None):
    tf = tfenv.tf()
    spec = job.spec
    converter = _keras_converter(job.model)
    if spec.quant == "fp32" and xnnpack_sparse(job):
        converter.optimizations = [tf.lite.Optimize.EXPERIMENTAL_SPARSITY]
    elif spec.quant == "fp16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if xnnpack_sparse(job):
            converter.optimizations.append(tf.lite.Optimize.EXPERIMENTAL_SPARSITY)
        converter.target_spec.supported_types = [tf.float16]
    elif spec.quant == "dynamic":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    elif spec.quant == "int8":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = job.calibration.tflite_representative_dataset()
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        io_type = {"uint8": tf.uint8, "int8": tf.int8, "float32": tf.float32}[io or spec.io]
        converter.inference_input_type = io_type
        converter.inference_output_type = io_type
    elif spec.quant == "int16x8":  # float32 IO: LiteRT's QUANTIZE/DEQUANTIZE convert at the edges
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = job.calibration.tflite_representative_dataset()
        converter.target_spec.supported_ops = [tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8]
    return converter


def _keras_converter(model):
    """TFLite's converter for a Keras model, from its frozen inference function. It gives the
    graph `from_keras_model` gives, without first saving the model as a SavedModel, which took
    22 of the 23 s a tiny MobileNetV2 took to convert; `export` adds back the signature."""
    tf = tfenv.tf()
    spec = tf.TensorSpec([None, *model.inputs[0].shape[1:]], model.inputs[0].dtype)
    function = tf.function(lambda image: model(image, training=False)).get_concrete_function(spec)
    converter = tf.lite.TFLiteConverter.from_concrete_functions([function], model)
    converter.experimental_lower_to_saved_model = False
    return converter


def _convert_with_ranges(job: ExportJob, details: dict, techniques) -> bytes:
    """Calibrate only, replace min/max ranges by error-minimising ones, then quantize as convert() would."""
    from edgeclf.exporters import tflite_ranges

    tf = tfenv.tf()
    try:
        calibrated = tflite_ranges.calibrate_only(_converter(job, io="float32"))
        edited, details["ptq"]["ranges"] = tflite_ranges.with_mse_ranges(
            calibrated, job.calibration.images, plain="ranges" in techniques, swish_aware="swish" in techniques)
        io_type = {"uint8": tf.uint8, "int8": tf.int8, "float32": tf.float32}[job.spec.io]
        return tflite_ranges.quantize(edited, io_type)
    except Exception as exc:
        raise ExportError(f"TFLite conversion failed: {explain_conversion_error(exc)}", "retry with --ptq none, or see --debug") from exc


def xnnpack_sparse(job: ExportJob) -> bool:
    """Runs pruned with `edgeclf optimize --prune-for xnnpack` store their float weights sparse
    (DENSIFY ops), which is what lets XNNPACK choose its sparse inference path."""
    return job.prune_policy == "xnnpack"


def _convert(converter) -> bytes:
    try:
        with tfenv.native_stderr_silenced():
            return converter.convert()
    except Exception as exc:  # the converter raises ConverterError, ValueError, RuntimeError...
        raise ExportError(f"TFLite conversion failed: {explain_conversion_error(exc)}", "see --debug for the converter's full log") from exc


def explain_conversion_error(exc: Exception) -> str:
    """The converter's message reduced to the op or layer it names."""
    text = str(exc)
    for pattern in (
        r"'(tf\.\w+|tfl\.\w+)' op[^\n]*",
        r"[Oo]p(?:eration)?s? (?:that|which)[^\n]*",
        r"Failed to quantize[^\n]*",
        r"[^\n]*not supported[^\n]*",
    ):
        match = re.search(pattern, text)
        if match:
            return match.group(0).strip()[:300]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return (lines[-1] if lines else type(exc).__name__)[:300]


def _exact_input_quantization(model_bytes: bytes, io: str, details: dict) -> bytes:
    """Make raw-pixel input quantization exactly scale 1 (the converter may pick 0.9999992)."""
    if io not in EXACT_INPUT_QUANT:
        return model_bytes
    scale, zero_point = EXACT_INPUT_QUANT[io]
    chosen = tflite_flatbuffer.io_tensors(model_bytes)["inputs"][0]["quantization"]
    details["input_quantization"] = {"converter_chose": chosen, "written": {"scale": scale, "zero_point": zero_point}}
    if chosen == {"scale": scale, "zero_point": zero_point}:
        return model_bytes
    console.info(f"input quantization set to exactly scale {scale}, zero point {zero_point} (converter chose {chosen})")
    return tflite_flatbuffer.set_input_quantization(model_bytes, scale, zero_point)


def _require_integer_ops(model_bytes: bytes, quant: str) -> None:
    float_ops = [
        op for op in tflite_flatbuffer.float_ops(model_bytes) if op["op"] not in IO_CONVERSION_OPS
    ]
    if float_ops:
        names = ", ".join(f"{op['op']} ({op['output']})" for op in float_ops[:3])
        hint = "try --quant dynamic, or --float-layers for them" if quant == "int8" else "try --quant int8 or --quant dynamic"
        raise ExportError(f"these ops could not be quantized to {quant}: {names}", hint)


# --------------------------------------------------------------------------------------
# Quantization debugging and selective quantization (TFLite's QuantizationDebugger)
# --------------------------------------------------------------------------------------
def _debugger(job: ExportJob, denylisted_nodes: list[str] | None = None):
    tf = tfenv.tf()
    converter = _converter(job, io="float32")
    options = tf.lite.experimental.QuantizationDebugOptions(denylisted_nodes=denylisted_nodes)
    try:
        with tfenv.native_stderr_silenced():
            return tf.lite.experimental.QuantizationDebugger(
                converter=converter, debug_dataset=job.calibration.tflite_representative_dataset(), debug_options=options
            )
    except Exception as exc:
        raise ExportError(f"TFLite quantization debugger failed: {explain_conversion_error(exc)}", "see --debug") from exc


def keras_layers_of(tensor_name: str, layer_names: set[str]) -> list[str]:
    """Keras layers named in a TFLite tensor name, e.g. 'm/block_3_project/Conv2D;m/block_3_project_BN/...'.

    Fused ops (conv + batchnorm + relu) carry all their layers' names, in graph order.
    """
    found = []
    for part in re.split(r"[/;:]", tensor_name):
        if part in layer_names and part not in found:
            found.append(part)
    return found


def debug_quantization(job: ExportJob, csv_path: Path, worst: int = 5) -> dict:
    """Per-layer quantization error to CSV; returns (and prints) the worst layers by Keras name."""
    debugger = _debugger(job)
    with tfenv.native_stderr_silenced():
        debugger.run()
    with open(csv_path, "w") as f:
        debugger.layer_statistics_dump(f)
    layer_names = {layer.name for layer in job.model.layers}
    rows = []
    with open(csv_path) as f:
        for row in csv.DictReader(f):
            scale = float(row.get("scale") or 0) or 1.0
            rmse = float(row["mean_squared_error"]) ** 0.5
            rows.append({
                "tensor": row["tensor_name"],
                "layer": "+".join(keras_layers_of(row["tensor_name"], layer_names)) or row["tensor_name"],
                "op": row["op_name"],
                "rmse_over_scale": rmse / scale,
                "mean_error": float(row["mean_error"]),
            })
    rows.sort(key=lambda r: -r["rmse_over_scale"])
    top = rows[:worst]
    if top:
        console.info("layers with the largest quantization error (RMSE / scale):")
        for r in top:
            console.info(f"  {r['layer']:<40} {r['op']:<20} {r['rmse_over_scale']:.3f}")
    return {"file": DEBUG_FILE, "worst_layers": top, "metric": "sqrt(mean_squared_error) / scale per tensor"}


def _selectively_quantized(job: ExportJob, details: dict) -> bytes:
    """int8 everywhere except the named Keras layers, which stay float."""
    calibrated = _debugger(job)
    names = tflite_flatbuffer.tensor_names(calibrated.quant_model)
    layer_names = {layer.name for layer in job.model.layers}
    unknown = [n for n in job.spec.float_layers if n not in layer_names]
    if unknown:
        raise UsageError(f"--float-layers names unknown layers: {', '.join(unknown)}", "use Keras layer names as printed by --debug-quant")
    wanted = set(job.spec.float_layers)
    nodes = [t for t in names if wanted & set(keras_layers_of(t, layer_names))]
    if not nodes:
        raise ExportError(f"no TFLite tensors belong to {', '.join(job.spec.float_layers)}", "pick layers that hold weights (conv, dense)")
    debugger = _debugger(job, denylisted_nodes=nodes)
    with tfenv.native_stderr_silenced():
        model_bytes = debugger.get_nondebug_quantized_model()
    details["float_layers"] = {"layers": list(job.spec.float_layers), "tflite_tensors": nodes}
    return model_bytes


def inspect_file(path: Path) -> dict:
    data = path.read_bytes()
    io = tflite_flatbuffer.io_tensors(data)
    metadata = read_metadata(data)
    files = read_associated_files(data)
    labels = None
    for name, content in files.items():
        if name.endswith(".txt") and metadata and any(
            f["name"] == name for t in metadata.get("outputs", []) for f in t.get("associated_files", [])
        ):
            labels = content.decode("utf-8", "replace").splitlines()
    return {
        "path": str(path),
        "format": "tflite",
        "bytes": len(data),
        "inputs": io["inputs"],
        "outputs": io["outputs"],
        "ops": tflite_flatbuffer.op_counts(data),
        "quantization": tflite_flatbuffer.quantization_coverage(data),
        "metadata": metadata,
        "associated_files": sorted(files),
        "labels": labels,
    }


def io_tensors(path: Path) -> dict:
    return tflite_flatbuffer.io_tensors(path.read_bytes())


def keep_worst_ops_in_float(run, spec, count: int):
    """`spec` with the `count` ops the quantization debugger finds worst kept in float (float IO)."""
    import dataclasses
    import tempfile

    from edgeclf import calibration

    model = run.load_model()
    layer_names = {layer.name for layer in model.layers}
    calib = calibration.build(run, spec.calib_size, spec.calib_dir)
    with tempfile.TemporaryDirectory(prefix="edgeclf-budget-") as work:
        job = ExportJob(run, model, dataclasses.replace(spec, ptq="none"), calib, Path(work))
        worst = debug_quantization(job, Path(work) / "debug.csv", worst=4 * count)["worst_layers"]
    ops = [[name for name in row["layer"].split("+") if name in layer_names] for row in worst]
    ops = [names for names in ops if names][:count]  # one op (e.g. Conv1+bn_Conv1+Conv1_relu) per entry
    if not ops:
        raise ExportError("the quantization debugger named no Keras layers to keep in float", "see --debug-quant")
    names = tuple(dict.fromkeys(name for names in ops for name in names))
    return dataclasses.replace(spec, float_layers=names, io=None)


# Plain PTQ, then the improved recipes in the order they measured on flowers (benchmarks/ptq.py):
# the default first, output-aware rounding on top of it, then MSE ranges instead. The float
# fallback does without ranges, which need a full-integer model.
BUDGET = Budget(steps=(
    Step("ptq none", {"ptq": "none"}),
    Step("ptq {ptq}", {"ptq": DEFAULT_PTQ}),
    Step("ptq {ptq}", {"ptq": "input,bias"}),
    Step("ptq {ptq}", {"ptq": "input,round,bias"}),
    Step("ptq {ptq}", {"ptq": "input,bias,ranges"}),
    Step("ptq {ptq}, calibration {images} images", {"ptq": DEFAULT_PTQ, "calib_size": EVERY_IMAGE}, when=MORE_IMAGES),
    Step("ptq {ptq}, worst {ops} ops in float", {"ptq": DEFAULT_PTQ_WITHOUT_RANGES}, when=WITH_FLOAT_LAYERS,
         worst_ops_in_float=True),
    # a QAT run's learned ranges and weights are kept as trained
    Step("QAT ranges as trained", runs_on=QAT_RUN),
    Step("QAT, calibration {images} images", {"calib_size": EVERY_IMAGE}, when=MORE_IMAGES, runs_on=QAT_RUN),
), float_layers=keep_worst_ops_in_float)

INT8 = ("int8",)
FORMAT = Format(
    name="tflite",
    suffixes=(".tflite",),
    quant_modes=("fp32", "fp16", "dynamic", "int8", "int16x8"),
    options={"io": INT8, "debug_quant": INT8, "float_layers": INT8, "ptq": ("int8", "int16x8")},
    ptq=("input", "cle", "round", "sequential", "bias", "ranges", "swish"),
    # Measured on three MobileNetV2 flowers reference runs, seeds 42, 0 and 7 (benchmarks/ptq.py,
    # README): agreement with float on test / val: input,bias 97.2% / 97.5%, 96.6% / 98.0%,
    # 98.0% / 97.4%; input,sequential 98.0% / 98.4%, 97.7% / 97.8%, 98.2% / 98.1%. Only
    # sequential holds 97% on every seed; on the EfficientNetB0 seed-42 run it also changed 129
    # test predictions against input,bias's 153.
    ptq_default=("input", "sequential"),
    extra="all",
    requires=("ai_edge_litert",),
    export=export,
    inspect=inspect_file,
    runtime_file=RUNTIMES / "tflite.py",
    runtime_hint="ai-edge-litert (or tflite-runtime on Python <= 3.11)",
    runtime_modules=("ai_edge_litert", "tflite_runtime"),
    runners=("python", "benchmark_model"),
    default_io="uint8",
    io_tensors=io_tensors,
    budget=BUDGET,
    golden_loader="tflite",
    app_templates=("Classifier.kt.tmpl", "Classifier.swift.tmpl", "GoldenRawReplay.kt.tmpl", "GoldenRawReplay.swift.tmpl"),
    kernel_sets=("BUILTIN_WITHOUT_DEFAULT_DELEGATES", "BUILTIN_REF"),
    keeps_qat_ranges=True,
)
