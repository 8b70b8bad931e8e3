"""Classification metrics from predicted probabilities. Pure numpy; every stage reports these."""
from __future__ import annotations

import numpy as np

# What paired_difference() adds to score(); the accuracy blocks of manifests and validate copy them.
PAIRED_KEYS = ("changed", "gained", "lost", "drop", "drop_ci95")


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
    """top-1, top-5, confusion, per-class, and against a float reference: top-1 agreement and
    the paired difference (changed, gained, lost, drop, drop_ci95); all None without one."""
    metrics = classification_metrics(probs, labels, classes)
    metrics["agreement"] = agreement(probs, reference) if reference is not None else None
    if reference is not None:
        metrics |= paired_difference(probs, labels, reference)
    else:
        metrics |= dict.fromkeys(PAIRED_KEYS)
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


def paired_difference(probs: np.ndarray, labels: np.ndarray, reference: np.ndarray) -> dict:
    """How a model's top-1 differs from a reference (float) model's on the same images.

    `changed`: images whose top-1 label differs from the reference's. Of those, `gained`: the
    model is right and the reference wrong; `lost`: the reference is right and the model wrong
    (the rest are wrong either way). `drop` = reference top-1 - model top-1 = (lost - gained) / n.

    `drop_ci95` is the exact conditional (McNemar) interval, not a bootstrap: only the
    discordant images carry information about the difference, and given their number
    m = lost + gained, `lost` is Binomial(m, p) with drop = m (2p - 1) / n. The Clopper-Pearson
    interval for p maps to the interval for the drop. It needs no seed, gives the same
    answer every time, holds its 95% coverage for the handful of discordant images typical
    of int8 (where a bootstrap is ragged), and contains 0 exactly when the exact McNemar test
    finds no significant difference at 5%.
    """
    predicted = np.asarray(probs).argmax(axis=1)
    expected = np.asarray(reference).argmax(axis=1)
    labels = np.asarray(labels)
    n = len(labels)
    changed = predicted != expected
    gained = int((changed & (predicted == labels)).sum())
    lost = int((changed & (expected == labels)).sum())
    if n == 0:
        return {"changed": 0, "gained": 0, "lost": 0, "drop": None, "drop_ci95": None}
    discordant = gained + lost
    low, high = clopper_pearson(lost, discordant)
    return {
        "changed": int(changed.sum()),
        "gained": gained,
        "lost": lost,
        "drop": (lost - gained) / n,
        "drop_ci95": [discordant * (2 * low - 1) / n, discordant * (2 * high - 1) / n],
    }


def clopper_pearson(k: int, m: int, confidence: float = 0.95) -> tuple[float, float]:
    """Exact two-sided interval for a binomial proportion, k successes in m trials (m = 0: the point 1/2)."""
    if m == 0:
        return 0.5, 0.5
    tail = (1 - confidence) / 2
    low = 0.0 if k == 0 else _bisect(lambda p: _binomial_cdf(k - 1, m, p) - (1 - tail))  # P(X >= k) = tail
    high = 1.0 if k == m else _bisect(lambda p: _binomial_cdf(k, m, p) - tail)  # P(X <= k) = tail
    return low, high


def _binomial_cdf(k: int, m: int, p: float) -> float:
    if p <= 0:
        return 1.0
    if p >= 1:
        return 1.0 if k >= m else 0.0
    i = np.arange(k + 1)
    log_terms = (_log_choose(m, i) + i * np.log(p) + (m - i) * np.log1p(-p))
    return float(np.exp(log_terms).sum())


def _log_choose(m: int, i: np.ndarray) -> np.ndarray:
    from math import lgamma

    return np.array([lgamma(m + 1) - lgamma(j + 1) - lgamma(m - j + 1) for j in i])


def _bisect(decreasing, low: float = 0.0, high: float = 1.0, steps: int = 60) -> float:
    """The root of a function that decreases in p on [0, 1] (binomial CDFs do)."""
    for _ in range(steps):
        middle = (low + high) / 2
        if decreasing(middle) > 0:
            low = middle
        else:
            high = middle
    return (low + high) / 2
