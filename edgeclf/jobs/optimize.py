"""`edgeclf optimize`: magnitude pruning, quantization-aware training, or both (PQAT), on a finished run.

Reads a run directory written by `edgeclf train` (or by an earlier `edgeclf optimize`) and
writes a new run directory with the same layout, built in a temp sibling and renamed into
place only when complete. The fine-tune epochs reuse the training pipeline's data path
(seeded shuffling, the same augmentation, the same split), so an optimized run is scored
on exactly the images its source was. `cache` and `distribute` work as in `edgeclf train`:
a `--cache disk` file lives in the staging directory and never ships, and on a multi-worker
cluster only the chief writes `out` (pipeline/distribute.py).

With `distill` > 0 the fine-tune distils from the source model: the targets mix the labels
with the source model's probabilities on the same augmented images. It is off by default: on
flowers128 it changed PTQ/PQAT test top-1 by less than the noise of 653 test images (see the
benchmark), and the teacher's forward pass costs about a third more time per step.

Recipes, in order:
  prune  tfmot magnitude pruning, reaching the target sparsity over `prune_epochs` epochs, then
         `strip_pruning`; with prune_for="xnnpack", tfmot's PruneForLatencyOnXNNPack policy
         (only 1x1 convolutions are pruned).
  qat    the pre-flight's fixes, then `quantize_apply` (the prune-preserving scheme, PQAT,
         after pruning) and `qat_epochs` more epochs of quantization-aware fine-tuning.
"""
from __future__ import annotations

import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from edgeclf import console, tfenv
from edgeclf.atomic import check_output, staged_dir
from edgeclf.errors import ModelError, UsageError
from edgeclf.jobs import train as training
from edgeclf.pipeline import batchnorm, distribute, quant_aware, streaming
from edgeclf.pipeline.config import MAX_LR, TrainConfig
from edgeclf.pipeline.epochs import Epochs
from edgeclf.pipeline.pruning import kernel_sparsity, prune, pruned_layers
from edgeclf.pipeline.run_writer import summary, write_run
from edgeclf.pipeline.runs import RUN_FILE, SPLIT_FILE, Run
from edgeclf.checks import check_range
from edgeclf.outputs import absolute

SCHEDULES = ("polynomial", "constant")
PRUNE_FOR = ("xnnpack",)
PQAT_SCHEME = "Default8BitPrunePreserveQuantizeScheme"
QAT_SCHEME = "Default8BitQuantizeScheme"
# Default fine-tune epochs. Pruning needs time to recover: on flowers128 (2.6 k training images)
# 50% sparsity cost 3.8 points of int8 top-1 after 4 epochs and 0.8 after 10. QAT starts
# from ranges that already match, so two epochs suffice.
PRUNE_EPOCHS = 10
QAT_EPOCHS = 2
# Training images whose float activations set QAT's starting ranges.
CALIBRATION_IMAGES = 256


@dataclass
class OptimizeConfig:
    run_dir: str
    out: str | None = None
    prune: float | None = None  # target sparsity in (0, 1)
    prune_schedule: str = "polynomial"
    prune_for: str | None = None  # None or "xnnpack"
    qat: bool = False
    epochs: int | None = None  # per phase; None: PRUNE_EPOCHS for pruning, QAT_EPOCHS for QAT
    distill: float = 0.0  # weight of the source model's probabilities in the targets; 0: labels only
    lr: float | None = None  # None: the rate of the run's last training stage (pruning) and a tenth of it (QAT)
    batch_size: int | None = None  # None: the run's
    cache: str = "auto"  # decoded images: memory, disk (a file in the staging directory), none, auto
    distribute: str = "none"  # none, mirrored, multi-worker (pipeline/distribute.py)
    check: bool = False  # pre-flight only: report, write nothing

    def __post_init__(self):
        if self.prune is not None and not 0 < self.prune < 1:
            raise UsageError(f"--prune {self.prune} is not a sparsity in (0, 1)", "e.g. --prune 0.5 to zero half the weights")
        if self.prune_schedule not in SCHEDULES:
            raise UsageError(f"--prune-schedule {self.prune_schedule} is not supported", f"choose one of {', '.join(SCHEDULES)}")
        if self.prune_for is not None:
            if self.prune_for not in PRUNE_FOR:
                raise UsageError(f"--prune-for {self.prune_for} is not supported", f"choose one of {', '.join(PRUNE_FOR)}")
            if self.prune is None:
                raise UsageError("--prune-for needs --prune", "e.g. --prune 0.75 --prune-for xnnpack")
        if not self.check:
            if self.prune is None and not self.qat:
                raise UsageError("nothing to do", "pass --prune SPARSITY and/or --qat (or --check for the pre-flight only)")
            if not self.out:
                raise UsageError("--out is missing", "name the run directory to create")
        if self.epochs is not None and self.epochs < 1:
            raise UsageError(f"--epochs {self.epochs} must be at least 1", "e.g. --epochs 2")
        if not 0 <= self.distill < 1:
            raise UsageError(f"--distill {self.distill} is not a weight in [0, 1)", "e.g. --distill 0.5, or 0 to train on the labels alone")
        if self.lr is not None:
            check_range("--lr", self.lr, 0, MAX_LR, low_open=True, example="--lr 1e-5")
        if self.batch_size is not None:
            check_range("--batch-size", self.batch_size, 1, example="--batch-size 32")
        if self.cache not in streaming.CACHE_MODES:
            raise UsageError(f"--cache {self.cache} is not supported", f"use one of {', '.join(streaming.CACHE_MODES)}")
        if self.distribute not in distribute.STRATEGIES:
            raise UsageError(f"--distribute {self.distribute} is not supported", f"use one of {', '.join(distribute.STRATEGIES)}")
        self.run_dir = str(Path(self.run_dir).expanduser().resolve())
        if self.out:
            self.out = str(absolute(self.out))  # a link at --out is refused, never followed
            if self.out == self.run_dir:
                raise UsageError("--out is the source run itself", "write the optimized run to a new directory")

    @property
    def prune_epochs(self) -> int:
        return self.epochs or PRUNE_EPOCHS

    @property
    def qat_epochs(self) -> int:
        return self.epochs or QAT_EPOCHS

    def recipe(self) -> dict:
        settings = {k: v for k, v in asdict(self).items() if k not in ("run_dir", "out", "check")}
        return settings | {"prune_epochs": self.prune_epochs if self.prune is not None else None,
                           "qat_epochs": self.qat_epochs if self.qat else None}


# --------------------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------------------
def check(config: OptimizeConfig) -> dict:
    """The quantizability pre-flight alone: what tfmot cannot take as-is, and what we will do."""
    run = Run.open(config.run_dir)
    findings = quant_aware.preflight(run.load_model())
    return preflight_report(run, findings)


def preflight_report(run: Run, findings: list) -> dict:
    impossible = [f for f in findings if f.handling == quant_aware.IMPOSSIBLE]
    return {
        "run_dir": str(run.path),
        "arch": run.info["config"]["arch"],
        "qat_possible": not impossible,
        "findings": [f.to_dict() for f in findings],
    }


def optimize(config: OptimizeConfig, overwrite: bool = False) -> dict:
    """Prune and/or QAT the run at config.run_dir into a new run directory at config.out."""
    role = distribute.cluster_role(config.distribute)
    strategy = distribute.strategy(config.distribute)  # before any other TensorFlow work
    run = Run.open(config.run_dir)
    previous = run.info.get("optimization") or {}
    _check_source(run, config, previous)
    out = Path(config.out)
    images = list(run.plan.roots.values())
    if role.chief:  # the other workers of a cluster write only into scratch directories
        check_output(out, RUN_FILE, overwrite, inputs=images, input_runs=[run.path])
    train_config = TrainConfig.from_dict(run.info["config"] | {"out": str(out)})
    with distribute.scope(strategy):  # the model's variables belong to the strategy
        model = run.load_model()
        findings = quant_aware.preflight(model) if config.qat else []
        quant_aware.require_quantizable(findings)  # fail before any epoch is spent
        if quant_aware.nested_models(model):
            console.info("flattening the nested model into one functional graph")
            model = quant_aware.flatten(model)

    # The run is built in a staging directory beside --out (on another worker of a cluster,
    # in its scratch directory), which becomes --out only when complete: `--cache disk` puts
    # its file there, so a failed or interrupted run takes it with it.
    with distribute.place(role, out, out, resuming=False) as place, \
            staged_dir(place.out, RUN_FILE, overwrite, inputs=images, input_runs=[run.path]) as staging:
        started = time.perf_counter()
        splits = streaming.load_splits(run.plan.samples, run.plan.roots, run.plan.classes, run.img_size, config.cache,
                                       staging / training.STREAM_DIR, resize=run.resize)
        timing = {"decode_s": round(time.perf_counter() - started, 2)}
        record = _new_record(run, config, findings, previous)
        with distribute.scope(strategy):  # the pruning and QAT wrappers, and the optimizers, too
            # The distillation teacher must not share variables: pruning and QAT train `model`'s own layers.
            teacher = quant_aware.independent_copy(model) if config.distill > 0 else None
            tuner = FineTuner(train_config, run.labels, splits, config.batch_size or train_config.batch_size, teacher, config.distill)
            # The rate the run last trained at: fine_tune_lr for a pretrained backbone, the full rate
            # for one trained from scratch (at fine_tune_lr such a model does not recover from pruning).
            base_lr = config.lr or training.stages(train_config)[-1].lr
            record["batchnorm_folded"] = len(batchnorm.fold_batchnorm(model))
            freeze_batchnorm(model)
            if config.prune is not None:
                t0 = time.perf_counter()
                model, record["prune"] = prune(model, tuner, config, base_lr)
                timing["prune_s"] = round(time.perf_counter() - t0, 2)
            if config.qat:
                t0 = time.perf_counter()
                model = _quantization_aware(model, tuner, config, findings, record, previous, base_lr)
                timing["qat_s"] = round(time.perf_counter() - t0, 2)
        timing["total_s"] = round(sum(v for k, v in timing.items() if k.endswith("_s")), 2)
        if record["prune"] is not None:
            record["prune"].pop("layers")
        what = " + ".join(p for p in (
            f"{100 * record['prune']['target']:.0f}% pruned" if record["prune"] else None, "QAT" if record["qat"] else None,
        ) if p)
        source_audit = run.info.get("audit")  # the same splits: carry the source's audit, rescored on this model
        info = write_run(staging, model, train_config, run.plan, splits, tuner.history, timing, record, save_model, what,
                         audit={k: v for k, v in source_audit.items() if k != "figures_without_leaks"} if source_audit else None)
        shutil.rmtree(staging / training.STREAM_DIR, ignore_errors=True)  # the decoded images do not ship
    return summary(info) | {"optimization": _summary_of(record), "run_dir": str(out)}


def _check_source(run: Run, config: OptimizeConfig, previous: dict) -> None:
    """Refuse what the source run cannot take, before any work."""
    source = previous.get("source_run") or "its source run"
    if config.qat and previous.get("qat"):
        raise UsageError(f"{run.path} already had quantization-aware training",
                         f"run --qat on {source} instead, or export this run as it is")
    if config.prune is not None and previous.get("qat"):
        raise UsageError(f"{run.path} already had quantization-aware training; pruning it now would throw away "
                         "the ranges QAT learned", f"prune {source} with --prune {config.prune} --qat (PQAT) instead")
    if run.plan is None:
        raise ModelError(f"{run.path} has no {SPLIT_FILE}, so its training data is unknown", "re-train it with `edgeclf train`")


def _new_record(run: Run, config: OptimizeConfig, findings: list, previous: dict) -> dict:
    """run.json's `optimization` record, before any phase has run."""
    record: dict = {
        "recipe": config.recipe(),
        "source_run": str(run.path),
        "source_metrics": {name: {k: m.get(k) for k in ("top1", "top5", "n_images")} for name, m in run.metrics.items()},
        "prune": None,
        "qat": False,
        "scheme": None,
        "preflight": [f.to_dict() for f in findings],
        "depthwise_weights": "per_channel" if config.qat else None,
    }
    if previous:
        record["previous"] = previous
    return record


def _quantization_aware(model, tuner: FineTuner, config: OptimizeConfig, findings: list, record: dict,
                        previous: dict, base_lr: float):
    """quantize_apply (prune-preserving after pruning) and the QAT epochs; fills `record`."""
    preserve = config.prune is not None or bool(previous.get("prune"))
    model = quant_aware.quantize(model, findings, preserve_sparsity=preserve, calibration_images=tuner.calibration_images())
    tuner.fit(model, "qat", config.qat_epochs, config.lr or base_lr / 10)
    record["zero_channels_given_a_range"] = quant_aware.widen_collapsed_weight_ranges(model)
    record["qat"] = True
    record["scheme"] = PQAT_SCHEME if preserve else QAT_SCHEME
    if preserve:
        record["sparsity_after_qat"] = kernel_sparsity(model, pruned_layers(record["prune"], previous))["overall"]
        if record["prune"] is not None:
            record["prune"]["sparsity_after_qat"] = record["sparsity_after_qat"]
    return model


def _summary_of(record: dict) -> dict:
    prune_record = record["prune"]
    return {
        "qat": record["qat"],
        "scheme": record["scheme"],
        "prune": None if prune_record is None else {
            k: prune_record[k] for k in ("target", "schedule", "for", "xnnpack_policy")
        } | {"overall": prune_record["sparsity"]["overall"], "after_qat": prune_record.get("sparsity_after_qat")},
        "sparsity_after_qat": record.get("sparsity_after_qat"),
        "preflight": len(record["preflight"]),
        "source_run": record["source_run"],
    }


def freeze_batchnorm(model) -> None:
    """BatchNorm runs in inference mode from here on: folded ones are exact biases now (see
    batchnorm.fold_batchnorm), and a short fine-tune must not re-estimate statistics.

    Every other layer keeps the trainable flag saved with the run, which is the source run's
    last stage: a pretrained backbone stays frozen below its fine-tune point, where retraining
    on a small dataset costs more accuracy than it wins back.
    """
    keras = tfenv.keras()
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False


# --------------------------------------------------------------------------------------
# Fine-tuning: the training pipeline's data path, for a model we already have
# --------------------------------------------------------------------------------------
class FineTuner:
    """Fine-tune epochs on a run's own training split, recorded like `edgeclf train`'s."""

    def __init__(self, config: TrainConfig, classes: list[str], splits: dict, batch_size: int,
                 teacher=None, teacher_weight: float = 0.0):
        tfenv.keras().utils.set_random_seed(config.seed)
        self.config = config
        self.splits = splits
        # Shuffle orders other than the source run's epochs'.
        self.epochs = Epochs(config, splits, len(classes), batch_size, order_offset=1000,
                                      teacher=teacher, teacher_weight=teacher_weight)
        self.history: list[dict] = []

    def calibration_images(self, count: int = CALIBRATION_IMAGES) -> np.ndarray:
        """A seeded sample of training images (unaugmented) to start QAT's activation ranges from."""
        train = self.splits["train"].images
        order = np.random.default_rng([self.config.seed, 7]).permutation(len(train))[:count]
        return train[np.sort(order)]

    @property
    def steps_per_epoch(self) -> int:
        return self.epochs.steps

    def fit(self, model, stage: str, epochs: int, lr: float, callbacks=()) -> None:
        self.epochs.compile(model, lr)
        with console.progress(transient=False) as bar:
            for epoch in range(epochs):
                self.history.append(self.epochs.run(model, bar, stage, f"{epoch + 1}/{epochs}",
                                                    len(self.history), lr, callbacks))


# --------------------------------------------------------------------------------------
# The run directory
# --------------------------------------------------------------------------------------
def save_model(model, path: Path) -> None:
    """model.save, for QAT models too: what is saved is exactly what loading will rebuild.

    With tfmot 0.8.1 and tf-keras .keras files, a QAT model trained in this process does not
    load back: a QuantizeWrapper around a layer that was built before wrapping lists that
    layer's weights differently from one built while loading, and QuantizeLayer builds twice
    when its build shape is recorded. So the model is first rebuilt from its own config, the
    way `load_model` rebuilds it, the trained values are copied in by variable name, and that
    rebuilt twin is saved.
    """
    keras = tfenv.keras()
    if not any(type(layer).__module__.startswith("tensorflow_model_optimization") for layer in model.layers):
        with tfenv.native_stderr_silenced():
            model.save(path)
        return
    from tensorflow_model_optimization.python.core.quantization.keras.quantize_layer import (
        QuantizeLayer,
    )

    def build_once(m):
        for layer in m.layers:
            if isinstance(layer, QuantizeLayer):
                layer._build_input_shape = None  # no recorded shape: built once, by the graph

    build_once(model)
    with quant_aware.quantize_scope(), tfenv.native_stderr_silenced():
        twin = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(model))
    live_layers = {layer.name: layer for layer in model.layers}
    for layer in twin.layers:
        by_short: dict[str, list] = {}
        for variable, short in zip(layer.weights, map(quant_aware.short_name, layer.weights)):
            by_short.setdefault(short, []).append(variable)
        trained: dict[str, list] = {}
        for variable, short in zip(live_layers[layer.name].weights, map(quant_aware.short_name, live_layers[layer.name].weights)):
            trained.setdefault(short, []).append(variable)
        for short, variables in by_short.items():
            values = trained.get(short, [])
            if len(values) != len(variables):
                raise ModelError(f"cannot save the optimized model: layer {layer.name} has {len(values)} '{short}' "
                                 f"variable(s) where its rebuilt twin has {len(variables)}", "rerun with --debug and report it")
            for variable, value in zip(variables, values):
                variable.assign(value)
    build_once(twin)
    with tfenv.native_stderr_silenced():
        twin.save(path)
