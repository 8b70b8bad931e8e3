"""`edgeclf export`: turn a run directory into a verified artefact directory."""
from __future__ import annotations

import click

from edgeclf import console, exporters
from edgeclf.cli import options, tables
from edgeclf.exporters.spec import CALIB_METHODS, IO_TYPES, ExportSpec


@click.command("export")
@click.argument("run_dir", type=options.folder)
@click.option("--target", default="tflite", show_default=True, type=options.LiveChoice(exporters.names))
@click.option("--quant", default="fp32", show_default=True, type=options.LiveChoice(exporters.quant_modes))
@click.option("--io", type=click.Choice(IO_TYPES), help="int8 only: tensor type of input and output [default: uint8 for TFLite].")
@click.option("--calib-dir", type=options.folder, help="Calibration images [default: the run's training split].")
@click.option("--calib-size", default=300, show_default=True, type=int, help="Calibration images, sampled stratified and seeded.")
@click.option("--calib-method", default="minmax", show_default=True, type=click.Choice(CALIB_METHODS), help="ONNX int8 calibration method.")
@click.option("--per-channel/--per-tensor", default=None, help="ONNX int8 weight quantization [default: measured per model].")
@click.option("--dynamic-batch", is_flag=True, help="ONNX: dynamic batch dimension instead of 1.")
@click.option("--debug-quant", is_flag=True, help="Write per-layer int8 error to quant_debug.csv and print the worst layers.")
@click.option("--float-layers", default="", help="Comma-separated Keras layer names to keep in float (selective int8).")
@click.option("--ptq", help="int8 post-training techniques: comma list of input, cle, round, bias (every target), "
              "sequential (TFLite, ONNX; replaces round and bias), ranges, swish (TFLite), or none [default: the target's measured best recipe: input,sequential for TFLite, "
              "input,round,bias for ONNX, round,bias for OpenVINO].")
@click.option("--accuracy-control", type=float, metavar="POINTS",
              help="OpenVINO int8: NNCF keeps the costliest ops in float until val top-1 is within POINTS of the float model.")
@click.option("--max-drop", type=float, help="int8 accuracy budget: most val top-1 points below the float model; "
              "tries recipes cheapest first (plain PTQ, improved PTQ, more calibration, QAT) and ships the first that fits.")
@click.option("--min-agreement", type=float, help="int8 accuracy budget: least fraction of val images labelled as the float model does, e.g. 0.97.")
@click.option("--allow-float-layers", is_flag=True, help="int8 budget: may keep the worst layers in float as a last resort before QAT "
              "(TFLite: the debugger's worst ops; OpenVINO: NNCF accuracy control).")
@click.option("--last-mile", is_flag=True, help="Measure what app mistakes cost on the run's test split (other resize kernels, "
              "centre-crop, BGR, EXIF, normalisation, truncation) into manifest.json: the resize-sensitivity table.")
@click.option("--out", type=click.Path(file_okay=False), help="Artefact directory [default: RUN_DIR/exports/<target>-<quant>, replaced on every export].")
@options.overwrite
@options.json_output
def command(run_dir, float_layers, overwrite, as_json, max_drop, min_agreement, allow_float_layers, **settings):
    """Export RUN_DIR's model, score the artefact on the run's val split, and write a manifest."""
    from edgeclf.jobs.budget import BudgetSpec, export_within_budget
    from edgeclf.jobs.export import export_run

    layers = tuple(name.strip() for name in float_layers.split(",") if name.strip())
    spec = ExportSpec(float_layers=layers, **settings)
    budget = BudgetSpec(spec, max_drop, min_agreement, allow_float_layers)
    if budget.active:
        manifest = export_within_budget(run_dir, budget, overwrite=overwrite)
    else:
        manifest = export_run(run_dir, spec, overwrite=overwrite)
    if as_json:
        console.print_json(manifest)
        return
    tables.export_summary(manifest)
    if manifest.get("last_mile"):
        tables.last_mile_table(manifest["last_mile"])
    if manifest.get("budget"):
        tables.budget_table(manifest["budget"])
