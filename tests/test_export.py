"""`edgeclf export --target tflite`: round trips, manifest truth, metadata, calibration, atomicity."""
from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, check_records, make_image_folder

from edgeclf import calibration, tfenv
from edgeclf.devices.host import predict_file
from edgeclf.errors import DatasetError, ExportError, ModelError, UsageError
from edgeclf.exporters.spec import ExportSpec
from edgeclf.exporters.tflite_metadata import read_associated_files, read_metadata
from edgeclf.jobs.export import export_run
from edgeclf.layout import sha256_file
from edgeclf.pipeline.predict import predict_probs
from edgeclf.pipeline.runs import Run

READER_DIR = Path(os.environ.get("EDGECLF_TFLITE_SUPPORT_DIR", REPO / ".venv" / "tflite-support-reader"))


@pytest.fixture(scope="module")
def val_set(tiny_run):
    run = Run.open(tiny_run)
    split = run.plan.decode("val", run.img_size)
    probs = predict_probs(run.load_model(), split.images)
    assert len(set(probs.argmax(1))) == 3, "the fixture model must not predict a constant class"
    return run, split, probs


@pytest.mark.parametrize("quant", ["fp32", "fp16", "dynamic", "int8"])
def test_round_trip_each_quant_mode(tiny_run, val_set, tmp_path, quant):
    run, split, keras_probs = val_set
    manifest = export_run(tiny_run, ExportSpec(quant=quant, calib_size=30, out=str(tmp_path / quant)))
    probs = predict_file(tmp_path / quant / "model.tflite", split.images)
    if quant == "fp32":
        assert np.abs(probs - keras_probs).max() < 1e-5
    elif quant == "int8":
        assert (probs.argmax(1) == keras_probs.argmax(1)).mean() >= 0.95
        assert manifest["input"]["dtype"] == "uint8" and manifest["output"]["dtype"] == "uint8"
        assert manifest["input"]["quantization"] == {"scale": 1.0, "zero_point": 0}
        assert manifest["details"]["quantization_coverage"]["ops_integer_fraction"] == 1.0
    else:
        assert np.abs(probs - keras_probs).max() < 0.05
        assert manifest["input"]["dtype"] == "float32"
    acc = manifest["accuracy"]
    assert acc["split"] == "val" and acc["n_images"] == len(split)
    assert acc["float_top1"] == pytest.approx((keras_probs.argmax(1) == split.labels).mean())
    assert acc["top1"] == pytest.approx((probs.argmax(1) == split.labels).mean())
    assert acc["agreement"] == pytest.approx((probs.argmax(1) == keras_probs.argmax(1)).mean())


def test_manifest_hashes_sizes_and_provenance(tiny_run, tmp_path):
    out = tmp_path / "int8"
    manifest = export_run(tiny_run, ExportSpec(quant="int8", calib_size=30, out=str(out)))
    on_disk = json.loads((out / "manifest.json").read_text())
    assert sorted(os.listdir(out)) == ["labels.txt", "manifest.json", "model.tflite"]
    assert set(on_disk["files"]) == {"labels.txt", "model.tflite"}
    for name, entry in on_disk["files"].items():
        assert entry == {"sha256": sha256_file(out / name), "bytes": (out / name).stat().st_size,
                         "gzip_bytes": len(gzip.compress((out / name).read_bytes(), compresslevel=9, mtime=0))}
    assert on_disk["labels"] == ["blue", "green", "red"] == (out / "labels.txt").read_text().split()
    assert on_disk["calibration"]["count"] == 30 and sum(on_disk["calibration"]["per_class"].values()) == 30
    assert on_disk["source_run"]["path"] == str(tiny_run) and "val" in on_disk["source_run"]["metrics"]
    for tool in ("edgeclf", "tensorflow", "tf-keras", "tensorflow-model-optimization", "ai-edge-litert"):
        assert on_disk["versions"][tool]
    assert on_disk["preprocessing"].startswith("raw RGB 0-255, resized to 32x32")
    assert on_disk["conversion_s"] > 0 and manifest["path"] == str(out)
    assert check_records(out) == {"manifest"}


def test_int8_with_float_io_is_recorded(tiny_run, val_set, tmp_path):
    _, split, keras_probs = val_set
    manifest = export_run(tiny_run, ExportSpec(quant="int8", io="float32", calib_size=30, out=str(tmp_path / "f")))
    assert manifest["io"] == "float32" and manifest["input"]["dtype"] == "float32"
    probs = predict_file(tmp_path / "f" / "model.tflite", split.images)
    assert (probs.argmax(1) == keras_probs.argmax(1)).mean() >= 0.95


def test_int8_io_has_exact_input_quantization(tiny_run, tmp_path):
    manifest = export_run(tiny_run, ExportSpec(quant="int8", io="int8", calib_size=30, out=str(tmp_path / "i")))
    assert manifest["input"]["quantization"] == {"scale": 1.0, "zero_point": -128}


def test_int16x8_has_16_bit_activations_and_less_error_than_int8(tiny_run, val_set, tmp_path):
    from ai_edge_litert.interpreter import Interpreter

    _, split, keras_probs = val_set
    manifest = export_run(tiny_run, ExportSpec(quant="int16x8", calib_size=30, out=str(tmp_path / "16x8")))
    assert manifest["io"] == "float32" and manifest["input"]["dtype"] == manifest["output"]["dtype"] == "float32"
    # the default (input,sequential) without `input`, which 16x8 does not need, and with `bias`
    # standing in for `sequential`, which simulates 8-bit activations
    assert manifest["details"]["ptq"]["recipe"] == "bias"
    notes = manifest["details"]["ptq"]["notes"]
    assert notes[0].startswith("input: 16-bit activations") and notes[1].endswith("8-bit activations; bias in its place")
    assert "reference kernels" in manifest["details"]["int16x8"]["cpu"]
    interpreter = Interpreter(model_path=str(tmp_path / "16x8" / "model.tflite"))
    dtypes = [d["dtype"] for d in interpreter.get_tensor_details()]
    assert dtypes.count(np.float32) == 2  # the model's input and output; every activation between is int16
    assert dtypes.count(np.int16) > 60 and np.int8 in dtypes
    int8 = export_run(tiny_run, ExportSpec(quant="int8", io="float32", ptq="bias", calib_size=30, out=str(tmp_path / "int8")))
    error = {name: np.abs(predict_file(tmp_path / name / "model.tflite", split.images) - keras_probs).mean()
             for name in ("16x8", "int8")}
    assert error["16x8"] < 0.7 * error["int8"], error  # same int8 weights, finer activations
    assert manifest["accuracy"]["agreement"] >= int8["accuracy"]["agreement"]
    with pytest.raises(UsageError, match="--ptq input cannot be applied: 16-bit activations"):
        export_run(tiny_run, ExportSpec(quant="int16x8", ptq="input,bias", calib_size=30, out=str(tmp_path / "refused")))
    with pytest.raises(UsageError, match="--ptq sequential cannot be applied: it rounds against a simulation of 8-bit"):
        export_run(tiny_run, ExportSpec(quant="int16x8", ptq="sequential", calib_size=30, out=str(tmp_path / "refused")))
    assert not (tmp_path / "refused").exists()


def test_conversion_from_the_frozen_function_is_what_from_keras_model_gives(tiny_run, val_set, tmp_path, monkeypatch):
    """The exporter converts the model's frozen inference function (no SavedModel on the way):
    the same op counts, IO tensors and int8 outputs as TFLite's own Keras route, and the same signature."""
    from ai_edge_litert.interpreter import Interpreter
    from edgeclf.exporters import tflite, tflite_flatbuffer

    ours = export_run(tiny_run, ExportSpec(quant="int8", ptq="none", calib_size=12, out=str(tmp_path / "ours")))
    monkeypatch.setattr(tflite, "_keras_converter", lambda model: tfenv.tf().lite.TFLiteConverter.from_keras_model(model))
    export_run(tiny_run, ExportSpec(quant="int8", ptq="none", calib_size=12, out=str(tmp_path / "keras")))
    models = [(tmp_path / name / "model.tflite").read_bytes() for name in ("ours", "keras")]
    assert tflite_flatbuffer.op_counts(models[0]) == tflite_flatbuffer.op_counts(models[1])
    assert tflite_flatbuffer.io_tensors(models[0]) == tflite_flatbuffer.io_tensors(models[1])  # names, types, quantization
    assert ours["details"]["quantization_coverage"]["ops_integer_fraction"] == 1.0
    outputs = []
    for model in models:
        interpreter = Interpreter(model_content=model)
        assert interpreter.get_signature_list() == {"serving_default": {"inputs": ["image"], "outputs": ["classifier"]}}
        runner = interpreter.get_signature_runner("serving_default")
        outputs.append(np.concatenate([runner(image=image[None].astype(np.uint8))["classifier"] for image in val_set[1].images]))
    assert np.array_equal(*outputs)


def test_embedded_metadata_and_labels(tiny_run, tmp_path):
    export_run(tiny_run, ExportSpec(quant="fp32", out=str(tmp_path / "fp32")))
    data = (tmp_path / "fp32" / "model.tflite").read_bytes()
    meta = read_metadata(data)
    assert meta["inputs"][0]["mean"] == [0.0, 0.0, 0.0] and meta["inputs"][0]["std"] == [1.0, 1.0, 1.0]
    assert read_associated_files(data)["labels.txt"].decode().split() == ["blue", "green", "red"]
    if not (READER_DIR / "tflite_support").is_dir():
        pytest.skip(f"independent reader not installed in {READER_DIR} (run tests/install_metadata_reader.sh)")
    script = (
        "import sys, json; sys.modules['tensorflow'] = None\n"
        "from tflite_support import metadata\n"
        "d = metadata.MetadataDisplayer.with_model_file(sys.argv[1])\n"
        "print(json.dumps({'meta': json.loads(d.get_metadata_json()), 'labels': d.get_associated_file_buffer('labels.txt').decode()}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path / "fp32" / "model.tflite")],
                          env=dict(os.environ, PYTHONPATH=str(READER_DIR)), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    google = json.loads(proc.stdout)
    tensor = google["meta"]["subgraph_metadata"][0]["input_tensor_metadata"][0]
    assert tensor["content"]["content_properties"]["default_size"] == {"width": 32, "height": 32}
    assert tensor["process_units"][0]["options"] == {"mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]}
    assert google["labels"].split() == ["blue", "green", "red"]


def test_interrupted_export_leaves_nothing(tiny_run, tmp_path, monkeypatch):
    import edgeclf.jobs.export as export_module

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(export_module, "predict_file", interrupt)
    with pytest.raises(KeyboardInterrupt):
        export_run(tiny_run, ExportSpec(quant="fp32", out=str(tmp_path / "x")))
    assert os.listdir(tmp_path) == []


def test_failed_conversion_names_the_op_and_writes_nothing(tiny_run, tmp_path):
    keras = tfenv.keras()
    tf = tfenv.tf()
    from edgeclf.exporters import tflite
    from edgeclf.exporters.base import ExportJob
    from edgeclf.exporters.spec import ExportSpec as Spec

    pixels = keras.Input((8, 8, 3))
    sorted_values = keras.layers.Lambda(lambda x: tf.sort(tf.reshape(x, (-1, 192)), axis=-1))(pixels)
    model = keras.Model(pixels, keras.layers.Dense(3, activation="softmax")(sorted_values))
    run = Run.open(tiny_run)
    calib = calibration.CalibrationSet(np.zeros((4, 8, 8, 3), np.uint8), "test", 0, {}, "x")
    with pytest.raises(ExportError, match="(?i)sort|topk|top_k"):
        tflite.export(ExportJob(run, model, Spec(quant="int8"), calib, tmp_path))
    assert not (tmp_path / "model.tflite").exists()


def test_clear_errors(tiny_run, tmp_path):
    with pytest.raises(ModelError, match="not a finished edgeclf run \\(no model.keras\\)"):
        (tmp_path / "empty").mkdir()
        export_run(tmp_path / "empty", ExportSpec())
    with pytest.raises(UsageError, match="--io uint8 needs --quant int8"):
        ExportSpec(quant="fp16", io="uint8")
    other = make_image_folder(tmp_path / "calib", {"red": 2, "purple": 2})
    with pytest.raises(DatasetError, match="classes the model does not know: purple"):
        calibration.build(Run.open(tiny_run), 10, str(other))


def test_calibration_is_stratified_deterministic_and_cached(tiny_run):
    run = Run.open(tiny_run)
    first = calibration.build(run, 30)
    second = calibration.build(run, 30)
    assert first.sample_hash == second.sample_hash and np.array_equal(first.images, second.images)
    assert first.per_class == {"blue": 10, "green": 10, "red": 10}  # 15 train images per class
    assert list((tiny_run / "cache").glob("calib-*.npz"))
    assert calibration.build(run, 30, seed=99).sample_hash != first.sample_hash
    everything = calibration.build(run, 1000)
    assert len(everything) == 45


def test_inspect_a_model_edgeclf_did_not_make(tmp_path):
    keras = tfenv.keras()
    tf = tfenv.tf()
    from edgeclf.jobs.inspect import inspect_model

    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(4, 3)(inputs)
    outputs = keras.layers.Dense(2)(keras.layers.Flatten()(x))
    converter = tf.lite.TFLiteConverter.from_keras_model(keras.Model(inputs, outputs))
    (tmp_path / "foreign.tflite").write_bytes(converter.convert())
    info = inspect_model(tmp_path / "foreign.tflite")
    assert info["metadata"] is None and info["labels"] is None
    assert info["inputs"][0]["shape"] == [1, 16, 16, 3] and info["inputs"][0]["dtype"] == "float32"
    assert info["ops"]["CONV_2D"] == 1 and info["ops"]["FULLY_CONNECTED"] == 1
    assert info["quantization"]["ops_integer_fraction"] == 0.0
    assert info["bytes"] == (tmp_path / "foreign.tflite").stat().st_size


@pytest.mark.parametrize("options, message", [
    (dict(target="tflite", quant="int8", calib_method="entropy"), "--calib-method entropy applies only to --target onnx --quant int8"),
    (dict(target="onnx", quant="fp32", calib_method="percentile"), "--calib-method percentile applies only"),
    (dict(target="openvino", quant="int8", per_channel=True), "--per-channel/--per-tensor apply only to --target onnx"),
    (dict(target="tflite", quant="dynamic", per_channel=False), "--per-channel/--per-tensor apply only"),
    (dict(target="tflite", dynamic_batch=True), "--dynamic-batch applies only to --target onnx"),
    (dict(target="tflite", quant="fp16", calib_dir="."), "--calib-dir is only used by --quant int8"),
    (dict(target="tflite", quant="int16x8", io="uint8"), "--io uint8 applies only to --target tflite --quant int8"),
    (dict(target="tflite", quant="int16x8", debug_quant=True), "--debug-quant applies only to --target tflite --quant int8"),
    (dict(target="onnx", quant="int16x8"), "--quant int16x8 is not available for onnx"),
])
def test_options_another_target_would_ignore_are_refused(options, message):
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(")", r"\)")):
        ExportSpec(**options)
    ExportSpec(target="onnx", quant="int8", calib_method="entropy", per_channel=False)  # where they apply
