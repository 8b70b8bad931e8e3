"""Decode any supported image file into an RGB uint8 array of a fixed size.

Training, evaluation, calibration and device validation all call `load_image`, so
every stage sees exactly the same pixels. The resize kernel is the run's `--resize`
(pipeline/resize.py; default PIL bilinear, as always).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from edgeclf.pipeline import resize
from edgeclf.pipeline.preprocess import decode_rgb, to_rgb  # noqa: F401  (to_rgb: for the audit's hashing)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp"})


class UnreadableImage(Exception):
    """The file has an image extension but cannot be decoded."""


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def load_image(path: Path, size: int, kernel: str = resize.DEFAULT, aspect: str = resize.SQUASH,
               orient: bool = True) -> np.ndarray:
    """Return a (size, size, 3) uint8 RGB array; raise UnreadableImage for a bad file.

    `orient=False` ignores the EXIF orientation: only to show what an app that does so feeds the model.
    """
    try:
        return resize.fit(decode_rgb(path, orient), size, kernel, aspect)
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as exc:
        raise UnreadableImage(f"{type(exc).__name__}: {exc}") from exc
