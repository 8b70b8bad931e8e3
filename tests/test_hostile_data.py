"""Hostile data and settings (issue 10, items 3, 6, 7, 8, 9, 13): one test per defect."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import make_image_folder, tiny_config
from edgeclf import console
from edgeclf.errors import DatasetError, ModelError, UsageError

EDGECLF = [sys.executable, "-m", "edgeclf"]


def run_cli(*args, cwd=None):
    return subprocess.run([*EDGECLF, *map(str, args)], capture_output=True, text=True, timeout=300, cwd=cwd)


def one_line_error(proc) -> str:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


@pytest.fixture
def warnings(monkeypatch) -> list[str]:
    said = []
    monkeypatch.setattr(console, "warn", said.append)
    return said


def copy_run(run: Path, dest: Path) -> Path:
    return Path(shutil.copytree(run, dest, ignore=shutil.ignore_patterns("exports", "cache", "bench")))


# -- item 3: class names labels.txt cannot round-trip ------------------------------------------

@pytest.mark.parametrize("name", [" padded ", "new\nline", "carriage\rreturn", "tab\there", "bell\x07", "trailing ", "line\u2028sep",
                                  os.fsdecode(b"latin1-\xe9"), "cat\u202egod", "zero\u200bwidth", "bom\ufeff"])
def test_class_folders_labels_txt_cannot_round_trip_are_refused(tmp_path, name):
    from edgeclf.pipeline.datasets import scan_folder

    data = make_image_folder(tmp_path / "data", {name: 2, "plain": 2, "other": 2}, size=8)
    with pytest.raises(DatasetError) as caught:
        scan_folder(data)
    assert repr(name) in str(caught.value) and "rename" in str(caught.value)


def test_run_labels_must_match_the_model_outputs(tiny_run, tmp_path):
    from edgeclf.jobs.evaluate import predict_images

    run = copy_run(tiny_run, tmp_path / "run")
    image = next((tiny_run.parent / "data" / "red").iterdir())
    with open(run / "labels.txt", "a") as f:
        f.write("phantom\n")
    with pytest.raises(ModelError, match=r"4 labels .* 3 outputs"):
        predict_images(run, [str(image)], 3)


# -- item 6: validate --labels with the wrong line count ----------------------------------------

@pytest.mark.parametrize("labels", [["red", "green", "blue", "phantom"], ["blue", "green"]])
def test_validate_labels_file_with_the_wrong_line_count(tiny_int8, tiny_run, tmp_path, labels):
    from edgeclf.jobs.validate import validate

    data = make_image_folder(tmp_path / "data", {"blue": 2, "green": 2}, size=32)
    labels_file = tmp_path / "labels.txt"
    labels_file.write_text("\n".join(labels) + "\n")
    with pytest.raises(ModelError, match=rf"{len(labels)} labels .* 3 outputs"):
        validate(tiny_int8 / "model.tflite", "local", str(data), runs=1, warmup=0, labels_file=str(labels_file))


# -- item 7: the manifest's source run: absolute path and model hash ----------------------------

def test_source_run_is_absolute_and_hash_checked(tiny_run, tmp_path, monkeypatch, warnings):
    from edgeclf.exporters.spec import ExportSpec
    from edgeclf.jobs.export import export_run
    from edgeclf.jobs.validate import validate
    from edgeclf.layout import sha256_file

    run = copy_run(tiny_run, tmp_path / "work" / "run")
    monkeypatch.chdir(tmp_path / "work")
    manifest = export_run("run", ExportSpec(out="fp32"))
    source = manifest["source_run"]
    assert source["path"] == str(run) and source["model_sha256"] == sha256_file(run / "model.keras")

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    artefact, data = tmp_path / "work" / "fp32", str(tiny_run.parent / "data")
    result = validate(artefact, "local", data, runs=1, warmup=0)
    assert result["accuracy"]["agreement"] is not None and not warnings

    (run / "model.keras").write_bytes((run / "model.keras").read_bytes() + b"retrained")
    result = validate(artefact, "local", data, runs=1, warmup=0)
    assert result["accuracy"]["agreement"] is None
    assert any("model.keras" in w and "changed" in w for w in warnings), warnings


# -- item 8: a subset of the model's classes is a normal thing to score --------------------------

def test_a_subset_of_the_classes_can_be_scored(tiny_run, tiny_int8, tmp_path):
    from edgeclf import calibration
    from edgeclf.jobs.evaluate import evaluate_run
    from edgeclf.jobs.validate import validate
    from edgeclf.pipeline.runs import Run

    only_green = make_image_folder(tmp_path / "green", {"green": 4}, size=32)
    metrics = evaluate_run(tiny_run, only_green)
    assert metrics["n_images"] == 4 and len(metrics["confusion"]) == 3
    assert metrics["per_class"]["green"]["support"] == 4 and metrics["per_class"]["red"]["support"] == 0
    assert sum(metrics["confusion"][1]) == 4 and sum(map(sum, metrics["confusion"])) == 4
    assert metrics["top1"] == pytest.approx(metrics["confusion"][1][1] / 4)

    accuracy = validate(tiny_int8, "local", str(only_green), runs=1, warmup=0)["accuracy"]
    assert accuracy["n_images"] == 4 and sum(accuracy["confusion"][1]) == 4

    calib = calibration.build(Run.open(tiny_run), 3, str(only_green))
    assert calib.per_class == {"red": 0, "green": 3, "blue": 0}

    stranger = make_image_folder(tmp_path / "stranger", {"purple": 2}, size=32)
    with pytest.raises(DatasetError, match="classes the model does not know: purple"):
        evaluate_run(tiny_run, stranger)


# -- item 9: NaN, inf and absurd settings; JSON that is always JSON ------------------------------

def test_absurd_settings_are_refused_naming_value_and_range(image_folder, tmp_path):
    from edgeclf.devices import DeviceOptions
    from edgeclf.jobs.optimize import OptimizeConfig

    bad_train = [
        ("lr", float("nan"), "--lr nan"), ("lr", float("inf"), "--lr inf"), ("lr", -1.0, "--lr -1"),
        ("fine_tune_lr", float("nan"), "--fine-tune-lr nan"), ("img_size", 100000, "--img-size 100000"),
        ("img_size", 0, "--img-size 0"), ("img_size", -3, "--img-size -3"), ("batch_size", 0, "--batch-size 0"),
        ("seed", -1, "--seed -1"), ("patience", -2, "--patience -2"),
    ]
    for field, value, shown in bad_train:
        with pytest.raises(UsageError) as caught:
            tiny_config(image_folder, tmp_path / "run", **{field: value})
        assert shown in str(caught.value) and ("]" in str(caught.value) or "at least" in str(caught.value)), caught.value
    for value in (float("nan"), float("inf"), 0.0, -5.0):
        with pytest.raises(UsageError, match=r"--timeout .* \(0, "):
            DeviceOptions(timeout=value)
    with pytest.raises(UsageError, match=r"--lr nan"):
        OptimizeConfig(run_dir=str(tmp_path), out=str(tmp_path / "o"), qat=True, lr=float("nan"))

    assert "--lr nan" in one_line_error(run_cli("train", image_folder, "--lr", "nan", "--out", tmp_path / "r"))
    assert "--timeout nan" in one_line_error(run_cli("validate", tmp_path / "m.tflite", "--timeout", "nan"))
    assert not (tmp_path / "r").exists()


def test_json_output_is_always_valid_json(capsys):
    console.print_json({"loss": float("nan"), "probs": np.array([np.inf, 0.5], np.float32), "x": np.float64(-np.inf)})
    strict = json.loads(capsys.readouterr().out, parse_constant=lambda c: pytest.fail(f"{c} in JSON output"))
    assert strict == {"loss": None, "probs": [None, 0.5], "x": None}


def test_training_that_diverges_stops_with_a_clear_error(image_folder, tmp_path, monkeypatch):
    from edgeclf.jobs import train as training

    monkeypatch.setattr(training, "stages", lambda config: [training.Stage("scratch", 2, float("nan"), 0)])
    out = tmp_path / "run"
    with pytest.raises(ModelError, match="diverged.*--lr"):
        training.train(tiny_config(image_folder, out))
    assert not out.exists() and not training.partial_dir(out).exists()


# -- item 13: a class with one image gets no validation images ----------------------------------

def test_a_class_with_one_image_warns_that_it_has_no_validation_images(tmp_path, warnings):
    from edgeclf.pipeline.splits import plan_splits

    data = make_image_folder(tmp_path / "data", {"red": 5, "lonely": 1, "solo": 1}, size=8)
    plan = plan_splits(tiny_config(data, tmp_path / "run"))
    assert {plan.classes[s.label] for s in plan.samples["val"]} == {"red"}
    assert len(warnings) == 1 and "'lonely'" in warnings[0] and "'solo'" in warnings[0], warnings


def test_inspect_refuses_embedded_labels_that_do_not_match_the_outputs(tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    from edgeclf.jobs.inspect import inspect_model

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])])
    model = helper.make_model(graph)
    helper.set_model_props(model, {"edgeclf.labels": json.dumps(["cat", "dog"])})
    onnx.save(model, tmp_path / "two_labels.onnx")
    with pytest.raises(ModelError, match=r"2 labels .* 3 outputs"):
        inspect_model(tmp_path / "two_labels.onnx")
    helper.set_model_props(model, {"edgeclf.labels": json.dumps(["cat", "dog", "fox"])})
    onnx.save(model, tmp_path / "three_labels.onnx")
    assert inspect_model(tmp_path / "three_labels.onnx")["labels"] == ["cat", "dog", "fox"]


# -- issue 21 item 3: the calibration cache is keyed by the images' contents ---------------------

def test_calibration_images_overwritten_under_the_same_names_are_decoded_again(tiny_run, tmp_path):
    from PIL import Image

    from edgeclf.exporters.spec import ExportSpec
    from edgeclf.jobs.export import export_run

    run = copy_run(tiny_run, tmp_path / "run")
    calib = make_image_folder(tmp_path / "calibA", {"red": 4, "green": 4, "blue": 4}, size=32)

    def export(name: str) -> dict:
        export_run(run, ExportSpec(quant="int8", calib_size=12, calib_dir=str(calib), out=str(tmp_path / name)))
        return json.loads((tmp_path / name / "manifest.json").read_text())["calibration"]

    first = export("a")
    for image in calib.rglob("*.png"):  # black images under the same names, with the old mtimes
        before = image.stat()
        Image.new("RGB", (32, 32)).save(image)
        os.utime(image, ns=(before.st_atime_ns, before.st_mtime_ns))
    second = export("b")
    assert second["sample_hash"] != first["sample_hash"]
    assert len(list((run / "cache").glob("calib-*.npz"))) == 2  # the first cache was not reused
    from edgeclf import calibration
    from edgeclf.pipeline.runs import Run

    black = calibration.build(Run.open(run), 12, str(calib))
    assert black.sample_hash == second["sample_hash"] and not black.images.any()


# -- issue 21 item 17: `--ptq ''` is a lost shell variable, not a request for plain PTQ ----------

@pytest.mark.parametrize("value", ["", " ", ",", " , "])
def test_an_empty_ptq_list_is_a_usage_error_and_none_is_the_explicit_way(tmp_path, value):
    from edgeclf.exporters.spec import ExportSpec

    line = one_line_error(run_cli("export", tmp_path, "--quant", "int8", "--ptq", value))
    assert "names no technique" in line and "or none for plain PTQ" in line
    assert ExportSpec(quant="int8", ptq="none").ptq == "none"
