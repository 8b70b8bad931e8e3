"""`edgeclf export`: turn a run directory into a verified artefact directory."""
from __future__ import annotations

import click

from edgeclf import console
from edgeclf.cli import options, report
from edgeclf.exporters import REGISTRY
from edgeclf.exporters.spec import CALIB_METHODS, IO_TYPES, ExportSpec


@click.command("export")
@click.argument("run_dir", type=options.folder)
@click.option("--target", default="tflite", show_default=True, type=click.Choice(list(REGISTRY)))
@click.option("--quant", default="fp32", show_default=True, type=click.Choice(["fp32", "fp16", "dynamic", "int8"]))
@click.option("--io", type=click.Choice(IO_TYPES), help="int8 only: tensor type of input and output [default: uint8 for TFLite].")
@click.option("--calib-dir", type=options.folder, help="Calibration images [default: the run's training split].")
@click.option("--calib-size", default=300, show_default=True, type=int, help="Calibration images, sampled stratified and seeded.")
@click.option("--calib-method", default="minmax", show_default=True, type=click.Choice(CALIB_METHODS), help="ONNX int8 calibration method.")
@click.option("--per-channel/--per-tensor", default=None, help="ONNX int8 weight quantization [default: measured per model].")
@click.option("--dynamic-batch", is_flag=True, help="ONNX: dynamic batch dimension instead of 1.")
@click.option("--debug-quant", is_flag=True, help="Write per-layer int8 error to quant_debug.csv and print the worst layers.")
@click.option("--float-layers", default="", help="Comma-separated Keras layer names to keep in float (selective int8).")
@click.option("--out", type=click.Path(file_okay=False), help="Artefact directory [default: RUN_DIR/exports/<target>-<quant>, replaced on every export].")
@options.overwrite
@options.json_output
def command(run_dir, float_layers, overwrite, as_json, **settings):
    """Export RUN_DIR's model, score the artefact on the run's val split, and write a manifest."""
    from edgeclf.export import export_run

    layers = tuple(name.strip() for name in float_layers.split(",") if name.strip())
    manifest = export_run(run_dir, ExportSpec(float_layers=layers, **settings), overwrite=overwrite)
    if as_json:
        console.print_json(manifest)
        return
    report.export_summary(manifest)
