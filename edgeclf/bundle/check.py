"""`edgeclf check-bundle`: replay a bundle's golden vectors on a device through the usual runner."""
from __future__ import annotations

import contextlib
import hashlib
import json
import stat
import tempfile
import zipfile
from pathlib import Path, PurePosixPath

import numpy as np

from edgeclf import console, exporters, records
from edgeclf.artefacts import MANIFEST_FILE
from edgeclf.bundle import BUNDLE_FILE, GOLDEN_DIR, GOLDEN_FILE, SUMS_FILE, BundleError, golden
from edgeclf.devices import DeviceOptions, open_device
from edgeclf.outputs import is_plain_mode
from edgeclf.pipeline.runs import LABELS_FILE, read_labels

REMAKE = "re-create it with `edgeclf bundle`"


@contextlib.contextmanager
def opened(bundle):
    """The bundle as a folder: itself, or a zip extracted to a temp dir (members checked first)."""
    path = Path(bundle).expanduser()
    if path.is_dir():
        yield path
        return
    if not path.is_file():
        raise BundleError(f"bundle {path} does not exist", "pass a folder or .zip written by `edgeclf bundle`")
    if not zipfile.is_zipfile(path):
        raise BundleError(f"{path} is neither a bundle folder nor a zip", "pass a folder or .zip written by `edgeclf bundle`")
    with zipfile.ZipFile(path) as archive, tempfile.TemporaryDirectory(prefix="edgeclf-bundle-") as work:
        for member in archive.infolist():
            name, parts, mode = member.filename, PurePosixPath(member.filename).parts, member.external_attr >> 16
            if name.startswith("/") or ".." in parts or not parts or parts[0] != path.stem:
                raise BundleError(f"{path} holds {name!r}, which is outside the bundle folder {path.stem}/", REMAKE)
            if stat.S_IFMT(mode) and not is_plain_mode(mode):  # the output rule: regular files and folders only
                raise BundleError(f"{path} holds {name!r}, which is a link or special file, not a regular file", REMAKE)
        archive.extractall(work)
        yield Path(work) / path.stem


def verify(directory: Path) -> list[str]:
    """Check the marker and every SHA256SUMS entry; returns the files checked."""
    for name in (BUNDLE_FILE, SUMS_FILE):
        if not (directory / name).is_file():
            raise BundleError(f"{directory} is not an edgeclf bundle (no {name})", "pass a folder or .zip written by `edgeclf bundle`")
    checked = []
    for line in (directory / SUMS_FILE).read_text().splitlines():
        digest, _, name = line.partition("  ")
        path = directory / name
        if not name or PurePosixPath(name).is_absolute() or ".." in PurePosixPath(name).parts:
            raise BundleError(f"{SUMS_FILE} in {directory} has a bad line {line!r}", REMAKE)
        if not path.is_file():
            raise BundleError(f"the bundle is missing {name}", REMAKE)
        if hashlib.sha256(path.read_bytes()).hexdigest() != digest:
            raise BundleError(f"{name} in the bundle does not match {SUMS_FILE} (changed after bundling)", REMAKE)
        checked.append(name)
    for name in (MANIFEST_FILE, LABELS_FILE, f"{GOLDEN_DIR}/{GOLDEN_FILE}"):
        if name not in checked:
            raise BundleError(f"the bundle's {SUMS_FILE} does not cover {name}", REMAKE)
    return checked


def check_bundle(bundle, device: str = "local", threads: int | None = None, options: DeviceOptions | None = None) -> dict:
    with opened(bundle) as directory:
        verify(directory)
        manifest = json.loads((directory / MANIFEST_FILE).read_text())
        record = json.loads((directory / GOLDEN_DIR / GOLDEN_FILE).read_text())
        records.version(manifest, "manifest", f"the bundle's {MANIFEST_FILE}")
        records.version(record, "golden", f"the bundle's {GOLDEN_FILE}")
        labels = read_labels(directory / LABELS_FILE)
        vectors = record["vectors"]
        pixels = np.concatenate([np.load(directory / v["input"]) for v in vectors])
        expected = np.concatenate([np.load(directory / v["output"]) for v in vectors])
        model_path = directory / manifest["model_file"]
        target = open_device(device, options or DeviceOptions())
        console.info(f"replaying {len(vectors)} golden vectors of {model_path.name} on {target.transport.name}")
        fmt = exporters.for_path(model_path)
        result = target.run(fmt, fmt.model_files(model_path), pixels, 1, 0, threads, raw_outputs=True)
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
