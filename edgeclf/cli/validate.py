"""`edgeclf validate`: accuracy and latency of an artefact on a device."""
from __future__ import annotations

import click

from edgeclf import console
from edgeclf.cli import options, report


@click.command("validate")
@click.argument("artefact", type=click.Path(path_type=str))
@click.option("--data", "data_dir", type=options.folder, help="Image folder to score on the device [default: latency only].")
@click.option("--labels", "labels_file", type=click.Path(dir_okay=False), help="labels.txt for a model file without a manifest.")
@options.device_options
@options.json_output
def command(artefact, data_dir, labels_file, device, runs, warmup, threads, as_json, **settings):
    """Measure ARTEFACT (export dir, .tflite, .onnx or .xml) on a device: accuracy on --data and latency."""
    from edgeclf.jobs.validate import validate

    result = validate(artefact, device, data_dir, runs, warmup, threads, labels_file, options.pop_device_options(settings))
    if as_json:
        console.print_json(result)
        return
    report.validation_summary(result)
