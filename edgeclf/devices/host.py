"""Exported models run on this machine, through the same runner and runtime files that
`edgeclf validate` pushes to devices, so quantized IO is handled from the model's own tensors
in one place. Export, bundle and budget score artefacts with these."""
from __future__ import annotations

import numpy as np

from edgeclf import console, exporters, tfenv
from edgeclf.devices import runner
from edgeclf.errors import MissingDependency, ModelError


def open_model(path, threads: int | None = None, kernels: str | None = None):
    """`kernels`: one of the format's `kernel_sets` instead of its runtime's default."""
    fmt = exporters.for_path(path)
    try:
        with tfenv.native_stderr_silenced():  # LiteRT announces its XNNPACK delegate on stderr
            return runner.open_model(str(path), str(fmt.runtime_file), threads, kernels)
    except runner.RuntimeMissing as exc:
        raise MissingDependency(str(exc), fmt.extra) from exc
    except (runner.ModelInvalid, ValueError) as exc:
        raise ModelError(f"cannot load {path}: {exc}", "check that the file is a valid model, or re-export it") from exc


def predict_file(path, images: np.ndarray, threads: int | None = None, label: str = "evaluating") -> np.ndarray:
    model = open_model(path, threads)
    with console.progress() as bar:
        task = bar.add_task(label, total=len(images), status="")
        return runner.predict(model, images, on_image=lambda: bar.advance(task))
