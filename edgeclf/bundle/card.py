"""MODEL_CARD.md: what an app team needs to know about the model, from the manifest and its run."""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np

from edgeclf import console, records
from edgeclf.audit.card import card_lines
from edgeclf.bundle import escape
from edgeclf.bundle.handoff import HandOff
from edgeclf.console import pct
from edgeclf.devices.host import predict_file
from edgeclf.pipeline.datasets import samples_digest
from edgeclf.pipeline.metrics import score
from edgeclf.pipeline.resize import words as resize_words
from edgeclf.pipeline.runs import SPLIT_FILE, Run
from edgeclf.lastmile import sensitivity

HEX = re.compile(r"[0-9a-f]{1,64}")


def test_accuracy(run: Run, model_path: Path) -> dict | None:
    """The artefact and the float model on the run's test split, when its images are all still there."""
    plan = run.plan
    if plan is None or "test" not in plan.samples or not all(s.path.exists() for s in plan.samples["test"]):
        return None
    from edgeclf.pipeline.predict import predict_probs

    split = plan.decode("test", run.img_size, cache="auto", resize=run.resize)
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


def _accuracy_rows(manifest: dict, test: dict | None, t) -> list[str]:
    rows = []
    for acc in (manifest.get("accuracy"), test):
        if not acc:
            continue
        n = acc["n_images"]
        changed = acc.get("changed", round((1 - acc["agreement"]) * n) if acc.get("agreement") is not None else None)
        rows.append(f"| {t(acc['split'])} | {t(n)} | {pct(acc.get('float_top1'))} | {pct(acc['top1'])} | "
                    f"{pct(acc.get('agreement'))} | {t('n/a' if changed is None else changed)} |")
    return rows or ["| (no split scored) | | | | | |"]


def confused_pairs(confusion, labels: list[str], t=escape.markdown, limit: int = 5) -> list[str]:
    matrix = np.asarray(confusion)
    pairs = [(int(matrix[i, j]), labels[i], labels[j]) for i in range(len(labels)) for j in range(len(labels)) if i != j and matrix[i, j]]
    return [f"- {t(true)} taken for {t(pred)}: {count} image(s)" for count, true, pred in sorted(pairs, key=lambda p: -p[0])[:limit]]


def _dataset_lines(run: Run, t) -> list[str]:
    dataset = run.info.get("dataset", {})
    lines = [f"- split: {t(dataset.get('split', 'n/a'))}"]
    for name in ("train", "val", "test"):
        if name in dataset:
            per_class = ", ".join(f"{k} {v}" for k, v in dataset[name]["per_class"].items())
            lines.append(f"- {name}: {t(dataset[name]['n_images'])} images from {t(dataset[name]['root'])} ({t(per_class)})")
    if run.plan is not None:
        digest = samples_digest(run.plan.samples["train"], run.plan.roots["train"])
        lines.append(f"- training file list hash (relative paths + labels): `{digest[:16]}`; "
                     f"{SPLIT_FILE} sha256 `{hashlib.sha256((run.path / SPLIT_FILE).read_bytes()).hexdigest()[:16]}`")
    return lines


def _hex(value) -> str:
    """A digest in a code span, when it is one (nothing else goes between backticks)."""
    text = str(value)
    return f"`{text}`" if HEX.fullmatch(text) else escape.markdown(text)


def render(manifest: dict, run: Run, golden: dict, test: dict | None, measured: list[dict], files: dict[str, str],
           handoff: HandOff, last_mile: dict | None = None) -> str:
    """The card. Every value from the manifest, run.json, bench.json or golden record goes through
    `t`: the trainer's paths reduced to folder names (handoff.py), then Markdown-escaped (escape.py)."""
    def t(value) -> str:
        return escape.markdown(handoff.text(value))

    labels = manifest["labels"]
    config = run.info.get("config", {})
    inp, out = manifest["input"], manifest["output"]
    q_in, q_out = inp.get("quantization"), out.get("quantization")
    calib = manifest.get("calibration") or {}
    coverage = (manifest.get("details") or {}).get("quantization_coverage") or {}
    tol = golden["tolerance"]
    lines = [
        f"# Model card: {t(config.get('arch', 'classifier'))} {t(manifest['target'])} {t(manifest['quant'])}",
        "", "## What it classifies",
        f"{len(labels)} classes, in output order: {', '.join(t(label) for label in labels)}. One RGB image in, one score per class out.",
        "", "## Training data", *_dataset_lines(run, t), *(t(line) for line in card_lines(run.info.get("audit"))),
        "", "## How it was trained",
        f"- {t(config.get('arch'))} (alpha {t(config.get('alpha'))}), weights {t(config.get('weights'))}, {t(config.get('img_size'))} px, "
        f"head {t(config.get('head_epochs'))} + fine-tune {t(config.get('fine_tune_epochs'))} epochs, lr {t(config.get('lr'))}, "
        f"augment {t(config.get('augment'))}, seed {t(config.get('seed'))}",
        f"- optimization: {t(json.dumps(run.info.get('optimization'))) if run.info.get('optimization') else 'none'}",
        "", "## How it was exported and quantized",
        f"- {t(manifest['target'])} {t(manifest['quant'])}, IO {t(manifest.get('io') or inp['dtype'])}",
        f"- calibration: {t(calib.get('count', 'n/a'))} images from {t(calib.get('source', 'n/a'))} (seed {t(calib.get('seed', 'n/a'))}, "
        f"sample hash {_hex(str(calib.get('sample_hash', 'n/a'))[:16])})" if calib else "- calibration: none (not an int8 export)",
        f"- integer ops: {pct(coverage.get('ops_integer_fraction'))}, int8 weights: {pct(coverage.get('weights_int8_fraction'))}" if coverage else "",
        "", "## Accuracy",
        "| split | images | float top-1 | this artefact top-1 | agreement with float | changed predictions |",
        "| --- | --- | --- | --- | --- | --- |", *_accuracy_rows(manifest, test, t),
        "", "## On-device measurements",
        "| device | runtime | emulated | latency p50 / p90 (ms) | on-device top-1 | where |", "| --- | --- | --- | --- | --- | --- |",
        *([f"| {t(m['device'].get('name'))} ({t(m['device'].get('arch'))}) | {t(m['runtime'].get('name'))} {t(m['runtime'].get('version') or '')} | "
           f"{t(m.get('emulated'))} | {t((m.get('latency_ms') or {}).get('p50'))} / {t((m.get('latency_ms') or {}).get('p90'))} | "
           f"{pct((m.get('accuracy') or {}).get('top1'))} | bench/{t(m['bench'])} |" for m in measured]
          or ["| none recorded (run `edgeclf bench` on the run, or `edgeclf check-bundle --device ...`) | | | | | |"]),
        "", "## Input contract",
        f"- tensor {t(inp.get('name'))}: shape {t(inp['shape'])} (NHWC), dtype {t(inp['dtype'])}"
        + (f", scale {t(q_in['scale'])}, zero point {t(q_in['zero_point'])}" if q_in else ""),
        "- channel order RGB (not BGR); raw pixel values 0-255: do not normalise, the model does it",
        f"- resize: {t(resize_words(run.resize))}; EXIF orientation applied; the whole contract is `preprocessing` in golden/golden.json",
        f"- how golden inputs become the tensor: {t(golden['input']['tensor'])}",
        "", "## App mistakes and resize sensitivity",
        *(sensitivity.markdown(last_mile) if last_mile else ["- not measured (the run's test and val images are gone)"]),
        "", "## Output contract",
        f"- tensor {t(out.get('name'))}: shape {t(out['shape'])}, dtype {t(out['dtype'])}"
        + (f", scale {t(q_out['scale'])}, zero point {t(q_out['zero_point'])}" if q_out else ""),
        (f"- probabilities already (softmax inside the model) after dequantizing: p = (raw - {t(q_out['zero_point'])}) * {t(q_out['scale'])}; "
         "never read raw uint8 scores as probabilities" if q_out else "- float probabilities (softmax inside the model); use them as they are"),
        "", "## Known limits",
        *(confused_pairs((test or manifest.get("accuracy") or {}).get("confusion") or [[0]], labels, t)
          or ["- no confusions on the scored split (it may be small: check the counts above)"]),
        "", "## Golden vectors",
        f"- {t(golden['count'])} images from the run's {t(golden['source']['split'])} split"
        + ("".join(f"; {t(note)}" for note in golden["source"]["fallbacks"])),
        f"- reference: {t(golden['reference']['runtime'])} {t(golden['reference']['version'])} on {t(golden['reference']['machine'])}",
        f"- tolerance: {t(tol['reference'])} {t(tol['unit'])} on the reference runtime, "
        f"{t(tol['other'])} on any other runtime, build or delegate (TFLite's other kernel sets on the "
        f"goldens, measured at bundle time: {t(tol.get('measured_across_kernels') or 'n/a')})",
        f"- raw golden images: {t(golden['raw']['count'])} source files as they were (EXIF intact; at most "
        f"{t(golden['raw']['limits']['max_images'])}, each at most {t(golden['raw']['limits']['max_bytes'])} bytes), with the tensor "
        f"training's pipeline makes from them; tensor tolerance mean {t(golden['raw']['tolerance']['mean'])} / max "
        f"{t(golden['raw']['tolerance']['max'])} levels (other real decoders on these files, measured at bundle time)",
        "- check: `python check_golden.py` here (`--tensors DIR` / `--outputs DIR` for your app's tensors and outputs), "
        "or `edgeclf check-bundle BUNDLE --device ...`",
        "", "## Versions and checksums",
        *[f"- {t(k)}: {t(v)}" for k, v in (manifest.get("versions") or {}).items()],
        *[f"- {t(name)} sha256 {_hex(digest)}" for name, digest in files.items()],
        "",
    ]
    return "\n".join(line for line in lines if line is not None)
