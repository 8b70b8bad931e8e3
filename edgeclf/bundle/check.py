"""`edgeclf check-bundle`: replay a bundle's golden vectors on a device through the usual runner."""
from __future__ import annotations

import contextlib
import tempfile
import zipfile
from pathlib import Path, PurePosixPath

import numpy as np

from edgeclf import console, exporters
from edgeclf.artefacts import MANIFEST_FILE, model_in_folder, read_manifest
from edgeclf.bundle import BUNDLE_FILE, GOLDEN_DIR, GOLDEN_FILE, SUMS_FILE, BundleError, archive, golden, parse_sums_line
from edgeclf.devices import DeviceOptions, Measure, open_device
from edgeclf.errors import first_line
from edgeclf.layout import sha256_file
from edgeclf.pipeline.runs import LABELS_FILE, read_labels

REMAKE = "re-create it with `edgeclf bundle`"


@contextlib.contextmanager
def opened(bundle):
    """The bundle as a folder: itself, or a zip unpacked (bounded, members confined) to a temp dir."""
    path = Path(bundle).expanduser()
    if path.is_dir():
        yield path
        return
    if not path.is_file():
        raise BundleError(f"bundle {path} does not exist", "pass a folder or .zip written by `edgeclf bundle`")
    if not zipfile.is_zipfile(path):
        raise BundleError(f"{path} is neither a bundle folder nor a zip", "pass a folder or .zip written by `edgeclf bundle`")
    with tempfile.TemporaryDirectory(prefix="edgeclf-bundle-") as work:
        yield archive.extract(path, Path(work))


def verify(directory: Path) -> set[str]:
    """Check the marker and every SHA256SUMS entry; returns the names it verified.

    What check-bundle then reads must be among them (`covered`): a file swapped or added
    after bundling is tampering, never blamed on the device.
    """
    for name in (BUNDLE_FILE, SUMS_FILE):
        if not (directory / name).is_file():
            raise BundleError(f"{directory} is not an edgeclf bundle (no {name})", "pass a folder or .zip written by `edgeclf bundle`")
    try:
        with open(directory / SUMS_FILE, encoding="utf-8", newline="") as f:
            lines = [line for line in f.read().split("\n") if line]
    except UnicodeDecodeError as exc:
        raise BundleError(f"{SUMS_FILE} in {directory} is not text", REMAKE) from exc
    checked = set()
    for line in lines:
        digest, name = parse_sums_line(line)
        pure = PurePosixPath(name)
        if not name or pure.is_absolute() or ".." in pure.parts or name in checked:
            raise BundleError(f"{SUMS_FILE} in {directory} has a bad line {line!r}", REMAKE)
        path = directory / name
        if path.is_symlink() or any(parent.is_symlink() for parent in path.parents if directory in parent.parents):
            raise BundleError(f"{name} in the bundle is a symlink", REMAKE)
        if not path.is_file():
            raise BundleError(f"the bundle is missing {name}", REMAKE)
        if sha256_file(path) != digest:
            raise BundleError(f"{name} in the bundle does not match {SUMS_FILE} (changed after bundling)", REMAKE)
        checked.add(name)
    stray = sorted(p.relative_to(directory).as_posix() for p in directory.rglob("*")
                   if (p.is_file() or p.is_symlink()) and p.relative_to(directory).as_posix() not in checked | {SUMS_FILE})
    if stray:
        console.warn(f"{len(stray)} file(s) of the bundle are not in {SUMS_FILE} and are ignored (e.g. {stray[0]!r})")
    covered(checked, MANIFEST_FILE, LABELS_FILE, f"{GOLDEN_DIR}/{GOLDEN_FILE}", what="the bundle's")
    return checked


def covered(checked: set[str], *names, what: str) -> None:
    for name in names:
        if name not in checked:
            raise BundleError(f"{what} {name!r} is not a file of the bundle listed in {SUMS_FILE} (added or renamed after bundling?)", REMAKE)


def model_files(directory: Path, manifest: dict, checked: set[str]) -> Path:
    """The manifest's model file (and companions): inside the bundle, listed in SHA256SUMS and
    still the bytes the manifest recorded at export."""
    model_path = model_in_folder(directory, manifest["model_file"], directory / MANIFEST_FILE)
    for path in exporters.for_path(model_path).model_files(model_path):
        name = path.relative_to(directory).as_posix()
        covered(checked, name, what="model file")
        recorded = ((manifest.get("files") or {}).get(name) or {}).get("sha256")
        if recorded is not None and recorded != sha256_file(path):
            raise BundleError(f"{name} in the bundle is not the model its manifest.json records (swapped after export)", REMAKE)
    return model_path


def load_vectors(directory: Path, record: dict, manifest: dict, checked: set[str]) -> tuple[np.ndarray, np.ndarray]:
    """Every vector's input and expected output, from files of the bundle only, checked for shape."""
    inputs, outputs = [], []
    shape = tuple(manifest["input"]["shape"])
    for vector in record["vectors"]:
        covered(checked, vector["input"], vector["output"], what=f"golden vector {vector['id']}'s file")
        try:
            pixels = np.load(directory / vector["input"], allow_pickle=False)
            expected = np.load(directory / vector["output"], allow_pickle=False)
        except (OSError, ValueError, EOFError) as exc:
            raise BundleError(f"golden vector {vector['id']} is not a readable .npy ({first_line(exc)})", REMAKE) from exc
        if pixels.dtype != np.uint8 or pixels.shape != (1, *shape[1:]) or expected.shape != (1, len(record["labels"])):
            raise BundleError(f"golden vector {vector['id']} has pixels {pixels.dtype} {pixels.shape} and output {expected.shape}, "
                              f"not uint8 {(1, *shape[1:])} and {(1, len(record['labels']))}", REMAKE)
        inputs.append(pixels)
        outputs.append(expected)
    return np.concatenate(inputs), np.concatenate(outputs)


def check_bundle(bundle, device: str = "local", threads: int | None = None, options: DeviceOptions | None = None) -> dict:
    how = Measure(runs=1, warmup=0, threads=threads, options=options or DeviceOptions())  # one pass over the vectors
    with opened(bundle) as directory:
        checked = verify(directory)
        manifest = read_manifest(directory / MANIFEST_FILE)
        record = golden.read(directory / GOLDEN_DIR / GOLDEN_FILE)
        labels = read_labels(directory / LABELS_FILE)
        model_path = model_files(directory, manifest, checked)
        vectors = record["vectors"]
        pixels, expected = load_vectors(directory, record, manifest, checked)
        target = open_device(device, how.options)
        console.info(f"replaying {len(vectors)} golden vectors of {model_path.name} on {target.transport.name}")
        fmt = exporters.for_path(model_path)
        result = target.run(fmt, fmt.model_files(model_path), pixels, how.runs, how.warmup, how.threads, raw_outputs=True)
    dtype = record["output"]["dtype"]
    exact = golden.is_reference(record, result.runtime.get("name"), result.runtime.get("version"), result.device.get("arch"))
    tol = record["tolerance"]["reference" if exact else "other"]
    rows = []
    for vector, got, want in zip(vectors, np.asarray(result.predictions), expected):
        worst = golden.deviation(got, want, dtype)
        predicted = int(np.argmax(got))
        named = labels[predicted] if predicted < len(labels) else "?"
        allowed = {record["labels"][i] for i in golden.top1_acceptable(want, tol)}
        rows.append({"id": vector["id"], "expected": vector["expected_top_k"][0]["label"], "top1": named,
                     "deviation": worst, "passed": bool(worst <= tol and named in allowed)})
    failed = [r for r in rows if not r["passed"]]
    return {
        "bundle": str(bundle),
        "device": result.device,
        "emulated": result.extra.get("emulated"),
        "runtime": result.runtime,
        "reference": record["reference"],
        "on_reference": exact,
        "tolerance": {"value": tol, "unit": record["tolerance"]["unit"]},
        "max_deviation": max((r["deviation"] for r in rows), default=0),
        "vectors": rows,
        "passed": len(rows) - len(failed),
        "failed": len(failed),
    }
