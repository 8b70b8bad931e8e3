"""One representative dataset for int8, adapted to each consumer.

Built once from images (the run's training split by default, or --calib-dir), with the
same decoding as training and no augmentation, sampled stratified and seeded, and cached
in the run directory keyed by everything that determines the pixels: each chosen file's bytes
and label, in order, the image size and the edgeclf version (an image overwritten under the
same name is a new key). The sample hash is a hash of the decoded pixels themselves. TFLite,
ONNX Runtime and NNCF all read from the same `CalibrationSet`, so the manifests of all three
formats carry the same sample hash.
"""
from __future__ import annotations

import hashlib
import json
import os
import uuid
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeclf import __version__, console
from edgeclf.errors import DatasetError, ModelError, UsageError
from edgeclf.pipeline.datasets import Sample, decode, scan_for_scoring, stratified_sample
from edgeclf.pipeline.runs import Run

RECOMMENDED_MIN = 100
CACHE_DIR = "cache"


@dataclass
class CalibrationSet:
    images: np.ndarray  # (N, H, W, 3) uint8 raw RGB, exactly as training decodes them (same resize kernel)
    source: str
    seed: int
    per_class: dict[str, int]
    sample_hash: str

    def __len__(self) -> int:
        return len(self.images)

    def summary(self) -> dict:
        return {
            "count": len(self),
            "source": self.source,
            "seed": self.seed,
            "per_class": self.per_class,
            "sample_hash": self.sample_hash,
        }

    def float_batches(self):
        """One (1, H, W, 3) float32 array per sample: the raw-pixel model input."""
        for image in self.images:
            yield image[None].astype(np.float32)

    def tflite_representative_dataset(self):
        """For TFLiteConverter.representative_dataset: a callable yielding input lists."""
        return lambda: ([x] for x in self.float_batches())


def build(run: Run, size: int = 300, calib_dir: str | None = None, seed: int | None = None) -> CalibrationSet:
    if size < 1:
        raise UsageError(f"--calib-size {size} must be at least 1", "e.g. --calib-size 300")
    seed = run.seed if seed is None else seed
    samples, root, source = _candidates(run, calib_dir)
    if size < RECOMMENDED_MIN:
        console.warn(
            f"--calib-size {size} is below {RECOMMENDED_MIN}: activation ranges from few images "
            "miss rare values and quantized accuracy can drop"
        )
    if size > len(samples):
        console.warn(f"--calib-size {size} is more than the {len(samples)} images available; using all of them")
    chosen = stratified_sample(samples, len(run.labels), size, seed)
    images, decoded = _cached_decode(run, _content_key(run, chosen), chosen, root)
    kept = [s for s, ok in zip(chosen, decoded) if ok]
    per_class = {name: 0 for name in run.labels}
    for sample in kept:
        per_class[run.labels[sample.label]] += 1
    return CalibrationSet(images, source, seed, per_class, pixels_digest(images))


def pixels_digest(images: np.ndarray) -> str:
    """A hash of the decoded pixels (and their shape): two sets hash alike only if the model sees the same inputs."""
    return hashlib.sha256(json.dumps(images.shape).encode() + np.ascontiguousarray(images).tobytes()).hexdigest()


def available(run: Run, calib_dir: str | None = None) -> int:
    """How many images a calibration set could be drawn from (the training split, or --calib-dir)."""
    return len(_candidates(run, calib_dir)[0])


def training_images_available(run: Run) -> bool:
    return run.plan is not None and all(s.path.exists() for s in run.plan.samples["train"][:1])


def pixel_range_probe(run: Run) -> CalibrationSet:
    """Synthetic inputs spanning raw pixels 0..255, for a QAT run whose images are gone.

    QAT learned every range inside the model. The converter still wants a representative
    dataset for full-integer output, and uses it only where no learned range exists: the
    in-graph preprocessing (Rescaling is a MUL then an ADD, with no range between them),
    which depends only on the pixel range. Black, white, ramps and seeded noise cover it.
    """
    size = run.img_size
    ramp = np.broadcast_to(np.linspace(0, 255, size, dtype=np.float32)[None, :, None], (size, size, 3))
    noise = np.random.default_rng(run.seed).integers(0, 256, (12, size, size, 3))
    images = np.concatenate([
        np.zeros((1, size, size, 3)), np.full((1, size, size, 3), 255.0), ramp[None], ramp.transpose(1, 0, 2)[None], noise,
    ]).round().astype(np.uint8)
    return CalibrationSet(images, "pixel-range probe (no images; QAT's learned ranges)", run.seed, {}, pixels_digest(images))


def _candidates(run: Run, calib_dir: str | None) -> tuple[list[Sample], Path, str]:
    if calib_dir:
        folder = scan_for_scoring(Path(calib_dir), run.labels, "calibration")
        return folder.samples, folder.root, str(folder.root)
    if run.plan is None:
        raise ModelError(f"{run.path} records no training split", "pass --calib-dir with images of the run's classes")
    if not training_images_available(run):
        raise DatasetError(
            f"the run's training images are no longer at {run.plan.roots['train']}",
            "pass --calib-dir with images of the run's classes",
        )
    return run.plan.samples["train"], run.plan.roots["train"], f"training split of {run.plan.roots['train']}"


def _content_key(run: Run, chosen: list[Sample]) -> str:
    """The cache key: every chosen file's bytes and label in order, and what decoding depends on.

    Reading the files is cheap next to decoding them, and unlike names, sizes or mtimes their
    bytes cannot stay the same while the pixels change.
    """
    h = hashlib.sha256(json.dumps({"img_size": run.img_size, "edgeclf": __version__, "resize": run.resize}).encode())
    for sample in chosen:
        h.update(f"{sample.label}\t{_file_digest(sample.path)}\n".encode())
    return h.hexdigest()[:16]


def _file_digest(path: Path) -> str:
    if not path.is_file():  # never open a FIFO or device: decode skips it with a warning
        return "not a file"
    try:
        with open(path, "rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()
    except OSError:  # likewise skipped; once readable it is another key
        return "unreadable"


def _cached_decode(run: Run, key: str, chosen: list[Sample], root: Path) -> tuple[np.ndarray, list[bool]]:
    """Decode the chosen images, or load them from the run's cache if they were decoded before."""
    cache = run.path / CACHE_DIR / f"calib-{key}.npz"
    if cache.is_file():
        try:
            with np.load(cache) as data:
                images, ok = data["images"], data["ok"].tolist()
            if len(ok) == len(chosen) and images.shape == (sum(ok), run.img_size, run.img_size, 3):
                return images, ok
        except (OSError, ValueError, KeyError, zipfile.BadZipFile):
            pass
        console.warn(f"{cache} is damaged; decoding the calibration images again")
    split = decode("calibration", root, run.labels, chosen, run.img_size, resize=run.resize)
    ok_paths = set(split.paths)
    ok = [s.path in ok_paths for s in chosen]
    try:
        cache.parent.mkdir(exist_ok=True)
        tmp = cache.with_name(f".{cache.stem}.{uuid.uuid4().hex[:8]}.npz")
        np.savez(tmp, images=split.images, ok=np.array(ok))
        os.replace(tmp, cache)
    except OSError as exc:  # a read-only run directory only costs speed
        console.warn(f"could not cache calibration images in {cache.parent}: {exc}")
    return split.images, ok
