"""Checks of what run and artefact folders hold, shared by every layer: file hashes, image shapes."""
from __future__ import annotations

import hashlib
from pathlib import Path


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def is_image_shape(shape) -> bool:
    """[1, H, W, C] (any positive ints): the input shape run.json and manifest.json record."""
    return (isinstance(shape, list) and len(shape) == 4
            and all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape))


def relative(path, root, outside: str | None = None) -> str:
    """`path` relative to `root`; outside it, `outside` if given, else the path as it is."""
    path = Path(path)
    if path.is_relative_to(root):
        return str(path.relative_to(root))
    return str(path) if outside is None else outside
