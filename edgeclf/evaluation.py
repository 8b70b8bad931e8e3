"""Host evaluation of any exported model file (.tflite with LiteRT, .onnx, OpenVINO .xml).

It runs the same on-device runner module that `edgeclf validate` pushes to devices, so
quantized IO is handled from the model's own tensor details in exactly one place.
"""
from __future__ import annotations

import numpy as np

from edgeclf import console, tfenv
from edgeclf.devices import runner
from edgeclf.errors import MissingDependency, ModelError
from edgeclf.pipeline.metrics import agreement, classification_metrics


def open_model(path, threads: int | None = None):
    try:
        with tfenv.native_stderr_silenced():  # LiteRT announces its XNNPACK delegate on stderr
            return runner.open_model(str(path), threads)
    except runner.RuntimeMissing as exc:
        raise MissingDependency(str(exc), "all") from exc
    except (runner.ModelInvalid, ValueError) as exc:
        raise ModelError(f"cannot load {path}: {exc}", "check that the file is a valid model, or re-export it") from exc


def predict_file(path, images: np.ndarray, threads: int | None = None, label: str = "evaluating") -> np.ndarray:
    model = open_model(path, threads)
    outputs = []
    with console.progress() as bar:
        task = bar.add_task(label, total=len(images), status="")
        for i in range(len(images)):
            outputs.append(model.invoke(images[i : i + 1]))
            bar.advance(task)
    return np.stack(outputs) if outputs else np.zeros((0, 0), np.float32)


def score(probs: np.ndarray, labels: np.ndarray, classes: list[str], reference: np.ndarray | None = None) -> dict:
    """top-1, top-5, confusion, per-class, and top-1 agreement with a float reference."""
    metrics = classification_metrics(probs, labels, classes)
    metrics["agreement"] = agreement(probs, reference) if reference is not None else None
    return metrics
