"""Know the data before trusting a number: duplicates, leaks, label conflicts and odd images.

`audit_samples` runs every check over the files of a run's splits and returns what `audit.json`
holds: `{"findings": [...], "summary": {...}}` (see findings.py for the kinds). It only reads
the files; unreadable ones are skipped and listed, as training skips them.
"""
from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

from edgeclf.audit.findings import (
    KINDS,
    Limits,
    corroborated,
    counts,
    duplicate_findings,
    exact_groups,
    image_findings,
    imbalance_findings,
    leaked_files,
    merge_pairs,
    near_hash_pairs,
)
from edgeclf.audit.scan import SPLITS, scan



def audit_samples(samples: dict, classes: list[str], img_size: int, embedder=None, work: Path | None = None,
                  limits: Limits = Limits(), seed: int = 0) -> dict:
    """All checks over `samples` ({split: [Sample]}); `embedder` (embeddings.Embedder or None) adds the
    embedding checks, streaming features into `work`."""
    started = time.perf_counter()
    scanned = scan(samples, classes)
    seconds = {"scan": time.perf_counter() - started}
    groups = exact_groups(scanned)
    near = near_hash_pairs(scanned, limits)
    seconds["hash_neighbours"] = time.perf_counter() - started - seconds["scan"]
    probe_findings: list = []
    embedding_note = "off"
    if embedder is not None:
        from edgeclf.audit import embeddings, probe

        mark = time.perf_counter()
        features = embedder.embed(scanned.paths, work)
        near = merge_pairs(near, corroborated(scanned, embeddings.near_pairs(features, limits.cosine_min), limits))
        probe_findings = probe.likely_label_errors(scanned, features, limits.label_error_confidence, seed)
        seconds["embeddings"] = time.perf_counter() - mark
        embedding_note = embedder.describe()
    found = duplicate_findings(scanned, groups, near) + probe_findings
    found += imbalance_findings(scanned, limits) + image_findings(scanned, img_size, limits)
    found.sort(key=lambda f: (KINDS.index(f["kind"]), -f["score"], f["files"]))
    summary = {
        "images": {name: int((scanned.split == s).sum()) for s, name in enumerate(SPLITS) if name in samples},
        "classes": list(classes),
        "img_size": img_size,
        "counts": counts(found),
        "leaked": leaked_files(found),
        "skipped": scanned.skipped,
        "checks": {"cheap": True, "embeddings": embedding_note},
        "limits": asdict(limits),
        "seconds": {k: round(v, 2) for k, v in seconds.items()},
    }
    return {"findings": found, "summary": summary}
