"""Classification metrics from predicted probabilities. Pure numpy; every stage reports these."""
from __future__ import annotations

import numpy as np


def classification_metrics(probs: np.ndarray, labels: np.ndarray, classes: list[str]) -> dict:
    """top-1, top-5 (five or more classes), per-class precision/recall and the confusion matrix."""
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    n = len(labels)
    predicted = probs.argmax(axis=1) if n else np.zeros(0, dtype=np.int64)
    k = len(classes)
    confusion = np.zeros((k, k), dtype=np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    result = {"n_images": n, "top1": float((predicted == labels).mean()) if n else None}
    if k >= 5:
        result["top5"] = top_k_accuracy(probs, labels, 5)
    per_class = {}
    for i, name in enumerate(classes):
        predicted_as = confusion[:, i].sum()
        actual = confusion[i].sum()
        per_class[name] = {
            "precision": float(confusion[i, i] / predicted_as) if predicted_as else None,
            "recall": float(confusion[i, i] / actual) if actual else None,
            "support": int(actual),
        }
    result["per_class"] = per_class
    result["confusion"] = confusion.tolist()
    return result


def top_k_accuracy(probs: np.ndarray, labels: np.ndarray, k: int) -> float | None:
    if len(labels) == 0:
        return None
    # Stable descending order so that ties resolve the same way on every runtime.
    top = np.argsort(-np.asarray(probs), axis=1, kind="stable")[:, :k]
    return float((top == np.asarray(labels)[:, None]).any(axis=1).mean())


def agreement(probs_a: np.ndarray, probs_b: np.ndarray) -> float | None:
    """Fraction of images on which two models give the same top-1 label."""
    if len(probs_a) == 0:
        return None
    return float((np.asarray(probs_a).argmax(axis=1) == np.asarray(probs_b).argmax(axis=1)).mean())


def score(probs: np.ndarray, labels: np.ndarray, classes: list[str], reference: np.ndarray | None = None) -> dict:
    """top-1, top-5, confusion, per-class, and top-1 agreement with a float reference."""
    metrics = classification_metrics(probs, labels, classes)
    metrics["agreement"] = agreement(probs, reference) if reference is not None else None
    return metrics


WRONG_KEPT = 60  # enough for a report's grid of mistakes, small enough for run.json


def wrong_predictions(probs: np.ndarray, labels: np.ndarray, paths: list, classes: list[str], limit: int = WRONG_KEPT) -> list[dict]:
    """The misclassified images, most confidently wrong first: path, true and predicted class, confidence."""
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if len(labels) == 0:
        return []
    predicted = probs.argmax(axis=1)
    wrong = np.flatnonzero(predicted != labels)
    order = wrong[np.argsort(-probs[wrong, predicted[wrong]], kind="stable")][:limit]
    return [
        {"path": str(paths[i]), "true": classes[labels[i]], "predicted": classes[predicted[i]],
         "confidence": round(float(probs[i, predicted[i]]), 4)}
        for i in order
    ]
