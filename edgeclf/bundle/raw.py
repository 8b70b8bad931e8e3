"""Raw golden inputs: source image files as they were, for replaying the app's whole pipeline.

A few golden images also travel as their original bytes (EXIF intact), with the model-input
tensor training's pipeline makes from them, the expected outputs (the golden vector's) and,
for the diagnosis, the tensor each known app mistake makes from the same file. golden.json
gains the whole preprocessing contract and a tensor tolerance measured at bundle time: how
far other real JPEG decoders (OpenCV's libjpeg-turbo, Skia's codec, which Android uses, and
libjpeg's fast IDCT and plain upsampling, through TensorFlow) land from Pillow's on these very
files, through the same resize kernel.

The bundle ships pipeline/preprocess.py and golden_replay.py (plain Python, numpy and
Pillow) so check_golden.py replays the raw files with training's own code.
"""
from __future__ import annotations

import hashlib
import io
import json
from importlib import resources
from pathlib import Path

import numpy as np
from PIL import Image

from edgeclf import console
from edgeclf.bundle import GOLDEN_DIR, GOLDEN_FILE, golden
from edgeclf.devices.runtimes.tflite import quantize_input
from edgeclf.lastmile.mistakes import applicable, mistakes
from edgeclf.pipeline import preprocess, resize

RAW_DIR = "raw"
# The bundle stays small: a few files, none large (a phone photo is 2-5 MB; pets3's are < 0.3 MB).
MAX_IMAGES = 4
MAX_BYTES = 2_000_000
REPLAY_FILES = ("preprocess.py", "golden_replay.py")
LOSSY = ("JPEG", "WEBP")
# Added to the largest measured decoder difference, for decoders and builds not measured here.
MEAN_MARGIN, MAX_MARGIN = 0.25, 2
EXIF_ORIENTATION = 0x0112
ORIENT = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
          5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
          8: Image.Transpose.ROTATE_90}


def contract(manifest: dict, kernel: str, input_rule: str) -> dict:
    """The whole preprocessing contract, in fields and words, as training applies it."""
    inp = manifest["input"]
    return {
        "decoder": f"Pillow {Image.__version__} (Image.open; the first frame of an animated GIF/WebP)",
        "exif": "EXIF orientation applied first (ImageOps.exif_transpose): the image as a viewer shows it",
        "colour": {
            "order": "RGB (not BGR)",
            "alpha": "RGBA, LA and transparent palette images composited on white",
            "cmyk": "Pillow's CMYK to RGB conversion (no ICC colour management)",
            "16-bit": "16-bit grey scaled by 1/257 and rounded to 8 bits (not clipped)",
            "palette": "expanded to RGB",
            "icc": "embedded ICC profiles ignored",
        },
        "resize": resize.contract(kernel),
        "layout": "NHWC (1, H, W, 3)",
        "normalisation": "none outside the model: raw 0-255 values (the model normalises inside)",
        "dtype": inp["dtype"],
        "quantization": inp.get("quantization"),
        "tensor": input_rule,
    }


def _area(path: Path) -> int:
    with Image.open(path) as img:
        return img.width * img.height


def choose(paths: list[Path], labels: np.ndarray, count: int = MAX_IMAGES) -> tuple[list[int], list[str]]:
    """Golden images to ship raw: one per class in turn, each class's largest photos first (the more
    an image is scaled down, the further a resize mistake moves it from decoder noise), none over
    MAX_BYTES; and what was left out."""
    skipped = [f"{p.name} ({p.stat().st_size} bytes > {MAX_BYTES})" for p in paths if p.stat().st_size > MAX_BYTES]
    usable = [i for i in range(len(paths)) if paths[i].stat().st_size <= MAX_BYTES]
    by_size = sorted(usable, key=lambda i: (-_area(paths[i]), i))
    rank = {i: [j for j in by_size if labels[j] == labels[i]].index(i) for i in usable}
    order = sorted(usable, key=lambda i: (rank[i], by_size.index(i)))
    return sorted(order[:count]), skipped


def _oriented(pixels: np.ndarray, data: bytes, upright: tuple[int, int]) -> Image.Image:
    """A foreign decoder's pixels, turned upright by the file's EXIF orientation if it did not do so."""
    image = Image.fromarray(pixels, "RGB")
    with Image.open(io.BytesIO(data)) as img:
        orientation = int(img.getexif().get(EXIF_ORIENTATION, 1))
    if image.size != upright and orientation in ORIENT:
        image = image.transpose(ORIENT[orientation])
    return image


def _other_decoders(data: bytes, upright: tuple[int, int]) -> dict[str, Image.Image]:
    decoded = {}
    try:
        import cv2

        bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        decoded[f"opencv {cv2.__version__} imdecode"] = _oriented(np.ascontiguousarray(bgr[..., ::-1]), data, upright)
    except ImportError:
        pass
    try:
        import skia

        image = skia.Image.MakeFromEncoded(skia.Data.MakeWithCopy(data))
        rgba = image.toarray(colorType=skia.kRGBA_8888_ColorType, alphaType=skia.kUnpremul_AlphaType)
        decoded[f"skia {skia.__version__} codec"] = _oriented(np.ascontiguousarray(rgba[..., :3]), data, upright)
    except ImportError:
        pass
    with Image.open(io.BytesIO(data)) as img:
        jpeg = img.format == "JPEG"
    if jpeg:
        # libjpeg's other settings, which decoders ship with: the fast integer IDCT (TensorFlow's own
        # default, older Android builds) and plain instead of fancy chroma upsampling.
        from edgeclf import tfenv

        tf = tfenv.tf()
        for label, options in (("IFAST integer IDCT", {"dct_method": "INTEGER_FAST"}),
                               ("no fancy upsampling", {"dct_method": "INTEGER_ACCURATE", "fancy_upscaling": False})):
            pixels = tf.io.decode_jpeg(data, channels=3, **options).numpy()
            decoded[f"libjpeg {label} (tf.io.decode_jpeg)"] = _oriented(pixels, data, upright)
    return decoded


def decoded_elsewhere(data: bytes, size: int, kernel: str) -> dict[str, np.ndarray]:
    """The model-size pixels other real decoders make of a lossy file, through the same kernel.
    Lossless files decode to the same pixels everywhere: none."""
    with Image.open(io.BytesIO(data)) as img:
        if img.format not in LOSSY:
            return {}
    upright = preprocess.decode_rgb(data).size
    return {name: resize.fit(image, size, kernel) for name, image in _other_decoders(data, upright).items()}


def level_difference(pixels: np.ndarray, expected: np.ndarray) -> dict:
    diff = np.abs(pixels.astype(np.int64) - expected.astype(np.int64))
    return {"mean": round(float(diff.mean()), 4), "max": int(diff.max())}


def to_tensor(values: np.ndarray, inp: dict) -> np.ndarray:
    q = inp.get("quantization")
    return quantize_input(values[None], inp["dtype"], (q["scale"], q["zero_point"]) if q else None)


def write(staging: Path, split, record: dict, manifest: dict, kernel: str, table: dict | None, model_path: Path) -> dict:
    """golden/raw/ and the raw part of golden.json (which is rewritten); returns that part."""
    from edgeclf.devices.host import open_model

    model = open_model(model_path)
    out_dtype = manifest["output"]["dtype"]
    folder = staging / GOLDEN_DIR / RAW_DIR
    folder.mkdir()
    inp = manifest["input"]
    size = int(inp["shape"][1])
    chosen, skipped = choose(split.paths, split.labels)
    costs = {r["name"]: r for r in (table or {}).get("rows", [])}
    known = [m for m in mistakes(kernel) if applicable(m, inp["dtype"])]
    vectors, spreads, distances = [], {}, {}
    for i in chosen:
        vector = record["vectors"][i]
        source = Path(split.paths[i])
        data = source.read_bytes()
        name = f"{vector['id']}{source.suffix.lower()}"
        (folder / name).write_bytes(data)
        expected_pixels = split.images[i]
        reference = np.load(staging / vector["output"])[0]
        tensor = to_tensor(expected_pixels, inp)
        np.save(folder / f"{vector['id']}.tensor.npy", tensor)
        candidates = {}
        for mistake in known:
            # Pixel mistakes are stored as their uint8 pixels (the replay makes the tensor), 4x
            # smaller than a float tensor; the normalisation mistakes as the float values fed.
            made = mistake.read(source, size, kernel)
            if not np.array_equal(made, expected_pixels):  # e.g. EXIF ignored on a file without a rotation
                candidates[mistake.name] = made[None]
                diff = np.abs(made.astype(np.float64) - expected_pixels)
                distances.setdefault(mistake.name, []).append((float(diff.mean()), float(diff.max())))
        np.savez_compressed(folder / f"{vector['id']}.mistakes.npz", **candidates)
        for decoder, pixels in decoded_elsewhere(data, size, kernel).items():
            # How far that decoder moves the tensor, and the model's outputs (a tensor within the
            # tolerance may move an int8 output by more than the runtime alone does).
            output = model.invoke_raw(pixels[None])
            spreads.setdefault(decoder, []).append(level_difference(pixels, expected_pixels)
                                                   | {"output": golden.deviation(output, reference, out_dtype)})
        with Image.open(source) as img:
            stored = {"format": img.format, "width": img.width, "height": img.height,
                      "exif_orientation": int(img.getexif().get(EXIF_ORIENTATION, 1))}
        vectors.append({
            "id": vector["id"], "file": f"{GOLDEN_DIR}/{RAW_DIR}/{name}", "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest(), **stored,
            "tensor": f"{GOLDEN_DIR}/{RAW_DIR}/{vector['id']}.tensor.npy", "output": vector["output"],
            "mistakes": f"{GOLDEN_DIR}/{RAW_DIR}/{vector['id']}.mistakes.npz", "candidates": sorted(candidates),
            "true_label": vector["true_label"], "expected_top1": vector["expected_top_k"][0]["label"],
        })
    measured = {d: {k: max(m[k] for m in ms) for k in ("mean", "max", "output")} for d, ms in spreads.items()}
    tolerance = {"mean": round(max((m["mean"] for m in measured.values()), default=0.0) + MEAN_MARGIN, 4),
                 "max": max((m["max"] for m in measured.values()), default=0) + MAX_MARGIN}
    # A mistake whose pixels are within the tolerance on some file would pass there unnoticed.
    separation = {name: {"mean": round(min(d[0] for d in ds), 4), "max": min(d[1] for d in ds)}
                  for name, ds in sorted(distances.items())}
    hidden = [name for name, ds in distances.items()
              if any(mean <= tolerance["mean"] and worst <= tolerance["max"] for mean, worst in ds)]
    if hidden:
        console.warn(f"raw golden images: {', '.join(hidden)} stay within the replay's tolerance on some of these "
                     "files, so the replay cannot catch them there")
    raw = {
        "count": len(vectors),
        "limits": {"max_images": MAX_IMAGES, "max_bytes": MAX_BYTES, "left_out": skipped,
                   "why": "the bundle stays small: a few source files, each at most max_bytes"},
        "tolerance": {
            "unit": "0-255 levels of the model-input tensor (dequantized)",
            **tolerance,
            "measured_decoders": measured,
            "output": max((m["output"] for m in measured.values()), default=0),
            "output_unit": record["tolerance"]["unit"],
            "mistake_separation": separation,
            "undetectable": hidden,
            "rule": "a tensor passes if its mean and its max absolute difference from the expected tensor are within "
                    f"these: the largest difference other real decoders make on these files (plus {MEAN_MARGIN} mean, "
                    f"{MAX_MARGIN} max); lossless files decode exactly everywhere. mistake_separation: the smallest "
                    "mean and max each known mistake moves these files' pixels (it must exceed the tolerance to be "
                    "caught); undetectable: the mistakes that do not on some file. output: the largest output "
                    "deviation those decoders' tensors cause, added to the runtime's tolerance when a tensor passes "
                    "without being identical",
        },
        "mistakes": [{"name": m.name, "kind": m.kind, "what": m.what,
                      **{k: (costs.get(m.name) or {}).get(k) for k in ("top1", "agreement", "drop", "within_noise")}}
                     for m in known],
        "cost_split": (table or {}).get("split"),
        "training_top1": (costs.get("training") or {}).get("top1"),
        "vectors": vectors,
    }
    record["preprocessing"] = contract(manifest, kernel, record["input"]["tensor"])
    record["raw"] = raw
    (staging / GOLDEN_DIR / GOLDEN_FILE).write_text(json.dumps(record, indent=1) + "\n")
    for name in REPLAY_FILES:
        source = resources.files("edgeclf.pipeline").joinpath(name) if name == "preprocess.py" else \
            resources.files("edgeclf.bundle").joinpath("templates", name)
        (staging / name).write_bytes(source.read_bytes())
    console.info(f"raw golden inputs: {len(vectors)} source files"
                 + (f" ({len(skipped)} over {MAX_BYTES} bytes left out)" if skipped else ""))
    return raw
