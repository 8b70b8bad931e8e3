"""Evaluate and predict with a finished run's Keras model."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from edgeclf import console
from edgeclf.errors import DatasetError, UsageError
from edgeclf.pipeline import streaming
from edgeclf.pipeline.datasets import map_to_labels, scan_folder
from edgeclf.pipeline.images import UnreadableImage, is_image_file, load_image
from edgeclf.pipeline.metrics import classification_metrics
from edgeclf.pipeline.predict import predict_probs
from edgeclf.pipeline.runs import Run


def evaluate_run(run_dir, data_dir, batch_size: int = 64) -> dict:
    run = Run.open(run_dir)
    folder = map_to_labels(scan_folder(Path(data_dir), "evaluation data"), run.labels, "evaluation")
    mode = streaming.choose_cache("auto", len(folder.samples), run.img_size, streamed="none")
    split = streaming.load_split("evaluation", folder.root, run.labels, folder.samples, run.img_size, mode)
    model = run.load_model()
    metrics = classification_metrics(predict_probs(model, split.images, batch_size), split.labels, run.labels)
    metrics["skipped"] = split.skipped
    return metrics


def predict_images(run_dir, image_paths, top_k: int) -> list[dict]:
    run = Run.open(run_dir)
    for path in image_paths:
        if not Path(path).is_file():
            raise UsageError(f"image {path} does not exist", "check the path")
        if not is_image_file(Path(path)):
            raise DatasetError(f"{path} is not a supported image", "use jpg, jpeg, png, bmp, gif or webp")
    model = run.load_model()
    results = []
    for path in image_paths:
        try:
            pixels = load_image(Path(path), run.img_size)
        except UnreadableImage as exc:
            console.warn(f"cannot read {path}: {exc}")
            results.append({"image": path, "error": str(exc), "top": []})
            continue
        probs = predict_probs(model, pixels[None])[0]
        order = np.argsort(-probs, kind="stable")[:top_k]
        results.append({"image": path, "top": [[run.labels[i], float(probs[i])] for i in order]})
    return results
