"""`edgeclf bundle` and `edgeclf check-bundle`: the hand-off bundle for app teams, and its proof."""
from __future__ import annotations

import click

from edgeclf import console
from edgeclf.cli import options


@click.command("bundle")
@click.argument("artefact_dir", type=options.folder)
@click.option("--out", help="Bundle folder, or a path ending in .zip [default: <ARTEFACT_DIR>-bundle].")
@click.option("--golden", "count", default=20, show_default=True, type=int, help="Golden vectors, stratified over classes.")
@click.option("--full-paths", is_flag=True, help="Keep the trainer's absolute paths in MODEL_CARD.md, golden.json, "
              "manifest.json and bundle.json [default: folder names only].")
@options.overwrite
@options.json_output
def command(artefact_dir, out, count, full_paths, overwrite, as_json):
    """Bundle ARTEFACT_DIR for an app team: model, MODEL_CARD.md, golden vectors, integration code, SHA256SUMS."""
    from edgeclf.bundle.builder import build_bundle

    summary = build_bundle(artefact_dir, out, count, overwrite, full_paths)
    if as_json:
        console.print_json(summary)
        return
    golden = summary["golden"]
    rows = [
        ["bundle", summary["path"]],
        ["golden vectors", f"{golden['count']} from the run's {golden['source']['split']} split"],
        ["reference", f"{golden['reference']['runtime']} {golden['reference']['version']} ({golden['reference']['machine']})"],
        ["tolerance", f"{golden['tolerance']['reference']} {golden['tolerance']['unit']} on the reference, {golden['tolerance']['other']} elsewhere"],
        ["code", ", ".join(summary["code"])],
    ]
    console.table("edgeclf bundle", ["", ""], rows)


@click.command("check-bundle")
@click.argument("bundle", type=click.Path(path_type=str))
@options.device_options
@options.json_output
def check_command(bundle, devices, runs, warmup, threads, as_json, **settings):
    """Replay BUNDLE's golden vectors on a device; exit 0 only if every one is within tolerance."""
    from edgeclf.bundle.check import check_bundle
    from edgeclf.errors import PartialFailure, UsageError

    if len(devices) != 1:
        raise UsageError("check-bundle replays on one device at a time", "pass --device once")
    device = devices[0]

    result = check_bundle(bundle, device, threads, options.pop_device_options(settings))
    if as_json:
        console.print_json(result)
    else:
        unit = "steps" if result["tolerance"]["unit"] == "quantization steps" else "abs"
        rows = [[r["id"], r["expected"], r["top1"], r["deviation"], "pass" if r["passed"] else "FAIL"] for r in result["vectors"]]
        runtime = f"{result['runtime'].get('name')} {result['runtime'].get('version') or ''}".strip()
        console.table(f"golden vectors on {result['device'].get('name')} ({result['device'].get('arch')}, {runtime}"
                      f"{', emulated' if result['emulated'] else ''}): tolerance {result['tolerance']['value']} {unit}",
                      ["vector", "expected top-1", "top-1", f"deviation ({unit})", "result"], rows)
        console.out.print(f"{result['passed']} of {len(result['vectors'])} pass; largest deviation {result['max_deviation']} {unit}")
    if result["failed"]:  # the table is out: exit 3, like validate and bench when a measurement failed
        raise PartialFailure(f"{result['failed']} of {len(result['vectors'])} golden vectors failed on {result['device'].get('name')}",
                          "the device does not reproduce the bundled model's outputs: check the runtime, delegate and model file")
