"""Past one machine's memory and cores: streamed splits (--cache) and tf.distribute (--distribute)."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO, make_image_folder, tiny_config

from edgeclf.errors import UsageError
from edgeclf.jobs import train as training
from edgeclf.pipeline import distribute, streaming
from edgeclf.pipeline.datasets import scan_folder
from edgeclf.pipeline.runs import Run


def test_auto_keeps_images_in_memory_only_while_they_fit_the_budget():
    gb = 1 << 30
    # 10k images at 160 px are 0.77 GB: a quarter of 4 GB holds them, a quarter of 2 GB does not.
    assert streaming.choose_cache("auto", 10_000, 160, available=4 * gb) == "memory"
    assert streaming.choose_cache("auto", 10_000, 160, available=2 * gb) == "disk"
    assert streaming.choose_cache("auto", 10_000, 160, streamed="none", available=2 * gb) == "none"
    budget = int(streaming.MEMORY_FRACTION * 8 * gb)
    per_image = streaming.decoded_bytes(1, 64)
    assert streaming.choose_cache("auto", budget // per_image, 64, available=8 * gb) == "memory"
    assert streaming.choose_cache("auto", budget // per_image + 1, 64, available=8 * gb) == "disk"
    assert streaming.choose_cache("disk", 1, 32, available=0) == "disk"  # explicit modes are kept
    with pytest.raises(UsageError, match="--cache ram"):
        streaming.choose_cache("ram", 1, 32)


def _folder_with_bad_files(root):
    folder = make_image_folder(root, {"red": 5, "green": 5, "blue": 5}, size=37, fmt="jpg")
    (folder / "red" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    good = (folder / "green" / "green_000.jpg").read_bytes()
    (folder / "green" / "truncated.jpg").write_bytes(good[: len(good) // 2])  # passes a header check
    return folder


def test_memory_disk_and_none_hold_exactly_the_same_pixels(tmp_path):
    folder = scan_folder(_folder_with_bad_files(tmp_path / "data"))
    splits = {
        mode: streaming.load_split("train", folder.root, folder.classes, folder.samples, 24, mode, tmp_path / "cache")
        for mode in ("memory", "disk", "none")
    }
    memory = splits["memory"]
    assert sorted(p["path"] for p in memory.skipped) == ["green/truncated.jpg", "red/broken.jpg"]
    assert isinstance(memory.images, np.ndarray) and len(memory) == 15
    for mode in ("disk", "none"):
        split = splits[mode]
        assert streaming.is_streamed(split.images)
        assert split.skipped == memory.skipped  # found before any epoch, the none mode by its cheap scan
        assert split.paths == memory.paths and np.array_equal(split.labels, memory.labels)
        assert np.array_equal(split.images[:], memory.images)
        picks = np.array([14, 0, 7, 7])
        assert np.array_equal(split.images[picks], memory.images[picks])
        assert np.array_equal(split.images[3], memory.images[3])
    assert (tmp_path / "cache" / "train.u8").stat().st_size == 17 * 24 * 24 * 3


def test_memory_and_disk_training_agree_exactly(tmp_path):
    data = make_image_folder(tmp_path / "data", {"red": 8, "green": 8, "blue": 8})
    results = {}
    for mode in ("memory", "disk"):
        result = training.train(tiny_config(data, tmp_path / mode, fine_tune_epochs=1, cache=mode))
        results[mode] = json.loads((tmp_path / mode / "run.json").read_text())
        assert result["metrics"]["val"]["n_images"] == 6
    memory, disk = results["memory"], results["disk"]
    assert json.loads((tmp_path / "memory" / "split.json").read_text()) == json.loads((tmp_path / "disk" / "split.json").read_text())
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        assert memory["history"][0][key] == pytest.approx(disk["history"][0][key], rel=1e-5, abs=1e-6)
    assert memory["metrics"]["val"]["confusion"] == disk["metrics"]["val"]["confusion"]
    assert not list(tmp_path.glob("disk/stream-cache*"))  # the decoded-image file does not ship with the run
