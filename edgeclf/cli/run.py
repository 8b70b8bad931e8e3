"""`edgeclf run`: the whole flow from one pipeline file, rerunning only what changed."""
from __future__ import annotations

import click

from edgeclf import console
from edgeclf.cli import options
from edgeclf.cli.tables import results_table
from edgeclf.errors import PartialFailure


@click.command("run")
@click.argument("pipeline_file", type=click.Path(path_type=str))
@click.option("--dry-run", is_flag=True, help="Print the plan (cached / will run / why) and do nothing.")
@click.option("--force", metavar="STAGE", help="Rerun this stage (e.g. train, export/tflite-int8) and everything after it.")
@click.option("--restart", is_flag=True, help="Discard interrupted trainings (their .partial folders) and train them again "
              "instead of resuming, e.g. when a damaged checkpoint state says so.")
@click.option("--trust-pipeline-devices", "trust_devices", is_flag=True,
              help="Let the file's devices_file, validate.ssh_config and validate.insecure_host_key take effect: "
              "they can make ssh run local commands, so only for a pipeline file you trust.")
@options.json_output
def command(pipeline_file, dry_run, force, restart, trust_devices, as_json):
    """Train, optimize, export and validate on every device as PIPELINE_FILE says; cached stages are skipped."""
    from edgeclf.jobs import compare, run as run_job, run_file as schema

    pf = schema.load(pipeline_file, trust_devices=trust_devices)
    result = run_job.run(pf, force=force, dry_run=dry_run, restart=restart)
    if as_json:
        console.print_json(result)
    elif dry_run:
        console.table(f"plan for {pf.path} (nothing was run)", ["stage", "status", "why"],
                      [[s["name"], s["status"], s["why"] or ""] for s in result["stages"]])
    else:
        _comparison_table(compare.read(pf.out / "compare"))
        counts = {status: sum(s["status"] == status for s in result["stages"]) for status in ("ran", "cached", "failed", "skipped")}
        if counts["cached"] == len(result["stages"]):
            console.out.print(f"all {len(result['stages'])} stages cached: nothing to do")
        else:
            console.out.print(", ".join(f"{n} {status}" for status, n in counts.items() if n))
        console.out.print(f"pipeline record: {pf.out / run_job.STATE_FILE}")
    failed = [s["name"] for s in result["stages"] if s["status"] == "failed"]
    if failed and not dry_run:
        raise PartialFailure(f"{len(failed)} stage(s) failed: {', '.join(failed[:3])}{' ...' if len(failed) > 3 else ''}",
                           f"see the reasons above or in {pf.out / run_job.STATE_FILE}")


def _comparison_table(rows: list[dict]) -> None:
    if rows:
        shown = [r | {"status": r["status"] + (" [EMULATED]" if r["emulated"] else "")} for r in rows]
        results_table("model choice: per backbone, format and device", shown, [
            "backbone", "export", "device", "weights", "test_top1", "test_top5", "agreement", "size_mb", "gzip_mb", "params",
            "p50_ms", "p90_ms", "peak_rss_mb", "status"])
