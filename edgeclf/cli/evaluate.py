"""`edgeclf evaluate`: score a run's model on any image folder."""
from __future__ import annotations

import click

from edgeclf import console
from edgeclf.cli import options, tables


@click.command("evaluate")
@click.argument("run_dir", type=options.folder)
@click.option("--data", "data_dir", required=True, type=options.folder, help="Image folder (class subfolders) to score.")
@click.option("--batch-size", default=64, show_default=True, type=int)
@options.json_output
def command(run_dir, data_dir, batch_size, as_json):
    """Compute top-1/top-5, per-class precision/recall and the confusion matrix on DATA."""
    from edgeclf.jobs.evaluate import evaluate_run

    metrics = evaluate_run(run_dir, data_dir, batch_size)
    if as_json:
        console.print_json({"run_dir": run_dir, "data": data_dir, "metrics": metrics})
        return
    tables.metrics_table(f"{run_dir} on {data_dir}", {"data": metrics})
    tables.per_class_table("per class", metrics)
