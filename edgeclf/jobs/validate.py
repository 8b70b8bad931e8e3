"""`edgeclf validate`: accuracy on real images and latency, measured on the target device itself."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from edgeclf import console
from edgeclf.artefacts import Artefact
from edgeclf.devices import DeviceOptions, open_device
from edgeclf.errors import UsageError
from edgeclf.pipeline.datasets import DecodedSplit, decode, map_to_labels, scan_folder
from edgeclf.pipeline.metrics import PAIRED_KEYS, score
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


def validate(artefact_path, device: str = "local", data_dir: str | None = None, runs: int = 100, warmup: int = 10,
             threads: int | None = None, labels_file: str | None = None, options: DeviceOptions | None = None) -> dict:
    if runs < 1 or warmup < 0:
        raise UsageError("--runs must be at least 1 and --warmup at least 0", "e.g. --runs 100 --warmup 10")
    if threads is not None and threads < 1:
        raise UsageError("--threads must be at least 1", "e.g. --threads 1")
    artefact = Artefact.open(artefact_path)
    labels = artefact.labels or (read_labels(Path(labels_file)) if labels_file else None)
    if data_dir and labels is None:
        raise UsageError(f"{artefact.model_path.name} has no manifest, so its class names are unknown", "pass --labels labels.txt")
    size = input_size(artefact)
    split = load_images(data_dir, labels, size) if data_dir else None
    target = open_device(device, options or DeviceOptions())
    console.info(f"running {artefact.model_path.name} on {target.transport.name}")
    files = artefact.format.model_files(artefact.model_path)
    result = target.run(artefact.format, files, split.images if split is not None else None, runs, warmup, threads)
    accuracy = None
    if split is not None:
        reference = float_reference(artefact, split.images)
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
        }
    manifest = artefact.manifest or {}
    return {
        "artefact": str(artefact_path),
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
