"""Human-readable rendering of results (tables); --json bypasses all of this."""
from __future__ import annotations

from edgeclf import console


def pct(value) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def metrics_table(title: str, metrics_by_split: dict) -> None:
    rows = []
    for split, m in metrics_by_split.items():
        rows.append([split, m["n_images"], pct(m["top1"]), pct(m.get("top5"))])
    console.table(title, ["split", "images", "top-1", "top-5"], rows)


def per_class_table(title: str, metrics: dict) -> None:
    rows = [
        [name, c["support"], pct(c["precision"]), pct(c["recall"])]
        for name, c in metrics["per_class"].items()
    ]
    console.table(title, ["class", "images", "precision", "recall"], rows)


def size_mb(n_bytes) -> str:
    return f"{n_bytes / 1e6:.2f}"


def export_summary(manifest: dict) -> None:
    acc = manifest.get("accuracy") or {}
    model_file = manifest["files"][manifest["model_file"]]
    quant = manifest["input"].get("quantization")
    rows = [
        ["artefact", manifest["path"]],
        ["format", f"{manifest['target']} {manifest['quant']} (io {manifest['io']})"],
        ["input", f"{manifest['input']['shape']} {manifest['input']['dtype']}" + (f" scale {quant['scale']:g} zp {quant['zero_point']}" if quant and "scale" in quant else "")],
        ["size", f"{size_mb(model_file['bytes'])} MB"],
        ["conversion", f"{manifest['conversion_s']:.1f} s"],
    ]
    if acc:
        rows += [
            [f"float top-1 ({acc['split']}, {acc['n_images']} images)", pct(acc["float_top1"])],
            [f"{manifest['quant']} top-1", pct(acc["top1"])],
            ["agreement with float", pct(acc["agreement"])],
        ]
    console.table(None, ["", ""], rows)
