"""Golden vectors: real images as the model takes them, with the artefact's raw outputs.

The images come from the source run's test split, else its val split, else the images
int8 calibration drew from; each fallback is said out loud. They are decoded and resized
by the same `load_image` as training and validation, so the tensors are exactly what the
model saw there.
"""
from __future__ import annotations

import json
import platform
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from edgeclf import console, records
from edgeclf.bundle import GOLDEN_DIR, GOLDEN_FILE, BundleError
from edgeclf.bundle.handoff import HandOff
from edgeclf.errors import DatasetError, ModelError, UsageError
from edgeclf.layout import relative
from edgeclf.pipeline.datasets import DecodedSplit, Sample, decode, map_to_labels, scan_folder, stratified_sample
from edgeclf.pipeline.runs import Run

DEFAULT_COUNT = 20
STEM_LABEL_CHARS = 40
TOP_K = 5
INTEGER_DTYPES = ("uint8", "int8", "int16", "int32")
FLOAT_DTYPES = ("float16", "float32")
REMAKE = "re-create the bundle with `edgeclf bundle`"
# Across runtimes, builds and delegates: what TFLite's other kernel sets measurably do on the
# goldens, plus this margin for builds of those kernels (integer kernels round differently;
# float kernels reorder sums).
STEPS_ACROSS_BUILDS = 2
FLOAT_ABS_REFERENCE = 1e-6
FLOAT_ABS_ACROSS_BUILDS = 1e-3


@dataclass
class GoldenSet:
    split: DecodedSplit
    source: dict  # split, root, fallbacks


def source_run(manifest: dict) -> Run:
    path = (manifest.get("source_run") or {}).get("path")
    if not path:
        raise ModelError("the artefact's manifest names no source run", "re-export it with `edgeclf export`")
    try:
        return Run.open(path)
    except ModelError as exc:
        raise ModelError(f"the artefact's source run is unusable: {exc.what}", "golden vectors need the run's images; keep the run directory") from exc


def choose(run: Run, manifest: dict, count: int) -> GoldenSet:
    """`count` images stratified over classes from the first split whose images still exist."""
    if count < 1:
        raise UsageError(f"--golden {count} must be at least 1", f"e.g. --golden {DEFAULT_COUNT}")
    labels = list(manifest["labels"])
    size = int(manifest["input"]["shape"][1])
    fallbacks = []
    for name, root, samples in _candidates(run, manifest):
        chosen = stratified_sample(samples, len(labels), count, run.seed)
        missing = [s.path for s in chosen if not s.path.exists()]
        if missing:
            fallbacks.append(f"the run's {name} images are gone (e.g. {missing[0]})")
            console.warn(fallbacks[-1] + "; falling back")
            continue
        split = decode(f"golden ({name})", root, labels, chosen, size, resize=run.resize)
        if len(split) == 0:
            fallbacks.append(f"none of the chosen {name} images could be decoded")
            continue
        if len(split) < count:
            console.warn(f"the {name} split has only {len(split)} usable images: using all of them instead of {count}")
        console.info(f"golden vectors: {len(split)} images from the run's {name} split ({root})")
        return GoldenSet(split, {"split": name, "root": str(root), "fallbacks": fallbacks})
    raise DatasetError(
        f"none of the run's test, val or calibration images exist any more ({'; '.join(fallbacks) or 'the run records no splits'})",
        f"restore the images the run was trained on (see {run.path / 'split.json'})",
    )


def _candidates(run: Run, manifest: dict):
    plan = run.plan
    for name in ("test", "val"):
        if plan is not None and name in plan.samples:
            yield name, plan.roots[name], plan.samples[name]
    calib_dir = (manifest.get("export") or {}).get("calib_dir")
    if calib_dir:
        if Path(calib_dir).is_dir():
            folder = map_to_labels(scan_folder(Path(calib_dir), "calibration data"), list(manifest["labels"]), "calibration")
            yield "calibration", folder.root, folder.samples
        else:
            yield "calibration", Path(calib_dir), [Sample(Path(calib_dir), 0)]
    elif plan is not None and "train" in plan.samples:
        yield "calibration (training)", plan.roots["train"], plan.samples["train"]


def reference_outputs(model_path: Path, images: np.ndarray) -> tuple[np.ndarray, dict]:
    """Raw output tensors (model dtype) from this machine's runtime: the reference the goldens record."""
    from edgeclf.devices.host import open_model

    model = open_model(model_path)
    raw = np.stack([model.invoke_raw(images[i : i + 1]) for i in range(len(images))])
    return raw, {"runtime": model.runtime, "version": model.runtime_version, "machine": platform.machine()}


def kernel_spread(model_path: Path, images: np.ndarray, raw: np.ndarray, dtype: str) -> dict:
    """Largest deviation from the goldens under the runtime's other kernel sets on this machine
    (the format's `kernel_sets`; none for a format that declares none).

    Other builds and delegates differ from the reference the way these do: boards whose
    runtime skips XNNPACK for int8 (tflite_runtime 2.14 on an aarch64 Pi) run the builtin
    optimized kernels, which on the tiny test model differ by up to 9 uint8 steps.
    """
    from edgeclf import exporters
    from edgeclf.devices import runner
    from edgeclf.devices.host import open_model

    spread = {}
    for name in exporters.for_path(model_path).kernel_sets:
        outputs = runner.predict(open_model(model_path, kernels=name), images, raw=True)
        spread[name.lower()] = max((deviation(outputs[i], raw[i], dtype) for i in range(len(images))), default=0)
    return spread


def tolerance(output: dict, spread: dict) -> dict:
    measured = max(spread.values(), default=0)
    if output["dtype"] in INTEGER_DTYPES:
        return {"unit": "quantization steps", "reference": 0, "other": int(measured) + STEPS_ACROSS_BUILDS,
                "measured_across_kernels": spread}
    return {"unit": "absolute", "reference": FLOAT_ABS_REFERENCE, "other": float(measured) + FLOAT_ABS_ACROSS_BUILDS,
            "measured_across_kernels": spread}


def input_tensor_rule(tensor: dict) -> str:
    q = tensor.get("quantization")
    if tensor["dtype"] == "uint8" and q and q["scale"] == 1.0 and q["zero_point"] == 0:
        return "the uint8 pixels as they are"
    if tensor["dtype"] in INTEGER_DTYPES and q:
        return f"round(pixels / {q['scale']} + {q['zero_point']}) clipped to {tensor['dtype']}"
    return f"the pixels cast to {tensor['dtype']} (raw 0-255, no normalisation: the model does it)"


def vector_stem(index: int, label: str) -> str:
    """NNN_label: the label's letters and digits only, cut short (a class name may be as long as a
    file name allows, and the suffixes must still fit)."""
    return f"{index:03d}_{re.sub(r'[^A-Za-z0-9_-]+', '_', label)[:STEM_LABEL_CHARS]}"


def write(staging: Path, golden: GoldenSet, raw: np.ndarray, reference: dict, manifest: dict, spread: dict,
          handoff: HandOff) -> dict:
    """golden/NNN_label.npy (uint8 pixels), .png (same pixels), .output.npy (raw output) and golden.json
    (paths as hand-off names, see handoff.py)."""
    folder = staging / GOLDEN_DIR
    folder.mkdir()
    labels = list(manifest["labels"])
    output = manifest["output"]
    q = output.get("quantization")
    vectors = []
    for i, (pixels, label) in enumerate(zip(golden.split.images, golden.split.labels)):
        stem = vector_stem(i, labels[label])
        np.save(folder / f"{stem}.npy", pixels[None])
        Image.fromarray(pixels, "RGB").save(folder / f"{stem}.png")
        if not np.array_equal(np.asarray(Image.open(folder / f"{stem}.png").convert("RGB")), pixels):
            raise BundleError(f"{stem}.png does not hold the exact pixels", "report this: PNG must be lossless")
        np.save(folder / f"{stem}.output.npy", raw[i][None])
        values = raw[i].astype(np.float64)
        probs = (values - q["zero_point"]) * q["scale"] if q and output["dtype"] in INTEGER_DTYPES else values
        order = np.argsort(-values, kind="stable")[: min(TOP_K, len(labels))]
        vectors.append({
            "id": stem,
            "input": f"{GOLDEN_DIR}/{stem}.npy",
            "png": f"{GOLDEN_DIR}/{stem}.png",
            "output": f"{GOLDEN_DIR}/{stem}.output.npy",
            "true_label": labels[label],
            "source_image": relative(golden.split.paths[i], golden.split.root, outside=golden.split.paths[i].name),
            "expected_raw": [v.item() for v in raw[i]],
            "expected_top_k": [{"label": labels[j], "index": int(j), "raw": raw[i][j].item(),
                                "probability": round(float(probs[j]), 6)} for j in order],
        })
    record = {
        "format": records.tag("golden"),
        "count": len(vectors),
        "source": handoff.tree(golden.source),
        "labels": labels,
        "input": {"shape": manifest["input"]["shape"], "dtype": manifest["input"]["dtype"],
                  "quantization": manifest["input"].get("quantization"),
                  "pixels": "RGB uint8 (1, H, W, 3), decoded and resized exactly as in training",
                  "tensor": input_tensor_rule(manifest["input"])},
        "output": {"shape": output["shape"], "dtype": output["dtype"], "quantization": q},
        "reference": reference,
        "tolerance": tolerance(output, spread),
        "rules": "a vector passes if every output value is within the tolerance (`reference` on the reference "
                 "runtime/version/machine, else `other`) and labels.txt names the expected top-1 class "
                 "(or one tied with it within twice the tolerance)",
        "vectors": vectors,
    }
    (folder / GOLDEN_FILE).write_text(json.dumps(record, indent=1) + "\n")
    return record


def read(path: Path) -> dict:
    """golden.json, checked for everything check-bundle reads: a damaged one is one clear error."""
    try:
        record = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise BundleError(f"{path} is not valid JSON ({str(exc).splitlines()[0]})", REMAKE) from exc
    if isinstance(record, dict):
        records.version(record, "golden", path)  # a newer golden.json is not misread
    problem = _golden_problem(record)
    if problem:
        raise BundleError(f"{path} {problem}", REMAKE)
    return record


def _golden_problem(record) -> str | None:
    def number(v) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) and v >= 0

    if not isinstance(record, dict):
        return f"holds a JSON {type(record).__name__}, not an object"
    labels, vectors = record.get("labels"), record.get("vectors")
    if not isinstance(labels, list) or not labels or not all(isinstance(label, str) for label in labels):
        return "has no labels list"
    if not isinstance(vectors, list) or not vectors:
        return "has no golden vectors"
    for i, v in enumerate(vectors):
        if not isinstance(v, dict) or not all(isinstance(v.get(k), str) for k in ("id", "input", "output")):
            return f"vector {i} lacks its id, input or output file"
        top = v.get("expected_top_k")
        if not isinstance(top, list) or not top or not isinstance(top[0], dict) or not isinstance(top[0].get("label"), str):
            return f"vector {v['id']!r} has no expected_top_k label"
    if not isinstance(record.get("output"), dict) or record["output"].get("dtype") not in INTEGER_DTYPES + FLOAT_DTYPES:
        return "has no output.dtype"
    reference = record.get("reference")
    if not isinstance(reference, dict) or not all(isinstance(reference.get(k), (str, type(None))) for k in ("runtime", "version", "machine")):
        return "has no reference runtime, version and machine"
    tol = record.get("tolerance")
    if not isinstance(tol, dict) or not number(tol.get("reference")) or not number(tol.get("other")) or not isinstance(tol.get("unit"), str):
        return "has no tolerance (reference, other, unit)"
    return None


# --- comparison, used by check-bundle on the host (check_golden.py carries its own copy) ---
def deviation(got: np.ndarray, expected: np.ndarray, dtype: str) -> float:
    if dtype in INTEGER_DTYPES:
        return int(np.abs(np.asarray(got).astype(np.int64) - np.asarray(expected).astype(np.int64)).max())
    return float(np.abs(np.asarray(got, np.float64) - np.asarray(expected, np.float64)).max())


def top1_acceptable(expected: np.ndarray, tol: float) -> set[int]:
    """Indices an output may name as top-1: the expected one, or any tied with it within 2x tolerance."""
    expected = np.asarray(expected, np.float64)
    best = expected.max()
    return {int(i) for i in np.flatnonzero(expected >= best - 2 * tol)}


def is_reference(golden: dict, runtime: str, version: str | None, machine: str | None) -> bool:
    ref = golden["reference"]
    return (runtime, version, machine) == (ref["runtime"], ref["version"], ref["machine"])
