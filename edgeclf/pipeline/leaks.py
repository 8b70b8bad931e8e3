"""What leaked images did to a run's figures: each scored split again, without them."""
from __future__ import annotations

from pathlib import Path

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


def leaked_paths(run_info: dict) -> set[Path]:
    """Every scored image the run's data audit found duplicating a training image (resolved paths)."""
    leaked = (((run_info.get("audit") or {}).get("summary") or {}).get("leaked")) or {}
    return {Path(f).resolve() for files in leaked.values() for f in files}


def scores_without_leaks(probs, labels, classes: list[str], reference, paths: list[Path], leaked: set[Path]) -> dict | None:
    """An artefact's scores again without the leaked images among `paths` (None when there are none):
    how much of its top-1 and agreement with float the duplicates of training images made."""
    from edgeclf.pipeline.metrics import score

    keep = np.array([Path(p).resolve() not in leaked for p in paths], bool)
    if keep.all():
        return None
    metrics = score(probs[keep], labels[keep], classes, None if reference is None else reference[keep])
    return {"leaked": int((~keep).sum()), "n_images": metrics["n_images"], "top1": metrics["top1"],
            "agreement": metrics["agreement"], "changed": metrics["changed"]}
