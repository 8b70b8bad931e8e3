"""A finished run directory, as written by `edgeclf train` (and `edgeclf optimize`)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from edgeclf import tfenv
from edgeclf.errors import ModelError
from edgeclf.pipeline.data import SplitPlan, load_plan

MODEL_FILE = "model.keras"
LABELS_FILE = "labels.txt"
RUN_FILE = "run.json"
SPLIT_FILE = "split.json"


def write_labels(path: Path, labels: list[str]) -> None:
    path.write_text("".join(f"{label}\n" for label in labels))


def read_labels(path: Path) -> list[str]:
    labels = [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
    if not labels:
        raise ModelError(f"labels file {path} is empty", "give one label per line, in class-index order")
    return labels


@dataclass
class Run:
    path: Path

    @classmethod
    def open(cls, path) -> "Run":
        path = Path(path)
        if not path.is_dir():
            partial = path.with_name(path.name + ".partial")
            hint = f"{partial} holds an interrupted run: finish it with `edgeclf train --out {path} --resume` (or start again with --restart)" if partial.exists() else "check the path"
            raise ModelError(f"run directory {path} does not exist", hint)
        for name in (MODEL_FILE, LABELS_FILE, RUN_FILE):
            if not (path / name).is_file():
                raise ModelError(
                    f"{path} is not a finished edgeclf run (no {name})",
                    "pass a directory written by `edgeclf train` or `edgeclf optimize`",
                )
        return cls(path)

    @cached_property
    def info(self) -> dict:
        try:
            return json.loads((self.path / RUN_FILE).read_text())
        except json.JSONDecodeError as exc:
            raise ModelError(f"{self.path / RUN_FILE} is not valid JSON ({exc})", "re-run `edgeclf train`") from exc

    @cached_property
    def labels(self) -> list[str]:
        return read_labels(self.path / LABELS_FILE)

    @property
    def img_size(self) -> int:
        return int(self.info["input"]["shape"][1])

    @property
    def seed(self) -> int:
        return int(self.info["config"]["seed"])

    @property
    def metrics(self) -> dict:
        return self.info.get("metrics", {})

    @cached_property
    def plan(self) -> SplitPlan | None:
        path = self.path / SPLIT_FILE
        return load_plan(path) if path.is_file() else None

    def load_model(self):
        keras = tfenv.keras()
        try:
            with tfenv.native_stderr_silenced():
                return _load_keras_model(keras, self.path / MODEL_FILE)
        except (ValueError, OSError) as exc:
            raise ModelError(f"cannot load {self.path / MODEL_FILE}: {exc}", "re-run `edgeclf train`") from exc


def _load_keras_model(keras, path: Path):
    # QAT runs need tfmot's custom objects (and ours) in scope.
    try:
        from edgeclf.pipeline.quantizability import quantize_scope

        scope = quantize_scope()
    except ImportError:
        return keras.models.load_model(path, compile=False)
    with scope:
        return keras.models.load_model(path, compile=False)
