"""The HTML pieces every report section is built from; each value is escaped on the way in."""
from __future__ import annotations

import html

from edgeclf.outputs import REPORT_TAG

# Marks a page as edgeclf's own: `edgeclf report` replaces only a file that carries it (outputs.py).
GENERATOR_TAG = REPORT_TAG


class Raw(str):
    """HTML that is already safe (built here from escaped parts)."""


def esc(value) -> str:
    return value if isinstance(value, Raw) else html.escape("-" if value is None else str(value))


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# A value of the wrong type in a record shows as "?" (gather names the records it distrusts).
def num(value, digits: int = 2, unit: str = "") -> str:
    return "-" if value is None else f"{value:.{digits}f}{unit}" if is_number(value) else "?"


def mb(n_bytes) -> str:
    return "-" if n_bytes is None else f"{n_bytes / 1e6:.2f} MB" if is_number(n_bytes) else "?"


def table(headers: list[str], rows: list[list], sort_keys: list[list] | None = None) -> Raw:
    """A sortable table; sort_keys (same shape as rows) gives the numbers to sort by."""
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = []
    for r, row in enumerate(rows):
        cells = []
        for c, cell in enumerate(row):
            key = sort_keys[r][c] if sort_keys else None
            attr = f' data-v="{key}"' if is_number(key) else ""
            cells.append(f"<td{attr}>{esc(cell)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return Raw(f'<table class="sortable"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>')


def note(text: str) -> Raw:
    return Raw(f'<p class="missing">{esc(text)}</p>')


def img(uri: str | None, alt: str, css: str = "plot") -> Raw:
    return Raw(f'<img class="{css}" src="{uri}" alt="{esc(alt)}">') if uri else Raw("")


def kv(pairs: list[tuple[str, object]]) -> Raw:
    return Raw('<dl class="kv">' + "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in pairs) + "</dl>")


def section(anchor: str, title: str, parts: list) -> Raw:
    return Raw(f'<section id="{anchor}"><h2>{esc(title)}</h2>{"".join(parts)}</section>')
