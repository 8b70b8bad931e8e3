"""Training's preprocessing, standalone: decode a file to upright RGB and resize it by a named kernel.

This module imports nothing from edgeclf (numpy and Pillow; OpenCV, Skia or TensorFlow only
for their own kernels), because `edgeclf bundle` ships it unchanged next to check_golden.py:
the bundle's replay of raw golden images runs this very code, not a copy of it.
pipeline/resize.py holds the registry (names, calls, platforms) over these functions.
"""
import io

import numpy as np
from PIL import Image, ImageOps

SQUASH = "squash"
ASPECTS = (SQUASH, "centre-crop", "letterbox")


def to_rgb(img):
    """Any Pillow mode as 8-bit RGB: 16-bit grey scaled (not clipped), transparency put on white."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        # 16/32-bit grayscale: scale to 8 bits instead of letting PIL clip everything above 255.
        values = np.asarray(img, dtype=np.float64)
        if img.mode.startswith("I;16") or values.max(initial=0) > 255:
            values = values / 257.0
        gray = np.clip(np.rint(values), 0, 255).astype(np.uint8)
        return Image.fromarray(gray, "L").convert("RGB")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        # Transparent pixels carry arbitrary colour; put them on white, as a viewer would show them.
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def decode_rgb(source, orient=True):
    """A file (path or bytes): first frame, EXIF orientation applied unless `orient=False`, as RGB."""
    with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as img:
        img.seek(0)  # GIF/WebP animations: first frame
        img.load()
        if orient:
            img = ImageOps.exif_transpose(img)
        return to_rgb(img)


def _pil(method):
    return lambda image, width, height: np.asarray(image.resize((width, height), method), dtype=np.uint8)


def _opencv(flag):
    def run(image, width, height):
        import cv2

        return np.ascontiguousarray(cv2.resize(np.asarray(image), (width, height), interpolation=getattr(cv2, flag)))
    return run


def _skia(mipmaps):
    """As Android's Bitmap.createScaledBitmap(src, w, h, filter=true) does it: a scale matrix on a
    canvas, then drawBitmap(src, srcRect, dstRect) with bilinear sampling and, unless asked, no mipmaps."""
    def run(image, width, height):
        import skia

        rgb = np.asarray(image)
        rgba = np.ascontiguousarray(np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)]))
        # fromarray takes N32 (BGRA here) unless told otherwise.
        source = skia.Image.fromarray(rgba, colorType=skia.kRGBA_8888_ColorType, alphaType=skia.kOpaque_AlphaType)
        info = skia.ImageInfo.Make(width, height, skia.kRGBA_8888_ColorType, skia.kPremul_AlphaType)
        surface = skia.Surface.MakeRaster(info)
        canvas = surface.getCanvas()
        canvas.scale(width / rgb.shape[1], height / rgb.shape[0])
        bounds = skia.Rect(0, 0, rgb.shape[1], rgb.shape[0])
        sampling = skia.SamplingOptions(skia.FilterMode.kLinear,
                                        skia.MipmapMode.kLinear if mipmaps else skia.MipmapMode.kNone)
        canvas.drawImageRect(source, bounds, bounds, sampling, skia.Paint(), skia.Canvas.kFast_SrcRectConstraint)
        return np.ascontiguousarray(surface.makeImageSnapshot().toarray(colorType=skia.kRGBA_8888_ColorType)[..., :3])
    return run


def _tf_bilinear(image, width, height):
    try:
        from edgeclf import tfenv  # inside edgeclf: its TensorFlow settings

        tf = tfenv.tf()
    except ImportError:  # in a bundle
        import tensorflow as tf
    resized = tf.image.resize(np.asarray(image)[None], (height, width), method="bilinear", antialias=False)[0]
    return np.clip(np.rint(resized.numpy()), 0, 255).astype(np.uint8)


# name -> (function(RGB image, width, height) -> (h, w, 3) uint8, the module it needs)
RESIZERS = {
    "pil-bilinear": (_pil(Image.BILINEAR), "PIL"),
    "pil-bicubic": (_pil(Image.BICUBIC), "PIL"),
    "pil-lanczos": (_pil(Image.LANCZOS), "PIL"),
    "nearest": (_pil(Image.NEAREST), "PIL"),
    "opencv-linear": (_opencv("INTER_LINEAR"), "cv2"),
    "opencv-area": (_opencv("INTER_AREA"), "cv2"),
    "android": (_skia(False), "skia"),
    "android-mipmap": (_skia(True), "skia"),
    "tf-bilinear": (_tf_bilinear, "tensorflow"),
}
PIL_FILTERS = {"pil-bilinear": Image.BILINEAR, "pil-bicubic": Image.BICUBIC, "pil-lanczos": Image.LANCZOS,
               "nearest": Image.NEAREST}


def apply_aspect(image, aspect):
    """The image `aspect` makes square before resizing (squash: unchanged)."""
    width, height = image.size
    if aspect == SQUASH or width == height:
        return image
    if aspect == "centre-crop":
        side = min(width, height)
        left, top = (width - side) // 2, (height - side) // 2
        return image.crop((left, top, left + side, top + side))
    side = max(width, height)
    canvas = Image.new("RGB", (side, side), (0, 0, 0))
    canvas.paste(image, ((side - width) // 2, (side - height) // 2))
    return canvas


def fit(image, size, kernel="pil-bilinear", aspect=SQUASH):
    """An RGB image as a (size, size, 3) uint8 array; an image already that size is not resampled."""
    image = apply_aspect(image, aspect)
    if image.size == (size, size):
        return np.asarray(image, dtype=np.uint8)
    return RESIZERS[kernel][0](image, size, size)
