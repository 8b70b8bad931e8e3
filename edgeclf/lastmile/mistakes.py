"""The known app mistakes, each as the input it makes from an image file.

Every mistake reads the file itself (never a copy of training's pixels), so a golden image's
candidates are what an app with that mistake really feeds the model. Values are what the
model's input receives before any quantization: uint8 pixels, or float32 for the
normalisation mistakes (which only a float model can be fed).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from edgeclf.pipeline import resize
from edgeclf.pipeline.images import decode_rgb, load_image

EXIF_ORIENTATION = 0x0112


@dataclass(frozen=True)
class Mistake:
    name: str  # e.g. "bgr", "resize android"
    kind: str  # resize, aspect, channels, orientation, normalisation, rounding
    what: str  # the app's mistake in words, for the diagnosis
    read: Callable[[Path, int, str], np.ndarray]  # (file, size, training kernel) -> model input values
    float_input_only: bool = False  # the mistake only exists for a float32 input tensor
    # The test split's photos rarely carry EXIF rotations: the cost is measured as if each did.
    measure: Callable[[Path, int, str], np.ndarray] | None = None

    def measured(self, path: Path, size: int, kernel: str) -> np.ndarray:
        return (self.measure or self.read)(path, size, kernel)


def _bgr(path, size, kernel):
    return load_image(path, size, kernel)[..., ::-1].copy()


def _orientation(image_path: Path) -> int:
    with Image.open(image_path) as img:
        return int(img.getexif().get(EXIF_ORIENTATION, 1))


def _exif_ignored(path, size, kernel):
    return load_image(path, size, kernel, orient=False)


def _exif_ignored_as_if_portrait(path, size, kernel):
    """An upright photo as an app that ignores EXIF orientation 6 (portrait, rotate 90) shows it."""
    if _orientation(path) != 1:
        return _exif_ignored(path, size, kernel)
    return resize.fit(decode_rgb(path).transpose(Image.Transpose.ROTATE_90), size, kernel)


def _truncated(path, size, kernel):
    """The same filter computed in float, then truncated to integers (a cast) instead of rounded."""
    image = decode_rgb(path)
    if image.size == (size, size):
        return np.asarray(image, dtype=np.uint8)
    method = resize.get_kernel(kernel).pil_filter
    bands = [np.asarray(band.convert("F").resize((size, size), method)) for band in image.split()]
    return np.floor(np.clip(np.dstack(bands), 0, 255)).astype(np.uint8)


def _scaled(scale: float, offset: float):
    return lambda path, size, kernel: load_image(path, size, kernel).astype(np.float32) * scale + offset


def _resized(name: str):
    return lambda path, size, kernel: load_image(path, size, name)


def _aspect(policy: str):
    return lambda path, size, kernel: load_image(path, size, kernel, aspect=policy)


def mistakes(training_kernel: str) -> list[Mistake]:
    """Every known mistake for a model trained with `training_kernel`, in a fixed order."""
    found = [Mistake(f"resize {k.name}", "resize", f"resized with {k.name} ({k.call}) instead of {training_kernel}"
                     + ("" if k.antialias else ", which does not antialias"), _resized(k.name))
             for k in resize.KERNELS.values() if k.name != training_kernel and k.available()]
    found += [
        Mistake("centre-crop", "aspect", "centre-cropped to a square before resizing, instead of squashing the whole image",
                _aspect("centre-crop")),
        Mistake("letterbox", "aspect", "letterboxed (padded with black to a square) instead of squashing", _aspect("letterbox")),
        Mistake("bgr", "channels", "channels in BGR order (OpenCV's imread/cvtColor default) instead of RGB", _bgr),
        Mistake("exif-ignored", "orientation", "EXIF orientation ignored (the photo is fed as stored, not as shown)",
                _exif_ignored, measure=_exif_ignored_as_if_portrait),
        Mistake("float-minus1-1", "normalisation", "pixels normalised to [-1, 1] although the model normalises itself",
                _scaled(1 / 127.5, -1.0), float_input_only=True),
        Mistake("float-0-1", "normalisation", "pixels scaled to [0, 1] although the model takes raw 0-255",
                _scaled(1 / 255, 0.0), float_input_only=True),
    ]
    if resize.get_kernel(training_kernel).pil_filter is not None:
        found.append(Mistake("truncation", "rounding", "the resized values truncated to integers instead of rounded",
                             _truncated))
    return found


def applicable(mistake: Mistake, input_dtype: str) -> bool:
    return not mistake.float_input_only or input_dtype.startswith("float")
