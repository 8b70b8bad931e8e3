"""Splits too big for memory: decoded pixels in a file (`--cache disk`) or decoded on every read
(`--cache none`), behind the same array interface as an in-memory split.

Both stores hand out exactly the pixels `load_image` gives, so `memory`, `disk` and `none`
train on the same data in the same order. `auto` keeps a split in memory while every split
of the run together fits MEMORY_FRACTION of the memory available, and otherwise uses `disk`
(training, which reads every image once per epoch) or `none` (one-pass scoring).
"""
from __future__ import annotations

import contextlib
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from edgeclf import console
from edgeclf.errors import DatasetError, UsageError
from edgeclf.pipeline.datasets import DecodedSplit, Sample, decode
from edgeclf.pipeline.images import UnreadableImage, load_image
from edgeclf.pipeline.resize import DEFAULT as DEFAULT_RESIZE

CACHE_MODES = ("auto", "memory", "disk", "none")
MEMORY_FRACTION = 0.25  # of the available memory, for `auto`: room for the model, batches and other work
STORE_SUFFIX = ".u8"
THREADS = os.cpu_count() or 2


def decoded_bytes(n_images: int, img_size: int) -> int:
    return n_images * img_size * img_size * 3


def available_memory() -> int:
    """Bytes the kernel says a new allocation can take without swapping (MemAvailable)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def choose_cache(mode: str, n_images: int, img_size: int, streamed: str = "disk", available: int | None = None) -> str:
    """Resolve `auto` to `memory` if the decoded images fit the budget, else to `streamed`."""
    if mode not in CACHE_MODES:
        raise UsageError(f"--cache {mode} is not supported", f"use one of {', '.join(CACHE_MODES)}")
    if mode != "auto":
        return mode
    budget = MEMORY_FRACTION * (available_memory() if available is None else available)
    return "memory" if decoded_bytes(n_images, img_size) <= budget else streamed


def load_splits(samples: dict[str, list[Sample]], roots: dict[str, Path], classes: list[str], img_size: int,
                mode: str, cache_dir: Path | None = None, streamed: str = "disk",
                resize: str = DEFAULT_RESIZE) -> dict[str, DecodedSplit]:
    """Every split of a run, held as `mode` says (resolved once for all splits together)."""
    total = sum(len(s) for s in samples.values())
    chosen = choose_cache(mode, total, img_size, streamed)
    if chosen != mode and chosen != "memory":
        console.info(f"--cache auto: {chosen} ({decoded_bytes(total, img_size) / 1e9:.2f} GB of decoded images)")
    return {name: load_split(name, roots[name], classes, s, img_size, chosen, cache_dir, resize) for name, s in samples.items()}


def load_split(name: str, root: Path, classes: list[str], samples: list[Sample], img_size: int, mode: str,
               cache_dir: Path | None = None, resize: str = DEFAULT_RESIZE) -> DecodedSplit:
    if mode == "memory":
        return decode(name, root, classes, samples, img_size, resize=resize)
    if mode == "disk":
        if cache_dir is None:
            raise UsageError("--cache disk needs a directory for its cache file", "use --cache memory or none here")
        cache_dir.mkdir(parents=True, exist_ok=True)
        store = DiskImages.create(cache_dir / f"{name}{STORE_SUFFIX}", len(samples), img_size)
        return decode(name, root, classes, samples, img_size, store=store, resize=resize)
    if mode == "none":
        store = LazyImages([s.path for s in samples], img_size, resize=resize)
        return decode(f"{name} (checking)", root, classes, samples, img_size, store=store, read=check_image)
    raise UsageError(f"--cache {mode} is not supported", f"use one of {', '.join(CACHE_MODES)}")


def check_image(path: Path, size: int, resize: str | None = None) -> None:
    """The cheap scan for `--cache none`: headers and checksums, and a reduced-size decode of JPEGs
    (their truncation shows only when decoding); raises UnreadableImage like `load_image`."""
    try:
        with Image.open(path) as img:
            img.verify()
        with Image.open(path) as img:
            if img.format == "JPEG":
                img.draft("RGB", (size, size))
                img.load()
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as exc:
        raise UnreadableImage(f"{type(exc).__name__}: {exc}") from exc


class _Rows:
    """Array-like access by image index: ints, slices and integer arrays give uint8 arrays."""

    img_size: int
    rows: np.ndarray

    @property
    def shape(self) -> tuple:
        return (len(self.rows), self.img_size, self.img_size, 3)

    dtype = np.dtype(np.uint8)
    ndim = 4
    failure: DatasetError | None = None  # the last read that failed inside a tf.data pipeline

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key):
        if isinstance(key, (int, np.integer)):
            return self._read(self.rows[[key]])[0]
        if isinstance(key, tuple):
            raise TypeError("streamed images take one index (int, slice or integer array)")
        return self._read(self.rows[key] if isinstance(key, slice) else self.rows[np.asarray(key, dtype=np.int64)])

    def __array__(self, dtype=None, copy=None):
        # Reading a whole streamed split at once defeats its purpose; allowed, but only on demand.
        pixels = self[:]
        return pixels if dtype is None else pixels.astype(dtype)

    def astype(self, dtype):
        return self[:].astype(dtype)

    def _read(self, rows: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class DiskImages(_Rows):
    """Decoded pixels in one raw uint8 file, N x H x W x 3, read with pread (no mmap, so what is
    read does not stay in this process's memory)."""

    def __init__(self, path: Path, img_size: int, rows: np.ndarray):
        self.path = Path(path)
        self.img_size = img_size
        self.rows = rows
        self.row_bytes = decoded_bytes(1, img_size)

    @classmethod
    def create(cls, path: Path, n_images: int, img_size: int) -> DiskImages:
        with open(path, "wb") as f:
            f.truncate(decoded_bytes(n_images, img_size))
        return cls(path, img_size, np.arange(n_images))

    def __setitem__(self, index: int, pixels: np.ndarray) -> None:
        # `decode` fills the store one image at a time, from several threads.
        fd = os.open(self.path, os.O_WRONLY)
        try:
            os.pwrite(fd, np.ascontiguousarray(pixels, dtype=np.uint8).tobytes(), int(self.rows[index]) * self.row_bytes)
        finally:
            os.close(fd)

    def _read(self, rows: np.ndarray) -> np.ndarray:
        out = np.empty((len(rows), self.img_size, self.img_size, 3), dtype=np.uint8)
        fd = os.open(self.path, os.O_RDONLY)
        try:
            for i, row in enumerate(rows):
                out[i] = np.frombuffer(os.pread(fd, self.row_bytes, int(row) * self.row_bytes), np.uint8).reshape(out.shape[1:])
        finally:
            os.close(fd)
        return out

    def select(self, keep: np.ndarray) -> DiskImages:
        return DiskImages(self.path, self.img_size, self.rows[keep])


class LazyImages(_Rows):
    """`--cache none`: every read decodes the files again, in threads, with `load_image`."""

    def __init__(self, paths: list[Path], img_size: int, rows: np.ndarray | None = None, resize: str = DEFAULT_RESIZE):
        self.paths = paths
        self.img_size = img_size
        self.rows = np.arange(len(paths)) if rows is None else rows
        self.resize = resize

    def __setitem__(self, index: int, checked) -> None:
        pass  # the scan only checks files; their pixels are decoded when read

    def select(self, keep: np.ndarray) -> LazyImages:
        return LazyImages(self.paths, self.img_size, self.rows[keep], self.resize)

    def _read(self, rows: np.ndarray) -> np.ndarray:
        out = np.empty((len(rows), self.img_size, self.img_size, 3), dtype=np.uint8)

        def one(i: int) -> None:
            path = self.paths[int(rows[i])]
            try:
                out[i] = load_image(path, self.img_size, self.resize)
            except UnreadableImage as exc:
                raise DatasetError(f"{path} passed the scan but cannot be decoded ({exc})",
                                   "remove it, or train with --cache disk, which decodes everything first") from exc

        if len(rows) == 1:
            one(0)
        else:
            with ThreadPoolExecutor(max_workers=THREADS) as pool:
                list(pool.map(one, range(len(rows))))
        return out


def is_streamed(images) -> bool:
    return isinstance(images, _Rows)


def reader(tf, images):
    """`idx -> uint8 pixels` inside a tf.data map: `tf.gather` on a tensor, a read of a streamed store."""
    if not is_streamed(images):
        return lambda idx: tf.gather(images, idx)
    size = images.img_size

    def fetch(rows):
        try:
            return images[rows]
        except DatasetError as exc:
            images.failure = exc  # TensorFlow re-raises it as its own error; see surface_read_errors
            raise

    def read(idx):
        pixels = tf.numpy_function(fetch, [idx], tf.uint8, stateful=False)
        pixels.set_shape([None, size, size, 3])
        return pixels

    return read


@contextlib.contextmanager
def surface_read_errors(tf, *stores):
    """A streamed read that fails inside tf.data reaches Keras as a TensorFlow error with our
    message buried in it; raise the original DatasetError instead, so the user gets one line."""
    try:
        yield
    except tf.errors.OpError:
        for store in stores:
            if is_streamed(store) and store.failure is not None:
                raise store.failure from None
        raise
