"""`edgeclf demo`: train and evaluate on a bundled real dataset, fully offline."""
from __future__ import annotations

from pathlib import Path

import click

from edgeclf import console
from edgeclf.cli import options, tables


@click.command("demo")
@click.option("--out", default="edgeclf-demo", show_default=True, type=click.Path(file_okay=False), help="Folder for the demo's data and run (new, empty, or an earlier demo's).")
@click.option("--epochs", default=20, show_default=True, type=click.IntRange(min=1))
@click.option("--seed", default=42, show_default=True, type=int)
@options.json_output
def command(out, epochs, seed, as_json):
    """Train a small MobileNetV2 on scikit-learn's handwritten digits (offline) and evaluate it."""
    from edgeclf.jobs.demo import claim_demo_folder, demo_train_config, write_digits_folder
    from edgeclf.jobs.train import train

    root = Path(out)
    claim_demo_folder(root)
    train_dir, test_dir = write_digits_folder(root / "data")
    console.info(f"dataset: scikit-learn digits in {root / 'data'} (train/ and test/)")
    from edgeclf.jobs.demo import export_and_validate

    result = train(demo_train_config(train_dir, test_dir, root / "run", epochs, seed), overwrite=True, restart=True)
    shipped, bench = export_and_validate(Path(result["run_dir"]), test_dir)
    from edgeclf.jobs.demo import bundle_and_check

    handoff = bundle_and_check(shipped["int8"]["path"], root / "bundle-int8")
    if as_json:
        console.print_json({"train": result, **shipped, "report": bench["report"], "bundle": handoff})
        return
    tables.metrics_table("edgeclf demo: MobileNetV2 (alpha 0.35, 32 px, random init) on digits", result["metrics"])
    tables.demo_table(shipped)
    console.out.print(f"run directory: {result['run_dir']}")
    console.out.print(f"int8 artefact:  {shipped['int8']['path']}")
    console.out.print(f"report:         {bench['report']}")
    console.out.print(f"int8 bundle:    {handoff['path']} (check_golden.py: {handoff['check_golden']})")
