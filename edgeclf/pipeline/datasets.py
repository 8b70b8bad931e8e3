"""Image folders (one subfolder per class): scanning, checking, splitting and decoding."""
from __future__ import annotations

import hashlib
import os
import unicodedata
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgeclf import console
from edgeclf.errors import DatasetError
from edgeclf.layout import relative
from edgeclf.pipeline.images import UnreadableImage, is_image_file, load_image
from edgeclf.pipeline.resize import DEFAULT as DEFAULT_RESIZE


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int


class PathList(Sequence):
    """Paths packed into one bytes object and an array of end offsets: about 70 bytes a path
    instead of a Path object's 400-odd, which matters at 100,000+ images (`--cache disk`).
    Indexing gives Path objects, made on demand."""

    def __init__(self, paths: Iterable = ()):
        encoded = [os.fsencode(p) for p in paths]
        self._blob = b"".join(encoded)
        self._ends = np.cumsum(np.array([len(e) for e in encoded], np.int64))

    def __len__(self) -> int:
        return len(self._ends)

    def __getitem__(self, key):
        if isinstance(key, (int, np.integer)):
            index = range(len(self))[key]  # negative indices, and IndexError past the end
            start = int(self._ends[index - 1]) if index else 0
            return Path(os.fsdecode(self._blob[start:int(self._ends[index])]))
        indices = range(len(self))[key] if isinstance(key, slice) else np.asarray(key, np.int64)
        return PathList(self[int(i)] for i in indices)

    def __eq__(self, other) -> bool:
        return isinstance(other, Sequence) and list(self) == list(other)

    def __repr__(self) -> str:
        return f"PathList({len(self)} paths)"


class Samples(Sequence):
    """A file list as packed arrays (PathList and int64 labels), not a Sample object per image;
    indexing gives Sample records, made on demand."""

    def __init__(self, paths: Iterable = (), labels: Iterable = ()):
        self.paths = paths if isinstance(paths, PathList) else PathList(paths)
        self.labels = np.asarray(list(labels) if not isinstance(labels, np.ndarray) else labels, np.int64)
        if len(self.paths) != len(self.labels):
            raise ValueError(f"{len(self.paths)} paths but {len(self.labels)} labels")

    @classmethod
    def of(cls, samples: Iterable[Sample]) -> Samples:
        samples = list(samples)
        return cls((s.path for s in samples), [s.label for s in samples])

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, key):
        if isinstance(key, (int, np.integer)):
            return Sample(self.paths[key], int(self.labels[key]))
        indices = np.arange(len(self))[key] if isinstance(key, slice) else np.asarray(key, np.int64)
        return Samples(self.paths[indices], self.labels[indices])

    def __eq__(self, other) -> bool:
        return isinstance(other, Sequence) and list(self) == list(other)

    def __repr__(self) -> str:
        return f"Samples({len(self)} files)"


@dataclass
class ImageFolder:
    """The image files of a folder, by class, before decoding."""

    root: Path
    classes: list[str]
    samples: list[Sample]

    def counts(self) -> dict[str, int]:
        counts = {name: 0 for name in self.classes}
        for sample in self.samples:
            counts[self.classes[sample.label]] += 1
        return counts


@dataclass
class DecodedSplit:
    """Decoded pixels of one split, kept in memory so later epochs never decode again."""

    name: str
    root: Path
    classes: list[str]
    images: np.ndarray  # (N, H, W, 3) uint8, raw RGB
    labels: np.ndarray  # (N,) int64
    paths: list[Path]
    skipped: list[dict] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.labels)

    def counts(self) -> dict[str, int]:
        return {name: int((self.labels == i).sum()) for i, name in enumerate(self.classes)}

    def summary(self) -> dict:
        return {
            "root": str(self.root),
            "n_images": len(self),
            "per_class": self.counts(),
            "skipped": self.skipped,
        }


def scan_folder(root: Path, what: str = "dataset", min_classes: int = 2) -> ImageFolder:
    """List class subfolders and their image files; non-image files are ignored.

    Training needs two classes; scoring takes any non-empty subset of a model's classes (min_classes=1).
    """
    root = Path(root)
    if not root.exists():
        raise DatasetError(f"{what} folder {root} does not exist", "check the path")
    if not root.is_dir():
        raise DatasetError(f"{what} path {root} is not a folder", "pass a folder with one subfolder per class")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    for name in classes:
        check_class_name(name, root)
    if len(classes) < min_classes:
        if not classes:
            raise DatasetError(f"{what} folder {root} has no class subfolders", "put each class's images in its own subfolder")
        raise DatasetError(
            f"{what} folder {root} has only class '{classes[0]}'; a classifier needs at least 2 classes",
            "put each class's images in its own subfolder",
        )
    samples = []
    for label, name in enumerate(classes):
        files = sorted(p for p in (root / name).rglob("*") if p.is_file() and is_image_file(p))
        if not files:
            raise DatasetError(
                f"class '{name}' in {root} has no images (jpg/jpeg/png/bmp/gif/webp)",
                "add images to it or remove the folder",
            )
        samples.extend(Sample(path, label) for path in files)
    return ImageFolder(root, classes, Samples.of(samples))


def check_class_name(name: str, root: Path) -> None:
    """Refuse a class folder whose name would not come back unchanged from labels.txt (one label a line)."""
    # Cc: control characters; Cf: invisible format controls such as U+202E, which reverses how
    # the rest of the name reads (and of any line it is shown in)
    control = any(unicodedata.category(c) in ("Cc", "Cf") for c in name)
    utf8 = name.encode("utf-8", "surrogatepass").decode("utf-8", "replace") == name  # undecodable bytes come as surrogates
    if not name or control or not utf8 or name != name.strip() or len(name.splitlines()) != 1:
        raise DatasetError(
            f"the name of class folder {name!r} in {root} would not survive labels.txt",
            "rename it without line breaks, control or invisible formatting characters (e.g. U+202E), "
            "leading/trailing spaces or non-UTF-8 bytes",
        )


def check_same_classes(reference: list[str], other: list[str], other_root: Path, what: str) -> None:
    if reference == other:
        return
    missing = sorted(set(reference) - set(other))
    extra = sorted(set(other) - set(reference))
    parts = []
    if missing:
        parts.append(f"missing {', '.join(missing)}")
    if extra:
        parts.append(f"unexpected {', '.join(extra)}")
    raise DatasetError(
        f"the {what} folder {other_root} has different classes from training ({'; '.join(parts)})",
        "give every split the same class subfolders",
    )


def scan_for_scoring(root: Path, labels: list[str], what: str) -> ImageFolder:
    """A folder to score a model on: any non-empty subset of its classes, indexed by the model's labels."""
    return map_to_labels(scan_folder(Path(root), f"{what} data", min_classes=1), labels, what)


def map_to_labels(folder: ImageFolder, labels: list[str], what: str) -> ImageFolder:
    """Re-index a folder whose classes are a subset of `labels` (e.g. an evaluation folder)."""
    unknown = sorted(set(folder.classes) - set(labels))
    if unknown:
        raise DatasetError(
            f"the {what} folder {folder.root} has classes the model does not know: {', '.join(unknown)}",
            f"use only these class folders: {', '.join(labels)}",
        )
    index = {name: labels.index(name) for name in folder.classes}
    samples = Samples(folder.samples.paths, [index[folder.classes[int(label)]] for label in folder.samples.labels])
    return ImageFolder(folder.root, list(labels), samples)


def stratified_split(folder: ImageFolder, val_fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """Split each class by the same fraction; depends only on file names, classes and seed."""
    rng = np.random.default_rng(seed)
    train, val, alone = [], [], []
    for label in range(len(folder.classes)):
        members = sorted((s for s in folder.samples if s.label == label), key=lambda s: str(s.path))
        order = rng.permutation(len(members))
        n_val = int(round(len(members) * val_fraction))
        if len(members) >= 2:
            n_val = min(max(n_val, 1), len(members) - 1)
        else:
            n_val = 0
            alone.append(repr(folder.classes[label]))
        val.extend(members[i] for i in sorted(order[:n_val]))
        train.extend(members[i] for i in sorted(order[n_val:]))
    if alone:
        console.warn(f"class(es) {', '.join(alone)} have a single image, which goes to training, so validation "
                     "will not measure them (add images, or pass --val-dir)")
    return train, val


def stratified_sample(samples: list[Sample], n_classes: int, size: int, seed: int) -> list[Sample]:
    """Pick `size` samples spread over classes in proportion to their counts, deterministically."""
    if size >= len(samples):
        return sorted(samples, key=lambda s: str(s.path))
    rng = np.random.default_rng(seed)
    by_class = [sorted((s for s in samples if s.label == c), key=lambda s: str(s.path)) for c in range(n_classes)]
    total = len(samples)
    quotas = [len(members) * size / total for members in by_class]
    counts = [int(q) for q in quotas]
    # Hand out the remainder to the largest fractional parts, ties broken by class index.
    for c in sorted(range(n_classes), key=lambda c: (-(quotas[c] - counts[c]), c))[: size - sum(counts)]:
        counts[c] += 1
    chosen = []
    for members, count in zip(by_class, counts):
        picks = rng.permutation(len(members))[:count]
        chosen.extend(members[i] for i in sorted(picks))
    return chosen


THREAD_CHUNK = 256  # items handed to the threads at a time


def each_in_threads(work, n: int, what: str) -> list:
    """`work(i)` for every i < n, in threads, under a progress bar; returns what the calls
    returned other than None, in order. The threads get a chunk at a time: `Executor.map`
    makes all n futures at once, about 1 KB each, which at 100,000 images is memory kept."""
    found = []
    with console.progress() as bar, ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        task = bar.add_task(what, total=n, status="")
        for start in range(0, n, THREAD_CHUNK):
            stop = min(n, start + THREAD_CHUNK)
            found.extend(result for result in pool.map(work, range(start, stop)) if result is not None)
            bar.advance(task, stop - start)
    return found


def decode(name: str, root: Path, classes: list[str], samples: list[Sample], img_size: int,
           store=None, read=load_image, resize: str = DEFAULT_RESIZE) -> DecodedSplit:
    """Decode every sample once (in threads), resized by kernel `resize`, skipping unreadable files with a warning.

    `store` receives the pixels (default: an array in memory; pipeline/streaming.py has a file
    and a decode-on-read store, which take `read=check_image` to only check the files).
    """
    images = np.zeros((len(samples), img_size, img_size, 3), dtype=np.uint8) if store is None else store
    ok = np.zeros(len(samples), dtype=bool)

    def work(index: int):
        try:
            images[index] = read(samples[index].path, img_size, resize)
            ok[index] = True
        except UnreadableImage as exc:
            return {"path": relative(samples[index].path, root), "reason": str(exc)}
        return None

    skipped = each_in_threads(work, len(samples), f"decoding {name}")
    if skipped:
        names = ", ".join(p["path"] for p in skipped[:3])
        more = f" and {len(skipped) - 3} more" if len(skipped) > 3 else ""
        console.warn(f"skipped {len(skipped)} unreadable image(s) in {name}: {names}{more}")
    keep = np.flatnonzero(ok)
    split = DecodedSplit(
        name=name,
        root=root,
        classes=classes,
        images=images[keep] if store is None else store.select(keep),
        labels=np.array([samples[i].label for i in keep], dtype=np.int64),
        paths=PathList(samples[int(i)].path for i in keep),
        skipped=skipped,
    )
    present = {s.label for s in samples}
    for label, count in split.counts().items():
        if count == 0 and classes.index(label) in present:
            raise DatasetError(
                f"class '{label}' has no readable images in the {name} split ({root})",
                "replace the unreadable files or remove the class",
            )
    return split


def samples_digest(samples: list[Sample], root: Path) -> str:
    """A hash of which files (by relative path and label) make up a sample list."""
    h = hashlib.sha256()
    for s in sorted(samples, key=lambda s: str(s.path)):
        h.update(f"{relative(s.path, root)}\t{s.label}\n".encode())
    return h.hexdigest()
