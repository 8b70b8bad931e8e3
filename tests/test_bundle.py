"""Hand-off bundles: golden vectors that check themselves, standalone and on every kind of device."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import uuid
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import check_records

from edgeclf.bundle import BundleError
from edgeclf.bundle.builder import build_bundle, write_sums
from edgeclf.bundle.check import check_bundle
from edgeclf.devices import DeviceOptions
from edgeclf.errors import DatasetError, ModelError, UsageError
from edgeclf.pipeline.images import load_image

LITERT_VENV = Path(tempfile.gettempdir()) / "edgeclf-test-venv-numpy-litert-pillow"
CLEAN_ENV = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/tmp")}  # no PYTHONPATH


@pytest.fixture(scope="session")
def litert_python() -> Path:
    """A venv with only numpy, Pillow and ai-edge-litert from the registry (no edgeclf, no TensorFlow); reused across sessions."""
    python = LITERT_VENV / "bin" / "python"
    if not python.is_file():
        staging = LITERT_VENV.with_name(f"{LITERT_VENV.name}.tmp-{uuid.uuid4().hex[:8]}")
        try:
            subprocess.run(["python3", "-m", "venv", str(staging)], check=True, capture_output=True, timeout=120)
            pip = subprocess.run([str(staging / "bin" / "python"), "-m", "pip", "install", "-q", "numpy", "pillow", "ai-edge-litert"],
                                 capture_output=True, text=True, timeout=900)
            if pip.returncode != 0:
                pytest.skip(f"cannot install numpy + pillow + ai-edge-litert into a venv: {pip.stderr.strip()[-300:]}")
            # venvs hard-code their path in scripts, but `bin/python` works after a rename
            os.replace(staging, LITERT_VENV)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    probe = subprocess.run([str(python), "-c", "import edgeclf"], capture_output=True, text=True, env=CLEAN_ENV, cwd="/")
    assert probe.returncode != 0, "the standalone venv must not see edgeclf"
    return python


@pytest.fixture(scope="module")
def bundle(tiny_int8, tmp_path_factory) -> Path:
    return Path(build_bundle(tiny_int8, tmp_path_factory.mktemp("bundle") / "b")["path"])


def run_check_golden(python: Path, bundle_dir: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(python), "check_golden.py"], cwd=bundle_dir, capture_output=True, text=True, timeout=300, env=CLEAN_ENV)


def test_bundle_holds_exact_inputs_and_reference_outputs(bundle, tiny_int8, tiny_run):
    names = {p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if p.is_file()}
    assert {"model.tflite", "labels.txt", "manifest.json", "MODEL_CARD.md", "bundle.json", "SHA256SUMS",
            "check_golden.py", "golden/golden.json"} <= names
    sums = dict(reversed(line.split("  ")) for line in (bundle / "SHA256SUMS").read_text().splitlines())
    assert set(sums) == names - {"SHA256SUMS"}
    golden = json.loads((bundle / "golden" / "golden.json").read_text())
    assert check_records(bundle) == {"golden", "manifest"}
    # The tiny run has no test split: its 15 val images (5 per class) are the goldens, said so.
    assert golden["source"]["split"] == "val" and golden["count"] == 15
    assert sorted(v["true_label"] for v in golden["vectors"]) == sorted(["blue", "green", "red"] * 5)
    from edgeclf.devices.host import open_model

    model = open_model(tiny_int8 / "model.tflite")
    for vector in golden["vectors"]:
        pixels = np.load(bundle / vector["input"])
        assert pixels.dtype == np.uint8 and pixels.shape == (1, 32, 32, 3)
        assert np.array_equal(pixels[0], load_image(tiny_run.parent / "data" / vector["source_image"], 32))
        raw = np.load(bundle / vector["output"])
        assert raw.dtype == np.uint8 and np.array_equal(raw[0], model.invoke_raw(pixels))
        assert vector["expected_raw"] == raw[0].tolist()
    tol = golden["tolerance"]
    assert tol["unit"] == "quantization steps" and tol["reference"] == 0
    # The other kernel sets measurably differ, and the stated tolerance covers them.
    assert set(tol["measured_across_kernels"]) == {"builtin_without_default_delegates", "builtin_ref"}
    assert tol["other"] == max(tol["measured_across_kernels"].values()) + 2
    card = (bundle / "MODEL_CARD.md").read_text()
    for needle in ("blue, green, red", "| val | 15 |", "scale 0.00390625", "RGB (not BGR)", "## Known limits", "sha256",
                   "- data audit: "):
        assert needle in card


def test_check_golden_runs_standalone_and_catches_tampering(bundle, litert_python, tmp_path):
    ok = run_check_golden(litert_python, bundle)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.count("PASS ") == 15 + 4 and ok.stdout.count("PASS raw ") == 4  # 4 raw golden images
    assert "FAIL" not in ok.stdout and "all 15 golden vectors pass" in ok.stdout

    tampered = shutil.copytree(bundle, tmp_path / "tampered")
    model = bytearray((tampered / "model.tflite").read_bytes())
    model[len(model) // 2] ^= 0x55
    (tampered / "model.tflite").write_bytes(bytes(model))
    bad = run_check_golden(litert_python, tampered)
    assert bad.returncode == 1 and "FAIL model.tflite does not match SHA256SUMS" in bad.stdout

    # Swapped labels fail on the vectors themselves, even with SHA256SUMS rewritten to match.
    swapped = shutil.copytree(bundle, tmp_path / "swapped")
    (swapped / "labels.txt").write_text("green\nblue\nred\n")
    write_sums(swapped)
    bad = run_check_golden(litert_python, swapped)
    assert bad.returncode == 1 and "SHA256SUMS" not in bad.stdout
    assert re.search(r"FAIL 000_blue: top-1 green \(expected blue\)", bad.stdout) and "PASS 010_red" in bad.stdout
    result = check_bundle(swapped)
    assert result["failed"] >= 5 and result["max_deviation"] == 0  # same outputs, wrong names


def test_check_bundle_locally_and_from_a_zip(bundle, tiny_int8, tmp_path):
    result = check_bundle(bundle)
    assert result["failed"] == 0 and result["passed"] == 15
    assert result["on_reference"] and result["max_deviation"] == 0 and result["tolerance"]["value"] == 0
    zipped = Path(build_bundle(tiny_int8, tmp_path / "handoff.zip", count=6)["path"])
    with zipfile.ZipFile(zipped) as archive:
        assert "handoff/check_golden.py" in archive.namelist() and "handoff/golden/golden.json" in archive.namelist()
    assert [p.name for p in tmp_path.iterdir()] == ["handoff.zip"]
    assert check_bundle(zipped)["passed"] == 6


def test_check_bundle_over_ssh(bundle, ssh_device):
    options = DeviceOptions(ssh_config=str(ssh_device.ssh_config), remote_python=sys.executable, timeout=120)
    result = check_bundle(bundle, f"ssh://{ssh_device.alias}", options=options)
    assert result["device"]["kind"] == "ssh" and result["failed"] == 0 and result["max_deviation"] == 0


def test_check_bundle_on_the_emulated_pi(bundle, pi_device):
    options = DeviceOptions(ssh_config=str(pi_device.ssh_config), remote_python=pi_device.python, timeout=600, emulated=True)
    result = check_bundle(bundle, f"ssh://{pi_device.alias}", options=options)
    assert result["device"]["arch"] == "aarch64" and result["runtime"]["name"] == "tflite_runtime"
    assert result["runtime"]["version"].startswith("2.14") and not result["on_reference"]
    golden = json.loads((bundle / "golden" / "golden.json").read_text())
    assert result["tolerance"] == {"value": golden["tolerance"]["other"], "unit": "quantization steps"}
    assert result["failed"] == 0, result["vectors"]
    print(f"emulated Pi: largest deviation {result['max_deviation']} steps over {result['passed']} vectors "
          f"(tolerance {golden['tolerance']['other']}, host kernel sets {golden['tolerance']['measured_across_kernels']})")


def test_kotlin_and_swift_carry_the_manifest_values(bundle):
    manifest = json.loads((bundle / "manifest.json").read_text())
    kotlin = (bundle / "android" / "Mobilenetv2Int8Classifier.kt").read_text()
    swift = (bundle / "ios" / "Mobilenetv2Int8Classifier.swift").read_text()
    inp, out = manifest["input"], manifest["output"]
    assert "{{" not in kotlin + swift
    assert 'MODEL_FILE = "model.tflite"' in kotlin and 'LABELS_FILE = "labels.txt"' in kotlin
    assert "INPUT_SHAPE = intArrayOf(1, 32, 32, 3)" in kotlin and 'INPUT_DTYPE = "uint8"' in kotlin
    assert f"INPUT_SCALE = {inp['quantization']['scale']}f" in kotlin and "INPUT_ZERO_POINT = 0" in kotlin
    assert f"OUTPUT_SCALE = {out['quantization']['scale']}f" in kotlin and f"OUTPUT_ZERO_POINT = {out['quantization']['zero_point']}" in kotlin
    assert f"NUM_LABELS = {len(manifest['labels'])}" in kotlin and "class Mobilenetv2Int8Classifier" in kotlin
    assert "ImageClassifier.createFromOptions" in kotlin and "golden/golden.json" in kotlin
    assert 'modelFile = "model.tflite"' in swift and "inputShape = [1, 32, 32, 3]" in swift
    assert f"outputScale: Float = {out['quantization']['scale']}" in swift and "numLabels = 3" in swift
    assert 'inputDtype = "uint8"' in swift and 'outputDtype = "uint8"' in swift and "outputZeroPoint = 0" in swift


def _moved_run(tiny_int8: Path, tiny_run: Path, tmp_path: Path, gone: list[str]) -> Path:
    """A copy of the artefact whose run records a test split, with the images of `gone` splits moved away."""
    run = shutil.copytree(tiny_run, tmp_path / "run", ignore=shutil.ignore_patterns("cache"))
    split = json.loads((run / "split.json").read_text())
    split["splits"]["test"] = json.loads(json.dumps(split["splits"]["val"]))
    for name in gone:
        split["splits"][name]["root"] = str(tmp_path / "gone")
    (run / "split.json").write_text(json.dumps(split))
    artefact = shutil.copytree(tiny_int8, tmp_path / "tflite-int8")
    manifest = json.loads((artefact / "manifest.json").read_text())
    manifest["source_run"]["path"] = str(run)
    (artefact / "manifest.json").write_text(json.dumps(manifest))
    return artefact


def test_golden_falls_back_from_test_to_val_to_calibration(tiny_int8, tiny_run, tmp_path, capsys):
    artefact = _moved_run(tiny_int8, tiny_run, tmp_path, ["test"])
    summary = build_bundle(artefact, tmp_path / "b1", count=6)
    assert summary["golden"]["source"]["split"] == "val"
    assert "test images are gone" in summary["golden"]["source"]["fallbacks"][0]
    assert "test images are gone" in capsys.readouterr().err

    artefact = _moved_run(tiny_int8, tiny_run, tmp_path / "2", ["test", "val"])
    summary = build_bundle(artefact, tmp_path / "b2", count=6)
    assert summary["golden"]["source"]["split"] == "calibration (training)" and len(summary["golden"]["source"]["fallbacks"]) == 2
    assert "val images are gone" in (tmp_path / "b2" / "MODEL_CARD.md").read_text()

    artefact = _moved_run(tiny_int8, tiny_run, tmp_path / "3", ["test", "val", "train"])
    with pytest.raises(DatasetError, match="none of the run's test, val or calibration images exist"):
        build_bundle(artefact, tmp_path / "b3")
    assert not (tmp_path / "b3").exists() and not list(tmp_path.glob(".b3*"))


def test_a_test_split_with_images_is_preferred_and_scored(tiny_int8, tiny_run, tmp_path):
    artefact = _moved_run(tiny_int8, tiny_run, tmp_path, [])
    summary = build_bundle(artefact, tmp_path / "b", count=3)
    assert summary["golden"]["source"]["split"] == "test" and summary["golden"]["count"] == 3
    test = summary["test_accuracy"]
    assert test["n_images"] == 15 and 0 <= test["changed"] <= 15 and test["agreement"] is not None
    assert re.search(r"\| test \| 15 \|", (tmp_path / "b" / "MODEL_CARD.md").read_text())


def test_bad_input_is_one_clear_error_and_nothing_half_written(bundle, tiny_int8, tmp_path):
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copyfile(tiny_int8 / "model.tflite", bare / "model.tflite")
    with pytest.raises(ModelError, match="has no manifest.json"):
        build_bundle(bare, tmp_path / "out")
    with pytest.raises(UsageError, match="--golden 0 must be at least 1"):
        build_bundle(tiny_int8, tmp_path / "out", count=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bare"]

    broken = shutil.copytree(bundle, tmp_path / "broken")
    (broken / "golden" / "003_blue.npy").unlink()
    with pytest.raises(BundleError, match=r"the bundle is missing golden/003_blue.npy \(re-create it"):
        check_bundle(broken)
    (broken / "bundle.json").unlink()
    with pytest.raises(BundleError, match="is not an edgeclf bundle"):
        check_bundle(broken)


def test_never_replaces_what_edgeclf_did_not_write(bundle, tiny_int8, tmp_path):
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("mine")
    for overwrite in (False, True):
        with pytest.raises(UsageError, match="already exists|not an edgeclf bundle"):
            build_bundle(tiny_int8, precious, count=3, overwrite=overwrite)
    (tmp_path / "other.zip").write_bytes(b"not a bundle")
    with pytest.raises(UsageError, match="not an edgeclf bundle"):
        build_bundle(tiny_int8, tmp_path / "other.zip", count=3, overwrite=True)
    assert (precious / "notes.txt").read_text() == "mine" and (tmp_path / "other.zip").read_bytes() == b"not a bundle"
    with pytest.raises(UsageError, match="overlaps the artefact directory"):
        build_bundle(tiny_int8, tiny_int8 / "bundle", count=3)
    again = shutil.copytree(bundle, tmp_path / "again")
    with pytest.raises(UsageError, match="already exists"):
        build_bundle(tiny_int8, again, count=3)
    build_bundle(tiny_int8, again, count=3, overwrite=True)
    assert json.loads((again / "golden" / "golden.json").read_text())["count"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again", "other.zip", "precious"]


def test_cli_bundle_and_check_bundle(tiny_int8, tmp_path):
    cli = [sys.executable, "-m", "edgeclf"]
    made = subprocess.run([*cli, "bundle", str(tiny_int8), "--out", str(tmp_path / "b"), "--golden", "3"],
                          capture_output=True, text=True, timeout=300)
    assert made.returncode == 0, made.stderr
    checked = subprocess.run([*cli, "check-bundle", str(tmp_path / "b")], capture_output=True, text=True, timeout=300)
    assert checked.returncode == 0 and "3 of 3 pass; largest deviation 0 steps" in checked.stdout
    bad = subprocess.run([*cli, "bundle", str(tiny_int8), "--out", str(tmp_path / "c"), "--golden", "0"],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == ["error: --golden 0 must be at least 1 (e.g. --golden 20)"]
    (tmp_path / "b" / "labels.txt").write_text("red\ngreen\nblue\n")
    write_sums(tmp_path / "b")
    failed = subprocess.run([*cli, "check-bundle", str(tmp_path / "b")], capture_output=True, text=True, timeout=300)
    assert failed.returncode == 3 and re.search(r"^error: \d of 3 golden vectors failed on local", failed.stderr, re.M)
