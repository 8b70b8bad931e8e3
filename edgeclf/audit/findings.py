"""From scanned images (and optional embeddings) to findings of the exact kinds `audit.json` lists.

Every finding has `kind`, `files` (every file of the pair or group), `splits` and `classes`
(one per file, in the same order) and `score` (a similarity or a confidence, 0..1, except where
the kind says otherwise); a few carry a detail more.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from edgeclf.audit.hashing import MODE_KINDS
from edgeclf.audit.scan import SPLITS, Scanned

KINDS = ("exact_duplicate", "near_duplicate", "cross_split_leak", "label_conflict", "likely_label_error",
         "class_imbalance", "tiny_image", "extreme_aspect", "odd_mode")
SCORED_SPLITS = ("val", "test")


@dataclass(frozen=True)
class Limits:
    """Where a difference becomes a finding; measured on flowers128 and the planted set (benchmarks/audit.py)."""

    dhash_max: int = 12  # of 64 bits, in the nearer orientation (as is or mirrored)
    phash_max: int = 14  # both hashes must be near, which keeps unrelated look-alikes out
    hash_sum_max: int = 17  # and together: on flowers128 every pair up to 17 is the same photo, 18-22 mostly not
    cosine_min: float = 0.90  # embeddings (when used): cosine of the projected features; 5-10% crops reach 0.895
    # An embedding match must not contradict the hashes: on flowers128, different photos of tulip fields or
    # daisies reach cosine 0.93 with hash sums of 38 and more; planted crops stay within 27, unrelated ~64.
    embedding_hash_sum_max: int = 36
    imbalance_ratio: float = 3.0  # a class with fewer than 1/3 of the largest class's images
    tiny_fraction: float = 0.5  # shorter side under half the model input: upscaled more than 2x
    aspect_max: float = 2.0  # longer side over twice the shorter: squashed to half by the square resize
    label_error_confidence: float = 0.9  # out-of-fold probability of another class


def finding(kind: str, scanned: Scanned, indices, score: float, **detail) -> dict:
    indices = [int(i) for i in indices]
    return {"kind": kind, "files": [str(scanned.paths[i]) for i in indices],
            "splits": [scanned.split_name(i) for i in indices], "classes": [scanned.class_name(i) for i in indices],
            "score": round(float(score), 4), **detail}


def exact_groups(scanned: Scanned) -> list[np.ndarray]:
    """Indices of images with the same decoded pixels, groups of two or more."""
    if not len(scanned):
        return []
    keys = np.ascontiguousarray(scanned.pixels).view("V16").ravel()
    _, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
    order = np.argsort(inverse, kind="stable")
    bounds = np.cumsum(counts)[:-1]
    return [g for g in np.split(order, bounds) if len(g) > 1]


def duplicate_findings(scanned: Scanned, groups: list[np.ndarray], near: list[tuple[int, int, float, str]]) -> list[dict]:
    """exact_duplicate, near_duplicate, label_conflict and cross_split_leak from groups and near pairs."""
    found = []
    group_of = np.arange(len(scanned))
    for g in groups:
        group_of[g] = g[0]
        found.append(finding("exact_duplicate", scanned, g, 1.0))
        if len(set(scanned.label[g])) > 1:
            found.append(finding("label_conflict", scanned, g, 1.0, match="exact"))
    partners: dict[int, dict[int, float]] = defaultdict(dict)  # image -> other image -> similarity
    for g in groups:
        for a in g:
            for b in g:
                if a != b:
                    partners[int(a)][int(b)] = 1.0
    for i, j, score, how in near:
        if group_of[i] == group_of[j]:
            continue
        found.append(finding("near_duplicate", scanned, (i, j), score, match=how))
        if scanned.label[i] != scanned.label[j]:
            found.append(finding("label_conflict", scanned, (i, j), score, match=how))
        for a, b in ((i, j), (j, i)):
            partners[a][b] = max(score, partners[a].get(b, 0.0))
    train = SPLITS.index("train")
    for i in sorted(partners):
        if scanned.split_name(i) not in SCORED_SPLITS:
            continue
        in_train = {b: s for b, s in partners[i].items() if scanned.split[b] == train}
        if in_train:
            others = sorted(in_train, key=lambda b: (-in_train[b], str(scanned.paths[b])))
            found.append(finding("cross_split_leak", scanned, [i, *others], max(in_train.values()),
                                 match="exact" if max(in_train.values()) >= 1.0 else "near"))
    return found


def near_hash_pairs(scanned: Scanned, limits: Limits) -> list[tuple[int, int, float, str]]:
    from edgeclf.audit.neighbours import hash_pairs

    ii, jj, d, p = hash_pairs(scanned.hashes, limits.dhash_max, limits.phash_max)
    return [(int(i), int(j), 1 - (int(a) + int(b)) / 128, "hash") for i, j, a, b in zip(ii, jj, d, p)
            if int(a) + int(b) <= limits.hash_sum_max]


def corroborated(scanned: Scanned, pairs: list[tuple[int, int, float, str]], limits: Limits) -> list[tuple[int, int, float, str]]:
    """The embedding pairs whose perceptual hashes are not far apart too (embedding_hash_sum_max)."""
    from edgeclf.audit.neighbours import pair_hash_distance

    if not pairs:
        return []
    ii, jj = (np.array(column, np.int64) for column in list(zip(*pairs))[:2])
    near = pair_hash_distance(scanned.hashes, ii, jj) <= limits.embedding_hash_sum_max
    return [pair for pair, keep in zip(pairs, near) if keep]


def merge_pairs(*sources: list[tuple[int, int, float, str]]) -> list[tuple[int, int, float, str]]:
    """One entry per pair, with the higher score and every method that found it."""
    merged: dict[tuple[int, int], tuple[float, set]] = {}
    for pairs in sources:
        for i, j, score, how in pairs:
            key = (min(i, j), max(i, j))
            old_score, methods = merged.get(key, (0.0, set()))
            merged[key] = (max(old_score, score), methods | {how})
    return [(i, j, score, "+".join(sorted(methods))) for (i, j), (score, methods) in sorted(merged.items())]


def image_findings(scanned: Scanned, img_size: int, limits: Limits) -> list[dict]:
    """tiny_image, extreme_aspect (per file) and odd_mode (per kind of mode, with its share)."""
    found = []
    short = scanned.size.min(axis=1) if len(scanned) else np.zeros(0)
    long = scanned.size.max(axis=1) if len(scanned) else np.zeros(0)
    for i in np.flatnonzero(short < limits.tiny_fraction * img_size):
        found.append(finding("tiny_image", scanned, [i], short[i] / img_size,
                             width=int(scanned.size[i, 0]), height=int(scanned.size[i, 1])))
    for i in np.flatnonzero(long >= limits.aspect_max * np.maximum(short, 1)):
        found.append(finding("extreme_aspect", scanned, [i], long[i] / max(short[i], 1),
                             width=int(scanned.size[i, 0]), height=int(scanned.size[i, 1])))
    by_kind = defaultdict(list)
    for i, mode in enumerate(scanned.mode):
        if mode in MODE_KINDS:
            by_kind[MODE_KINDS[mode]].append(i)
    for kind, members in sorted(by_kind.items()):
        found.append(finding("odd_mode", scanned, members, len(members) / len(scanned), mode=kind,
                             modes=sorted({scanned.mode[i] for i in members})))
    return found


def imbalance_findings(scanned: Scanned, limits: Limits) -> list[dict]:
    """Per split: each class with fewer than 1/imbalance_ratio of the largest class's images (score: that ratio)."""
    found = []
    for s, name in enumerate(SPLITS):
        labels = scanned.label[scanned.split == s]
        if not len(labels):
            continue
        counts = np.bincount(labels, minlength=len(scanned.classes))
        largest = counts.max()
        for c in np.flatnonzero(counts * limits.imbalance_ratio < largest):
            found.append({"kind": "class_imbalance", "files": [], "splits": [name], "classes": [scanned.classes[c]],
                          "score": round(float(counts[c] / largest), 4), "count": int(counts[c]), "largest": int(largest)})
    return found


def leaked_files(found: list[dict]) -> dict[str, list[str]]:
    """The scored images that duplicate a training image, per split (the first file of each leak)."""
    leaked: dict[str, list[str]] = {}
    for f in found:
        if f["kind"] == "cross_split_leak":
            leaked.setdefault(f["splits"][0], []).append(f["files"][0])
    return {split: sorted(files) for split, files in leaked.items()}


def counts(found: list[dict]) -> dict[str, int]:
    return {kind: sum(f["kind"] == kind for f in found) for kind in KINDS}
