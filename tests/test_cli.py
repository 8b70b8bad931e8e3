"""The CLI's single error boundary: every expected failure is one `error: ...` line, no traceback."""
from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import make_image_folder

EDGECLF = [sys.executable, "-m", "edgeclf"]


def run_cli(*args, cwd=None):
    return subprocess.run([*EDGECLF, *map(str, args)], capture_output=True, text=True, timeout=300, cwd=cwd)


def assert_one_line_error(proc, pattern: str):
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ") and "Traceback" not in proc.stderr
    assert __import__("re").search(pattern, lines[0]), lines[0]


def test_help_and_version():
    assert "validate" in run_cli("--help").stdout
    version = run_cli("--version")
    assert version.returncode == 0 and "edgeclf, version" in version.stdout


def test_expected_failures_are_one_clean_line(tmp_path):
    single = make_image_folder(tmp_path / "single", {"only": 2}, size=8)
    good = make_image_folder(tmp_path / "good", {"a": 2, "b": 2}, size=8)
    cases = [
        (("train", tmp_path / "missing", "--out", tmp_path / "r"), r"data-dir .*missing is not a folder \(pass a folder"),
        (("train", good, "--arch", "resnet50", "--out", tmp_path / "r"), r"Invalid value for '--arch'.*see `edgeclf train --help`"),
        (("train", single, "--weights", "none", "--out", tmp_path / "r"), r"only class 'only'.*at least 2 classes"),
        (("train", good, "--val-split", "1.5", "--out", tmp_path / "r"), r"--val-split 1.5 must be between 0 and 1"),
        (("train", good, "--weights", tmp_path / "nope.h5", "--out", tmp_path / "r"), r"weights file .*nope.h5 does not exist"),
        (("export", tmp_path, "--quant", "int8"), r"is not a finished edgeclf run \(no model.keras\)"),
        (("export", tmp_path, "--quant", "fp16", "--io", "uint8"), r"--io uint8 needs --quant int8"),
        (("inspect", tmp_path / "x.bin"), r"does not exist"),
        (("validate", tmp_path / "m.tflite", "--device", "ssh://host:bad"), r"does not exist|bad port"),
    ]
    for args, pattern in cases:
        assert_one_line_error(run_cli(*args), pattern)
    assert not (tmp_path / "r").exists()


def test_debug_shows_the_traceback(tmp_path):
    proc = run_cli("--debug", "export", tmp_path)
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "error: " in proc.stderr


def test_offline_imagenet_weights_error_through_the_cli(tmp_path, monkeypatch, capsys):
    """The real CLI entry point, with Keras's download failing as it does offline."""
    import tf_keras

    from edgeclf.cli.main import main

    def offline(*args, **kwargs):
        raise Exception("URL fetch failure on https://storage.googleapis.com/x.h5: None -- [Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(tf_keras.utils, "get_file", offline)
    monkeypatch.setattr("tf_keras.src.applications.mobilenet_v2.data_utils.get_file", offline)
    good = make_image_folder(tmp_path / "good", {"a": 3, "b": 3}, size=8)
    monkeypatch.setattr(sys, "argv", ["edgeclf", "train", str(good), "--img-size", "32", "--out", str(tmp_path / "run")])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: could not download the ImageNet weights for mobilenetv2")
    assert "--weights PATH" in err[-1] and "--weights none" in err[-1]
    assert not (tmp_path / "run").exists() and not (tmp_path / "run.partial").exists()
