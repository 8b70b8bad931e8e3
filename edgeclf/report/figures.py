"""The report's pictures as data: URIs: matplotlib charts rendered to PNG, and image thumbnails."""
from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np

from edgeclf.pipeline import plots

THUMB_PX = 64
DPI = 90


def png_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _figure_uri(fig) -> str:
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=DPI)
    plots._pyplot().close(fig)
    return png_uri(buffer.getvalue())


def thumbnail(path: Path, size: int = THUMB_PX) -> str | None:
    """A small PNG of an image file (as edgeclf decodes it), or None when it cannot be read."""
    from edgeclf.pipeline.images import UnreadableImage, load_image

    try:
        pixels = load_image(Path(path), size)
    except (UnreadableImage, OSError, ValueError):
        return None
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return png_uri(buffer.getvalue())


def training_curves(history: list[dict], best: int | None) -> str:
    buffer = io.BytesIO()
    plots.training_curves(history, buffer, best_epoch=best)
    return png_uri(buffer.getvalue())


def confusion(matrix: list[list[int]], classes: list[str], title: str) -> str:
    buffer = io.BytesIO()
    plots.confusion_matrix(matrix, classes, buffer, title)
    return png_uri(buffer.getvalue())


def class_counts(per_split: dict[str, dict[str, int]], classes: list[str]) -> str:
    """Grouped bars: images per class in each split."""
    plt = plots._pyplot()
    fig, ax = plt.subplots(figsize=(_width(classes), 3.2))
    width = 0.8 / max(1, len(per_split))
    x = np.arange(len(classes))
    for i, (split, counts) in enumerate(per_split.items()):
        _bars(ax, x + i * width, [counts.get(c, 0) for c in classes], width, split)
    _class_axis(ax, x + width * (len(per_split) - 1) / 2, classes)
    ax.set_ylabel("images")
    ax.set_title("images per class and split")
    ax.margins(y=0.2)
    ax.legend(ncols=len(per_split), fontsize=8, loc="upper center")
    ax.grid(axis="y", alpha=0.3)
    return _figure_uri(fig)


def quant_cost(rows_by_artefact: dict[str, list[dict]]) -> str:
    """Per-class recall change (artefact minus float model), one group of bars per class."""
    plt = plots._pyplot()
    classes = [r["class"] for r in next(iter(rows_by_artefact.values()))]
    fig, ax = plt.subplots(figsize=(_width(classes), 3.2))
    width = 0.8 / len(rows_by_artefact)
    x = np.arange(len(classes))
    for i, (name, rows) in enumerate(rows_by_artefact.items()):
        _bars(ax, x + i * width, [100 * (r["delta"] or 0.0) for r in rows], width, name)
    ax.axhline(0, color="black", linewidth=0.8)
    _class_axis(ax, x + width * (len(rows_by_artefact) - 1) / 2, classes)
    ax.set_ylabel("recall change (points)")
    ax.set_title("what each artefact changed per class, against the float model")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return _figure_uri(fig)


def _width(classes: list) -> float:
    return min(plots.MAX_INCHES, max(5.0, 0.5 * len(classes) + 3))


def _bars(ax, x, heights: list, width: float, label: str) -> None:
    """A bar per class; with very many classes one stepped line instead (thousands of bars take minutes)."""
    if len(heights) > plots.CLASS_NAMES_MAX:
        ax.plot(x, heights, drawstyle="steps-mid", linewidth=0.8, label=label)
    else:
        ax.bar(x, heights, width, label=label)


def _class_axis(ax, positions, classes: list[str]) -> None:
    plots.class_ticks(ax, "x", positions, classes, rotate=len(classes) > 6)
    if len(classes) > plots.CLASS_NAMES_MAX:
        ax.set_xlabel("class index (labels.txt order)")


def latency_percentiles(rows: list[dict]) -> str:
    """One line per measured row from min to p99, marks at min/p50/p90/p99 (only percentiles are recorded)."""
    plt = plots._pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 0.45 * len(rows) + 1.4))
    marks = (("min", "|", "grey"), ("p50", "o", "C0"), ("p90", "s", "C1"), ("p95", "^", "C3"), ("p99", "D", "C2"))
    for y, row in enumerate(rows):
        lat = row["latency"]
        values = [lat[k] for k in ("min", "p50", "p90", "p95", "p99") if lat.get(k) is not None]
        if not values:
            continue
        ax.hlines(y, min(values), max(values), color="lightgrey", linewidth=4)
        for key, marker, colour in marks:
            if lat.get(key) is not None:
                ax.plot(lat[key], y, marker, color=colour, label=key if y == 0 or key == "p95" else None)
    ax.set_yticks(range(len(rows)), [row_label(r) for r in rows], fontsize=8)
    ax.set_ylim(len(rows) - 0.5, -0.5)
    values = [v for r in rows for v in r["latency"].values() if v]
    if values and max(values) > 20 * min(values):  # a slow tail would squash everything else
        ax.set_xscale("log")
    ax.set_xlabel("latency (ms)")
    ax.set_title("latency distribution per format and device")
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles))
    ax.legend(unique.values(), unique.keys(), fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    ax.grid(axis="x", alpha=0.3)
    return _figure_uri(fig)


def accuracy_vs_latency(rows: list[dict]) -> str:
    """On-device top-1 against p50 latency, every format on every device; marker size is model size."""
    plt = plots._pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    devices = sorted({str(r["device"]) for r in rows})
    for i, row in enumerate(rows):
        colour = f"C{devices.index(str(row['device'])) % 10}"
        p50, top1 = row["latency"]["p50"], 100 * row["top1"]
        ax.scatter(p50, top1, s=40 + 40 * (row.get("size_mb") or 0), color=colour, alpha=0.6,
                   marker="x" if row.get("emulated") else "o")
        ax.annotate(f"{row['format']}:{row['quant']}", (p50, top1), textcoords="offset points", xytext=(6, 4), fontsize=8)
    for i, device in enumerate(devices):
        ax.scatter([], [], color=f"C{i % 10}", label=device)
    low, high = ax.get_ylim()
    if high - low < 2:  # do not blow a fraction of a point up to the full height
        middle = (low + high) / 2
        ax.set_ylim(middle - 1, middle + 1)
    ax.margins(x=0.2)
    ax.set_xlabel("p50 latency (ms)")
    ax.set_ylabel("top-1 on the device (%)")
    ax.set_title("accuracy vs latency (x: emulated)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _figure_uri(fig)


def sparsity(per_layer: dict[str, float]) -> str:
    plt = plots._pyplot()
    names = list(per_layer)
    fig, ax = plt.subplots(figsize=(7.5, 0.22 * len(names) + 1.2))
    ax.barh(range(len(names)), [100 * (per_layer[n] or 0) for n in names], color="C4")
    ax.set_yticks(range(len(names)), names, fontsize=6)
    ax.invert_yaxis()
    ax.set_xlabel("zero weights (%)")
    ax.set_title("sparsity per pruned layer")
    ax.grid(axis="x", alpha=0.3)
    return _figure_uri(fig)


def row_label(row: dict) -> str:
    return f"{row['format']}:{row['quant']} on {row['device']}" + (" (emulated)" if row.get("emulated") else "")
