"""MODEL_CARD.md: what an app team needs to know about the model, from the manifest and its run."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from edgeclf import console, records
from edgeclf.audit.card import card_lines
from edgeclf.console import pct
from edgeclf.devices.host import predict_file
from edgeclf.pipeline.datasets import samples_digest
from edgeclf.pipeline.metrics import score
from edgeclf.pipeline.runs import SPLIT_FILE, Run


def test_accuracy(run: Run, model_path: Path) -> dict | None:
    """The artefact and the float model on the run's test split, when its images are all still there."""
    plan = run.plan
    if plan is None or "test" not in plan.samples or not all(s.path.exists() for s in plan.samples["test"]):
        return None
    from edgeclf.pipeline.predict import predict_probs

    split = plan.decode("test", run.img_size, cache="auto")
    probs = predict_file(model_path, split.images, label="scoring the artefact on test")
    float_probs = predict_probs(run.load_model(), split.images)
    metrics = score(probs, split.labels, run.labels, float_probs)
    return {
        "split": "test", "n_images": metrics["n_images"], "top1": metrics["top1"],
        "float_top1": score(float_probs, split.labels, run.labels)["top1"], "agreement": metrics["agreement"],
        "changed": int((probs.argmax(1) != float_probs.argmax(1)).sum()), "confusion": metrics["confusion"],
    }


def device_measurements(run: Run, manifest: dict) -> list[dict]:
    """Every `edgeclf bench` row of the run for this format and quantization."""
    rows = []
    for path in sorted((run.path / "bench").glob("*/bench.json")):
        try:
            bench = json.loads(path.read_text())
            records.version(bench, "bench", path)
        except (OSError, json.JSONDecodeError, records.RecordError) as exc:
            console.warn(f"skipping unreadable {path}" + (f": {exc}" if isinstance(exc, records.RecordError) else ""))
            continue
        for row in bench.get("rows", []):
            result = row.get("result")
            if result and (row.get("format"), row.get("quant")) == (manifest.get("target"), manifest.get("quant")):
                rows.append(result | {"bench": str(path.parent.name)})
    return rows


def _accuracy_rows(manifest: dict, test: dict | None) -> list[str]:
    rows = []
    for acc in (manifest.get("accuracy"), test):
        if not acc:
            continue
        n = acc["n_images"]
        changed = acc.get("changed", round((1 - acc["agreement"]) * n) if acc.get("agreement") is not None else None)
        rows.append(f"| {acc['split']} | {n} | {pct(acc.get('float_top1'))} | {pct(acc['top1'])} | "
                    f"{pct(acc.get('agreement'))} | {'-' if changed is None else changed} |")
    return rows or ["| (no split scored) | | | | | |"]


def confused_pairs(confusion, labels: list[str], limit: int = 5) -> list[str]:
    matrix = np.asarray(confusion)
    pairs = [(int(matrix[i, j]), labels[i], labels[j]) for i in range(len(labels)) for j in range(len(labels)) if i != j and matrix[i, j]]
    return [f"- {true} taken for {pred}: {count} image(s)" for count, true, pred in sorted(pairs, key=lambda p: -p[0])[:limit]]


def _dataset_lines(run: Run) -> list[str]:
    dataset = run.info.get("dataset", {})
    lines = [f"- split: {dataset.get('split', 'n/a')}"]
    for name in ("train", "val", "test"):
        if name in dataset:
            per_class = ", ".join(f"{k} {v}" for k, v in dataset[name]["per_class"].items())
            lines.append(f"- {name}: {dataset[name]['n_images']} images from `{dataset[name]['root']}` ({per_class})")
    if run.plan is not None:
        digest = samples_digest(run.plan.samples["train"], run.plan.roots["train"])
        lines.append(f"- training file list hash (relative paths + labels): `{digest[:16]}`; "
                     f"{SPLIT_FILE} sha256 `{hashlib.sha256((run.path / SPLIT_FILE).read_bytes()).hexdigest()[:16]}`")
    return lines


def render(manifest: dict, run: Run, golden: dict, test: dict | None, measured: list[dict], files: dict[str, str]) -> str:
    labels = manifest["labels"]
    config = run.info.get("config", {})
    inp, out = manifest["input"], manifest["output"]
    q_in, q_out = inp.get("quantization"), out.get("quantization")
    calib = manifest.get("calibration") or {}
    coverage = (manifest.get("details") or {}).get("quantization_coverage") or {}
    lines = [
        f"# Model card: {config.get('arch', 'classifier')} {manifest['target']} {manifest['quant']}",
        "", "## What it classifies",
        f"{len(labels)} classes, in output order: {', '.join(labels)}. One RGB image in, one score per class out.",
        "", "## Training data", *_dataset_lines(run), *card_lines(run.info.get("audit")),
        "", "## How it was trained",
        f"- {config.get('arch')} (alpha {config.get('alpha')}), weights `{config.get('weights')}`, {config.get('img_size')} px, "
        f"head {config.get('head_epochs')} + fine-tune {config.get('fine_tune_epochs')} epochs, lr {config.get('lr')}, "
        f"augment {config.get('augment')}, seed {config.get('seed')}",
        f"- optimization: {json.dumps(run.info.get('optimization')) if run.info.get('optimization') else 'none'}",
        "", "## How it was exported and quantized",
        f"- {manifest['target']} {manifest['quant']}, IO {manifest.get('io') or inp['dtype']}",
        f"- calibration: {calib.get('count', 'n/a')} images from {calib.get('source', 'n/a')} (seed {calib.get('seed', 'n/a')}, "
        f"sample hash `{str(calib.get('sample_hash', 'n/a'))[:16]}`)" if calib else "- calibration: none (not an int8 export)",
        f"- integer ops: {pct(coverage.get('ops_integer_fraction'))}, int8 weights: {pct(coverage.get('weights_int8_fraction'))}" if coverage else "",
        "", "## Accuracy",
        "| split | images | float top-1 | this artefact top-1 | agreement with float | changed predictions |",
        "| --- | --- | --- | --- | --- | --- |", *_accuracy_rows(manifest, test),
        "", "## On-device measurements",
        "| device | runtime | emulated | latency p50 / p90 (ms) | on-device top-1 | where |", "| --- | --- | --- | --- | --- | --- |",
        *([f"| {m['device'].get('name')} ({m['device'].get('arch')}) | {m['runtime'].get('name')} {m['runtime'].get('version') or ''} | "
           f"{m.get('emulated')} | {(m.get('latency_ms') or {}).get('p50')} / {(m.get('latency_ms') or {}).get('p90')} | "
           f"{pct((m.get('accuracy') or {}).get('top1'))} | bench/{m['bench']} |" for m in measured]
          or ["| none recorded (run `edgeclf bench` on the run, or `edgeclf check-bundle --device ...`) | | | | | |"]),
        "", "## Input contract",
        f"- tensor `{inp.get('name')}`: shape {inp['shape']} (NHWC), dtype {inp['dtype']}"
        + (f", scale {q_in['scale']}, zero point {q_in['zero_point']}" if q_in else ""),
        "- channel order RGB (not BGR); raw pixel values 0-255: do not normalise, the model does it",
        f"- resize: {manifest.get('preprocessing')}; training used PIL bilinear straight to the model size (aspect ratio not kept), EXIF orientation applied",
        f"- how golden inputs become the tensor: {golden['input']['tensor']}",
        "", "## Output contract",
        f"- tensor `{out.get('name')}`: shape {out['shape']}, dtype {out['dtype']}"
        + (f", scale {q_out['scale']}, zero point {q_out['zero_point']}" if q_out else ""),
        (f"- probabilities already (softmax inside the model) after dequantizing: p = (raw - {q_out['zero_point']}) * {q_out['scale']}; "
         "never read raw uint8 scores as probabilities" if q_out else "- float probabilities (softmax inside the model); use them as they are"),
        "", "## Known limits",
        *(confused_pairs((test or manifest.get("accuracy") or {}).get("confusion") or [[0]], labels)
          or ["- no confusions on the scored split (it may be small: check the counts above)"]),
        "", "## Golden vectors",
        f"- {golden['count']} images from the run's {golden['source']['split']} split"
        + ("".join(f"; {note}" for note in golden["source"]["fallbacks"])),
        f"- reference: {golden['reference']['runtime']} {golden['reference']['version']} on {golden['reference']['machine']}",
        f"- tolerance: {golden['tolerance']['reference']} {golden['tolerance']['unit']} on the reference runtime, "
        f"{golden['tolerance']['other']} on any other runtime, build or delegate (TFLite's other kernel sets on the "
        f"goldens, measured at bundle time: {golden['tolerance'].get('measured_across_kernels') or 'n/a'})",
        "- check: `python check_golden.py` here, or `edgeclf check-bundle BUNDLE --device ...`",
        "", "## Versions and checksums",
        *[f"- {k}: {v}" for k, v in (manifest.get("versions") or {}).items()],
        *[f"- `{name}` sha256 `{digest}`" for name, digest in files.items()],
        "",
    ]
    return "\n".join(line for line in lines if line is not None)
