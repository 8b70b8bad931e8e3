"""A finished run directory, as written by `edgeclf train` (and `edgeclf optimize`)."""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from edgeclf import records, tfenv
from edgeclf.errors import ModelError
from edgeclf.layout import is_image_shape
from edgeclf.pipeline.resize import DEFAULT as DEFAULT_RESIZE
from edgeclf.pipeline.splits import SplitPlan, load_plan

MODEL_FILE = "model.keras"
LABELS_FILE = "labels.txt"
RUN_FILE = "run.json"
SPLIT_FILE = "split.json"
AUDIT_FILE = "audit.json"  # the data audit of the run's splits (edgeclf/audit)


def write_labels(path: Path, labels: list[str]) -> None:
    path.write_text("".join(f"{label}\n" for label in labels))


def read_labels(path: Path) -> list[str]:
    if not Path(path).is_file():
        raise ModelError(f"labels file {path} does not exist", "give one label per line, in class-index order")
    labels = [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
    if not labels:
        raise ModelError(f"labels file {path} is empty", "give one label per line, in class-index order")
    return labels


def read_run_record(path: Path) -> dict:
    """run.json, checked for the keys every reader relies on."""
    info = records.read(path, "run", "re-run `edgeclf train`")
    if not isinstance(info, dict):
        raise ModelError(f"{path} holds a JSON {type(info).__name__}, not an object",
                         "re-run `edgeclf train`, or restore the run's original run.json")
    config = info.get("config") if isinstance(info.get("config"), dict) else {}
    input_ = info.get("input") if isinstance(info.get("input"), dict) else {}
    found = {"config.arch": "arch" in config, "config.seed": isinstance(config.get("seed"), int),
             "input.shape": is_image_shape(input_.get("shape")), "input.preprocessing": "preprocessing" in input_}
    missing = ", ".join(key for key, ok in found.items() if not ok)
    if missing:
        raise ModelError(f"{path} is missing {missing}", "re-run `edgeclf train`, or restore the run's original run.json")
    return info


def check_label_count(labels: list[str], outputs: int | None, source: str) -> list[str]:
    """One label per model output: more would name a phantom class, fewer would leave outputs unnamed."""
    if outputs is not None and len(labels) != outputs:
        raise ModelError(f"{source} has {len(labels)} labels but the model has {outputs} outputs",
                         "give one label per output, in class-index order")
    return labels


def output_classes(outputs: list[dict]) -> int | None:
    """The class count of a classifier's single output tensor, when its shape states it."""
    shape = outputs[0].get("shape") if len(outputs) == 1 else None
    last = shape[-1] if shape else None
    return last if isinstance(last, int) and last > 0 else None


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
        run = cls(path)
        run.info  # a damaged run.json is reported here, not as a KeyError somewhere later
        return run

    @cached_property
    def info(self) -> dict:
        return read_run_record(self.path / RUN_FILE)

    @cached_property
    def labels(self) -> list[str]:
        return read_labels(self.path / LABELS_FILE)

    @property
    def arch(self) -> str:
        return self.info["config"]["arch"]

    @property
    def qat(self) -> bool:
        """True for a run that had quantization-aware training (its ranges are learned)."""
        return bool((self.info.get("optimization") or {}).get("qat"))

    @property
    def prune_policy(self) -> str | None:
        """"xnnpack" for a run pruned for XNNPACK's sparse kernels, else None."""
        prune = (self.info.get("optimization") or {}).get("prune") or {}
        return prune.get("for")

    @property
    def img_size(self) -> int:
        return int(self.info["input"]["shape"][1])

    @property
    def resize(self) -> str:
        """The resize kernel the run trained with (runs from before `--resize`: PIL bilinear)."""
        return self.info["config"].get("resize", DEFAULT_RESIZE)

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
                model = _load_keras_model(keras, self.path / MODEL_FILE)
        except (ValueError, OSError) as exc:
            raise ModelError(f"cannot load {self.path / MODEL_FILE}: {exc}", "re-run `edgeclf train`") from exc
        check_label_count(self.labels, model.output_shape[-1], str(self.path / LABELS_FILE))
        return model


def _load_keras_model(keras, path: Path):
    # QAT runs need tfmot's custom objects (and ours) in scope.
    try:
        from edgeclf.pipeline.quant_aware import quantize_scope

        scope = quantize_scope()
    except ImportError:
        return load_keras_file(keras, path)
    with scope:
        return load_keras_file(keras, path)


def load_keras_file(keras, path: Path):
    """`keras.models.load_model(path, compile=False)`, several times faster on a big model.

    Keras reads the weights with h5py straight out of the .keras zip, and before Python 3.12
    every backward seek in a zip member reads it again from its start: a 42 MB EfficientNetB0
    run took 20 s to load, 3 s from the weights extracted first. The model is built from the
    archive's config as load_model builds it, then its weights are loaded from the extracted file.
    """
    import json
    import tempfile
    import zipfile

    try:
        from tf_keras.src.saving.serialization_lib import ObjectSharingScope
    except ImportError:  # another Keras: its own loader
        return keras.models.load_model(path, compile=False)
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile as exc:
        raise ValueError(f"not a Keras model archive ({exc})") from None
    with archive:
        if set(archive.namelist()) != {"metadata.json", "config.json", "model.weights.h5"}:
            return keras.models.load_model(path, compile=False)  # assets, or npz weights
        config = json.loads(archive.read("config.json"))
        config["compile_config"] = None
        with tempfile.TemporaryDirectory(prefix="edgeclf-model-") as tmp:
            weights = Path(tmp) / "model.weights.h5"
            with archive.open("model.weights.h5") as src, open(weights, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
            with ObjectSharingScope():
                model = keras.saving.deserialize_keras_object(config, safe_mode=True)
            model.load_weights(weights)
    return model
