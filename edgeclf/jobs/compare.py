"""The model-choice table of `edgeclf run`: per backbone, format and device, what shipping it gives.

Accuracy is the device's own (test images scored from predictions made there), sizes come
from each artefact's manifest, parameters from the run it was exported from. Written as
compare.json, compare.csv and an accuracy-versus-latency chart, compare.png.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

from edgeclf import console, records
from edgeclf.artefacts import MANIFEST_FILE
from edgeclf.atomic import staged_dir
from edgeclf.outputs import COMPARE
from edgeclf.pipeline.runs import LABELS_FILE, Run

COMPARE_FILE = "compare.json"
COLUMNS = ["backbone", "export", "device", "weights", "test_top1", "test_top5", "agreement", "size_mb", "gzip_mb",
           "params", "p50_ms", "p90_ms", "peak_rss_mb", "emulated", "status"]


def write(entries: list[dict], output: Path) -> list[dict]:
    params: dict = {}
    rows = [_row(entry, params) for entry in entries]
    with staged_dir(output, COMPARE_FILE, overwrite=True) as staging:
        (staging / COMPARE_FILE).write_text(console.to_json({**COMPARE.stamp(), "columns": COLUMNS, "rows": rows}) + "\n")
        with open(staging / "compare.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
        _plot(rows, staging / "compare.png")
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
        cache[run_dir] = int(Run.open(run_dir).load_model().count_params()) if run_dir.is_dir() else None
    return cache[run_dir]


def _plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [r for r in rows if r["p50_ms"] and r["test_top1"] is not None]
    devices = list(dict.fromkeys(r["device"] for r in points))
    backbones = list(dict.fromkeys(r["backbone"] for r in points))
    markers = "osD^vP*X"
    fig, ax = plt.subplots(figsize=(8, 5.5))
    for r in points:
        colour = f"C{devices.index(r['device']) % 10}"
        ax.scatter(r["p50_ms"], 100 * r["test_top1"], color=colour, marker=markers[backbones.index(r["backbone"]) % len(markers)],
                   s=50, alpha=0.8)
        ax.annotate(f"{r['backbone']} {r['export']}\n{r['size_mb']:.2f} MB", (r["p50_ms"], 100 * r["test_top1"]),
                    textcoords="offset points", xytext=(6, 4), fontsize=7)
    for device in devices:
        ax.scatter([], [], color=f"C{devices.index(device) % 10}", label=device)
    if devices:
        ax.legend(title="device", fontsize=8)
    ax.set_xscale("log" if points and max(r["p50_ms"] for r in points) > 10 * min(r["p50_ms"] for r in points) else "linear")
    ax.set_title("test top-1 vs p50 latency" + ("" if points else ": nothing measured on a device"))
    ax.set_xlabel("p50 latency (ms)")
    ax.set_ylabel("test top-1 (%)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
