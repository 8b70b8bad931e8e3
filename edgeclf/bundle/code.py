"""Integration code, one template per language, filled in from the manifest.

Templates live in edgeclf/bundle/templates/ (package data) and use {{NAME}} placeholders;
rendering fails loudly on a placeholder it has no value for.
"""
from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

from edgeclf.bundle import GOLDEN_DIR, GOLDEN_FILE
from edgeclf.pipeline import resize
from edgeclf.pipeline.runs import LABELS_FILE

PLACEHOLDER = re.compile(r"\{\{([A-Z0-9_]+)\}\}")
RUNTIMES = {".tflite": "tflite", ".onnx": "onnx", ".xml": "openvino"}
RUNTIME_HINTS = {
    "tflite": "a TFLite runtime (pip install ai-edge-litert, or tflite-runtime on older boards)",
    "onnx": "onnxruntime (pip install onnxruntime)",
    "openvino": "OpenVINO (pip install openvino)",
}
PYTHON_CHECK = "check_golden.py"


def render(template: str, values: dict) -> str:
    text = resources.files("edgeclf.bundle").joinpath("templates", template).read_text()

    def fill(match: re.Match) -> str:
        if match.group(1) not in values:
            raise KeyError(f"template {template} needs {match.group(1)}")
        return str(values[match.group(1)])

    return PLACEHOLDER.sub(fill, text)


def class_name(manifest: dict) -> str:
    """E.g. MobilenetV2Int8Classifier: the arch and quantization, as a type name."""
    words = re.split(r"[^A-Za-z0-9]+", f"{manifest['source_run'].get('arch', 'image')} {manifest.get('quant', '')}")
    name = "".join(w[:1].upper() + w[1:] for w in words if w)
    return (name if name[:1].isalpha() else "Model" + name) + "Classifier"


def _quant(tensor: dict) -> tuple[float | None, int]:
    q = tensor.get("quantization")
    return (float(q["scale"]), int(q["zero_point"])) if q else (None, 0)


def _kotlin_float(value: float | None) -> str:
    return f"{(1.0 if value is None else value)!r}f"


def _swift_float(value: float | None) -> str:
    return repr(1.0 if value is None else float(value))


def values(manifest: dict, golden: dict) -> dict:
    model_file = manifest["model_file"]
    in_scale, in_zero = _quant(manifest["input"])
    out_scale, out_zero = _quant(manifest["output"])
    tol = golden["tolerance"]
    return {
        "MODEL_NAME": f"{manifest['source_run'].get('arch')} {manifest.get('target')} {manifest.get('quant')} "
                      f"({len(manifest['labels'])} classes)",
        "CLASS_NAME": class_name(manifest),
        "PACKAGE": "com.example.edgeclf",
        "RUNTIME": repr(RUNTIMES[Path(model_file).suffix]),
        "RUNTIME_HINT": RUNTIME_HINTS[RUNTIMES[Path(model_file).suffix]],
        "MODEL_FILE": model_file,
        "LABELS_FILE": LABELS_FILE,
        "GOLDEN_JSON": f"{GOLDEN_DIR}/{GOLDEN_FILE}",
        "INPUT_SHAPE": repr([int(d) for d in manifest["input"]["shape"]]),
        "INPUT_SHAPE_LIST": ", ".join(str(int(d)) for d in manifest["input"]["shape"]),
        "INPUT_DTYPE": manifest["input"]["dtype"],
        "INPUT_SCALE": repr(in_scale),
        "INPUT_ZERO_POINT": repr(in_zero),
        "INPUT_SCALE_F": _kotlin_float(in_scale),
        "INPUT_SCALE_SWIFT": _swift_float(in_scale),
        "INPUT_ZERO_POINT_I": str(in_zero),
        "OUTPUT_DTYPE": manifest["output"]["dtype"],
        "OUTPUT_SCALE": repr(out_scale),
        "OUTPUT_ZERO_POINT": repr(out_zero),
        "OUTPUT_SCALE_F": _kotlin_float(out_scale),
        "OUTPUT_SCALE_SWIFT": _swift_float(out_scale),
        "OUTPUT_ZERO_POINT_I": str(out_zero),
        "NUM_LABELS": str(len(manifest["labels"])),
        "TOLERANCE_OTHER_F": f"{float(tol['other'])!r}f",
        "TOLERANCE_OTHER_SWIFT": repr(float(tol["other"])),
        "TOLERANCE_UNIT": tol["unit"],
        "TRAINING_RESIZE": training_resize(manifest),
    }


def training_resize(manifest: dict) -> str:
    """The run's resize kernel, from the closed set (manifests from before `--resize`: the default)."""
    name = (manifest.get("resize") or {}).get("name", resize.DEFAULT)
    return name if name in resize.KERNELS else "unknown"


def write(staging: Path, manifest: dict, golden: dict) -> list[str]:
    """check_golden.py for every format; Android Kotlin and iOS Swift for TFLite. Returns the files written."""
    filled = values(manifest, golden)
    quoted = {k: repr(v) for k, v in filled.items() if k in ("MODEL_FILE", "LABELS_FILE", "INPUT_DTYPE", "OUTPUT_DTYPE")}
    check = staging / PYTHON_CHECK
    check.write_text(render("check_golden.py.tmpl", filled | quoted))
    check.chmod(0o755)
    written = [PYTHON_CHECK]
    if filled["RUNTIME"] == repr("tflite"):
        for folder, template, suffix in (("android", "Classifier.kt.tmpl", ".kt"), ("ios", "Classifier.swift.tmpl", ".swift")):
            (staging / folder).mkdir()
            path = staging / folder / f"{filled['CLASS_NAME']}{suffix}"
            path.write_text(render(template, filled))
            written.append(str(path.relative_to(staging)))
        for folder, template in (("android", "GoldenRawReplay.kt.tmpl"), ("ios", "GoldenRawReplay.swift.tmpl")):
            path = staging / folder / template.removesuffix(".tmpl")
            path.write_text(render(template, filled))
            written.append(str(path.relative_to(staging)))
    return written
