"""likely_label_error: a cheap probe on the embeddings, cross-validated, flags confident disagreements.

A logistic regression predicts each image's class from its embedding while never having seen
that image (out-of-fold, stratified folds). An image is flagged when the probe gives another
class at least `confidence` and its own class less than that class's average self-confidence
(the per-class threshold of confident learning, without depending on cleanlab).
"""
from __future__ import annotations

import numpy as np

from edgeclf.audit.scan import Scanned

FOLDS = 5


def out_of_fold(features: np.ndarray, labels: np.ndarray, seed: int) -> np.ndarray | None:
    """(N, classes) out-of-fold probabilities, or None when a class is too small to cross-validate."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    counts = np.bincount(labels)
    folds = min(FOLDS, int(counts[counts > 0].min()))
    if folds < 2 or (counts > 0).sum() < 2:
        return None
    probe = LogisticRegression(C=1.0, max_iter=300)
    split = StratifiedKFold(folds, shuffle=True, random_state=seed)
    return cross_val_predict(probe, np.asarray(features), labels, cv=split, method="predict_proba")


def likely_label_errors(scanned: Scanned, features: np.ndarray, confidence: float, seed: int = 0) -> list[dict]:
    from edgeclf.audit.findings import finding

    present = np.unique(scanned.label)
    index = np.searchsorted(present, scanned.label)  # the probe sees only classes that have images
    probs = out_of_fold(features, index, seed)
    if probs is None:
        return []
    own = probs[np.arange(len(index)), index]
    thresholds = np.array([own[index == c].mean() for c in range(len(present))])
    predicted = probs.argmax(axis=1)
    flagged = np.flatnonzero((predicted != index) & (probs.max(axis=1) >= confidence) & (own < thresholds[index]))
    return [finding("likely_label_error", scanned, [i], probs[i, predicted[i]],
                    predicted=scanned.classes[int(present[predicted[i]])], given_probability=round(float(own[i]), 4))
            for i in flagged]
