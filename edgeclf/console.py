"""Where output goes: results to stdout, progress and warnings to stderr."""
from __future__ import annotations

import json
import math
import sys

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


def warn(message: str) -> None:
    err.print(f"[yellow]warning:[/yellow] {message}", highlight=False, markup=True)


def info(message: str) -> None:
    err.print(message, highlight=False)


def progress(transient: bool = True) -> Progress:
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


def table(title: str | None, columns: list[str], rows: list[list]) -> None:
    t = Table(title=title, title_justify="left")
    for column in columns:
        t.add_column(column, justify="left" if column == columns[0] else "right")
    for row in rows:
        t.add_row(*["" if v is None else str(v) for v in row])
    out.print(t)
