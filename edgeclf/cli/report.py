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
