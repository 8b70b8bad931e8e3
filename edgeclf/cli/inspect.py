"""`edgeclf inspect`: show a model's tensors, ops, size, metadata and quantization coverage."""
from __future__ import annotations

import click

from edgeclf import console
from edgeclf.cli import options
from edgeclf.cli.tables import pct, size_mb


@click.command("inspect")
@click.argument("model", type=click.Path(path_type=str))
@options.json_output
def command(model, as_json):
    """Describe MODEL (.tflite, .onnx, .xml, or an export directory), including models edgeclf did not make."""
    from edgeclf.jobs.inspect import inspect_model

    info = inspect_model(model)
    if as_json:
        console.print_json(info)
        return
    console.out.print(f"{info['path']}  {info['format']}  {size_mb(info['bytes'])} MB")
    rows = []
    for kind in ("inputs", "outputs"):
        for t in info[kind]:
            q = t.get("quantization") or {}
            quant = f"scale {q['scale']:g} zp {q['zero_point']}" if "scale" in q else (f"per-channel x{q['per_channel']}" if q else "-")
            rows.append([kind[:-1], t["name"], str(t["shape"]), t["dtype"], quant])
    console.table("tensors", ["", "name", "shape", "dtype", "quantization"], rows)
    console.table("ops", ["op", "count"], [[op, n] for op, n in info["ops"].items()])
    q = info.get("quantization") or {}
    if q:
        rows = [[k.replace("_", " "), pct(v) if k.endswith("fraction") else v] for k, v in q.items() if not isinstance(v, dict)]
        rows += [[f"weight values {dtype}", n] for dtype, n in q.get("weight_values_by_dtype", {}).items()]
        console.table("quantization coverage", ["", ""], rows)
    meta = info.get("metadata")
    if meta:
        console.table("metadata", ["", ""], [[k, str(meta.get(k))] for k in ("name", "description", "version", "min_parser_version")])
    elif info["format"] == "tflite":
        console.out.print("metadata: none")
    if info.get("labels"):
        console.out.print(f"labels ({len(info['labels'])}): {', '.join(info['labels'][:20])}{' ...' if len(info['labels']) > 20 else ''}")
