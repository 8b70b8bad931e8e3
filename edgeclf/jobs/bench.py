"""`edgeclf bench`: export what is missing, validate every format on each device, one table.

Results go to a bench directory (bench.json, bench.csv, bench.png), written atomically.
A format that cannot be exported or run becomes a row with its reason, not a crash.
"""
from __future__ import annotations

import functools
import time
from datetime import datetime, timezone
from pathlib import Path

from edgeclf import console
from edgeclf.artefacts import MANIFEST_FILE, read_manifest
from edgeclf.atomic import check_output, staged_dir
from edgeclf.outputs import BENCH
from edgeclf.devices import DeviceOptions, Measure
from edgeclf.devices.targets import expand_devices, folder_name, parse_target
from edgeclf.errors import EdgeclfError, UsageError
from edgeclf.exporters.spec import ExportSpec
from edgeclf.jobs.export import default_out, export_run
from edgeclf.jobs.fleet import run_on_devices
from edgeclf.jobs.validate import Prepared, measure
from edgeclf.pipeline.runs import Run
from edgeclf.report.results import Chart, write_results

BENCH_STEM = "bench"
BENCH_FILE = f"{BENCH_STEM}.json"
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


def bench(run_dir, formats: list[tuple[str, str]], device: str | list[str] = "local", data_dir: str | None = None,
          runs: int = 100, warmup: int = 10, threads: int | None = None, options: DeviceOptions | None = None,
          out: str | None = None, overwrite: bool = False) -> dict:
    """One device gives the classic bench record; several give one row per (format, device)."""
    options = options or DeviceOptions()
    devices = expand_devices(device, options.devices_file)
    how = Measure(runs, warmup, threads, options)
    run = Run.open(run_dir)
    label = folder_name(devices[0]) if len(devices) == 1 else f"{len(devices)}-devices"
    target_dir = Path(out) if out else run.path / "bench" / f"{label}-{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}"
    overwrite = overwrite or not out  # the default, timestamped folder may replace its own bench
    if data_dir is None:
        data_dir = run.info["config"].get("test_dir")
        if data_dir and not Path(data_dir).is_dir():
            data_dir = None
        console.info(f"scoring on {data_dir}" if data_dir else "no --data and no test dir in the run: latency only")
    check_output(target_dir, BENCH_FILE, overwrite, inputs=[data_dir], input_runs=[run.path])  # before any work
    prepared, failed = {}, {}
    for target, quant in formats:
        try:
            prepared[(target, quant)] = Prepared(_artefact(run, target, quant), data_dir)
        except EdgeclfError as exc:
            failed[(target, quant)] = str(exc)
            console.warn(f"{target}:{quant}: {exc}")
    if len(devices) > 1:
        for item in prepared.values():
            item.reference()  # the float model runs here, once, not in every device's thread
    started = time.perf_counter()
    targets = {name: parse_target(name, options.devices_file) for name in devices}  # each name parsed once
    jobs = {name: [functools.partial(measure, item, targets[name], how) for item in prepared.values()]
            for name in devices}
    outcomes = run_on_devices(jobs, on_done=_progress_line if len(devices) > 1 else None)
    wall_s = round(time.perf_counter() - started, 2)
    rows = []
    for name in devices:
        measured = iter(outcomes[name])
        device_rows = [_row(target, quant, failed.get((target, quant)) or next(measured), several=len(devices) > 1)
                       for target, quant in formats]
        _add_speedups(device_rows)
        for row in device_rows:
            if len(devices) > 1:
                row["device"] = name
                row["emulated"] = row["result"]["emulated"] if "result" in row else None
        rows += device_rows
    summary = {**BENCH.stamp(), "run_dir": str(run.path)}
    if len(devices) == 1:
        measured = next((r["result"] for r in rows if "result" in r), None)
        summary["device"] = measured["device"] if measured else {"name": devices[0]}
        summary["emulated"] = measured["emulated"] if measured else None
    else:
        summary["devices"] = [_device_record(name, rows) for name in devices]
        summary["wall_s"] = wall_s
    summary.update(data=data_dir, threads=threads, runs=runs,
                   created=datetime.now(timezone.utc).isoformat(timespec="seconds"), rows=rows)
    with staged_dir(target_dir, BENCH_FILE, overwrite, inputs=[data_dir], input_runs=[run.path]) as staging:
        columns = (["device"] + COLUMNS + ["p90_ms", "peak_rss_mb"]) if len(devices) > 1 else COLUMNS
        write_results(staging, BENCH_STEM, summary, rows, columns, _chart(summary))
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


def _row(target: str, quant: str, outcome, several: bool) -> dict:
    """A bench row from a measurement, or a failed row with its one-line reason."""
    row = {"format": target, "quant": quant, "status": "ok"}
    if isinstance(outcome, str):
        row["status"] = outcome
        return row
    if not outcome.ok:
        row["status"] = outcome.error
        console.warn(f"{target}:{quant}" + (f" on {outcome.device}" if several else "") + f": {outcome.error}")
        return row
    result = outcome.result
    acc = result["accuracy"] or {}
    latency = result["latency_ms"] or {}
    row.update(
        size_mb=round(result["model_bytes"] / 1e6, 3),
        top1=acc.get("top1"),
        agreement=acc.get("agreement"),
        p50_ms=latency.get("p50"),
        result=result,
    )
    if several:  # the combined table compares devices, so it carries their spread and memory too
        row.update(p90_ms=latency.get("p90"), peak_rss_mb=result.get("peak_rss_mb"))
    return row


def _device_record(name: str, rows: list[dict]) -> dict:
    measured = next((r["result"] for r in rows if r.get("device") == name and "result" in r), None)
    if measured is None:
        reason = next((r["status"] for r in rows if r.get("device") == name), "no formats")
        return {"name": name, "status": reason}
    return {**measured["device"], "name": name, "emulated": measured["emulated"], "status": "ok"}


def _progress_line(outcome) -> None:
    state = "ok" if outcome.ok else f"failed: {outcome.error}"
    console.info(f"{outcome.device}: job {outcome.index + 1} {state} ({outcome.seconds:.1f} s)")


def _add_speedups(rows: list[dict]) -> None:
    """Speed-up against the same format's fp32 row, else against the first measured row."""
    measured = [r for r in rows if r.get("p50_ms")]
    for row in measured:
        base = next((r for r in measured if r["format"] == row["format"] and r["quant"] == "fp32"), measured[0])
        row["speedup"] = round(base["p50_ms"] / row["p50_ms"], 2)


def _chart(summary: dict) -> Chart:
    if "devices" in summary:
        title = f"accuracy vs latency on {len(summary['devices'])} devices"
    else:
        title = f"accuracy vs latency on {summary['device'].get('name', '?')}" + (" (emulated)" if summary.get("emulated") else "")

    def label(r: dict) -> str:
        return f"{r['format']}:{r['quant']}" + (f" @ {r['device']}" if r.get("device") else "") + f"\n{r['size_mb']:.1f} MB"

    return Chart(title, "top1", "top-1 (%)", label, ": no accuracy measured", size_by="size_mb")
