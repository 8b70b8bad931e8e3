"""Human-readable rendering of results (tables); --json bypasses all of this."""
from __future__ import annotations

from edgeclf import console
from edgeclf.console import pct


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
    model_files = [f for name, f in manifest["files"].items() if name != "labels.txt"]
    model_bytes = sum(f["bytes"] for f in model_files)
    gzip_bytes = sum(f.get("gzip_bytes", 0) for f in model_files)
    quant = manifest["input"].get("quantization")
    rows = [
        ["artefact", manifest["path"]],
        ["format", f"{manifest['target']} {manifest['quant']} (io {manifest['io']})"],
        ["input", f"{manifest['input']['shape']} {manifest['input']['dtype']}" + (f" scale {quant['scale']:g} zp {quant['zero_point']}" if quant and "scale" in quant else "")],
        ["size", f"{size_mb(model_bytes)} MB ({size_mb(gzip_bytes)} MB gzipped)"],
        ["conversion", f"{manifest['conversion_s']:.1f} s"],
    ]
    if acc:
        rows += [
            [f"float top-1 ({acc['split']}, {acc['n_images']} images)", pct(acc["float_top1"])],
            [f"{manifest['quant']} top-1", pct(acc["top1"])],
            ["agreement with float", pct(acc["agreement"])],
            *paired_rows(acc),
        ]
    console.table(None, ["", ""], rows)


def last_mile_table(table: dict) -> None:
    from edgeclf.lastmile.sensitivity import COLUMNS, table_rows

    console.table(f"app mistakes on the {table['split']} split ({table['n_images']} images)", COLUMNS, table_rows(table))
    for line in table["recommendation"]:
        console.out.print(f"- {line}")


def points(value) -> str:
    return f"{100 * value:+.1f}"


def paired_rows(acc: dict) -> list[list[str]]:
    """changed/gained/lost and the drop with its 95% interval, when a float reference was scored."""
    if acc.get("changed") is None:
        return []
    low, high = acc["drop_ci95"]
    noise = ", within noise" if low <= 0 <= high else ""
    return [
        ["changed vs float", f"{acc['changed']} of {acc['n_images']} ({acc['gained']} gained, {acc['lost']} lost)"],
        ["top-1 drop vs float", f"{points(acc['drop'])} points (95% CI {points(low)} to {points(high)}{noise})"],
    ]


def budget_table(budget: dict) -> None:
    rows = [[a["recipe"], pct(a.get("top1")), "-" if a.get("drop") is None else points(a["drop"]), pct(a.get("agreement")),
             a.get("changed", "-"), f"{a['seconds']:.0f} s"] for a in budget["attempts"]]
    limits = [f"drop <= {100 * budget['max_drop']:g} points" if budget.get("max_drop") is not None else None,
              f"agreement >= {pct(budget['min_agreement'])}" if budget.get("min_agreement") is not None else None]
    console.table(f"accuracy budget on val ({' and '.join(x for x in limits if x)}): shipped {budget['chosen']}",
                  ["recipe", "top-1", "drop (points)", "agreement", "changed", "time"], rows)


def ms(value) -> str:
    return "-" if value is None else f"{value:.2f}"


def validation_summary(result: dict) -> None:
    device = result["device"]
    where = f"{device['kind']} {device.get('name', '')}".strip()
    hardware = ", ".join(str(device[k]) for k in ("model", "soc", "cpu", "arch", "os") if device.get(k))
    lat = result.get("latency_ms") or {}
    acc = result.get("accuracy") or {}
    rows = [
        ["model", f"{result['model_file']} ({size_mb(result['model_bytes'])} MB)"],
        ["device", where + (" [EMULATED]" if result["emulated"] else "")],
        ["hardware", hardware or "-"],
        ["runtime", f"{result['runtime']['name']} {result['runtime'].get('version') or ''}".strip() + (f", {result['threads']} thread(s)" if result.get("threads") else "")],
        ["init", f"{ms(result.get('init_ms'))} ms"],
        ["latency p50 / p90 / p99", f"{ms(lat.get('p50'))} / {ms(lat.get('p90'))} / {ms(lat.get('p99'))} ms"],
        ["latency mean ± std (min)", f"{ms(lat.get('mean'))} ± {ms(lat.get('std'))} ({ms(lat.get('min'))}) ms"],
        ["peak RSS", f"{result['peak_rss_mb']} MB" if result.get("peak_rss_mb") else "-"],
    ]
    if acc:
        rows += [
            [f"top-1 ({acc['n_images']} images, on {acc['where']})", pct(acc["top1"])],
            ["top-5", pct(acc.get("top5"))],
            ["agreement with float", pct(acc.get("agreement"))],
            *paired_rows(acc),
        ]
        clean = acc.get("without_leaks")
        if clean:
            rows.append([f"without {clean['leaked']} leaked image(s) ({clean['n_images']} images)",
                         f"top-1 {pct(clean['top1'])}, agreement {pct(clean['agreement'])}"])
    console.table(None, ["", ""], rows)


def _mb(value) -> str:
    return "-" if value is None else f"{value:.2f}"


def _millions(value) -> str:
    return "-" if value is None else f"{value / 1e6:.2f} M"


def _text(value) -> str:
    return "-" if value is None or value == "" else str(value)


# Per-device result columns, as every table of them prints them: row key -> (header, format)
RESULT_COLUMNS = {
    "backbone": ("backbone", _text), "export": ("export", _text), "device": ("device", _text),
    "hardware": ("hardware", _text), "weights": ("weights", _text), "format": ("format", _text), "quant": ("quant", _text),
    "test_top1": ("test top-1", pct), "top1": ("top-1", pct), "test_top5": ("top-5", pct), "agreement": ("agreement", pct),
    "size_mb": ("size MB", _mb), "gzip_mb": ("gzip MB", _mb), "params": ("params", _millions),
    "p50_ms": ("p50 ms", ms), "p90_ms": ("p90 ms", ms), "peak_rss_mb": ("peak RSS MB", _text),
    "speedup": ("speedup", lambda v: "-" if not v else f"{v:.2f}x"), "status": ("status", _text),
}


def results_table(title: str, rows: list[dict], columns: list[str]) -> None:
    """The one printer of per-device results (bench, validate on several devices, `edgeclf run`'s model choice)."""
    console.table(title, [RESULT_COLUMNS[c][0] for c in columns], [[RESULT_COLUMNS[c][1](r.get(c)) for c in columns] for r in rows])


def devices_table(title: str, rows: list[dict]) -> None:
    """One row per device, from `validate` on several devices; a failed device shows its reason."""
    flat = []
    for r in rows:
        acc, lat, device = r.get("accuracy") or {}, r.get("latency_ms") or {}, r.get("device") or {}
        where = " ".join(str(device[k]) for k in ("arch", "os") if device.get(k)) + (" [EMULATED]" if r.get("emulated") else "")
        flat.append({"device": r["device_name"], "hardware": where, "top1": acc.get("top1"), "agreement": acc.get("agreement"),
                     "p50_ms": lat.get("p50"), "p90_ms": lat.get("p90"), "peak_rss_mb": r.get("peak_rss_mb"), "status": r["status"]})
    results_table(title, flat, ["device", "hardware", "top1", "agreement", "p50_ms", "p90_ms", "peak_rss_mb", "status"])


def demo_table(shipped: dict) -> None:
    rows = []
    for quant, r in shipped.items():
        rows.append([quant, pct(r["test"]["top1"]), pct(r["test"]["agreement"]), pct(r["val"]["agreement"]),
                     size_mb(r["bytes"]), ms(r["latency_ms"]["p50"])])
    console.table("TFLite artefacts, measured on this machine (LiteRT, 1 thread)",
                  ["quant", "test top-1", "test agreement", "val agreement", "size MB", "p50 ms"], rows)
