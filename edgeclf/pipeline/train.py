"""Two-stage fine-tuning: train the head on a frozen backbone, then fine-tune the backbone's top.

The run is built in `<out>.partial/` and renamed to `<out>` only when complete. After every
epoch the partial directory holds a checkpoint (weights, optimizer state, history, early-stopping
state), so an interrupted run continues with `--resume`.
"""
from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from edgeclf import console, tfenv
from edgeclf.atomic import check_output, publish, write_text_atomic
from edgeclf.config import TrainConfig
from edgeclf.errors import UsageError
from edgeclf.pipeline import plots
from edgeclf.pipeline.backbones import INPUT_NAME, build_classifier, configure_trainable, get_backbone
from edgeclf.pipeline.data import SplitPlan, plan_splits, save_plan
from edgeclf.pipeline.datasets import DecodedSplit
from edgeclf.pipeline.evaluate import predict_probs
from edgeclf.pipeline.metrics import classification_metrics
from edgeclf.pipeline.partial_runs import CHECKPOINT_DIR, STATE_FILE, discard_partial, load_state, partial_dir
from edgeclf.pipeline.runs import LABELS_FILE, MODEL_FILE, RUN_FILE, SPLIT_FILE, write_labels

RUN_FORMAT = 1


@dataclass(frozen=True)
class Stage:
    name: str
    epochs: int
    lr: float
    fine_tune_at: int | None  # None: backbone frozen


def stages(config: TrainConfig) -> list[Stage]:
    if not config.pretrained:
        # A random backbone learns nothing while frozen: train everything at the full rate.
        return [Stage("scratch", config.head_epochs + config.fine_tune_epochs, config.lr, 0)]
    planned = [
        Stage("head", config.head_epochs, config.lr, None),
        Stage("fine_tune", config.fine_tune_epochs, config.fine_tune_lr, config.fine_tune_at),
    ]
    return [s for s in planned if s.epochs > 0]


def train(config: TrainConfig, overwrite: bool = False, restart: bool = False) -> dict:
    """Train a new run into config.out; `restart` first discards an interrupted run there."""
    work = partial_dir(Path(config.out))
    check_output(Path(config.out), RUN_FILE, overwrite, inputs=_inputs(config))
    if work.exists() and not restart:
        load_state(work)  # a damaged state gets its own message, naming --restart
        raise UsageError(f"an interrupted run exists at {work}",
                         "pass --resume to continue it, or --restart to discard it and start again")
    plan = plan_splits(config)  # every dataset error surfaces here, before anything is written
    if work.exists():
        discard_partial(work)
    state = {
        "config": config.to_dict(),
        "plan": plan.to_json(),
        "stage": stages(config)[0].name,
        "epoch": 0,  # epochs finished in the current stage
        "history": [],
        "best": None,
        "stages_done": [],
        "timing": {},
    }
    return _execute(state, work, overwrite)


def resume(out: Path, overwrite: bool = False) -> dict:
    """Continue an interrupted run from its last epoch checkpoint, with its original config."""
    work = partial_dir(Path(out).expanduser().resolve())
    if not work.is_dir():
        raise UsageError(f"there is no interrupted run to resume at {work}", "drop --resume to start a new run")
    state = load_state(work)
    config = TrainConfig.from_dict(state["config"])
    check_output(Path(config.out), RUN_FILE, overwrite, inputs=_inputs(config))
    console.info(f"resuming {work}: stage {state['stage']}, {state['epoch']} epoch(s) done")
    return _execute(state, work, overwrite)


def _inputs(config: TrainConfig) -> list:
    return [config.data_dir, config.val_dir, config.test_dir]


def _execute(state: dict, work: Path, overwrite: bool) -> dict:
    config = TrainConfig.from_dict(state["config"])
    plan = SplitPlan.from_json(state["plan"])
    started = time.perf_counter()
    splits = {name: plan.decode(name, config.img_size) for name in plan.samples}
    state["timing"]["decode_s"] = round(time.perf_counter() - started, 2)
    work.mkdir(parents=True, exist_ok=True)
    try:
        trainer = Trainer(config, plan, splits, work, state)
        trainer.run()
        result = trainer.finish()
        publish(work, Path(config.out), RUN_FILE, overwrite)
    except BaseException as exc:
        _keep_or_discard(work, exc)
        raise
    result["run_dir"] = config.out
    return result


def _keep_or_discard(work: Path, exc: BaseException) -> None:
    """Keep a partial run only when it holds a checkpoint worth resuming; never leave debris."""
    state_path = work / STATE_FILE
    if state_path.is_file():
        out = work.with_name(work.name[: -len(".partial")])
        hint = f"progress is saved in {work}; continue with `edgeclf train --out {out} --resume`"
        console.warn(hint if not isinstance(exc, KeyboardInterrupt) else f"interrupted; {hint}")
        return
    shutil.rmtree(work, ignore_errors=True)


class Trainer:
    def __init__(self, config: TrainConfig, plan: SplitPlan, splits: dict[str, DecodedSplit], work: Path, state: dict):
        self.config = config
        self.plan = plan
        self.splits = splits
        self.work = work
        self.state = state
        self.tf = tfenv.tf()
        self.keras = tfenv.keras()
        self.keras.utils.set_random_seed(config.seed)
        resuming = (work / STATE_FILE).is_file()
        # A resumed run restores every weight from the checkpoint, so skip loading the backbone file.
        weights = "none" if resuming else config.weights
        self.classifier = build_classifier(
            get_backbone(config.arch), len(plan.classes), config.img_size, weights, config.alpha, config.dropout
        )
        self.model = self.classifier.model
        self.epochs = Epochs(config, splits, len(plan.classes), config.batch_size)
        self.checkpoints = work / CHECKPOINT_DIR
        self.checkpoints.mkdir(exist_ok=True)

    # -- training -------------------------------------------------------------
    def run(self) -> None:
        for stage in stages(self.config):
            if stage.name in self.state["stages_done"]:
                continue
            if self.state["stage"] != stage.name:
                self.state.update(stage=stage.name, epoch=0, best=None)
            self._run_stage(stage)
            self.model.save_weights(str(self.checkpoints / "stage_end.weights.h5"))
            self.state["stages_done"].append(stage.name)
            self._save_state()

    def _run_stage(self, stage: Stage) -> None:
        keras = self.keras
        configure_trainable(self.classifier, stage.fine_tune_at, freeze_batchnorm=self.config.pretrained)
        optimizer = keras.optimizers.Adam(stage.lr)
        loss = keras.losses.CategoricalCrossentropy(label_smoothing=self.config.label_smoothing)
        self.model.compile(optimizer=optimizer, loss=loss, metrics=["accuracy"])
        checkpoint = self.tf.train.Checkpoint(model=self.model, optimizer=optimizer)
        if self.state["epoch"] > 0:
            checkpoint.restore(str(self.checkpoints / "last")).expect_partial()
        elif self.state["stages_done"]:
            # Resumed at a stage boundary: start from the weights the previous stage ended with.
            self.model.load_weights(str(self.checkpoints / "stage_end.weights.h5"))

        started = time.perf_counter() - self.state["timing"].get(f"{stage.name}_s", 0.0)
        with console.progress(transient=False) as bar:
            for epoch in range(self.state["epoch"], stage.epochs):
                record = self.epochs.run(self.model, bar, stage.name, f"{epoch + 1}/{stage.epochs}",
                                         len(self.state["history"]), stage.lr)
                self.state["history"].append(record)
                self.state["epoch"] = epoch + 1
                stop = self._track_best(record)
                checkpoint.write(str(self.checkpoints / "last"))
                self.state["timing"][f"{stage.name}_s"] = round(time.perf_counter() - started, 2)
                self._save_state()
                if stop:
                    console.info(f"early stopping {stage.name}: val_loss has not improved for {self.config.patience} epochs")
                    break
        if self.state["best"] is not None:
            self.model.load_weights(str(self.checkpoints / "best.weights.h5"))
            console.info(f"{stage.name}: restored the best epoch ({self.state['best']['epoch']}, val_loss {self.state['best']['val_loss']:.4f})")

    def _track_best(self, record: dict) -> bool:
        """Early stopping on val_loss with best-weight restore; returns True to stop the stage."""
        best = self.state["best"]
        if best is None or record["val_loss"] < best["val_loss"]:
            self.state["best"] = {"epoch": record["epoch"], "val_loss": record["val_loss"], "wait": 0}
            self.model.save_weights(str(self.checkpoints / "best.weights.h5"))
            return False
        best["wait"] += 1
        return best["wait"] >= self.config.patience

    def _save_state(self) -> None:
        write_text_atomic(self.work / STATE_FILE, json.dumps(self.state, indent=1))

    # -- results ---------------------------------------------------------------
    def finish(self) -> dict:
        classes = self.plan.classes
        metrics = {}
        for name in ("val", "test"):
            if name in self.splits:
                split = self.splits[name]
                metrics[name] = classification_metrics(predict_probs(self.model, split.images), split.labels, classes)
        work = self.work
        self.model.save(work / MODEL_FILE)
        write_labels(work / LABELS_FILE, classes)
        save_plan(self.plan, work / SPLIT_FILE)
        timing = self.state["timing"]
        timing["total_s"] = round(sum(v for k, v in timing.items() if k.endswith("_s") and k != "total_s"), 2)
        info = run_record(self.config, classes, self.plan, self.splits, self.state["history"], timing, metrics)
        (work / RUN_FILE).write_text(json.dumps(info, indent=2))
        plots.training_curves(self.state["history"], work / "training.png")
        split_name = "test" if "test" in metrics else "val"
        plots.confusion_matrix(metrics[split_name]["confusion"], classes, work / "confusion_matrix.png",
                               f"{self.config.arch} on {split_name} (top-1 {metrics[split_name]['top1']:.3f})")
        shutil.rmtree(work / CHECKPOINT_DIR, ignore_errors=True)
        (work / STATE_FILE).unlink()
        return summary(info)


def run_record(config, classes, plan, splits, history, timing, metrics, optimization=None) -> dict:
    backbone = get_backbone(config.arch)
    size = config.img_size
    return {
        "format": RUN_FORMAT,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "config": config.to_dict(),
        "versions": tfenv.versions(),
        "labels": classes,
        "input": {
            "name": INPUT_NAME,
            "shape": [1, size, size, 3],
            "dtype": "float32",
            "range": [0, 255],
            "preprocessing": f"raw RGB 0-255, resized to {size}x{size} (bilinear); "
                             f"{backbone.in_graph_preprocessing} happens inside the model",
        },
        "dataset": {"split": plan.how, **{name: split.summary() for name, split in splits.items()}},
        "history": history,
        "timing": timing,
        "metrics": metrics,
        "optimization": optimization,
    }


def summary(info: dict) -> dict:
    """What `--json` prints: the same keys as run.json, minus the bulky parts."""
    return {
        "arch": info["config"]["arch"],
        "img_size": info["input"]["shape"][1],
        "labels": info["labels"],
        "dataset": {k: ({kk: vv for kk, vv in v.items() if kk != "skipped"} | {"skipped": len(v["skipped"])})
                    if isinstance(v, dict) else v for k, v in info["dataset"].items()},
        "timing": info["timing"],
        "metrics": info["metrics"],
    }


def augmenter(keras, seed: int):
    """The training-time augmentation: random flip, rotation, zoom and contrast, seeded."""
    layers = keras.layers
    return keras.Sequential(
        [
            layers.RandomFlip("horizontal", seed=seed),
            layers.RandomRotation(0.08, fill_mode="reflect", seed=seed + 1),
            layers.RandomZoom(0.15, fill_mode="reflect", seed=seed + 2),
            layers.RandomContrast(0.2, seed=seed + 3),
        ],
        name="augment",
    )


def class_weights(labels: np.ndarray, n_classes: int) -> dict[int, float]:
    """Inverse-frequency class weights (--class-weight auto)."""
    counts = np.bincount(labels, minlength=n_classes)
    return {i: float(len(labels) / (n_classes * c)) for i, c in enumerate(counts)}


class Epochs:
    """Runs training epochs on a run's train split and scores each on its val split.

    Shared by `edgeclf train` and `edgeclf optimize`, so both shuffle (by seed and epoch
    number), augment, weight classes and record history the same way.
    """

    def __init__(self, config: TrainConfig, splits: dict, n_classes: int, batch_size: int, order_offset: int = 0,
                 teacher=None, teacher_weight: float = 0.0):
        tf = tfenv.tf()
        self.order_offset = order_offset  # added to the epoch number that seeds the shuffle order
        self.teacher = teacher  # a model whose probabilities are mixed into the targets (distillation)
        self.teacher_weight = teacher_weight
        self.keras = tfenv.keras()
        self.config = config
        self.n_classes = n_classes
        self.batch_size = batch_size
        self.images = tf.constant(splits["train"].images)
        self.labels = tf.constant(splits["train"].labels)
        self.augment = augmenter(self.keras, config.seed) if config.augment else None
        self.class_weight = class_weights(splits["train"].labels, n_classes) if config.class_weight == "auto" else None
        val = splits["val"]
        self.val_x = val.images.astype(np.float32)
        self.val_y = np.eye(n_classes, dtype=np.float32)[val.labels]

    @property
    def steps(self) -> int:
        return int(np.ceil(int(self.labels.shape[0]) / self.batch_size))

    def run(self, model, bar, stage: str, label: str, global_epoch: int, lr: float, callbacks=()) -> dict:
        """One epoch of `model.fit` (already compiled) plus validation; returns its history record."""
        task = bar.add_task(f"{stage} {label}", total=self.steps, status="")
        dataset = epoch_dataset(self.images, self.labels, self.n_classes, self.batch_size,
                                self.config.seed, self.order_offset + global_epoch, self.augment,
                                self.teacher, self.teacher_weight)
        fit = model.fit(dataset, epochs=1, verbose=0, class_weight=self.class_weight,
                        callbacks=[*callbacks, batch_progress(self.keras, bar, task)])
        val_loss, val_acc = model.evaluate(self.val_x, self.val_y, batch_size=64, verbose=0)
        record = {
            "stage": stage,
            "epoch": global_epoch + 1,
            "loss": float(fit.history["loss"][-1]),
            "accuracy": float(fit.history["accuracy"][-1]),
            "val_loss": float(val_loss),
            "val_accuracy": float(val_acc),
            "lr": lr,
        }
        bar.update(task, status=f"loss {record['loss']:.3f} acc {record['accuracy']:.3f} | val {val_loss:.3f} {val_acc:.3f}")
        return record


def epoch_dataset(images, labels, n_classes: int, batch_size: int, seed: int, global_epoch: int, augment=None,
                  teacher=None, teacher_weight: float = 0.0):
    """One epoch's shuffled (pixels, one-hot) batches; the order depends only on the seed and the epoch number.

    `images` and `labels` are tensors (uint8 pixels, int labels) so that every epoch reuses them.
    With a `teacher`, each target becomes (1 - teacher_weight) * one-hot + teacher_weight *
    the teacher's probabilities on the same augmented batch: distillation at temperature 1.
    """
    tf = tfenv.tf()
    order = np.random.default_rng([seed, global_epoch]).permutation(int(labels.shape[0]))
    ds = tf.data.Dataset.from_tensor_slices(order).batch(batch_size)
    ds = ds.map(lambda idx: (tf.cast(tf.gather(images, idx), tf.float32), tf.one_hot(tf.gather(labels, idx), n_classes)))
    if augment is not None:
        ds = ds.map(lambda x, y: (augment(x, training=True), y), num_parallel_calls=tf.data.AUTOTUNE)
    if teacher is not None and teacher_weight > 0:
        ds = ds.map(lambda x, y: (x, (1.0 - teacher_weight) * y + teacher_weight * teacher(x, training=False)))
    return ds.prefetch(tf.data.AUTOTUNE)


def batch_progress(keras, bar, task):
    """A Keras callback that advances a rich progress task once per batch."""

    class BatchProgress(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            logs = logs or {}
            bar.update(task, advance=1, status=f"loss {logs.get('loss', 0):.3f} acc {logs.get('accuracy', 0):.3f}")

    return BatchProgress()
