"""`edgeclf bench`: export what is missing, validate every format on one device, one table.

Results go to a bench directory (bench.json, bench.csv, bench.png), written atomically.
A format that cannot be exported or run becomes a row with its reason, not a crash.
"""
from __future__ import annotations

import csv
import re
from datetime import datetime, timezone
from pathlib import Path

from edgeclf import console
from edgeclf.artefacts import MANIFEST_FILE, read_manifest
from edgeclf.atomic import check_output, staged_dir
from edgeclf.devices import DeviceOptions
from edgeclf.errors import EdgeclfError, UsageError
from edgeclf.exporters.spec import ExportSpec
from edgeclf.jobs.export import default_out, export_run
from edgeclf.jobs.validate import validate
from edgeclf.pipeline.runs import Run

BENCH_FILE = "bench.json"
COLUMNS = ["format", "quant", "size_mb", "top1", "agreement", "p50_ms", "speedup", "status"]


def parse_formats(text: str) -> list[tuple[str, str]]:
    formats = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        target, _, quant = item.partition(":")
        if not quant:
            raise UsageError(f"format '{item}' needs a quantization", "write it as target:quant, e.g. tflite:int8")
        formats.append((target.lower(), quant.lower()))
    if not formats:
        raise UsageError("no formats to benchmark", "e.g. --formats tflite:fp32,tflite:int8")
    return formats


def _artefact(run: Run, target: str, quant: str) -> Path:
    """The default export of this format, exported now if it is missing."""
    spec = ExportSpec(target=target, quant=quant)
    out = default_out(run, spec)
    manifest_path = out / MANIFEST_FILE
    if manifest_path.is_file():
        manifest = read_manifest(manifest_path)
        if manifest.get("target") == target and manifest.get("quant") == quant and manifest.get("io") == spec.io:
            console.info(f"{target}:{quant}: reusing {out}")
            return out
    console.info(f"{target}:{quant}: exporting to {out}")
    export_run(run.path, spec)
    return out


def bench(run_dir, formats: list[tuple[str, str]], device: str = "local", data_dir: str | None = None,
          runs: int = 100, warmup: int = 10, threads: int | None = None, options: DeviceOptions | None = None,
          out: str | None = None, overwrite: bool = False) -> dict:
    run = Run.open(run_dir)
    target_dir = Path(out) if out else run.path / "bench" / f"{_slug(device)}-{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}"
    overwrite = overwrite or not out  # the default, timestamped folder may replace its own bench
    if data_dir is None:
        data_dir = run.info["config"].get("test_dir")
        if data_dir and not Path(data_dir).is_dir():
            data_dir = None
        console.info(f"scoring on {data_dir}" if data_dir else "no --data and no test dir in the run: latency only")
    check_output(target_dir, BENCH_FILE, overwrite, inputs=[data_dir], input_runs=[run.path])  # before any work
    rows = []
    for target, quant in formats:
        row = {"format": target, "quant": quant, "status": "ok"}
        try:
            result = validate(_artefact(run, target, quant), device, data_dir, runs, warmup, threads, options=options)
            acc = result["accuracy"] or {}
            row.update(
                size_mb=round(result["model_bytes"] / 1e6, 3),
                top1=acc.get("top1"),
                agreement=acc.get("agreement"),
                p50_ms=(result["latency_ms"] or {}).get("p50"),
                result=result,
            )
        except EdgeclfError as exc:
            row["status"] = str(exc)
            console.warn(f"{target}:{quant}: {exc}")
        rows.append(row)
    _add_speedups(rows)
    measured = next((r["result"] for r in rows if "result" in r), None)
    summary = {
        "run_dir": str(run.path),
        "device": measured["device"] if measured else {"name": device},
        "emulated": measured["emulated"] if measured else None,
        "data": data_dir,
        "threads": threads,
        "runs": runs,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "rows": rows,
    }
    with staged_dir(target_dir, BENCH_FILE, overwrite, inputs=[data_dir], input_runs=[run.path]) as staging:
        (staging / BENCH_FILE).write_text(console.to_json(summary) + "\n")
        _write_csv(rows, staging / "bench.csv")
        _plot(rows, staging / "bench.png", summary)
    summary["path"] = str(target_dir)
    summary["report"] = _report(run, target_dir)
    return summary


def _report(run: Run, bench_dir: Path) -> str | None:
    """RUN_DIR/report.html, now with these results; the bench results stand even if the page fails."""
    from edgeclf.report import write_report

    try:
        return write_report(run.path, extra_bench_dirs=[bench_dir])["path"]
    except EdgeclfError as exc:
        console.warn(f"no report written: {exc}")
        return None


def _add_speedups(rows: list[dict]) -> None:
    """Speed-up against the same format's fp32 row, else against the first measured row."""
    measured = [r for r in rows if r.get("p50_ms")]
    for row in measured:
        base = next((r for r in measured if r["format"] == row["format"] and r["quant"] == "fp32"), measured[0])
        row["speedup"] = round(base["p50_ms"] / row["p50_ms"], 2)


def _slug(device: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", device.replace("://", "-")).strip("_") or "device"


def _write_csv(rows: list[dict], path: Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow(row)


def _plot(rows: list[dict], path: Path, summary: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [r for r in rows if r.get("p50_ms") and r.get("top1") is not None]
    fig, ax = plt.subplots(figsize=(7, 5))
    for r in points:
        ax.scatter(r["p50_ms"], 100 * r["top1"], s=40 + 60 * r["size_mb"], alpha=0.6)
        ax.annotate(f"{r['format']}:{r['quant']}\n{r['size_mb']:.1f} MB", (r["p50_ms"], 100 * r["top1"]),
                    textcoords="offset points", xytext=(6, 6), fontsize=8)
    device = summary["device"]
    title = f"accuracy vs latency on {device.get('name', '?')}" + (" (emulated)" if summary.get("emulated") else "")
    ax.set_title(title if points else title + ": no accuracy measured")
    ax.set_xlabel("p50 latency (ms)")
    ax.set_ylabel("top-1 (%)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
