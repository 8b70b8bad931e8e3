"""What leaked images did to a run's figures: each scored split again, without them."""
from __future__ import annotations

import numpy as np


def figures_without_leaks(model, splits: dict, metrics: dict, leaked: dict[str, list[str]]) -> dict:
    """{split: {n_images, top1, n_without, top1_without, leaked}} for each scored split holding leaks."""
    from edgeclf.pipeline.metrics import classification_metrics
    from edgeclf.pipeline.predict import predict_probs

    out = {}
    for name, files in leaked.items():
        split = splits.get(name)
        if split is None or name not in metrics:
            continue  # excluded already, or a split the run does not score
        drop = set(files)
        keep = np.array([i for i, p in enumerate(split.paths) if str(p) not in drop], np.int64)
        if len(keep) == len(split.paths):
            continue
        without = classification_metrics(predict_probs(model, split.images[keep]), split.labels[keep], split.classes)
        out[name] = {"n_images": metrics[name]["n_images"], "top1": metrics[name]["top1"],
                     "n_without": without["n_images"], "top1_without": without["top1"],
                     "leaked": len(split.paths) - len(keep)}
    return out
