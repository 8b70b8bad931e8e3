"""One pass over every file of every split: the facts of each image, kept in packed arrays."""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgeclf import console
from edgeclf.audit.hashing import facts
from edgeclf.pipeline.datasets import Sample
from edgeclf.pipeline.images import UnreadableImage

SPLITS = ("train", "val", "test")


@dataclass
class Scanned:
    """Readable images, index i the same in every array; `skipped` lists the unreadable ones."""

    classes: list[str]
    paths: list[Path]
    split: np.ndarray  # int8 index into SPLITS
    label: np.ndarray  # int32 class index
    pixels: np.ndarray  # (N, 16) uint8: hash of the decoded pixels
    hashes: np.ndarray  # (N, 4) uint64: dhash, dhash of the mirror, phash, phash of the mirror
    size: np.ndarray  # (N, 2) int32: width, height
    mode: list[str]
    skipped: list[dict] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.paths)

    def split_name(self, i: int) -> str:
        return SPLITS[int(self.split[i])]

    def class_name(self, i: int) -> str:
        return self.classes[int(self.label[i])]


def scan(samples: dict[str, list[Sample]], classes: list[str]) -> Scanned:
    """Decode and hash every file (in threads); unreadable files are skipped and listed."""
    todo = [(SPLITS.index(name), s) for name, members in samples.items() for s in members]
    n = len(todo)
    pixels = np.zeros((n, 16), np.uint8)
    hashes = np.zeros((n, 4), np.uint64)
    size = np.zeros((n, 2), np.int32)
    mode = [""] * n
    ok = np.zeros(n, bool)
    skipped = []

    def work(i: int):
        split, sample = todo[i]
        try:
            f = facts(sample.path)
        except UnreadableImage as exc:
            return {"path": str(sample.path), "split": SPLITS[split], "reason": str(exc)}
        pixels[i] = np.frombuffer(f.pixels, np.uint8)
        hashes[i] = (f.dhash, f.dhash_mirror, f.phash, f.phash_mirror)
        size[i] = (f.width, f.height)
        mode[i] = f.mode
        ok[i] = True
        return None

    with console.progress() as bar, ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        task = bar.add_task("auditing images", total=n, status="")
        for problem in pool.map(work, range(n), chunksize=64):
            if problem:
                skipped.append(problem)
            bar.advance(task)
    keep = np.flatnonzero(ok)
    return Scanned(
        classes=list(classes),
        paths=[todo[i][1].path for i in keep],
        split=np.array([todo[i][0] for i in keep], np.int8),
        label=np.array([todo[i][1].label for i in keep], np.int32),
        pixels=pixels[keep], hashes=hashes[keep], size=size[keep], mode=[mode[i] for i in keep], skipped=skipped,
    )
