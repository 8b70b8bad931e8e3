"""One pass over every file of every split: the facts of each image, kept in packed arrays."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from edgeclf.audit.hashing import facts
from edgeclf.pipeline.datasets import PathList, Sample, each_in_threads
from edgeclf.pipeline.images import UnreadableImage

SPLITS = ("train", "val", "test")


@dataclass
class Scanned:
    """Readable images, index i the same in every array; `skipped` lists the unreadable ones."""

    classes: list[str]
    paths: PathList
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
    """Decode and hash every file (in threads); unreadable files are skipped and listed.

    Per image only arrays are kept, and paths packed: no Sample or Path object per image.
    """
    members = [(SPLITS.index(name), files) for name, files in samples.items()]
    starts = np.cumsum([0] + [len(files) for _, files in members])
    n = int(starts[-1])
    split_of = np.repeat(np.array([split for split, _ in members], np.int8), np.diff(starts))
    pixels = np.zeros((n, 16), np.uint8)
    hashes = np.zeros((n, 4), np.uint64)
    size = np.zeros((n, 2), np.int32)
    label = np.zeros(n, np.int32)
    mode = [""] * n
    ok = np.zeros(n, bool)

    def sample(i: int) -> Sample:
        which = int(np.searchsorted(starts, i, side="right")) - 1
        return members[which][1][i - int(starts[which])]

    def work(i: int):
        member = sample(i)
        label[i] = member.label
        try:
            f = facts(member.path)
        except UnreadableImage as exc:
            return {"path": str(member.path), "split": SPLITS[split_of[i]], "reason": str(exc)}
        pixels[i] = np.frombuffer(f.pixels, np.uint8)
        hashes[i] = (f.dhash, f.dhash_mirror, f.phash, f.phash_mirror)
        size[i] = (f.width, f.height)
        mode[i] = f.mode
        ok[i] = True
        return None

    skipped = each_in_threads(work, n, "auditing images")
    keep = np.flatnonzero(ok)
    return Scanned(
        classes=list(classes),
        paths=PathList(sample(int(i)).path for i in keep),
        split=split_of[keep], label=label[keep],
        pixels=pixels[keep], hashes=hashes[keep], size=size[keep], mode=[mode[i] for i in keep], skipped=skipped,
    )
