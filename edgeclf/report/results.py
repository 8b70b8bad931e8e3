"""Per-device result tables as files: one writer for `bench` (bench.json/csv/png) and `edgeclf run`'s
model-choice table (compare.json/csv/png), so both write the same three files the same way."""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from edgeclf import console


@dataclass(frozen=True)
class Chart:
    """An accuracy-versus-latency scatter of the rows that have both."""
    title: str
    accuracy: str  # the row key of a top-1 fraction
    accuracy_label: str  # the y axis, e.g. "test top-1 (%)"
    label: Callable[[dict], str]  # each point's annotation
    empty: str  # appended to the title when no row has both
    colour_by: str | None = None  # a row key: one colour (and a legend entry) per value
    marker_by: str | None = None  # a row key: one marker per value
    size_by: str | None = None  # a row key in MB: a bigger model, a bigger point
    log_when_spread: bool = False  # a log latency axis when latencies span more than 10x


def write_results(folder: Path, stem: str, record: dict, rows: list[dict], columns: list[str], chart: Chart) -> None:
    """`stem`.json (the whole record), `stem`.csv (the rows, in `columns`) and `stem`.png into `folder`."""
    (folder / f"{stem}.json").write_text(console.to_json(record) + "\n")
    with open(folder / f"{stem}.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    accuracy_vs_latency(rows, folder / f"{stem}.png", chart)


def accuracy_vs_latency(rows: list[dict], path: Path, chart: Chart) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [r for r in rows if r.get("p50_ms") and r.get(chart.accuracy) is not None]
    colours = list(dict.fromkeys(r.get(chart.colour_by) for r in points)) if chart.colour_by else []
    markers = list(dict.fromkeys(r.get(chart.marker_by) for r in points)) if chart.marker_by else []
    shapes = "osD^vP*X"
    fig, ax = plt.subplots(figsize=(8, 5.5) if chart.colour_by else (7, 5))
    for r in points:
        style = {"alpha": 0.8 if chart.colour_by else 0.6,
                 "s": 40 + 60 * (r.get(chart.size_by) or 0) if chart.size_by else 50}
        if chart.colour_by:
            style["color"] = f"C{colours.index(r.get(chart.colour_by)) % 10}"
        if chart.marker_by:
            style["marker"] = shapes[markers.index(r.get(chart.marker_by)) % len(shapes)]
        ax.scatter(r["p50_ms"], 100 * r[chart.accuracy], **style)
        ax.annotate(chart.label(r), (r["p50_ms"], 100 * r[chart.accuracy]), textcoords="offset points", xytext=(6, 5),
                    fontsize=7 if chart.colour_by else 8)
    for value in colours:
        ax.scatter([], [], color=f"C{colours.index(value) % 10}", label=str(value))
    if colours:
        ax.legend(title=chart.colour_by, fontsize=8)
    latencies = [r["p50_ms"] for r in points]
    if chart.log_when_spread and latencies and max(latencies) > 10 * min(latencies):
        ax.set_xscale("log")
    ax.set_title(chart.title if points else chart.title + chart.empty)
    ax.set_xlabel("p50 latency (ms)")
    ax.set_ylabel(chart.accuracy_label)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
