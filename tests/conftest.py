"""Shared fixtures: tiny generated image folders and the location of ../shared."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
FLOWERS = SHARED / "datasets" / "flowers128"
MOBILENET_WEIGHTS = SHARED / "weights" / "mobilenet_v2_1.0_224_no_top.h5"

# Each class gets its own dominant colour and stripe direction, so a tiny model can tell them apart.
CLASS_COLOURS = [(220, 40, 40), (40, 200, 60), (40, 60, 220), (220, 200, 40), (160, 40, 200)]


def synthetic_image(label: int, index: int, size: int = 40) -> Image.Image:
    rng = np.random.default_rng(label * 1000 + index)
    base = np.array(CLASS_COLOURS[label % len(CLASS_COLOURS)], dtype=np.float64)
    pixels = np.clip(base + rng.normal(0, 25, (size, size, 3)), 0, 255)
    stripes = (np.arange(size) // 4) % 2 == 0
    if label % 2:
        pixels[:, stripes] *= 0.5
    else:
        pixels[stripes, :] *= 0.5
    return Image.fromarray(pixels.astype(np.uint8), "RGB")


def make_image_folder(root: Path, per_class: dict[str, int], size: int = 40, fmt: str = "png") -> Path:
    for label, (name, count) in enumerate(per_class.items()):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            synthetic_image(label, i, size).save(folder / f"{name}_{i:03d}.{fmt}")
    return root


def check_records(root: Path) -> set[str]:
    """Validate every record edgeclf wrote below `root` against its schema; the kinds found."""
    from edgeclf import records

    names = {name: kind for kind, (_, name) in records.KINDS.items()}
    return {records.check(path, names[path.name]) for path in Path(root).rglob("*.json") if path.name in names}


@pytest.fixture
def image_folder(tmp_path) -> Path:
    return make_image_folder(tmp_path / "data", {"red": 12, "green": 12, "blue": 12})


@pytest.fixture(scope="session")
def flowers() -> Path:
    if not (FLOWERS / "train").is_dir():
        pytest.skip(f"real dataset not found at {FLOWERS} (../shared is absent)")
    return FLOWERS


@pytest.fixture(scope="session")
def mobilenet_weights() -> Path:
    if not MOBILENET_WEIGHTS.is_file():
        pytest.skip(f"pretrained weights not found at {MOBILENET_WEIGHTS} (../shared is absent)")
    return MOBILENET_WEIGHTS


def tiny_config(data_dir: Path, out: Path, **overrides):
    """The smallest real training setup: MobileNetV2 alpha 0.35 at 32 px, random init."""
    from edgeclf.pipeline.config import TrainConfig

    settings = dict(
        data_dir=str(data_dir), out=str(out), arch="mobilenetv2", weights="none", alpha=0.35,
        img_size=32, head_epochs=0, fine_tune_epochs=2, batch_size=8, augment=False, seed=1,
    )
    settings.update(overrides)
    return TrainConfig(**settings)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """A tiny trained run (3 synthetic classes, MobileNetV2 alpha 0.35 at 32 px) with real predictions.

    Shared by the export and device tests, whose parity and agreement checks only mean
    something if the model is input-dependent and confident: 20 epochs at a high rate (12 left
    some images within a few points of a tie, and int8 agreement then varied by CPU), then BatchNorm's
    moving statistics re-estimated on the training images (in so few steps they lag the
    weights, and the model would predict one class for everything).
    """
    from edgeclf import tfenv
    from edgeclf.jobs.train import train
    from edgeclf.pipeline.runs import MODEL_FILE, Run

    keras = tfenv.keras()
    root = tmp_path_factory.mktemp("tiny")
    data = make_image_folder(root / "data", {"red": 20, "green": 20, "blue": 20})
    train(tiny_config(data, root / "run", fine_tune_epochs=20, lr=3e-3, patience=100, dropout=0.2, val_split=0.25, seed=3))
    run = Run.open(root / "run")
    model = run.load_model()
    batch_norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    momenta = [layer.momentum for layer in batch_norms]
    for layer in batch_norms:
        layer.momentum = 0.0
    model(run.plan.decode("train", run.img_size).images.astype(np.float32), training=True)
    for layer, momentum in zip(batch_norms, momenta):
        layer.momentum = momentum
    model.save(run.path / MODEL_FILE)
    return run.path


@pytest.fixture(scope="session")
def tiny_int8(tiny_run, tmp_path_factory) -> Path:
    """The tiny run exported to int8 TFLite (uint8 IO)."""
    from edgeclf.exporters.spec import ExportSpec
    from edgeclf.jobs.export import export_run

    out = tmp_path_factory.mktemp("tiny-int8") / "tflite-int8"
    export_run(tiny_run, ExportSpec(quant="int8", calib_size=30, out=str(out)))
    return out


from devices_infra.fixtures import *  # noqa: E402,F401,F403
