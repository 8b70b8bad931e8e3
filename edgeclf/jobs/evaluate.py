"""Evaluate and predict with a finished run's Keras model."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from edgeclf.errors import DatasetError, UsageError
from edgeclf.pipeline import streaming
from edgeclf.pipeline.datasets import scan_for_scoring
from edgeclf.pipeline.images import UnreadableImage, is_image_file, load_image
from edgeclf.pipeline.metrics import classification_metrics
from edgeclf.pipeline.predict import predict_probs
from edgeclf.pipeline.runs import Run
from edgeclf.checks import check_range


def evaluate_run(run_dir, data_dir, batch_size: int = 64) -> dict:
    check_range("--batch-size", batch_size, 1, example="--batch-size 64")
    run = Run.open(run_dir)
    folder = scan_for_scoring(Path(data_dir), run.labels, "evaluation")
    mode = streaming.choose_cache("auto", len(folder.samples), run.img_size, streamed="none")
    split = streaming.load_split("evaluation", folder.root, run.labels, folder.samples, run.img_size, mode, resize=run.resize)
    model = run.load_model()
    metrics = classification_metrics(predict_probs(model, split.images, batch_size), split.labels, run.labels)
    metrics["skipped"] = split.skipped
    return metrics


def predict_images(run_dir, image_paths, top_k: int) -> list[dict]:
    """Top-k labels per image; an unreadable image gets an "error" entry instead (the caller fails on it)."""
    run = Run.open(run_dir)
    for path in image_paths:
        if Path(path).is_dir():
            raise UsageError(f"{path} is a folder, not an image",
                             f"pass image files (e.g. {Path(path) / '*.jpg'}), or score a labelled folder "
                             f"with `edgeclf evaluate {run_dir} --data {path}`")
        if not Path(path).is_file():
            raise UsageError(f"image {path} does not exist", "check the path")
        if not is_image_file(Path(path)):
            raise DatasetError(f"{path} is not a supported image", "use jpg, jpeg, png, bmp, gif or webp")
    pixels: dict[str, np.ndarray] = {}
    errors: dict[str, str] = {}
    for path in image_paths:
        try:
            pixels[path] = load_image(Path(path), run.img_size, run.resize)
        except UnreadableImage as exc:
            errors[path] = str(exc)
    model = run.load_model() if pixels else None  # nothing readable: no need to load TensorFlow
    results = []
    for path in image_paths:
        if path in errors:
            results.append({"image": path, "error": errors[path], "top": []})
            continue
        probs = predict_probs(model, pixels[path][None])[0]
        order = np.argsort(-probs, kind="stable")[:top_k]
        results.append({"image": path, "top": [[run.labels[i], float(probs[i])] for i in order]})
    return results


def unreadable_error(results: list[dict]) -> DatasetError | None:
    """One error naming the images that could not be read, or None when all were labelled."""
    bad = [r["image"] for r in results if r.get("error")]
    if not bad:
        return None
    if len(bad) == 1 == len(results):
        return DatasetError(f"cannot read {bad[0]}: {results[0]['error']}", "pass a valid jpg, png, bmp, gif or webp image")
    names = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
    return DatasetError(f"{len(bad)} of {len(results)} images could not be read: {names}",
                        "fix or remove them; the readable ones are labelled above")
