"""What the audit knows of one image file: a hash of its decoded pixels, perceptual hashes, size and mode.

The pixel hash is taken after the same decoding training does (EXIF orientation, first frame,
RGB conversion), so a PNG re-saved from a JPEG's decoded pixels hashes the same as the JPEG.
The perceptual hashes (difference hash and DCT hash, 64 bits each) are also taken of the
mirrored image, so a flipped copy is as near as an unflipped one.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from edgeclf.pipeline.images import UnreadableImage, to_rgb

HASH_SIDE = 32  # the grayscale thumbnail both perceptual hashes start from
BITS = 1 << np.arange(63, -1, -1, dtype=np.uint64)

# Modes that are not plain 8-bit RGB, as the `odd_mode` finding names them.
MODE_KINDS = {"L": "grayscale", "LA": "grayscale", "1": "grayscale", "I;16": "16-bit", "I;16B": "16-bit",
              "I;16L": "16-bit", "I;16N": "16-bit", "I": "16-bit", "F": "16-bit", "P": "palette", "PA": "palette",
              "RGBA": "alpha", "CMYK": "CMYK"}


@dataclass(frozen=True)
class ImageFacts:
    pixels: bytes  # 16-byte hash of size and decoded RGB pixels
    dhash: int
    dhash_mirror: int
    phash: int
    phash_mirror: int
    width: int
    height: int
    mode: str  # the file's own mode (before conversion to RGB)


def _bits(flags: np.ndarray) -> int:
    return int((flags.reshape(-1).astype(np.uint64) * BITS).sum())


def dhash(gray: np.ndarray) -> int:
    """64-bit difference hash: is each pixel of a 9x8 thumbnail brighter than its right neighbour."""
    small = np.asarray(Image.fromarray(gray).resize((9, 8), Image.BILINEAR), dtype=np.int16)
    return _bits(small[:, 1:] > small[:, :-1])


def phash(gray: np.ndarray) -> int:
    """64-bit DCT hash: the 8x8 lowest frequencies (without DC) against their median."""
    from scipy.fft import dctn

    coefficients = dctn(gray.astype(np.float64), norm="ortho")[:8, :8].reshape(-1)
    ac = coefficients[1:]
    return _bits(np.concatenate([[False], ac > np.median(ac)]))


def facts(path: Path) -> ImageFacts:
    """Decode one file as training does and describe it; raises UnreadableImage for a bad file."""
    try:
        with Image.open(path) as img:
            img.seek(0)
            img.load()
            mode = img.mode
            rgb = to_rgb(ImageOps.exif_transpose(img))
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as exc:
        raise UnreadableImage(f"{type(exc).__name__}: {exc}") from exc
    data = rgb.tobytes()
    digest = hashlib.blake2b(f"{rgb.width}x{rgb.height}".encode() + data, digest_size=16).digest()
    gray = np.asarray(rgb.convert("L").resize((HASH_SIDE, HASH_SIDE), Image.BOX), dtype=np.uint8)
    mirror = np.ascontiguousarray(gray[:, ::-1])
    return ImageFacts(digest, dhash(gray), dhash(mirror), phash(gray), phash(mirror), rgb.width, rgb.height, mode)
