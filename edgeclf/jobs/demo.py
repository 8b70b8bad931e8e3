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
from edgeclf.pipeline.config import TrainConfig


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


def export_and_validate(run_dir: Path, test_dir: Path) -> tuple[dict, dict]:
    """Export fp32 and int8 TFLite and measure both on this machine with `edgeclf bench`
    (which also writes the run's report.html); returns (per-quant results, bench summary)."""
    from edgeclf.artefacts import Artefact
    from edgeclf.jobs.bench import bench
    from edgeclf.errors import EdgeclfError

    summary = bench(run_dir, [("tflite", "fp32"), ("tflite", "int8")], "local", str(test_dir), runs=50, warmup=5, threads=1)
    shipped = {}
    for row in summary["rows"]:
        if "result" not in row:
            raise EdgeclfError(f"the demo's tflite:{row['quant']} failed: {row['status']}")
        measured = row["result"]
        manifest = Artefact.open(measured["artefact"]).manifest
        shipped[row["quant"]] = {
            "path": measured["artefact"],
            "bytes": manifest["files"][manifest["model_file"]]["bytes"],
            "val": manifest["accuracy"],
            "test": measured["accuracy"],
            "latency_ms": measured["latency_ms"],
        }
    return shipped, summary


def bundle_and_check(int8_artefact: str, out: Path) -> dict:
    """Bundle the int8 artefact for an app team and run the bundle's own check_golden.py."""
    import subprocess
    import sys

    from edgeclf.bundle.builder import build_bundle
    from edgeclf.errors import EdgeclfError

    summary = build_bundle(int8_artefact, out, overwrite=True)
    check = subprocess.run([sys.executable, "check_golden.py"], cwd=summary["path"], capture_output=True, text=True)
    if check.returncode != 0:
        raise EdgeclfError(f"the demo bundle's check_golden.py failed: {check.stdout.strip().splitlines()[-1:]}", "report this")
    return {"path": summary["path"], "check_golden": check.stdout.strip().splitlines()[-1]}
