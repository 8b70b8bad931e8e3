"""The model card's lines about the data audit: what it found and what leaks did to the figures."""
from __future__ import annotations

from edgeclf.console import pct


def card_lines(audit: dict | None) -> list[str]:
    """The model card's lines about the data audit (bundle/card.py)."""
    if not audit:
        return ["- data audit: none recorded (a run made before edgeclf audited its data)"]
    summary = audit.get("summary") or {}
    counts = {k: n for k, n in (summary.get("counts") or {}).items() if n}
    lines = ["- data audit: " + (", ".join(f"{n} {kind.replace('_', ' ')}" for kind, n in counts.items()) or "no findings")
             + f" (embedding checks {summary.get('checks', {}).get('embeddings', '-')}; the run's audit.json lists every file)"]
    for split, f in (audit.get("figures_without_leaks") or {}).items():
        top1, clean = f.get("top1"), f.get("top1_without")
        lines.append(f"- the {split} split holds {f.get('leaked')} image(s) that also occur in training; figures without them: "
                     f"top-1 {pct(clean)} on {f.get('n_without')} images (as given: {pct(top1)} on {f.get('n_images')})")
    for split, files in (summary.get("excluded") or {}).items():
        lines.append(f"- {len(files)} {split} image(s) that also occur in training were excluded from scoring (--leaks exclude)")
    if counts.get("label_conflict"):
        lines.append(f"- {counts['label_conflict']} label conflict(s): the same or nearly the same image under two classes, "
                     "left as they are (edgeclf never relabels)")
    return lines

