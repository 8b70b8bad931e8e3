"""ONNX Runtime quantization of an fp32 ONNX model: fp16 weights, dynamic-range int8, and
static int8 (QDQ) from the shared calibration set, with per-channel vs per-tensor weights
measured on held-out calibration images (onnxruntime issue 11415: per-channel can hurt
MobileNetV3). Work files live in the caller's temp dir.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from edgeclf import tfenv
from edgeclf.calibration import CalibrationSet
from edgeclf.errors import ExportError
from edgeclf.pipeline.backbones import INPUT_NAME

CALIB_METHODS = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}
# Per-channel vs per-tensor is judged on every HOLDOUT_EVERY-th calibration image, after
# calibrating on the others; with fewer than MIN_HOLDOUT_SET images both roles use all of them.
HOLDOUT_EVERY = 3
MIN_HOLDOUT_SET = 12


def to_fp16(model, details: dict):
    from onnxconverter_common import float16

    try:
        with tfenv.quiet_tools("onnxconverter_common"):
            converted = float16.convert_float_to_float16(model, keep_io_types=True)
    except Exception as exc:
        raise ExportError(f"float16 conversion failed: {str(exc).strip()[:300]}", "use --quant fp32 or --quant dynamic") from exc
    details["weights"] = "float16 (onnxconverter-common), float32 input and output"
    return converted


def dynamic_int8(model, per_channel: bool | None, work: Path, details: dict):
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


def static_int8(model, calibration: CalibrationSet, per_channel: bool | None, method: str, work: Path, details: dict,
                why: str | None = None):
    """ORT static QDQ int8. per_channel None: measured (choose_per_channel); else as given, for `why`
    (default: the user's --per-channel/--per-tensor)."""
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
        info["per_channel_choice"] = {"chosen": per_channel, "why": why or "set by --per-channel/--per-tensor"}
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

    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

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
