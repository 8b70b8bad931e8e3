"""Training epochs on a run's train split, scored on its val split: the one epoch loop that
`edgeclf train` and `edgeclf optimize` share (seeded shuffling, augmentation, class weights)."""
from __future__ import annotations

import math

import numpy as np

from edgeclf import tfenv
from edgeclf.errors import ModelError
from edgeclf.pipeline import streaming
from edgeclf.pipeline.config import TrainConfig


class Diverged(ModelError):
    """The loss became NaN or infinite: the weights are garbage and must not be written as a run."""


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
        train = splits["train"]
        # In memory: one tensor every epoch reuses. Streamed (--cache disk/none): read per batch.
        self.images = train.images if streaming.is_streamed(train.images) else tf.constant(train.images)
        self.labels = tf.constant(splits["train"].labels)
        self.augment = augmenter(self.keras, config.seed) if config.augment else None
        self.class_weight = class_weights(splits["train"].labels, n_classes) if config.class_weight == "auto" else None
        val = splits["val"]
        self.val = val
        if not streaming.is_streamed(val.images):
            self.val_x = val.images.astype(np.float32)
            self.val_y = np.eye(n_classes, dtype=np.float32)[val.labels]

    @property
    def steps(self) -> int:
        return int(np.ceil(int(self.labels.shape[0]) / self.batch_size))

    def compile(self, model, lr: float):
        """Compile `model` for these epochs (Adam, label-smoothed cross-entropy); returns the optimizer."""
        optimizer = self.keras.optimizers.Adam(lr)
        loss = self.keras.losses.CategoricalCrossentropy(label_smoothing=self.config.label_smoothing)
        model.compile(optimizer=optimizer, loss=loss, metrics=["accuracy"])
        return optimizer

    def run(self, model, bar, stage: str, label: str, global_epoch: int, lr: float, callbacks=()) -> dict:
        """One epoch of `model.fit` (already compiled) plus validation; returns its history record."""
        task = bar.add_task(f"{stage} {label}", total=self.steps, status="")
        dataset = epoch_dataset(self.images, self.labels, self.n_classes, self.batch_size,
                                self.config.seed, self.order_offset + global_epoch, self.augment,
                                self.teacher, self.teacher_weight)
        with streaming.surface_read_errors(tfenv.tf(), self.images, self.val.images):
            fit = model.fit(dataset, epochs=1, verbose=0, class_weight=self.class_weight,
                            callbacks=[*callbacks, batch_progress(self.keras, bar, task)])
            if streaming.is_streamed(self.val.images):
                order = np.arange(len(self.val))
                val_data = batches(self.val.images, self.val.labels, order, self.n_classes, 64)
                val_loss, val_acc = model.evaluate(val_data, verbose=0)
            else:
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
        if not (math.isfinite(record["loss"]) and math.isfinite(record["val_loss"])):
            flag = "--fine-tune-lr" if stage == "fine_tune" else "--lr"
            raise Diverged(f"training diverged in {stage} {label}: loss {record['loss']}, val_loss {record['val_loss']}",
                           f"lower the learning rate, e.g. {flag} {lr / 10:g}")
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
    ds = batches(images, labels, order, n_classes, batch_size, prefetch=False)
    if augment is not None:
        ds = ds.map(lambda x, y: (augment(x, training=True), y), num_parallel_calls=tf.data.AUTOTUNE)
    if teacher is not None and teacher_weight > 0:
        ds = ds.map(lambda x, y: (x, (1.0 - teacher_weight) * y + teacher_weight * teacher(x, training=False)))
    return ds.prefetch(tf.data.AUTOTUNE)


def batches(images, labels, order, n_classes: int, batch_size: int, prefetch: bool = True):
    """(float pixels, one-hot) batches of `images[order]`; a streamed store is read in parallel."""
    tf = tfenv.tf()
    read = streaming.reader(tf, images)
    parallel = tf.data.AUTOTUNE if streaming.is_streamed(images) else None
    ds = tf.data.Dataset.from_tensor_slices(order).batch(batch_size)
    ds = ds.map(lambda idx: (tf.cast(read(idx), tf.float32), tf.one_hot(tf.gather(labels, idx), n_classes)),
                num_parallel_calls=parallel)
    return ds.prefetch(tf.data.AUTOTUNE) if prefetch else ds


def batch_progress(keras, bar, task):
    """A Keras callback that advances a rich progress task once per batch."""

    class BatchProgress(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            logs = logs or {}
            bar.update(task, advance=1, status=f"loss {logs.get('loss', 0):.3f} acc {logs.get('accuracy', 0):.3f}")

    return BatchProgress()
