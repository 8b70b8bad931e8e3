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


def confusion_matrix(confusion: list[list[int]], classes: list[str], path: Path, title: str) -> None:
    plt = _pyplot()
    matrix = np.asarray(confusion)
    size = max(4.0, 0.6 * len(classes) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    threshold = matrix.max() / 2 if matrix.size else 0
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            ax.text(j, i, str(matrix[i, j]), ha="center", va="center",
                    color="white" if matrix[i, j] > threshold else "black", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
