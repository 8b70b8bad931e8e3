"""Integration code, one template per language, filled in from the manifest.

Templates live in edgeclf/bundle/templates/ (package data) and use {{NAME}} placeholders.
Every value is checked first (`contract`: closed sets and numbers) and then made a literal by
the one escaper of the template's language (escape.py); rendering refuses anything else, and a
placeholder it has no value for.
"""
from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

from edgeclf import exporters
from edgeclf.bundle import GOLDEN_DIR, GOLDEN_FILE, BundleError, escape
from edgeclf.bundle.escape import Code
from edgeclf.bundle.golden import FLOAT_DTYPES, INTEGER_DTYPES
from edgeclf.pipeline.backbones import BACKBONES
from edgeclf.pipeline import resize
from edgeclf.pipeline.runs import LABELS_FILE

PLACEHOLDER = re.compile(r"\{\{([A-Z0-9_]+)\}\}")
# check_golden.py.tmpl has one loader per name; a format names the one that reads it (Format.golden_loader)
GOLDEN_LOADERS = ("tflite", "onnx", "openvino")
APP_FOLDERS = {"kotlin": "android", "swift": "ios"}
TOLERANCE_UNITS = ("quantization steps", "absolute")
PYTHON_CHECK = "check_golden.py"
LANGUAGES = {".py.tmpl": "python", ".kt.tmpl": "kotlin", ".swift.tmpl": "swift"}
ESCAPERS = {"python": escape.python, "kotlin": escape.kotlin, "swift": escape.swift}


def language(template: str) -> str:
    return next(lang for suffix, lang in LANGUAGES.items() if template.endswith(suffix))


def render(template: str, values: dict[str, Code]) -> str:
    text = resources.files("edgeclf.bundle").joinpath("templates", template).read_text()
    lang = language(template)

    def fill(match: re.Match) -> str:
        name = match.group(1)
        if name not in values:
            raise KeyError(f"template {template} needs {name}")
        value = values[name]
        if not isinstance(value, Code) or value.lang not in (lang, "any"):
            raise TypeError(f"{name} for {template} is not checked or escaped for {lang} (see escape.py)")
        return value

    return PLACEHOLDER.sub(fill, text)


def contract(manifest: dict) -> dict:
    """The manifest values the templates use, each checked: closed sets, integers, finite numbers.
    `edgeclf bundle` calls it first, so a hostile manifest is refused before any work."""
    try:
        return _contract(manifest)
    except (KeyError, TypeError, AttributeError, IndexError) as exc:
        raise BundleError(f"manifest.json lacks or mangles {exc} for the integration code", escape.REMAKE) from exc


def _contract(manifest: dict) -> dict:
    source = manifest.get("source_run") or {}
    target = escape.one_of(manifest.get("target"), exporters.names(), "manifest.json target")
    fmt = exporters.get(target)
    if fmt.golden_loader is None:
        raise BundleError(f"{target} artefacts cannot be bundled: the format declares no check_golden.py loader",
                          f"bundle an artefact of {', '.join(n for n, f in exporters.registry().items() if f.golden_loader)}")
    runtime = escape.one_of(fmt.golden_loader, GOLDEN_LOADERS, f"the {target} format's golden loader")
    model_file = manifest["model_file"]
    if Path(model_file).suffix.lower() != fmt.suffixes[0]:
        raise BundleError(f"manifest.json model_file {model_file!r} is not a {fmt.suffixes[0]} file", escape.REMAKE)

    def tensor(name: str) -> dict:
        t = manifest[name]
        q = t.get("quantization")
        return {"dtype": escape.one_of(t.get("dtype"), INTEGER_DTYPES + FLOAT_DTYPES, f"manifest.json {name}.dtype"),
                "scale": q["scale"] if q else None, "zero_point": q["zero_point"] if q else 0}

    checked = {
        "arch": escape.one_of(source.get("arch"), BACKBONES, "manifest.json source_run.arch"),
        "target": target,
        "quant": escape.one_of(manifest.get("quant"), fmt.quant_modes, "manifest.json quant"),
        "runtime": runtime,
        "model_file": model_file,
        "shape": [escape.integer(d, "manifest.json input.shape") for d in manifest["input"]["shape"]],
        "num_labels": escape.integer(len(manifest["labels"]), "the label count"),
        "input": tensor("input"),
        "output": tensor("output"),
        "resize": ((manifest.get("resize") or {}).get("name", resize.DEFAULT)),
    }
    for name in ("input", "output"):
        escape.integer(checked[name]["zero_point"], f"manifest.json {name}.quantization.zero_point")
        for lang in ESCAPERS:  # a scale no language can write is refused now, not while writing
            ESCAPERS[lang](checked[name]["scale"] if checked[name]["scale"] is not None else 1.0, f"manifest.json {name} scale")
    return checked


def class_name(checked: dict) -> Code:
    """E.g. Mobilenetv2Int8Classifier: the arch and quantization (closed sets), as a type name."""
    words = re.split(r"[^A-Za-z0-9]+", f"{checked['arch']} {checked['quant']}")
    name = "".join(w[:1].upper() + w[1:] for w in words if w)
    return Code((name if name[:1].isalpha() else "Model" + name) + "Classifier", "any")


def values(checked: dict, golden: dict, lang: str) -> dict[str, Code]:
    """The placeholders of one language's template: plain words from closed sets, or literals
    made by that language's escaper."""
    literal = ESCAPERS[lang]
    native = lang == "python"  # Python says None for "not quantized"; Kotlin and Swift use scale 1.0
    inp, out = checked["input"], checked["output"]
    runtime = checked["runtime"]
    return {
        "MODEL_NAME": Code(f"{checked['arch']} {checked['target']} {checked['quant']} ({checked['num_labels']} classes)", "any"),
        "CLASS_NAME": class_name(checked),
        "PACKAGE": Code("com.example.edgeclf", "any"),
        "RUNTIME": literal(runtime),
        "RUNTIME_HINT": escape.prose(f"its runtime (pip install {exporters.get(checked['target']).runtime_hint})",
                                     f"the {checked['target']} format's runtime hint"),
        "MODEL_FILE": literal(checked["model_file"], "model_file"),
        "LABELS_FILE": literal(LABELS_FILE),
        "GOLDEN_JSON": literal(f"{GOLDEN_DIR}/{GOLDEN_FILE}"),
        "INPUT_SHAPE_LIST": Code(", ".join(checked["shape"]), "any"),
        "INPUT_DTYPE": literal(inp["dtype"]),
        "INPUT_SCALE": literal(inp["scale"] if native or inp["scale"] is not None else 1.0, "input scale"),
        "INPUT_ZERO_POINT": escape.integer(inp["zero_point"], "input zero point"),
        "OUTPUT_DTYPE": literal(out["dtype"]),
        "OUTPUT_SCALE": literal(out["scale"] if native or out["scale"] is not None else 1.0, "output scale"),
        "OUTPUT_ZERO_POINT": escape.integer(out["zero_point"], "output zero point"),
        "NUM_LABELS": checked["num_labels"],
        "TOLERANCE_OTHER": literal(float(golden["tolerance"]["other"]), "tolerance"),
        "TOLERANCE_UNIT": escape.one_of(golden["tolerance"]["unit"], TOLERANCE_UNITS, "golden tolerance unit"),
        "TRAINING_RESIZE": escape.one_of(training_resize(checked), (*resize.KERNELS, "unknown"), "the training resize"),
    }


def training_resize(checked: dict) -> str:
    """The run's resize kernel, from the closed set (manifests from before `--resize`: the default)."""
    name = checked["resize"]
    return name if name in resize.KERNELS else "unknown"


def write(staging: Path, manifest: dict, golden: dict) -> list[str]:
    """check_golden.py for every format, and the app code its format lists (Android Kotlin and iOS
    Swift for TFLite). Returns the files written."""
    checked = contract(manifest)
    check = staging / PYTHON_CHECK
    check.write_text(render("check_golden.py.tmpl", values(checked, golden, "python")))
    check.chmod(0o755)
    written = [PYTHON_CHECK]
    for template in exporters.get(checked["target"]).app_templates:
        lang = language(template)
        folder = staging / APP_FOLDERS[lang]
        folder.mkdir(exist_ok=True)
        name = template.removesuffix(".tmpl")
        if name.startswith("Classifier"):  # named after the model, e.g. Mobilenetv2Int8Classifier.kt
            name = f"{class_name(checked)}{name.removeprefix('Classifier')}"
        (folder / name).write_text(render(template, values(checked, golden, lang)))
        written.append(f"{APP_FOLDERS[lang]}/{name}")
    return written
