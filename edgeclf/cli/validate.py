"""`edgeclf validate`: accuracy and latency of an artefact on a device."""
from __future__ import annotations

import click

from edgeclf import console
from edgeclf.cli import options, tables


@click.command("validate")
@click.argument("artefact", type=click.Path(path_type=str))
@click.option("--data", "data_dir", type=options.folder, help="Image folder to score on the device [default: latency only].")
@click.option("--labels", "labels_file", type=click.Path(dir_okay=False), help="labels.txt for a model file without a manifest.")
@options.device_options
@options.json_output
def command(artefact, data_dir, labels_file, devices, runs, warmup, threads, as_json, **settings):
    """Measure ARTEFACT (export dir, .tflite, .onnx or .xml) on a device: accuracy on --data and latency."""
    from edgeclf.devices.targets import expand_devices
    from edgeclf.jobs.fleet import check_results
    from edgeclf.jobs.validate import validate, validate_on_devices

    device_options = options.pop_device_options(settings)
    devices = expand_devices(devices, device_options.devices_file)
    if len(devices) > 1:
        summary = validate_on_devices(artefact, devices, data_dir, runs, warmup, threads, labels_file, device_options)
        if as_json:
            console.print_json(summary)
        else:
            tables.devices_table(f"{artefact} on {len(devices)} devices ({summary['wall_s']:.1f} s)", summary["rows"])
        check_results(summary["rows"], lambda row: row["device_name"])
        return
    result = validate(artefact, devices[0], data_dir, runs, warmup, threads, labels_file, device_options)
    if as_json:
        console.print_json(result)
        return
    tables.validation_summary(result)
