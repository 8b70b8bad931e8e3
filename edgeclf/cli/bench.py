"""`edgeclf bench`: every format of a run, measured on one device, in one table."""
from __future__ import annotations

import click

from edgeclf import console
from edgeclf.cli import options
from edgeclf.cli.tables import results_table


@click.command("bench")
@click.argument("run_dir", type=options.folder)
@click.option("--formats", default="tflite:fp32,tflite:int8", show_default=True, help="Comma-separated target:quant pairs.")
@click.option("--data", "data_dir", type=options.folder, help="Image folder to score [default: the run's test dir].")
@click.option("--out", type=click.Path(file_okay=False), help="Bench directory [default: RUN_DIR/bench/<device>-<time>].")
@options.overwrite
@options.device_options
@options.json_output
def command(run_dir, formats, data_dir, out, overwrite, devices, runs, warmup, threads, as_json, **settings):
    """Export missing formats of RUN_DIR, validate each on --device, and compare them."""
    from edgeclf.jobs.bench import bench, parse_formats
    from edgeclf.jobs.fleet import check_results

    summary = bench(run_dir, parse_formats(formats), list(devices), data_dir, runs, warmup, threads,
                    options.pop_device_options(settings), out, overwrite)
    if as_json:
        console.print_json({**summary, "rows": [{k: v for k, v in r.items() if k != "result"} for r in summary["rows"]]})
    elif "devices" in summary:
        _devices_table(summary)
    else:
        _table(summary)
    check_results(summary["rows"], lambda row: f"{row['format']}:{row['quant']}" + (f" on {row['device']}" if "device" in row else ""),
                  summary["path"])


def _table(summary: dict) -> None:
    dev = summary["device"]
    title = f"{dev.get('name', '')} {dev.get('arch', '')}" + (" [EMULATED]" if summary["emulated"] else "")
    results_table(f"bench on {title}", summary["rows"], ["format", "quant", "size_mb", "top1", "agreement", "p50_ms", "speedup", "status"])
    console.out.print(f"bench directory: {summary['path']}")
    if summary["report"]:
        console.out.print(f"report: {summary['report']}")


def _devices_table(summary: dict) -> None:
    results_table(f"bench on {len(summary['devices'])} devices ({summary['wall_s']:.1f} s wall)", summary["rows"],
                  ["device", "format", "quant", "size_mb", "top1", "agreement", "p50_ms", "p90_ms", "peak_rss_mb", "status"])
    console.out.print(f"bench directory: {summary['path']}")
