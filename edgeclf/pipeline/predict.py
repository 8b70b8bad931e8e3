"""Predictions on decoded images: by a run's Keras model, or by an exported model file.

An exported file runs through the same runner and runtime files that `edgeclf validate`
pushes to devices, so quantized IO is handled from the model's own tensors in one place.
"""
from __future__ import annotations

import numpy as np

from edgeclf import console, exporters, tfenv
from edgeclf.devices import runner
from edgeclf.errors import MissingDependency, ModelError
from edgeclf.pipeline.metrics import classification_metrics, wrong_predictions

BATCH = 64


def predict_probs(model, images: np.ndarray, batch_size: int = BATCH) -> np.ndarray:
    """Softmax outputs for uint8 (N, H, W, 3) raw pixels, in batches to bound memory."""
    tfenv.tf()
    if len(images) == 0:
        return np.zeros((0, model.output_shape[-1]), dtype=np.float32)
    outputs = [
        np.asarray(model(images[i : i + batch_size].astype(np.float32), training=False))
        for i in range(0, len(images), batch_size)
    ]
    return np.concatenate(outputs)


def split_metrics(model, split) -> dict:
    """A decoded split's classification metrics plus the images the model gets wrong (shown by `edgeclf report`)."""
    probs = predict_probs(model, split.images)
    metrics = classification_metrics(probs, split.labels, split.classes)
    metrics["wrong"] = wrong_predictions(probs, split.labels, split.paths, split.classes)
    return metrics


def open_model(path, threads: int | None = None):
    fmt = exporters.for_path(path)
    try:
        with tfenv.native_stderr_silenced():  # LiteRT announces its XNNPACK delegate on stderr
            return runner.open_model(str(path), str(fmt.runtime_file), threads)
    except runner.RuntimeMissing as exc:
        raise MissingDependency(str(exc), fmt.extra) from exc
    except (runner.ModelInvalid, ValueError) as exc:
        raise ModelError(f"cannot load {path}: {exc}", "check that the file is a valid model, or re-export it") from exc


def predict_file(path, images: np.ndarray, threads: int | None = None, label: str = "evaluating") -> np.ndarray:
    model = open_model(path, threads)
    with console.progress() as bar:
        task = bar.add_task(label, total=len(images), status="")
        return runner.predict(model, images, on_image=lambda: bar.advance(task))
