"""The model-choice table of `edgeclf run`: per backbone, format and device, what shipping it gives.

Accuracy is the device's own (test images scored from predictions made there), sizes come
from each artefact's manifest, parameters from the run it was exported from. Written as
compare.json, compare.csv and an accuracy-versus-latency chart, compare.png.
"""
from __future__ import annotations

import json
from pathlib import Path

from edgeclf import records
from edgeclf.artefacts import MANIFEST_FILE
from edgeclf.atomic import staged_dir
from edgeclf.outputs import COMPARE
from edgeclf.pipeline.runs import LABELS_FILE, Run
from edgeclf.report.results import Chart, write_results

COMPARE_FILE = "compare.json"
CHART = Chart("test top-1 vs p50 latency", "test_top1", "test top-1 (%)",
              lambda r: f"{r['backbone']} {r['export']}\n{r['size_mb']:.2f} MB", ": nothing measured on a device",
              colour_by="device", marker_by="backbone", log_when_spread=True)
COLUMNS = ["backbone", "export", "device", "weights", "test_top1", "test_top5", "agreement", "size_mb", "gzip_mb",
           "params", "p50_ms", "p90_ms", "peak_rss_mb", "emulated", "status"]


def write(entries: list[dict], output: Path) -> list[dict]:
    params: dict = {}
    rows = [_row(entry, params) for entry in entries]
    with staged_dir(output, COMPARE_FILE, overwrite=True) as staging:
        write_results(staging, "compare", {**COMPARE.stamp(), "columns": COLUMNS, "rows": rows}, rows, COLUMNS, CHART)
    return rows


def read(output: Path) -> list[dict]:
    path = Path(output) / COMPARE_FILE
    return json.loads(path.read_text())["rows"] if path.is_file() else []


def weights_label(entry: dict) -> str:
    """Which weights a row's model started from, and what was done to it since."""
    weights = entry["weights"]
    label = weights if weights in ("imagenet", "none") else Path(weights).name
    if entry.get("alpha", 1.0) != 1.0:
        label += f", alpha {entry['alpha']:g}"
    optimize = entry.get("optimize") or {}
    if optimize.get("prune"):
        label += f", pruned {100 * optimize['prune']:.0f}%"
    if optimize.get("qat"):
        label += ", QAT"
    return label


def _row(entry: dict, params: dict) -> dict:
    row = dict.fromkeys(COLUMNS)
    row.update(backbone=entry["backbone"], export=entry["export"], device=entry["device"] or "-",
               weights=weights_label(entry), status="ok")
    manifest_path = Path(entry["export_dir"]) / MANIFEST_FILE
    if entry.get("error") or not manifest_path.is_file():
        row["status"] = entry.get("error") or "not exported"
        return row
    manifest = json.loads(manifest_path.read_text())
    records.version(manifest, "manifest", manifest_path)
    files = [f for name, f in manifest["files"].items() if name != LABELS_FILE]
    row.update(size_mb=round(sum(f["bytes"] for f in files) / 1e6, 3),
               gzip_mb=round(sum(f.get("gzip_bytes", 0) for f in files) / 1e6, 3),
               params=_params(Path(entry["run_dir"]), params))
    result_file = entry.get("result_file")
    if result_file is None:
        row["status"] = "not measured (no devices)"
        return row
    result = json.loads(Path(result_file).read_text())
    records.version(result, "result", result_file)
    accuracy, latency = result.get("accuracy") or {}, result.get("latency_ms") or {}
    row.update(test_top1=accuracy.get("top1"), test_top5=accuracy.get("top5"), agreement=accuracy.get("agreement"),
               p50_ms=latency.get("p50"), p90_ms=latency.get("p90"), peak_rss_mb=result.get("peak_rss_mb"),
               emulated=result.get("emulated"))
    return row


def _params(run_dir: Path, cache: dict) -> int | None:
    if run_dir not in cache:
        if not run_dir.is_dir():
            cache[run_dir] = None
        else:
            run = Run.open(run_dir)  # runs before edgeclf recorded "params" are counted by loading them
            cache[run_dir] = run.info.get("params") or int(run.load_model().count_params())
    return cache[run_dir]
