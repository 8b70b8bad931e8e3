"""`edgeclf demo`: the whole flow, offline, on scikit-learn's bundled handwritten digits.

The digits (1,797 real 8x8 scans, 10 classes) ship inside scikit-learn, so the demo needs
no download. They are written out as an ordinary image folder and go through exactly the
same pipeline a user's photos would.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from edgeclf.atomic import DEMO_MARKER, check_replaceable, staged_dir
from edgeclf.config import TrainConfig


def claim_demo_folder(root: Path) -> None:
    """The demo writes only into a new or empty folder, or one an earlier demo wrote (marked)."""
    check_replaceable(root, DEMO_MARKER, overwrite=True)
    root.mkdir(parents=True, exist_ok=True)
    (root / DEMO_MARKER).write_text("written by `edgeclf demo`\n")


def write_digits_folder(root: Path, test_every: int = 5) -> tuple[Path, Path]:
    """Write digits as PNGs under root/train/<digit>/ and root/test/<digit>/ (every 5th to test)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    train_dir, test_dir = root / "train", root / "test"
    if train_dir.is_dir() and test_dir.is_dir():
        return train_dir, test_dir
    with staged_dir(root, DEMO_MARKER, overwrite=True) as staging:
        (staging / DEMO_MARKER).write_text("written by `edgeclf demo`\n")
        for index, (pixels, label) in enumerate(zip(digits.images, digits.target)):
            split = "test" if index % test_every == 0 else "train"
            folder = staging / split / str(label)
            folder.mkdir(parents=True, exist_ok=True)
            gray = np.clip(pixels * (255.0 / 16.0), 0, 255).astype(np.uint8)
            Image.fromarray(gray, "L").save(folder / f"digit_{index:04d}.png")
    return train_dir, test_dir


def demo_train_config(train_dir: Path, test_dir: Path, out: Path, epochs: int, seed: int) -> TrainConfig:
    return TrainConfig(
        data_dir=str(train_dir),
        test_dir=str(test_dir),
        out=str(out),
        arch="mobilenetv2",
        weights="none",
        alpha=0.35,
        img_size=32,
        head_epochs=0,
        fine_tune_epochs=epochs,
        batch_size=32,
        dropout=0.2,
        augment=False,  # digits are not mirror-symmetric
        seed=seed,
    )


def export_and_validate(run_dir: Path, test_dir: Path) -> dict:
    """Export fp32 and int8 TFLite, then measure both on the local device over the test images."""
    from edgeclf.export import export_run
    from edgeclf.exporters.spec import ExportSpec
    from edgeclf.validate import validate

    shipped = {}
    for quant in ("fp32", "int8"):
        manifest = export_run(run_dir, ExportSpec(quant=quant))
        measured = validate(manifest["path"], "local", str(test_dir), runs=50, warmup=5, threads=1)
        shipped[quant] = {
            "path": manifest["path"],
            "bytes": manifest["files"][manifest["model_file"]]["bytes"],
            "val": manifest["accuracy"],
            "test": measured["accuracy"],
            "latency_ms": measured["latency_ms"],
        }
    return shipped
