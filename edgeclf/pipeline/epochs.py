"""Training epochs on a run's train split, scored on its val split: the one epoch loop that
`edgeclf train` and `edgeclf optimize` share (seeded shuffling, augmentation, class weights)."""
from __future__ import annotations

import math
from dataclasses import dataclass

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
        order = epoch_order(self.config.seed, self.order_offset + global_epoch, int(self.labels.shape[0]))
        train = feed(self.images, self.labels, order, self.n_classes, self.batch_size, self.augment,
                     self.teacher, self.teacher_weight)
        with streaming.surface_read_errors(tfenv.tf(), self.images, self.val.images):
            fit = model.fit(train.dataset, steps_per_epoch=train.steps, epochs=1, verbose=0, class_weight=self.class_weight,
                            callbacks=[*callbacks, batch_progress(self.keras, bar, task)])
            if streaming.is_streamed(self.val.images):
                val = feed(self.val.images, self.val.labels, np.arange(len(self.val)), self.n_classes, 64)
                val_loss, val_acc = model.evaluate(val.dataset, steps=val.steps, verbose=0)
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


def epoch_order(seed: int, global_epoch: int, n_images: int) -> np.ndarray:
    """The shuffled order of one epoch: it depends only on the seed and the epoch number."""
    return np.random.default_rng([seed, global_epoch]).permutation(n_images)


def epoch_dataset(images, labels, n_classes: int, batch_size: int, seed: int, global_epoch: int, augment=None,
                  teacher=None, teacher_weight: float = 0.0):
    """One epoch's shuffled (pixels, one-hot) batches, on one device; the order depends only on the
    seed and the epoch number."""
    order = epoch_order(seed, global_epoch, int(labels.shape[0]))
    return batches(images, labels, index_batches(order, batch_size), n_classes, augment, teacher, teacher_weight)


@dataclass
class Feed:
    dataset: object  # a tf.data.Dataset, or a tf.distribute DistributedDataset under a strategy
    steps: int


def feed(images, labels, order: np.ndarray, n_classes: int, batch_size: int, augment=None,
         teacher=None, teacher_weight: float = 0.0) -> Feed:
    """Batches of `images[order]` for `model.fit` or `evaluate`: global batches of `batch_size`.

    Under a tf.distribute strategy every input pipeline (one per worker of a cluster) builds
    batches of only its own replicas' share of each global batch, so a worker reads only the
    images it trains on. Left to Keras, a dataset of indices would be sharded after the read,
    and every worker would read, decode and augment the whole global batch.
    """
    tf = tfenv.tf()
    steps = -(-len(order) // batch_size)
    if not tf.distribute.has_strategy():
        return Feed(batches(images, labels, index_batches(order, batch_size), n_classes, augment, teacher, teacher_weight), steps)

    def pipeline(context):
        rows = index_batches(order, batch_size, context.num_replicas_in_sync,
                             context.input_pipeline_id, context.num_input_pipelines)
        return batches(images, labels, rows, n_classes, augment, teacher, teacher_weight)

    return Feed(tf.distribute.get_strategy().distribute_datasets_from_function(pipeline), steps)


def index_batches(order: np.ndarray, batch_size: int, replicas: int = 1, pipeline: int = 0, pipelines: int = 1) -> np.ndarray:
    """The image indices of each batch one input pipeline feeds, one row per batch, -1 padding.

    Global batch k is `order[k * batch_size:(k + 1) * batch_size]`, split as evenly as it goes
    into one part per replica; pipeline p feeds its replicas' parts (replicas / pipelines of
    them), step by step, which is the order tf.distribute hands a pipeline's batches to them.
    """
    order = np.asarray(order, dtype=np.int64)
    steps = -(-len(order) // batch_size)
    width = -(-batch_size // replicas)
    grid = np.full((steps, replicas, width), -1, dtype=np.int64)
    for step in range(steps):
        for replica, part in enumerate(np.array_split(order[step * batch_size:(step + 1) * batch_size], replicas)):
            grid[step, replica, :len(part)] = part
    local = replicas // pipelines
    return grid[:, pipeline * local:(pipeline + 1) * local].reshape(steps * local, width)


def batches(images, labels, rows: np.ndarray, n_classes: int, augment=None, teacher=None, teacher_weight: float = 0.0):
    """(float pixels, one-hot) batches of the indices in each row of `rows` (-1 is padding);
    a streamed store is read in parallel. With a `teacher`, each target becomes
    (1 - teacher_weight) * one-hot + teacher_weight * the teacher's probabilities on the same
    augmented batch: distillation at temperature 1."""
    tf = tfenv.tf()
    read = streaming.reader(tf, images)
    parallel = tf.data.AUTOTUNE if streaming.is_streamed(images) else None

    def load(row):
        idx = tf.boolean_mask(row, row >= 0)
        return tf.cast(read(idx), tf.float32), tf.one_hot(tf.gather(labels, idx), n_classes)

    ds = tf.data.Dataset.from_tensor_slices(rows).map(load, num_parallel_calls=parallel)
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
