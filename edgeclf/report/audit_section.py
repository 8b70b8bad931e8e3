"""The data audit as a report section (in a run's report, and as `edgeclf audit --out`'s own page):
counts per kind, what leaks did to the figures, and each pair or group's thumbnails side by side."""
from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from edgeclf import __version__
from edgeclf.report import figures
from edgeclf.report.assets import CSS, SORT_JS
from edgeclf.console import pct
from edgeclf.report.markup import GENERATOR_TAG, Raw, esc, img, note, section, table

SHOWN_PER_KIND = 24
PICTURED = ("cross_split_leak", "label_conflict", "exact_duplicate", "near_duplicate", "likely_label_error",
            "tiny_image", "extreme_aspect")
EXTRA_CSS = """
.pair { display: inline-flex; gap: 4px; margin: 0 12px 10px 0; padding: 4px; border: 1px solid var(--line); border-radius: 6px; }
.pair figure { margin: 0; width: 96px; font-size: 10px; text-align: center; overflow-wrap: anywhere; }
.pair .thumb { width: 96px; height: 96px; }
"""


def audit_section(audit: dict | None, anchor: str = "audit") -> Raw:
    if not audit:
        return section(anchor, "Data audit", [note("this run records no data audit (made by an older edgeclf)")])
    summary = audit.get("summary") or {}
    findings = audit.get("findings") or []
    counts = summary.get("counts") or {}
    images = summary.get("images") or {}
    checks = summary.get("checks") or {}
    parts: list = [Raw(f"<style>{EXTRA_CSS}</style><p>{esc(', '.join(f'{n} {s}' for s, n in images.items()))} images; "
                       f"embedding checks: {esc(checks.get('embeddings'))}; leak policy: {esc(summary.get('leaks', '-'))}</p>")]
    parts.append(table(["kind", "findings"], [[k, n] for k, n in counts.items()], [[None, n] for n in counts.values()]))
    parts.append(_leak_figures(audit))
    if summary.get("excluded"):
        excluded = [[split, f] for split, files in summary["excluded"].items() for f in files]
        parts.append(Raw("<h3>Excluded from scoring (--leaks exclude)</h3>"))
        parts.append(table(["split", "file"], excluded))
    for kind in PICTURED:
        of_kind = [f for f in findings if f.get("kind") == kind]
        if of_kind:
            parts.append(Raw(f"<h3>{esc(kind)} ({esc(counts.get(kind, len(of_kind)))})</h3>"))
            parts.append(Raw("".join(_pair(f) for f in of_kind[:SHOWN_PER_KIND])))
            if len(of_kind) > SHOWN_PER_KIND:
                parts.append(Raw(f"<p class='small'>{len(of_kind) - SHOWN_PER_KIND} more in audit.json.</p>"))
    other = [f for f in findings if f.get("kind") in ("class_imbalance", "odd_mode")]
    if other:
        parts.append(Raw("<h3>Classes and image modes</h3>"))
        rows = [[f["kind"], ", ".join(f.get("splits") or []) if f["kind"] == "class_imbalance" else f.get("mode"),
                 ", ".join(sorted(set(f.get("classes") or []))),
                 f"{f.get('count')} of {f.get('largest')} (largest class)" if f["kind"] == "class_imbalance"
                 else f"{len(f.get('files') or [])} images ({pct(f.get('score'))})"] for f in other]
        parts.append(table(["kind", "split / mode", "classes", "how many"], rows))
    skipped = summary.get("skipped") or []
    if skipped:
        parts.append(Raw("<h3>Unreadable files (skipped)</h3>"))
        parts.append(table(["split", "file", "reason"], [[s.get("split"), s.get("path"), s.get("reason")] for s in skipped]))
    return section(anchor, "Data audit", parts)


def _leak_figures(audit: dict) -> Raw:
    figures_ = audit.get("figures_without_leaks") or {}
    if not figures_:
        return Raw("")
    rows = [[split, f.get("n_images"), pct(f.get("top1")), f.get("n_without"), pct(f.get("top1_without"))]
            for split, f in figures_.items()]
    return Raw("<h3>Scores with and without the leaked images</h3>"
               + table(["split", "images as given", "top-1 as given", "images without leaks", "top-1 without leaks"], rows))


def _pair(f: dict) -> str:
    cells = []
    for path, split, cls in zip(f.get("files") or [], f.get("splits") or [], f.get("classes") or []):
        uri = figures.thumbnail(Path(str(path)), 96)
        picture = img(uri, f"{cls}: {Path(str(path)).name}", "thumb") if uri else esc("(image gone)")
        cells.append(f"<figure>{picture}<figcaption>{esc(split)} / <b>{esc(cls)}</b><br>{esc(Path(str(path)).name)}</figcaption></figure>")
    detail = f" predicted {esc(f['predicted'])}" if f.get("predicted") else ""
    return (f"<div class='pair' title='{esc(f.get('kind'))}'>{''.join(cells)}"
            f"<figure><b>{esc(f.get('score'))}</b><br>{esc(f.get('match', ''))}{detail}</figure></div>")


def page(audit: dict) -> str:
    """`edgeclf audit --out`'s self-contained audit.html."""
    generated = f"edgeclf {esc(__version__)}, {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC"
    return ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            f"{GENERATOR_TAG}<title>edgeclf audit</title><style>{CSS}</style></head><body>"
            f"<header><h1>edgeclf audit</h1></header><main>{audit_section(audit)}</main>"
            f"<footer>Written by {generated}. One self-contained file: no network needed.</footer>"
            f"<script>{SORT_JS}</script></body></html>\n")
