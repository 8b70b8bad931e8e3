"""What each app mistake costs an artefact, measured on its run's test split.

One table: training's own pipeline first, then every other resize kernel, centre-crop and
letterbox (the resize-sensitivity table), then BGR, EXIF ignored, normalisation and
truncation. Each row has the float model's and the artefact's top-1 and their agreement with
the float model on training's pipeline; the artefact's drop against its own training-pipeline
top-1 carries the exact paired 95% interval, so a difference within noise is called so.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from edgeclf import console
from edgeclf.console import pct
from edgeclf.errors import DatasetError
from edgeclf.lastmile.mistakes import Mistake, applicable, mistakes
from edgeclf.pipeline import resize
from edgeclf.pipeline.metrics import paired_difference, score
from edgeclf.pipeline.runs import Run
from edgeclf.pipeline.streaming import THREADS

# Where apps meet a kernel, for the recommendation.
PLATFORM_KERNELS = {"android": "On Android, Bitmap.createScaledBitmap(bitmap, w, h, true)",
                    "opencv-linear": "With OpenCV, cv2.resize's default INTER_LINEAR",
                    "tf-bilinear": "With TensorFlow, tf.image.resize without antialias",
                    "nearest": "Scaling without filtering (createScaledBitmap(..., false))"}


def scored_split(run: Run):
    """The run's test split, else its val split: (name, decoded split with training's pipeline)."""
    plan = run.plan
    for name in ("test", "val"):
        if plan is not None and name in plan.samples and all(s.path.exists() for s in plan.samples[name]):
            return name, plan.decode(name, run.img_size, cache="memory", resize=run.resize)
    raise DatasetError(f"the run {run.path} has no test or val images left to measure app mistakes on",
                       f"restore the images the run was trained on (see {run.path / 'split.json'})")


def measure(run: Run, model_path: Path, input_dtype: str) -> dict:
    """The last-mile table for the artefact at `model_path` (input tensor dtype `input_dtype`)."""
    from edgeclf.devices.host import predict_file
    from edgeclf.pipeline.predict import predict_probs

    name, split = scored_split(run)
    console.info(f"measuring app mistakes on the run's {name} split ({len(split)} images)")
    model = run.load_model()
    float_ref = predict_probs(model, split.images)
    art_ref = predict_file(model_path, split.images, label="artefact on training's pipeline")

    def row(mistake: Mistake | None, values: np.ndarray | None) -> dict:
        f = float_ref if mistake is None else predict_probs(model, values)
        metrics = {"float_top1": score(f, split.labels, run.labels)["top1"],
                   "float_agreement": score(f, split.labels, run.labels, float_ref)["agreement"]}
        if mistake is not None and not applicable(mistake, input_dtype):
            metrics |= {"top1": None, "agreement": None, "drop": None, "drop_ci95": None, "within_noise": None,
                        "note": f"n/a: the artefact's input tensor is {input_dtype}"}
        else:
            a = art_ref if mistake is None else predict_file(model_path, values, label=f"artefact with {mistake.name}")
            scored = score(a, split.labels, run.labels, float_ref)
            paired = paired_difference(a, split.labels, art_ref)
            low, high = paired["drop_ci95"] or (0.0, 0.0)
            metrics |= {"top1": scored["top1"], "agreement": scored["agreement"], "changed": paired["changed"],
                        "drop": paired["drop"], "drop_ci95": paired["drop_ci95"], "within_noise": bool(low <= 0 <= high)}
        head = {"name": "training", "kind": "training", "what": resize.words(run.resize)} if mistake is None else \
            {"name": mistake.name, "kind": mistake.kind, "what": mistake.what}
        return head | metrics

    rows = [row(None, None)]
    with console.progress() as bar, ThreadPoolExecutor(max_workers=THREADS) as pool:
        found = mistakes(run.resize)
        task = bar.add_task("applying app mistakes", total=len(found), status="")
        for mistake in found:
            values = np.stack(list(pool.map(lambda p: mistake.measured(p, run.img_size, run.resize), split.paths)))
            rows.append(row(mistake, values))
            bar.advance(task)
    table = {"split": name, "n_images": len(split), "training_kernel": run.resize, "aspect": resize.SQUASH, "rows": rows}
    return table | {"recommendation": recommendation(table)}


def points(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}"


def recommendation(table: dict) -> list[str]:
    """Sentences an app team can act on, from the measured rows."""
    rows = {r["name"]: r for r in table["rows"]}
    training = table["training_kernel"]
    lines = [f"Resize as training did: {training}, squashing the whole image to the model size (no crop, no padding), "
             "RGB order, EXIF orientation applied, raw 0-255 values."]
    safe = [r["name"].split(" ", 1)[1] for r in table["rows"] if r["kind"] == "resize" and r["within_noise"]]
    if safe:
        lines.append(f"Kernels within noise of {training} on this split: {', '.join(safe)}.")
    for kernel, where in PLATFORM_KERNELS.items():
        r = rows.get(f"resize {kernel}")
        if r is None or r["drop"] is None:
            continue
        if r["within_noise"]:
            lines.append(f"{where} (kernel {kernel}) is within noise here ({points(r['drop'])} points).")
        else:
            fix = f"resize with {safe[0]}" if safe else f"resize with {training}"
            lines.append(f"{where} (kernel {kernel}) loses {points(r['drop'])} points of top-1 "
                         f"(agreement {points(r['agreement'])}%): {fix}, or retrain with `edgeclf train --resize {kernel}`.")
    resized = [r for r in table["rows"] if r["kind"] in ("resize", "aspect") and r["drop"] is not None]
    beyond = [r for r in resized if not r["within_noise"]]
    if beyond:
        worst = max(beyond, key=lambda r: r["drop"])
        lines.append(f"Largest drop among the resizers: {worst['name']} ({points(worst['drop'])} points, "
                     f"agreement {points(worst['agreement'])}%).")
    elif resized:  # every drop within noise (or a gain): name the one that changes most predictions instead
        worst = min(resized, key=lambda r: (r["agreement"], -r["drop"]))
        lines.append(f"No resizer's drop is beyond noise on this split; the one changing most predictions is "
                     f"{worst['name']} (agreement {points(worst['agreement'])}%, drop {points(worst['drop'])} points).")
    return lines


COLUMNS = ["input", "float top-1", "float agreement", "artefact top-1", "agreement with float", "drop (points, 95% CI)"]


def table_rows(table: dict) -> list[list[str]]:
    """One row of strings per measured input, for the console, the model card and the report."""
    rows = []
    for r in table["rows"]:
        if r["kind"] == "training":
            drop = "reference"
        elif r["drop"] is None:
            drop = r.get("note", "n/a")
        else:
            low, high = r["drop_ci95"]
            drop = f"{points(r['drop'])} [{points(low)}, {points(high)}]" + (" within noise" if r["within_noise"] else "")
        rows.append([r["name"], pct(r["float_top1"]), pct(r["float_agreement"]), pct(r["top1"]), pct(r["agreement"]), drop])
    return rows


def markdown(table: dict) -> list[str]:
    """The table and recommendation as Markdown lines (values are numbers and names from closed sets)."""
    lines = [f"Measured on the run's {table['split']} split ({table['n_images']} images); training resized with "
             f"`{table['training_kernel']}` ({table['aspect']}). Agreement is with the float model on training's pipeline.", "",
             "| " + " | ".join(COLUMNS) + " |", "|" + " --- |" * len(COLUMNS)]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(table)]
    return lines + [""] + [f"- {line}" for line in table["recommendation"]]


def _fraction(value, what: str):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not -1 <= value <= 1:
        raise ValueError(f"{what} is {value!r}")
    return float(value)


def validated(table: dict) -> dict:
    """A table read back from a manifest, rebuilt from closed sets and checked numbers (a manifest may
    come from anyone): names must be known mistakes, words and recommendation are regenerated.
    Raises ValueError when it is not a table this code wrote."""
    kernel = table.get("training_kernel")
    if kernel not in resize.KERNELS or table.get("split") not in ("test", "val") or table.get("aspect") != resize.SQUASH:
        raise ValueError("unknown kernel, split or aspect")
    if isinstance(table.get("n_images"), bool) or not isinstance(table.get("n_images"), int):
        raise ValueError("n_images is not an integer")
    known = {m.name: m for m in mistakes(kernel)}
    rows = []
    for r in table.get("rows", []):
        name = r.get("name")
        if name != "training" and name not in known:
            raise ValueError(f"unknown row {name!r}")
        clean = {"name": name, "kind": "training" if name == "training" else known[name].kind,
                 "what": resize.words(kernel) if name == "training" else known[name].what}
        for key in ("float_top1", "float_agreement", "top1", "agreement", "drop"):
            clean[key] = _fraction(r.get(key), key)
        ci = r.get("drop_ci95")
        clean["drop_ci95"] = None if ci is None else [_fraction(v, "drop_ci95") for v in ci][:2]
        clean["within_noise"] = None if r.get("within_noise") is None else bool(r["within_noise"])
        if clean["top1"] is None and name != "training":
            clean["note"] = "n/a: integer input tensor"
        rows.append(clean)
    if not rows or rows[0]["name"] != "training":
        raise ValueError("no training row")
    clean = {"split": table["split"], "n_images": table["n_images"], "training_kernel": kernel, "aspect": resize.SQUASH,
             "rows": rows}
    return clean | {"recommendation": recommendation(clean)}
