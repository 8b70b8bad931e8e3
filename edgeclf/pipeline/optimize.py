"""`edgeclf optimize`: magnitude pruning, quantization-aware training, or both (PQAT), on a finished run.

Reads a run directory written by `edgeclf train` (or by an earlier `edgeclf optimize`) and
writes a new run directory with the same layout, built in a temp sibling and renamed into
place only when complete. The fine-tune epochs reuse the training pipeline's data path
(seeded shuffling, the same augmentation, the same split), so an optimized run is scored
on exactly the images its source was.

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

import json
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from edgeclf import console, tfenv
from edgeclf.atomic import check_output, staged_dir
from edgeclf.config import TrainConfig
from edgeclf.errors import ModelError, UsageError
from edgeclf.pipeline import plots, quantizability
from edgeclf.pipeline import train as training
from edgeclf.pipeline.data import save_plan
from edgeclf.pipeline.evaluate import predict_probs
from edgeclf.pipeline.metrics import classification_metrics
from edgeclf.pipeline.runs import LABELS_FILE, MODEL_FILE, RUN_FILE, SPLIT_FILE, Run, write_labels

SCHEDULES = ("polynomial", "constant")
PRUNE_FOR = ("xnnpack",)
PQAT_SCHEME = "Default8BitPrunePreserveQuantizeScheme"
QAT_SCHEME = "Default8BitQuantizeScheme"
# The polynomial schedule reaches its target after this fraction of the pruning steps, so the
# last part of the fine-tune recovers accuracy at the final sparsity.
RAMP_FRACTION = 0.7
# Default fine-tune epochs. Pruning needs time to recover: on flowers128 (2.6 k training images)
# 50% sparsity cost 3.8 points of int8 top-1 after 4 epochs and 0.8 after 10. QAT starts
# from ranges that already match, so two epochs suffice.
PRUNE_EPOCHS = 10
QAT_EPOCHS = 2
# Training images whose float activations set QAT's starting ranges.
CALIBRATION_IMAGES = 256
PRUNED_KERNELS = quantizability.KERNELS


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
        if self.lr is not None and self.lr <= 0:
            raise UsageError("--lr must be positive", "e.g. --lr 1e-5")
        if self.batch_size is not None and self.batch_size < 1:
            raise UsageError("--batch-size must be at least 1", "e.g. --batch-size 32")
        self.run_dir = str(Path(self.run_dir).expanduser().resolve())
        if self.out:
            self.out = str(Path(self.out).expanduser().resolve())
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
    findings = quantizability.preflight(run.load_model())
    return preflight_report(run, findings)


def preflight_report(run: Run, findings: list) -> dict:
    impossible = [f for f in findings if f.handling == quantizability.IMPOSSIBLE]
    return {
        "run_dir": str(run.path),
        "arch": run.info["config"]["arch"],
        "qat_possible": not impossible,
        "findings": [f.to_dict() for f in findings],
    }


def optimize(config: OptimizeConfig, overwrite: bool = False) -> dict:
    """Prune and/or QAT the run at config.run_dir into a new run directory at config.out."""
    run = Run.open(config.run_dir)
    previous = run.info.get("optimization") or {}
    source = previous.get("source_run") or "its source run"
    if config.qat and previous.get("qat"):
        raise UsageError(f"{run.path} already had quantization-aware training",
                         f"run --qat on {source} instead, or export this run as it is")
    if config.prune is not None and previous.get("qat"):
        raise UsageError(f"{run.path} already had quantization-aware training; pruning it now would throw away "
                         "the ranges QAT learned", f"prune {source} with --prune {config.prune} --qat (PQAT) instead")
    if run.plan is None:
        raise ModelError(f"{run.path} has no {SPLIT_FILE}, so its training data is unknown", "re-train it with `edgeclf train`")
    out = Path(config.out)
    images = list(run.plan.roots.values())
    check_output(out, RUN_FILE, overwrite, inputs=images, input_runs=[run.path])
    train_config = TrainConfig.from_dict(run.info["config"] | {"out": str(out)})
    model = run.load_model()
    findings = quantizability.preflight(model) if config.qat else []
    quantizability.require_quantizable(findings)  # fail before any epoch is spent
    if quantizability.nested_models(model):
        console.info("flattening the nested model into one functional graph")
        model = quantizability.flatten(model)

    started = time.perf_counter()
    splits = {name: run.plan.decode(name, run.img_size) for name in run.plan.samples}
    timing = {"decode_s": round(time.perf_counter() - started, 2)}
    # The distillation teacher must not share variables: pruning and QAT train `model`'s own layers.
    teacher = quantizability.independent_copy(model) if config.distill > 0 else None
    tuner = FineTuner(train_config, run.labels, splits, config.batch_size or train_config.batch_size, teacher, config.distill)
    # The rate the run last trained at: fine_tune_lr for a pretrained backbone, the full rate
    # for one trained from scratch (at fine_tune_lr such a model does not recover from pruning).
    base_lr = config.lr or training.stages(train_config)[-1].lr
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

    record["batchnorm_folded"] = len(quantizability.fold_batchnorm(model))
    freeze_batchnorm(model)
    with staged_dir(out, RUN_FILE, overwrite, inputs=images, input_runs=[run.path]) as staging:
        if config.prune is not None:
            t0 = time.perf_counter()
            model, record["prune"] = prune(model, tuner, config, base_lr)
            timing["prune_s"] = round(time.perf_counter() - t0, 2)
        if config.qat:
            t0 = time.perf_counter()
            preserve = config.prune is not None or bool(previous.get("prune"))
            model = quantizability.quantize(model, findings, preserve_sparsity=preserve,
                                            calibration_images=tuner.calibration_images())
            tuner.fit(model, "qat", config.qat_epochs, config.lr or base_lr / 10)
            record["zero_channels_given_a_range"] = quantizability.widen_collapsed_weight_ranges(model)
            record["qat"] = True
            record["scheme"] = PQAT_SCHEME if preserve else QAT_SCHEME
            if preserve:
                record["sparsity_after_qat"] = kernel_sparsity(model, pruned_layers(record["prune"], previous))["overall"]
                if record["prune"] is not None:
                    record["prune"]["sparsity_after_qat"] = record["sparsity_after_qat"]
            timing["qat_s"] = round(time.perf_counter() - t0, 2)
        timing["total_s"] = round(sum(v for k, v in timing.items() if k.endswith("_s")), 2)
        if record["prune"] is not None:
            record["prune"].pop("layers")
        info = write_run(staging, model, run, train_config, splits, tuner.history, timing, record)
    result = training.summary(info) | {"optimization": _summary_of(record), "run_dir": str(out)}
    return result


def pruned_layers(prune_record: dict | None, previous: dict) -> dict[str, list[str]]:
    """Layer name -> pruned kernel names, from this optimization or the run it started from."""
    if prune_record is not None:
        return prune_record["layers"]
    return {name: list(PRUNED_KERNELS) for name in previous["prune"]["sparsity"]["per_layer"]}


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
    quantizability.fold_batchnorm), and a short fine-tune must not re-estimate statistics.

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
        self.epochs = training.Epochs(config, splits, len(classes), batch_size, order_offset=1000,
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
        keras = tfenv.keras()
        loss = keras.losses.CategoricalCrossentropy(label_smoothing=self.config.label_smoothing)
        model.compile(optimizer=keras.optimizers.Adam(lr), loss=loss, metrics=["accuracy"])
        with console.progress(transient=False) as bar:
            for epoch in range(epochs):
                self.history.append(self.epochs.run(model, bar, stage, f"{epoch + 1}/{epochs}",
                                                    len(self.history), lr, callbacks))


# --------------------------------------------------------------------------------------
# Pruning
# --------------------------------------------------------------------------------------
def pruning_schedule(target: float, kind: str, total_steps: int):
    """tfmot's schedule reaching `target` within the fine-tune; mask updates at least ~10 times."""
    sparsity = quantizability.tfmot().sparsity.keras
    ramp = max(1, int(total_steps * RAMP_FRACTION))
    frequency = max(1, min(100, ramp // 10))
    end_step = max(frequency, (ramp // frequency) * frequency)  # a mask update lands exactly on the target
    if kind == "constant":
        return sparsity.ConstantSparsity(target, begin_step=0, frequency=frequency), {"frequency": frequency}
    return (
        sparsity.PolynomialDecay(initial_sparsity=0.0, final_sparsity=target, begin_step=0, end_step=end_step, frequency=frequency),
        {"begin_step": 0, "end_step": end_step, "frequency": frequency, "total_steps": total_steps},
    )


def prune(model, tuner: FineTuner, config: OptimizeConfig, lr: float):
    """Magnitude-prune `model` to config.prune over config.prune_epochs epochs; returns the stripped model."""
    sparsity = quantizability.tfmot().sparsity.keras
    from tensorflow_model_optimization.python.core.sparsity.keras.pruning_wrapper import PruneLowMagnitude

    schedule, schedule_steps = pruning_schedule(config.prune, config.prune_schedule, tuner.steps_per_epoch * config.prune_epochs)
    policy, policy_note = None, None
    if config.prune_for == "xnnpack":
        policy, policy_note = xnnpack_policy(model)
    wrapped = wrap_for_pruning(model, schedule, policy)
    layers = {
        layer.layer.name: names
        for layer in wrapped.layers
        if isinstance(layer, PruneLowMagnitude) and (names := _short_names(layer.layer.get_prunable_weights()))
    }  # DepthwiseConv2D is wrapped but tfmot prunes nothing in it
    tuner.fit(wrapped, "prune", config.prune_epochs, lr, callbacks=[sparsity.UpdatePruningStep()])
    stripped = sparsity.strip_pruning(wrapped)
    reached = kernel_sparsity(stripped, layers)
    console.info(f"pruning reached {100 * reached['overall']:.1f}% sparsity (target {100 * config.prune:.0f}%) over {len(layers)} layers")
    return stripped, {
        "target": config.prune,
        "schedule": config.prune_schedule,
        "schedule_steps": schedule_steps,
        "for": config.prune_for,
        "xnnpack_policy": policy_note,
        "sparsity": reached,
        "layers": layers,
    }


def wrap_for_pruning(model, schedule, policy=None):
    """`prune_low_magnitude` on each trainable layer that has kernels to prune (and that the policy
    allows). Frozen layers are left dense: they could not recover from losing weights.

    Wrapping the whole model would fail on layers tfmot's PruneRegistry does not know, such as
    the in-graph Rescaling and Normalization, although they have nothing to prune.
    """
    keras = tfenv.keras()
    sparsity = quantizability.tfmot().sparsity.keras
    from tensorflow_model_optimization.python.core.sparsity.keras.prune_registry import PruneRegistry

    def wrap(layer):
        if isinstance(layer, keras.Model):
            raise ModelError(f"cannot prune the nested model {layer.name}", "flatten it first")
        prunable = layer.trainable and any(hasattr(layer, attr) for attr in PRUNED_KERNELS) and PruneRegistry.supports(layer)
        if prunable and (policy is None or policy.allow_pruning(layer)):
            return sparsity.prune_low_magnitude(layer, pruning_schedule=schedule)
        return layer

    with tfenv.native_stderr_silenced():
        return keras.models.clone_model(model, clone_function=wrap)


def xnnpack_policy(model):
    """tfmot's PruneForLatencyOnXNNPack, and whether the model has the subgraph XNNPACK's sparse path needs.

    The policy's own check wants the model to start with a 3x3 stride-2 VALID convolution after
    ZeroPadding2D(1); Keras MobileNetV2 and EfficientNetB0 start with a SAME-padded one. The
    1x1 convolutions are pruned either way; whether XNNPACK then runs them sparse is measured
    on the exported model, not assumed.
    """
    sparsity = quantizability.tfmot().sparsity.keras

    class OnlyOneByOne(sparsity.PruneForLatencyOnXNNPack):
        def ensure_model_supports_pruning(self, model):  # checked (and reported) below instead
            return None

    try:
        sparsity.PruneForLatencyOnXNNPack().ensure_model_supports_pruning(model)
        return sparsity.PruneForLatencyOnXNNPack(), {"policy": "PruneForLatencyOnXNNPack", "model_supported": True}
    except ValueError as exc:
        reason = str(exc).strip().splitlines()[0]
        console.warn(f"PruneForLatencyOnXNNPack: {reason}; pruning the 1x1 convolutions anyway "
                     "(XNNPACK may not run this model sparse: the export's latency tells)")
        return OnlyOneByOne(), {"policy": "PruneForLatencyOnXNNPack", "model_supported": False, "reason": reason}


def _inner(layer):
    return getattr(layer, "layer", layer)  # a QuantizeWrapper or pruning wrapper holds the real layer


def _short_names(weights) -> list[str]:
    return [quantizability.short_name(weight) for weight in weights]


def _kernels(layer, attrs: list[str]) -> list[np.ndarray]:
    """The layer's kernel variables by name, also inside a QuantizeWrapper (whose inner layer's
    kernel attribute is then a quantized tensor, not the variable)."""
    found = []
    for weight, short in zip(layer.weights, _short_names(layer.weights)):
        if short in attrs:
            found.append(np.asarray(weight.numpy()))
    return found


def kernel_sparsity(model, layers: dict[str, list[str]]) -> dict:
    """Fraction of exact zeros in the pruned kernels: per layer and over all of them."""
    by_name = {_inner(layer).name: layer for layer in model.layers}
    per_layer, zeros, total = {}, 0, 0
    for name, attrs in layers.items():
        layer = by_name.get(name)
        if layer is None:
            continue
        values = _kernels(layer, attrs)
        n_zero = int(sum((v == 0).sum() for v in values))
        n = int(sum(v.size for v in values))
        per_layer[name] = round(n_zero / n, 4) if n else None
        zeros += n_zero
        total += n
    all_weights = int(sum(np.asarray(w).size for w in model.get_weights()))
    return {
        "overall": round(zeros / total, 4) if total else None,
        "zeros": zeros,
        "pruned_weights": total,
        "fraction_of_all_weights_zero": round(zeros / all_weights, 4) if all_weights else None,
        "per_layer": per_layer,
    }


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
    from tensorflow_model_optimization.python.core.quantization.keras.quantize_layer import QuantizeLayer

    def build_once(m):
        for layer in m.layers:
            if isinstance(layer, QuantizeLayer):
                layer._build_input_shape = None  # no recorded shape: built once, by the graph

    build_once(model)
    with quantizability.quantize_scope(), tfenv.native_stderr_silenced():
        twin = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(model))
    live_layers = {layer.name: layer for layer in model.layers}
    for layer in twin.layers:
        by_short: dict[str, list] = {}
        for variable, short in zip(layer.weights, _short_names(layer.weights)):
            by_short.setdefault(short, []).append(variable)
        trained: dict[str, list] = {}
        for variable, short in zip(live_layers[layer.name].weights, _short_names(live_layers[layer.name].weights)):
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


def write_run(work: Path, model, run: Run, config: TrainConfig, splits: dict, history: list, timing: dict, record: dict) -> dict:
    classes = run.labels
    metrics = {
        name: classification_metrics(predict_probs(model, splits[name].images), splits[name].labels, classes)
        for name in ("val", "test") if name in splits
    }
    save_model(model, work / MODEL_FILE)
    write_labels(work / LABELS_FILE, classes)
    save_plan(run.plan, work / SPLIT_FILE)
    info = training.run_record(config, classes, run.plan, splits, history, timing, metrics, optimization=record)
    info["created"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    (work / RUN_FILE).write_text(json.dumps(info, indent=2))
    plots.training_curves(history, work / "training.png")
    split_name = "test" if "test" in metrics else "val"
    what = " + ".join(p for p in (
        f"{100 * record['prune']['target']:.0f}% pruned" if record["prune"] else None, "QAT" if record["qat"] else None,
    ) if p)
    plots.confusion_matrix(metrics[split_name]["confusion"], classes, work / "confusion_matrix.png",
                           f"{config.arch} {what} on {split_name} (top-1 {metrics[split_name]['top1']:.3f})")
    return info

