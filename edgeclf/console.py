"""Where output goes: results to stdout, progress and warnings to stderr."""
from __future__ import annotations

import datetime
import json
import math
import sys
import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

# No markup: messages carry file, folder and tensor names, and "[/x]" in one must print as is.
out = Console(soft_wrap=True, markup=False)
err = Console(stderr=True, soft_wrap=True, markup=False)


def warn(message: str) -> None:
    err.print(Text.assemble(("warning:", "yellow"), f" {message}"), highlight=False)


def info(message: str) -> None:
    err.print(message, highlight=False)


def progress(transient: bool = True):
    """Live bars on a terminal. In a log (CI, `| tee`) bars cannot redraw: a transient one prints
    nothing and a kept one prints one plain line per finished task."""
    if not err.is_terminal:
        return PlainProgress(transient)
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(bar_width=24),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(compact=True),
        TextColumn("{task.fields[status]}"),
        console=err,
        transient=transient,
    )


class PlainProgress:
    """The part of rich's Progress API we use, printing each task as one full line once it is done.

    A task counts as done when the next one is added or the block ends, so the last status
    update (an epoch's validation scores) is in its line.
    """

    def __init__(self, transient: bool):
        self.transient = transient
        self.tasks: list[dict] = []

    def __enter__(self) -> "PlainProgress":
        return self

    def __exit__(self, *exc_info) -> None:
        self._flush()

    def add_task(self, description: str, total: float | None = None, status: str = "", **_) -> int:
        self._flush()
        self.tasks.append({"description": description, "total": total, "completed": 0, "status": status,
                           "started": time.monotonic(), "printed": False})
        return len(self.tasks) - 1

    def update(self, task: int, advance: float = 0, status: str | None = None, **_) -> None:
        entry = self.tasks[task]
        entry["completed"] += advance
        if status is not None:
            entry["status"] = status

    def advance(self, task: int, advance: float = 1) -> None:
        self.update(task, advance=advance)

    def _flush(self) -> None:
        for entry in self.tasks:
            if entry["printed"]:
                continue
            entry["printed"] = True
            if self.transient:
                continue
            elapsed = datetime.timedelta(seconds=round(time.monotonic() - entry["started"]))
            count = f"{entry['completed']:g}/{entry['total']:g}" if entry["total"] is not None else ""
            parts = [entry["description"], count, str(elapsed), entry["status"]]
            err.print("  ".join(part for part in parts if part), highlight=False, markup=False)


def print_json(data) -> None:
    sys.stdout.write(to_json(data) + "\n")
    sys.stdout.flush()


def to_json(data, indent: int | None = 2) -> str:
    """Strict JSON that every parser reads: numpy values become plain ones, NaN and infinities null."""
    return json.dumps(_plain(data), indent=indent, allow_nan=False, default=str)


def _plain(value):
    import numpy as np

    if isinstance(value, dict):
        return {key: _plain(v) for key, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def pct(value) -> str:
    """A fraction as a percentage with one decimal; "-" for a missing value, "?" for one of the wrong type
    (a hand-edited record), in tables, the report and the card."""
    if value is None:
        return "-"
    return f"{100 * value:.1f}%" if isinstance(value, (int, float)) and not isinstance(value, bool) else "?"


def table(title: str | None, columns: list[str], rows: list[list]) -> None:
    t = Table(title=title, title_justify="left")
    for column in columns:
        t.add_column(column, justify="left" if column == columns[0] else "right")
    for row in rows:
        t.add_row(*[Text("" if v is None else str(v)) for v in row])
    out.print(t)
