"""`edgeclf validate`: accuracy on real images and latency, measured on the target device itself."""
from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np

from edgeclf import console
from edgeclf.artefacts import Artefact
from edgeclf.devices import DeviceOptions, open_device
from edgeclf.errors import UsageError
from edgeclf.pipeline.datasets import DecodedSplit, decode, map_to_labels, scan_folder
from edgeclf.pipeline.metrics import score
from edgeclf.pipeline.runs import read_labels


def input_size(artefact: Artefact) -> int:
    if artefact.img_size:
        return artefact.img_size
    from edgeclf.pipeline.predict import open_model

    return int(open_model(artefact.model_path).input_shape[1])


def load_images(data_dir: str, labels: list[str], size: int) -> DecodedSplit:
    folder = map_to_labels(scan_folder(Path(data_dir), "validation data"), labels, "validation")
    return decode("validation", folder.root, labels, folder.samples, size)


def float_reference(artefact: Artefact, images: np.ndarray) -> np.ndarray | None:
    """The source run's float Keras predictions on the same images, when that run still exists."""
    source = (artefact.manifest or {}).get("source_run", {}).get("path")
    if not source or not (Path(source) / "model.keras").is_file():
        return None
    from edgeclf.pipeline.predict import predict_probs
    from edgeclf.pipeline.runs import Run

    return predict_probs(Run.open(source).load_model(), images)


class Prepared:
    """The host side of validating one artefact: model files, labels, decoded images and the
    float reference, made once and shared by every device that measures it."""

    def __init__(self, artefact_path, data_dir: str | None = None, labels_file: str | None = None):
        self.artefact_path = artefact_path
        self.artefact = Artefact.open(artefact_path)
        self.labels = self.artefact.labels or (read_labels(Path(labels_file)) if labels_file else None)
        if data_dir and self.labels is None:
            raise UsageError(f"{self.artefact.model_path.name} has no manifest, so its class names are unknown", "pass --labels labels.txt")
        self.split = load_images(data_dir, self.labels, input_size(self.artefact)) if data_dir else None
        self.files = self.artefact.format.model_files(self.artefact.model_path)
        self._reference = None
        self._lock = threading.Lock()

    def reference(self) -> np.ndarray | None:
        """Computed on first use (after the first device answered), once, whichever thread asks."""
        with self._lock:
            if self._reference is None and self.split is not None:
                self._reference = (float_reference(self.artefact, self.split.images),)
            return self._reference[0] if self._reference else None


def check_counts(runs: int, warmup: int, threads: int | None) -> None:
    if runs < 1 or warmup < 0:
        raise UsageError("--runs must be at least 1 and --warmup at least 0", "e.g. --runs 100 --warmup 10")
    if threads is not None and threads < 1:
        raise UsageError("--threads must be at least 1", "e.g. --threads 1")


def validate(artefact_path, device: str = "local", data_dir: str | None = None, runs: int = 100, warmup: int = 10,
             threads: int | None = None, labels_file: str | None = None, options: DeviceOptions | None = None) -> dict:
    check_counts(runs, warmup, threads)
    return measure(Prepared(artefact_path, data_dir, labels_file), device, runs, warmup, threads, options)


def measure(prepared: Prepared, device: str, runs: int = 100, warmup: int = 10, threads: int | None = None,
            options: DeviceOptions | None = None) -> dict:
    """Run a prepared artefact on one device and score its predictions; safe to call from a thread."""
    artefact, split, labels = prepared.artefact, prepared.split, prepared.labels
    target = open_device(device, options or DeviceOptions())
    console.info(f"running {artefact.model_path.name} on {target.transport.name}")
    files = prepared.files
    result = target.run(artefact.format, files, split.images if split is not None else None, runs, warmup, threads)
    accuracy = None
    if split is not None:
        metrics = score(result.predictions, split.labels, labels, prepared.reference())
        accuracy = {
            "top1": metrics["top1"],
            "top5": metrics.get("top5"),
            "agreement": metrics["agreement"],
            "n_images": metrics["n_images"],
            "where": "device",
            "confusion": metrics["confusion"],
            "skipped": len(split.skipped),
        }
    manifest = artefact.manifest or {}
    return {
        "artefact": str(prepared.artefact_path),
        "model_file": str(artefact.model_path),
        "format": manifest.get("target") or artefact.format.name,
        "quant": manifest.get("quant"),
        "model_bytes": sum(f.stat().st_size for f in files),  # OpenVINO: model.xml + model.bin
        "device": result.device,
        "emulated": result.extra["emulated"],
        "runtime": result.runtime,
        "threads": result.threads,
        "accuracy": accuracy,
        "latency_ms": result.latency_ms,
        "init_ms": result.init_ms,
        "peak_rss_mb": result.peak_rss_mb,
        "details": {k: v for k, v in result.extra.items() if k != "emulated"},
    }


def validate_on_devices(artefact_path, devices: list[str], data_dir: str | None = None, runs: int = 100, warmup: int = 10,
                        threads: int | None = None, labels_file: str | None = None,
                        options: DeviceOptions | None = None) -> dict:
    """The same artefact on several devices in parallel: one row per device, a failed one with its reason."""
    from edgeclf.jobs.fleet import run_on_devices

    check_counts(runs, warmup, threads)
    prepared = Prepared(artefact_path, data_dir, labels_file)
    prepared.reference()  # once, here, not in each device's thread
    started = time.perf_counter()
    outcomes = run_on_devices({name: [lambda name=name: measure(prepared, name, runs, warmup, threads, options)]
                               for name in devices}, on_done=_progress_line)
    rows = []
    for name in devices:
        outcome = outcomes[name][0]
        rows.append({"device_name": name, "status": "ok", "seconds": outcome.seconds, **outcome.result} if outcome.ok
                    else {"device_name": name, "status": outcome.error, "seconds": outcome.seconds})
    return {"artefact": str(artefact_path), "wall_s": round(time.perf_counter() - started, 2), "rows": rows}


def _progress_line(outcome) -> None:
    console.info(f"{outcome.device}: " + ("ok" if outcome.ok else f"failed: {outcome.error}") + f" ({outcome.seconds:.1f} s)")
