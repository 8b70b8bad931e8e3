"""PNG figures: training curves and confusion matrices."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def training_curves(history: list[dict], path, best_epoch: int | None = None) -> None:
    """history: one dict per epoch with stage, loss, accuracy, val_loss, val_accuracy; path may be a file object."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    epochs = np.arange(1, len(history) + 1)
    for ax, metric, title in ((axes[0], "loss", "loss"), (axes[1], "accuracy", "top-1 accuracy")):
        ax.plot(epochs, [h.get(metric) for h in history], marker="o", label="train")
        ax.plot(epochs, [h.get(f"val_{metric}") for h in history], marker="o", label="val")
        stage_changes = [i + 0.5 for i in range(1, len(history)) if history[i]["stage"] != history[i - 1]["stage"]]
        for x in stage_changes:
            ax.axvline(x, color="grey", linestyle="--", linewidth=1)
            ax.text(x, ax.get_ylim()[1], f" {history[int(x)]['stage']}", va="top", fontsize=8, color="grey")
        if best_epoch is not None:
            ax.axvline(best_epoch, color="green", linestyle=":", linewidth=1.5)
            ax.text(best_epoch, ax.get_ylim()[0], " best", va="bottom", fontsize=8, color="green")
        ax.set_xlabel("epoch")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# Charts with one row or bar per class stay a bounded size: beyond these many classes the
# counts leave the cells, then the names leave the axes (2,000 classes draw in about a second).
CELL_TEXT_MAX = 30
CLASS_NAMES_MAX = 80
HEATMAP_CELLS = 400  # beyond this, a cell of the heat map sums a block of classes
MAX_INCHES = 16.0


def class_ticks(ax, axis: str, positions, classes: list[str], rotate: bool = False) -> None:
    """Class names on an axis when there are few enough to read, else just the axis label says 'class index'."""
    set_ticks = ax.set_xticks if axis == "x" else ax.set_yticks
    if len(classes) <= CLASS_NAMES_MAX:
        set_ticks(positions, classes, **({"rotation": 45, "ha": "right"} if rotate else {}),
                  **({"fontsize": 6} if len(classes) > CELL_TEXT_MAX else {}))


def confusion_matrix(confusion: list[list[int]], classes: list[str], path: Path, title: str) -> None:
    plt = _pyplot()
    matrix = np.asarray(confusion)
    n = len(classes)
    size = min(MAX_INCHES, max(4.0, 0.6 * n + 2))
    fig, ax = plt.subplots(figsize=(size, size))
    if n > HEATMAP_CELLS:
        block = -(-n // HEATMAP_CELLS)
        side = -(-n // block) * block
        padded = np.zeros((side, side), dtype=np.float64)
        padded[:matrix.shape[0], :matrix.shape[1]] = matrix
        blocks = padded.reshape(side // block, block, side // block, block).sum(axis=(1, 3))
        ax.imshow(blocks, cmap="Blues", interpolation="nearest", extent=(-0.5, side - 0.5, side - 0.5, -0.5))
        title += f" ({block}x{block} classes per cell)"
    else:
        ax.imshow(matrix, cmap="Blues", interpolation="nearest")
    class_ticks(ax, "x", range(n), classes, rotate=True)
    class_ticks(ax, "y", range(n), classes)
    named = n <= CLASS_NAMES_MAX
    ax.set_xlabel("predicted" if named else "predicted (class index, labels.txt order)")
    ax.set_ylabel("true" if named else "true (class index)")
    ax.set_title(title)
    if n <= CELL_TEXT_MAX:
        threshold = matrix.max() / 2 if matrix.size else 0
        for i in range(matrix.shape[0]):
            for j in range(matrix.shape[1]):
                ax.text(j, i, str(matrix[i, j]), ha="center", va="center",
                        color="white" if matrix[i, j] > threshold else "black", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
