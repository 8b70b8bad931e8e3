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

from edgeclf.errors import DatasetError, UsageError
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


def _png_that_passes_the_scan_but_not_decoding(path, good: bytes) -> None:
    """A PNG whose chunks all have valid CRCs (so the cheap scan passes) but whose pixel data
    is not a zlib stream: only a full decode finds out, mid-epoch under --cache none."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = good[8:8 + 8 + 13 + 4]  # the IHDR chunk of a real PNG
    path.write_bytes(good[:8] + header + chunk(b"IDAT", b"this is not zlib data" * 4) + chunk(b"IEND", b""))


def test_a_file_that_fails_mid_epoch_is_a_dataset_error_naming_it(tmp_path):
    data = make_image_folder(tmp_path / "data", {"red": 6, "green": 6})
    bad = data / "red" / "late_failure.png"
    _png_that_passes_the_scan_but_not_decoding(bad, (data / "red" / "red_000.png").read_bytes())
    with pytest.raises(DatasetError, match="late_failure.png passed the scan but cannot be decoded"):
        training.train(tiny_config(data, tmp_path / "run", fine_tune_epochs=1, cache="none"))
    assert not (tmp_path / "run").exists()  # nothing that looks like a run


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def test_each_replica_gets_its_even_part_of_every_global_batch():
    from edgeclf.pipeline.epochs import index_batches

    order = np.random.default_rng(0).permutation(21)
    assert index_batches(order, 8).tolist()[-1] == [*order[16:].tolist(), -1, -1, -1]
    # Two workers with one replica each, then one worker with both replicas: the same parts.
    for shape in ((2, 1), (1, 2)):
        pipelines, local = shape
        per_pipeline = [index_batches(order, 8, 2, p, pipelines).reshape(3, local, 4) for p in range(pipelines)]
        grid = np.concatenate(per_pipeline, axis=1)  # step x replica x row
        for step in range(3):
            parts = [row[row >= 0] for row in grid[step]]
            assert np.array_equal(np.concatenate(parts), order[step * 8:(step + 1) * 8])
            assert max(map(len, parts)) - min(map(len, parts)) <= 1  # the last, short batch is split evenly too


# Loaded by the workers of the test below (through PYTHONPATH): logs every image a streamed
# split decodes, so the test can see which worker read what.
READ_LOGGER = """
import os
from pathlib import Path
from edgeclf.pipeline import streaming

_load_image = streaming.load_image
_log = Path(os.environ["EDGECLF_TEST_READ_LOG"])


def _logged(path, *args, **kwargs):
    with open(_log, "a") as f:
        f.write(str(path) + "\\n")
    return _load_image(path, *args, **kwargs)


streaming.load_image = _logged
"""


def test_two_workers_train_one_run_written_by_the_chief(tmp_path):
    data = make_image_folder(tmp_path / "data", {"red": 8, "green": 8, "blue": 8})
    scratch = tmp_path / "worker-tmp"  # where the non-chief's scratch directory goes
    scratch.mkdir()
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(READ_LOGGER)
    hosts = [f"127.0.0.1:{port}" for port in _free_ports(2)]
    argv = [sys.executable, "-m", "edgeclf", "train", str(data), "--out", str(tmp_path / "run"), "--json",
            "--arch", "mobilenetv2", "--weights", "none", "--alpha", "0.35", "--img-size", "32",
            "--head-epochs", "0", "--fine-tune-epochs", "1", "--batch-size", "8", "--no-augment", "--seed", "1",
            "--distribute", "multi-worker", "--cache", "none"]
    workers = []
    for index in range(2):
        env = dict(os.environ, PYTHONPATH=f"{hooks}{os.pathsep}{REPO}", CUDA_VISIBLE_DEVICES="-1", TMPDIR=str(scratch),
                   EDGECLF_TEST_READ_LOG=str(hooks / f"reads-{index}.txt"),
                   TF_CONFIG=json.dumps({"cluster": {"worker": hosts}, "task": {"type": "worker", "index": index}}))
        workers.append(subprocess.Popen(argv, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    try:
        outputs = [w.communicate(timeout=600) for w in workers]
    finally:
        for w in workers:
            w.kill()
    for w, (_, err) in zip(workers, outputs):
        assert w.returncode == 0, err[-2000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "hooks", "run", "worker-tmp"]
    assert list(scratch.iterdir()) == []  # the other worker deleted everything it wrote
    run = Run.open(tmp_path / "run")
    model = run.load_model()
    assert model.output_shape == (None, 3)
    assert [h["epoch"] for h in run.info["history"]] == [1]
    assert run.info["config"]["distribute"] == "multi-worker"
    assert run.metrics["val"]["n_images"] == 6 and 0 <= run.metrics["val"]["top1"] <= 1
    # Both workers trained the same model: they report the same metrics.
    assert json.loads(outputs[0][0])["metrics"] == json.loads(outputs[1][0])["metrics"]
    # Each worker read only its own half of every global batch: the training images split
    # between them, none read twice. (Keras's own sharding reads every image on every worker.)
    train = {str(sample.path) for sample in run.plan.samples["train"]}
    reads = [[line for line in (hooks / f"reads-{i}.txt").read_text().splitlines() if line in train] for i in range(2)]
    assert all(len(r) == len(set(r)) for r in reads), reads
    assert set(reads[0]).isdisjoint(reads[1]) and set(reads[0]) | set(reads[1]) == train
    assert abs(len(reads[0]) - len(reads[1])) <= 2


def test_multi_worker_without_tf_config_is_a_usage_error(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(UsageError, match="needs the TF_CONFIG"):
        distribute.cluster_role("multi-worker")
    monkeypatch.setenv("TF_CONFIG", '{"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 1}}')
    assert distribute.cluster_role("multi-worker") == distribute.Role(False, "worker 1")
    monkeypatch.setenv("TF_CONFIG", '{"cluster": {"chief": ["a:1"], "worker": ["b:2"]}, "task": {"type": "worker", "index": 0}}')
    assert not distribute.cluster_role("multi-worker").chief
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(UsageError, match="not a valid cluster"):
        distribute.cluster_role("multi-worker")


def test_resume_under_mirrored_continues_from_the_checkpoint(tmp_path, monkeypatch):
    data = make_image_folder(tmp_path / "data", {"red": 6, "green": 6, "blue": 6})
    original = training.Trainer._save_state

    def interrupt_after_first_epoch(self):
        original(self)
        raise KeyboardInterrupt

    monkeypatch.setattr(training.Trainer, "_save_state", interrupt_after_first_epoch)
    with pytest.raises(KeyboardInterrupt):
        training.train(tiny_config(data, tmp_path / "run", distribute="mirrored", cache="disk", patience=10))
    state = json.loads((tmp_path / "run.partial" / "state.json").read_text())
    assert state["epoch"] == 1 and state["config"]["distribute"] == "mirrored"
    monkeypatch.setattr(training.Trainer, "_save_state", original)
    training.resume(tmp_path / "run", cache="disk", strategy="mirrored")
    run = Run.open(tmp_path / "run")
    assert [h["epoch"] for h in run.info["history"]] == [1, 2]
    assert run.info["history"][0] == state["history"][0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "run"]


def test_each_stage_trains_at_its_own_rate_under_mirrored(tmp_path, monkeypatch):
    """The stage-end weights must not bring the head stage's optimizer (and its learning rate)
    into the fine-tune stage: under a strategy that once made fine-tuning run at the head's rate."""
    from edgeclf import tfenv
    from edgeclf.pipeline.epochs import Epochs

    keras = tfenv.keras()
    backbone = keras.applications.MobileNetV2(input_shape=(32, 32, 3), alpha=0.35, include_top=False, weights=None)
    weights = tmp_path / "backbone.weights.h5"
    backbone.save_weights(str(weights))
    data = make_image_folder(tmp_path / "data", {"red": 6, "green": 6, "blue": 6})
    seen = []
    original = Epochs.run

    def record_rate(self, model, *args, **kwargs):
        seen.append(float(model.optimizer.learning_rate.numpy()))
        return original(self, model, *args, **kwargs)

    monkeypatch.setattr(Epochs, "run", record_rate)
    config = tiny_config(data, tmp_path / "run", weights=str(weights), head_epochs=1, fine_tune_epochs=1,
                         lr=1e-3, fine_tune_lr=1e-5, distribute="mirrored")
    training.train(config)
    assert seen == pytest.approx([1e-3, 1e-5])
