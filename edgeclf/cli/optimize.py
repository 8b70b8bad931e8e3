"""`edgeclf optimize`: pruning and/or quantization-aware training of a finished run."""
from __future__ import annotations

import click

from edgeclf import console
from edgeclf.cli import options, tables
from edgeclf.jobs.optimize import PRUNE_FOR, SCHEDULES, OptimizeConfig


@click.command("optimize")
@click.argument("run_dir", type=options.folder)
@click.option("--prune", type=float, metavar="SPARSITY", help="Magnitude-prune to this fraction of zero weights, in (0, 1).")
@click.option("--prune-schedule", default="polynomial", show_default=True, type=click.Choice(SCHEDULES),
              help="Ramp the sparsity up from 0 (polynomial) or apply it from the first step (constant).")
@click.option("--prune-for", type=click.Choice(PRUNE_FOR), help="Prune for XNNPACK sparse inference: only 1x1 convolutions.")
@click.option("--qat", is_flag=True, help="Quantization-aware training (sparsity-preserving after --prune).")
@click.option("--epochs", type=int, help="Fine-tune epochs for each phase [default: 10 for pruning, 2 for QAT].")
@click.option("--distill", default=0.0, show_default=True, type=float,
              help="Weight of the source model's own predictions in the training targets (distillation), e.g. 0.5; 0: labels only.")
@click.option("--lr", type=float, help="Learning rate [default: the rate of the run's last training stage; a tenth of it for QAT].")
@click.option("--batch-size", type=int, help="[default: the run's]")
@options.cache
@options.distribute
@click.option("--check", is_flag=True, help="Only run the quantizability pre-flight and report; write nothing.")
@click.option("--out", type=click.Path(file_okay=False), help="Run directory to create.")
@options.overwrite
@options.json_output
def command(run_dir, overwrite, as_json, **settings):
    """Prune and/or quantization-aware-train RUN_DIR into a new run directory --out."""
    from edgeclf.jobs import optimize as optimizing

    config = OptimizeConfig(run_dir=run_dir, **settings)
    if config.check:
        result = optimizing.check(config)
        if as_json:
            console.print_json(result)
            return
        _preflight_table(result)
        return
    result = optimizing.optimize(config, overwrite=overwrite)
    if as_json:
        console.print_json(result)
        return
    opt = result["optimization"]
    tables.metrics_table(f"{result['arch']} @ {result['img_size']}px, optimized", result["metrics"])
    if opt["prune"]:
        p = opt["prune"]
        after = f", {tables.pct(p['after_qat'])} after QAT" if p.get("after_qat") is not None else ""
        console.info(f"sparsity: {tables.pct(p['overall'])} of the pruned weights (target {tables.pct(p['target'])}){after}")
    elif opt.get("sparsity_after_qat") is not None:
        console.info(f"sparsity kept through QAT: {tables.pct(opt['sparsity_after_qat'])} of the weights pruned before")
    if opt["qat"]:
        console.info(f"quantization-aware training: {opt['scheme']}; export with `edgeclf export {result['run_dir']} --quant int8`")
    console.out.print(f"run directory: {result['run_dir']}")


def _preflight_table(result: dict) -> None:
    rows = [[f["layer"], f["kind"], f["handling"], f["how"]] for f in result["findings"]]
    if rows:
        console.table(f"quantizability of {result['arch']} ({result['run_dir']})", ["layer", "type", "handling", "how"], rows)
    else:
        console.info("tfmot can quantize every layer as it is")
    verdict = "QAT is possible" if result["qat_possible"] else "QAT is NOT possible: use post-training int8 (`edgeclf export --quant int8`)"
    console.out.print(verdict)
