"""Predictions of a run's Keras model on decoded images (an exported file: devices/host.py)."""
from __future__ import annotations

import numpy as np

from edgeclf import tfenv
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
