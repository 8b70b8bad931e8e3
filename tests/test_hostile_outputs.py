"""Outputs never destroy what edgeclf did not write, never land inside their own inputs, and an
interrupted command leaves nothing that looks valid and nothing stuck (issue 10, items 1, 4, 5, 10)."""
from __future__ import annotations

import fcntl
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import make_image_folder, tiny_config
from edgeclf.cli.main import cli

TINY_TRAIN = ["--weights", "none", "--alpha", "0.35", "--img-size", "32", "--head-epochs", "0",
              "--fine-tune-epochs", "1", "--batch-size", "8", "--no-augment"]


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def assert_refused(result, pattern: str):
    assert result.exit_code != 0, result.output
    lines = result.stderr.strip().splitlines()
    assert lines and lines[-1].startswith("error: ") and "unexpected" not in lines[-1], result.stderr
    assert __import__("re").search(pattern, lines[-1]), lines[-1]


def victim(root: Path) -> Path:
    (root / "precious").mkdir(parents=True)
    (root / "precious" / "thesis.txt").write_text("x")
    return root


def test_export_never_replaces_a_folder_it_did_not_write(tiny_run, tmp_path):
    target = victim(tmp_path / "victim")
    assert_refused(invoke("export", tiny_run, "--out", target), r"not an edgeclf artefact.*choose")
    assert (target / "precious" / "thesis.txt").read_text() == "x"


def test_export_replaces_its_own_artefact_only_when_asked(tiny_run, tmp_path):
    out = tmp_path / "fp32"
    assert invoke("export", tiny_run, "--out", out).exit_code == 0
    assert_refused(invoke("export", tiny_run, "--out", out), r"already exists.*--overwrite")
    assert invoke("export", tiny_run, "--out", out, "--overwrite").exit_code == 0
    assert (out / "manifest.json").is_file()


def test_export_refuses_out_around_or_inside_its_inputs(tiny_run, tmp_path):
    calib = make_image_folder(tmp_path / "calib", {"red": 3, "green": 3, "blue": 3})
    assert_refused(invoke("export", tiny_run, "--quant", "int8", "--calib-dir", calib, "--out", calib / "red" / "x"),
                   r"inside the input folder")
    assert_refused(invoke("export", tiny_run, "--out", tiny_run.parent, "--overwrite"), r"contains the input")


def test_train_never_replaces_its_own_data(image_folder):
    before = sorted(p.name for p in image_folder.rglob("*"))
    assert_refused(invoke("train", image_folder, "--out", image_folder, "--overwrite", *TINY_TRAIN), r"input")
    assert sorted(p.name for p in image_folder.rglob("*")) == before


def test_train_refuses_a_run_inside_its_data(image_folder):
    assert_refused(invoke("train", image_folder, "--out", image_folder / "red" / "myrun", *TINY_TRAIN),
                   r"inside the input folder .*data")
    assert not (image_folder / "red" / "myrun").exists() and not (image_folder / "red" / "myrun.partial").exists()


def test_train_refuses_to_replace_a_run_that_holds_its_data(tmp_path):
    run = tmp_path / "run"
    data = make_image_folder(run / "data", {"red": 4, "green": 4})
    (run / "run.json").write_text("{}")
    assert_refused(invoke("train", data, "--out", run, "--overwrite", *TINY_TRAIN), r"contains the input")
    assert (data / "red").is_dir()


def test_train_refuses_a_folder_that_is_not_a_run(image_folder, tmp_path):
    target = victim(tmp_path / "victim")
    assert_refused(invoke("train", image_folder, "--out", target, "--overwrite", *TINY_TRAIN), r"not an edgeclf run")
    assert (target / "precious" / "thesis.txt").exists()


def test_optimize_never_replaces_a_folder_it_did_not_write(tiny_run, tmp_path):
    target = victim(tmp_path / "victim")
    assert_refused(invoke("optimize", tiny_run, "--prune", "0.5", "--epochs", "1", "--out", target, "--overwrite"),
                   r"not an edgeclf run")
    assert (target / "precious" / "thesis.txt").exists()


def test_bench_never_replaces_a_folder_it_did_not_write(tiny_run, tmp_path):
    target = victim(tmp_path / "victim")
    assert_refused(invoke("bench", tiny_run, "--formats", "tflite:fp32", "--runs", "1", "--warmup", "0",
                          "--out", target), r"not an edgeclf bench")
    assert (target / "precious" / "thesis.txt").exists()


def test_demo_refuses_a_folder_with_user_files(tmp_path):
    root = tmp_path / "mine"
    make_image_folder(root / "data", {"cats": 2, "dogs": 2}, size=8)
    assert_refused(invoke("demo", "--out", root, "--epochs", "1"), r"not an edgeclf demo folder")
    assert sorted(p.name for p in (root / "data").iterdir()) == ["cats", "dogs"]


def test_overlapping_splits_are_refused(image_folder, tmp_path):
    from edgeclf.errors import UsageError

    with pytest.raises(UsageError, match="val-dir .* overlaps the data-dir"):
        tiny_config(image_folder, tmp_path / "r", val_dir=str(image_folder), test_dir=str(image_folder))
    with pytest.raises(UsageError, match="test-dir .* overlaps the data-dir"):
        tiny_config(image_folder.parent, tmp_path / "r", test_dir=str(image_folder))


def test_identical_files_across_splits_are_reported(image_folder, tmp_path, capsys):
    from edgeclf.pipeline.splits import plan_splits

    val_dir = make_image_folder(tmp_path / "val", {"red": 2, "green": 2, "blue": 2}, size=24)
    shutil.copy(image_folder / "red" / "red_005.png", val_dir / "red" / "copy.png")
    shutil.copy(image_folder / "blue" / "blue_001.png", val_dir / "blue" / "copy.png")
    plan_splits(tiny_config(image_folder, tmp_path / "r", val_dir=str(val_dir)))
    err = " ".join(capsys.readouterr().err.split())
    assert "2 file(s) in val are identical to files in train" in err and "copy.png" in err


# -- interruptions -------------------------------------------------------------------------

def test_sigterm_during_export_leaves_no_staging_and_no_temp_dirs(tiny_run, tmp_path):
    temp = tmp_path / "tmpdir"
    temp.mkdir()
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "edgeclf", "export", str(tiny_run), "--out", str(out)],
                            env=dict(os.environ, TMPDIR=str(temp)), stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300

    def converting():  # staged, and TensorFlow holds a temp dir (in TMPDIR, or in our staging dir)
        staged = any(tmp_path.glob(".out.tmp-*"))
        return staged and (any(p.is_dir() for p in temp.iterdir()) or any(tmp_path.glob(".out.tmp-*/.tmp/*")))

    while not converting() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "the export finished before it could be interrupted"
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "error: interrupted" in stderr, stderr
    assert sorted(os.listdir(tmp_path)) == ["tmpdir"]
    assert os.listdir(temp) == []


def test_stale_staging_of_ours_is_swept_and_a_live_one_kept(tiny_run, tmp_path):
    stale = tmp_path / ".out.tmp-0123abcd"
    live = tmp_path / ".out.tmp-89abcdef"
    foreign = tmp_path / ".out.tmp-mine"  # not our exact naming
    for folder in (stale, live, foreign):
        folder.mkdir()
        (folder / "model.tflite").write_text("half")
        os.utime(folder, (time.time() - 7200, time.time() - 7200))
    lock = os.open(live, os.O_RDONLY)
    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a running export holds it
    try:
        assert invoke("export", tiny_run, "--out", tmp_path / "out").exit_code == 0
    finally:
        os.close(lock)
    assert not stale.exists() and live.exists() and foreign.exists()


def test_partial_run_without_state_is_restartable(image_folder, tmp_path):
    out = tmp_path / "run"
    (tmp_path / "run.partial" / "checkpoint").mkdir(parents=True)  # killed before its first epoch ended
    assert_refused(invoke("train", image_folder, "--out", out, *TINY_TRAIN), r"--restart")
    assert_refused(invoke("train", "--out", out, "--resume"), r"--restart")
    result = invoke("train", image_folder, "--out", out, "--restart", *TINY_TRAIN)
    assert result.exit_code == 0, result.stderr
    assert (out / "run.json").is_file() and not (tmp_path / "run.partial").exists()


def test_corrupt_state_is_a_clear_error(image_folder, tmp_path):
    (tmp_path / "run.partial").mkdir()
    (tmp_path / "run.partial" / "state.json").write_text('{"config": ')
    assert_refused(invoke("train", "--out", tmp_path / "run", "--resume"), r"state.json .*--restart")
    assert_refused(invoke("train", image_folder, "--out", tmp_path / "run", *TINY_TRAIN), r"--restart")


def test_restart_keeps_a_partial_folder_that_is_not_ours(image_folder, tmp_path):
    partial = victim(tmp_path / "run.partial")
    assert_refused(invoke("train", image_folder, "--out", tmp_path / "run", "--restart", *TINY_TRAIN),
                   r"not an interrupted edgeclf run")
    assert (partial / "precious" / "thesis.txt").exists()
