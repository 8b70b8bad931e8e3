"""Resize kernels: the ways training, or an app, scales a decoded RGB image to the model's size.

One registry. `pil-bilinear` is what edgeclf has always trained with (the default, unchanged).
The others are the code paths apps really take, run with the libraries those platforms use:
OpenCV, Skia (what Android's `Bitmap.createScaledBitmap` draws with) and TensorFlow.
Where a platform itself cannot run here (Android's HWUI and decoders, iOS Core Graphics) that
is said in `platform`; nothing is emulated under another library's name.

An aspect policy says what happens to a non-square image: `squash` (training: both sides
scaled to the model size, aspect ratio not kept), `centre-crop` (the central square of the
shorter side) or `letterbox` (padded with black to a square). The last two are measured as
app mistakes, never trained with.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass

import numpy as np
from PIL import Image

from edgeclf.errors import UsageError
from edgeclf.pipeline import preprocess

DEFAULT = "pil-bilinear"
SQUASH, ASPECTS = preprocess.SQUASH, preprocess.ASPECTS
APP_EXTRA = "pip install 'edgeclf[app]'"


@dataclass(frozen=True)
class Kernel:
    name: str
    library: str  # the Python package that runs it here
    call: str  # the exact call, for golden.json and the model card
    antialias: bool  # widens its filter when downscaling (no aliasing of fine detail)
    platform: str  # where apps meet it, and what of that platform cannot run here

    @property
    def module(self) -> str:
        return preprocess.RESIZERS[self.name][1]

    @property
    def pil_filter(self) -> int | None:
        """Pillow kernels: the filter, which also resamples float ("F") images."""
        return preprocess.PIL_FILTERS.get(self.name)

    def available(self) -> bool:
        return importlib.util.find_spec(self.module) is not None

    def describe(self) -> dict:
        return {"name": self.name, "library": self.library, "call": self.call, "antialias": self.antialias,
                "platform": self.platform}


ANDROID = "Android: Bitmap.createScaledBitmap(bitmap, w, h, true) draws with Skia this way; Android's own HWUI " \
          "and BitmapFactory decoder do not run here"
KERNELS = {k.name: k for k in (
    Kernel("pil-bilinear", "Pillow", "Image.resize(size, Image.BILINEAR)", True,
           "edgeclf training; Python apps using Pillow"),
    Kernel("pil-bicubic", "Pillow", "Image.resize(size, Image.BICUBIC)", True, "Python apps using Pillow"),
    Kernel("pil-lanczos", "Pillow", "Image.resize(size, Image.LANCZOS)", True, "Python apps using Pillow"),
    Kernel("nearest", "Pillow", "Image.resize(size, Image.NEAREST)", False,
           "any app that scales without filtering (e.g. createScaledBitmap(..., false))"),
    Kernel("opencv-linear", "OpenCV", "cv2.resize(img, size, interpolation=cv2.INTER_LINEAR)", False,
           "apps using OpenCV (Android/iOS/C++), default interpolation"),
    Kernel("opencv-area", "OpenCV", "cv2.resize(img, size, interpolation=cv2.INTER_AREA)", True,
           "apps using OpenCV, area averaging"),
    Kernel("android", "Skia", "canvas.scale(sx, sy); drawImageRect(src, srcRect, dstRect, "
           "SamplingOptions(kLinear, kNone), kFast_SrcRectConstraint)", False, ANDROID),
    Kernel("android-mipmap", "Skia", "as android, with SamplingOptions(kLinear, MipmapMode.kLinear)", True,
           "Android drawing through a mipmapped bitmap (Bitmap.setHasMipMap(true)); " + ANDROID.split("; ")[1]),
    Kernel("tf-bilinear", "TensorFlow", "tf.image.resize(img, size, 'bilinear', antialias=False), rounded to uint8", False,
           "apps resizing with TensorFlow / TFLite's ResizeBilinear"),
)}


def get_kernel(name: str) -> Kernel:
    kernel = KERNELS.get(name)
    if kernel is None:
        raise UsageError(f"--resize {name} is not a known kernel", f"use one of {', '.join(KERNELS)}")
    if not kernel.available():
        raise UsageError(f"--resize {name} needs {kernel.library}, which is not installed", APP_EXTRA)
    return kernel


def check_aspect(aspect: str) -> str:
    if aspect not in ASPECTS:
        raise UsageError(f"aspect policy {aspect} is not known", f"use one of {', '.join(ASPECTS)}")
    return aspect


def fit(image: Image.Image, size: int, kernel: str = DEFAULT, aspect: str = SQUASH) -> np.ndarray:
    """An RGB image as a (size, size, 3) uint8 array; an image already that size is not resampled."""
    return preprocess.fit(image, size, get_kernel(kernel).name, check_aspect(aspect))


def contract(kernel: str, aspect: str = SQUASH) -> dict:
    """The resize part of the preprocessing contract, as run.json, manifests and bundles record it."""
    return get_kernel(kernel).describe() | {
        "aspect": check_aspect(aspect),
        "aspect_rule": "both sides scaled to the model size, aspect ratio not kept" if aspect == SQUASH else aspect,
        "same_size": "an image already at the model size is used as it is (no resampling)",
    }


def words(kernel: str, aspect: str = SQUASH) -> str:
    """E.g. "resize kernel android (Skia: ...), squash: both sides scaled ...": for descriptions read by people."""
    k = get_kernel(kernel)
    rule = contract(kernel, aspect)["aspect_rule"]
    return f"resize kernel {k.name} ({k.library}: {k.call}; antialias {'yes' if k.antialias else 'no'}), {aspect}: {rule}"
