"""`edgeclf validate`: accuracy on real images and latency, measured on the target device itself."""
from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np

from edgeclf import console
from edgeclf.artefacts import Artefact
from edgeclf.devices import DeviceOptions, Measure, open_device
from edgeclf.devices.targets import Target
from edgeclf.errors import ModelError, UsageError
from edgeclf.layout import sha256_file
from edgeclf.pipeline.datasets import DecodedSplit, decode, scan_for_scoring
from edgeclf.pipeline.leaks import leaked_paths, scores_without_leaks
from edgeclf.pipeline.metrics import PAIRED_KEYS, score
from edgeclf.pipeline.resize import DEFAULT as DEFAULT_RESIZE
from edgeclf.pipeline.runs import MODEL_FILE, check_label_count, output_classes, read_labels


def input_size(artefact: Artefact) -> int:
    if artefact.img_size:
        return artefact.img_size
    if artefact.format.io_tensors is not None:
        shapes = [tensor["shape"] for tensor in artefact.format.io_tensors(artefact.model_path)["inputs"]]
        if len(shapes) != 1 or len(shapes[0]) != 4 or min(shapes[0][1:3]) <= 0:
            raise ModelError(f"{artefact.model_path.name} does not take one (1, H, W, C) image (inputs: {shapes})",
                             "pass an image classifier, e.g. one from `edgeclf export`")
        return int(shapes[0][1])
    from edgeclf.devices.host import open_model

    return int(open_model(artefact.model_path).input_shape[1])


def declared_classes(artefact: Artefact) -> int | None:
    """The model's class count as its file (or manifest) states it, known before running it."""
    fmt = artefact.format
    io = fmt.io_tensors(artefact.model_path) if fmt.io_tensors is not None else None
    return output_classes(io["outputs"] if io else [(artefact.manifest or {}).get("output") or {}])


def labels_of(artefact: Artefact, labels_file: str | None) -> tuple[list[str] | None, str]:
    """The class names and where they came from: the manifest, else a --labels file."""
    if artefact.labels:
        return artefact.labels, f"the manifest of {artefact.model_path.parent}"
    if labels_file:
        return read_labels(Path(labels_file)), f"--labels {labels_file}"
    return None, ""


def load_images(data_dir: str, labels: list[str], size: int, resize: str = DEFAULT_RESIZE) -> DecodedSplit:
    folder = scan_for_scoring(Path(data_dir), labels, "validation")
    return decode("validation", folder.root, labels, folder.samples, size, resize=resize)


def source_run(artefact: Artefact):
    """The run the artefact was exported from, when that very run still exists.

    A run whose model.keras no longer has the hash the manifest recorded (retrained, or another
    run at the same path) is not this artefact's reference: agreement is then null, with a
    warning, rather than a number measured against the wrong model. The device's own accuracy
    and latency do not depend on it, so validation goes on.
    """
    source = (artefact.manifest or {}).get("source_run") or {}
    if not source.get("path"):
        return None
    model_file = Path(source["path"]) / MODEL_FILE
    if not model_file.is_file():
        console.info(f"agreement not measured: the source run {source['path']} is not here")
        return None
    if source.get("model_sha256") is None:
        console.warn("agreement not measured: the manifest records no hash of the source model "
                     "(re-export with this edgeclf to measure it)")
        return None
    if sha256_file(model_file) != source["model_sha256"]:
        console.warn(f"agreement not measured: {model_file} changed since the export "
                     "(retrained, or another run at that path); re-export to compare with it")
        return None
    from edgeclf.pipeline.runs import Run

    return Run.open(source["path"])


def float_reference(run, images: np.ndarray) -> np.ndarray | None:
    """The source run's float Keras predictions on the same images (None without the run)."""
    if run is None:
        return None
    from edgeclf.pipeline.predict import predict_probs

    return predict_probs(run.load_model(), images)


class Prepared:
    """The host side of validating one artefact: model files, labels, decoded images and the
    float reference, made once and shared by every device that measures it."""

    def __init__(self, artefact_path, data_dir: str | None = None, labels_file: str | None = None):
        self.artefact_path = artefact_path
        self.artefact = Artefact.open(artefact_path)
        self.labels, self.labels_source = labels_of(self.artefact, labels_file)
        if data_dir and self.labels is None:
            raise UsageError(f"{self.artefact.model_path.name} has no manifest, so its class names are unknown", "pass --labels labels.txt")
        if self.labels is not None:
            check_label_count(self.labels, declared_classes(self.artefact), self.labels_source)
        self.split = load_images(data_dir, self.labels, input_size(self.artefact), self.artefact.resize) if data_dir else None
        self.files = self.artefact.format.model_files(self.artefact.model_path)
        self._reference = None
        self._lock = threading.Lock()
        self._source_run = source_run(self.artefact) if self.split is not None else None
        # the scored images the source run's data audit found duplicating its training images
        self.leaked = leaked_paths(self._source_run.info) if self._source_run is not None else set()

    def reference(self) -> np.ndarray | None:
        """Computed on first use (after the first device answered), once, whichever thread asks."""
        with self._lock:
            if self._reference is None and self.split is not None:
                self._reference = (float_reference(self._source_run, self.split.images),)
            return self._reference[0] if self._reference else None


def validate(artefact_path, device: str = "local", data_dir: str | None = None, runs: int = 100, warmup: int = 10,
             threads: int | None = None, labels_file: str | None = None, options: DeviceOptions | None = None) -> dict:
    how = Measure(runs, warmup, threads, options or DeviceOptions())
    return measure(Prepared(artefact_path, data_dir, labels_file), device, how)


def measure(prepared: Prepared, device: str | Target, how: Measure) -> dict:
    """Run a prepared artefact on one device and score its predictions; safe to call from a thread."""
    artefact, split, labels = prepared.artefact, prepared.split, prepared.labels
    target = open_device(device, how.options)
    console.info(f"running {artefact.model_path.name} on {target.transport.name}")
    files = prepared.files
    result = target.run(artefact.format, files, split.images if split is not None else None, how.runs, how.warmup, how.threads)
    accuracy = None
    if split is not None:
        check_label_count(labels, result.predictions.shape[-1], prepared.labels_source)  # formats whose file does not say
        reference = prepared.reference()
        metrics = score(result.predictions, split.labels, labels, reference)
        accuracy = {
            "top1": metrics["top1"],
            "top5": metrics.get("top5"),
            "agreement": metrics["agreement"],
            **{key: metrics[key] for key in PAIRED_KEYS},
            "n_images": metrics["n_images"],
            "where": "device",
            "confusion": metrics["confusion"],
            "skipped": len(split.skipped),
            "without_leaks": scores_without_leaks(result.predictions, split.labels, labels, reference, split.paths,
                                                  prepared.leaked),
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

    how = Measure(runs, warmup, threads, options or DeviceOptions())
    prepared = Prepared(artefact_path, data_dir, labels_file)
    prepared.reference()  # once, here, not in each device's thread
    started = time.perf_counter()
    outcomes = run_on_devices({name: [lambda name=name: measure(prepared, name, how)]
                               for name in devices}, on_done=_progress_line)
    rows = []
    for name in devices:
        outcome = outcomes[name][0]
        rows.append({"device_name": name, "status": "ok", "seconds": outcome.seconds, **outcome.result} if outcome.ok
                    else {"device_name": name, "status": outcome.error, "seconds": outcome.seconds})
    return {"artefact": str(artefact_path), "wall_s": round(time.perf_counter() - started, 2), "rows": rows}


def _progress_line(outcome) -> None:
    console.info(f"{outcome.device}: " + ("ok" if outcome.ok else f"failed: {outcome.error}") + f" ({outcome.seconds:.1f} s)")
