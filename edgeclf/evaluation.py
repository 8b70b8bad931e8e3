"""Host evaluation of any exported model file, with the format's own device runtime.

It loads the same runner and runtime files that `edgeclf validate` pushes to devices, so
quantized IO is handled from the model's own tensor details in exactly one place.
"""
from __future__ import annotations

import numpy as np

from edgeclf import console, exporters, tfenv
from edgeclf.devices import runner
from edgeclf.errors import MissingDependency, ModelError, first_line
from edgeclf.pipeline.metrics import agreement, classification_metrics


def open_model(path, threads: int | None = None):
    fmt = exporters.for_path(path)
    try:
        with tfenv.native_stderr_silenced():  # LiteRT announces its XNNPACK delegate on stderr
            return runner.open_model(str(path), str(fmt.runtime_file), threads)
    except runner.RuntimeMissing as exc:
        raise MissingDependency(str(exc), fmt.extra) from exc
    except (ValueError, RuntimeError) as exc:
        raise ModelError(f"cannot load {path}: {first_line(exc)}", "check that the file is a valid model") from exc


def predict_file(path, images: np.ndarray, threads: int | None = None, label: str = "evaluating") -> np.ndarray:
    model = open_model(path, threads)
    with console.progress() as bar:
        task = bar.add_task(label, total=len(images), status="")
        return runner.predict(model, images, on_image=lambda: bar.advance(task))


def score(probs: np.ndarray, labels: np.ndarray, classes: list[str], reference: np.ndarray | None = None) -> dict:
    """top-1, top-5, confusion, per-class, and top-1 agreement with a float reference."""
    metrics = classification_metrics(probs, labels, classes)
    metrics["agreement"] = agreement(probs, reference) if reference is not None else None
    return metrics
