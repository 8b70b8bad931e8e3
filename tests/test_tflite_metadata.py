"""TFLite Metadata: our writer must keep the model intact and be readable by Google's own tools.

The independent reader is tflite-support 0.4.4 (MetadataDisplayer plus the C++ Task Library
ImageClassifier). It pins protobuf<4, so it lives in its own --target directory (see
tests/install_metadata_reader.sh) and runs in a subprocess, never in this interpreter.
"""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from edgeclf.errors import ExportError, ModelError  # noqa: E402
from edgeclf.exporters.tflite_metadata import (  # noqa: E402
    LABELS_FILE_NAME,
    MIN_PARSER_VERSION,
    ImageClassifierMetadata,
    embed_metadata,
    read_associated_files,
    read_metadata,
)

REPO = Path(__file__).resolve().parents[1]
READER_DIR = Path(
    os.environ.get("EDGECLF_TFLITE_SUPPORT_DIR", REPO / ".venv" / "tflite-support-reader")
)
LABELS = ["cat", "dog", "bird"]
SIZE = 32


def _meta(**changes) -> ImageClassifierMetadata:
    fields = dict(
        name="tiny-classifier",
        description="A tiny test classifier.",
        version="0.1.0",
        author="edgeclf tests",
        license="Apache-2.0",
        labels=LABELS,
        width=SIZE,
        height=SIZE,
        input_mean=[0.0, 0.0, 0.0],
        input_std=[1.0, 1.0, 1.0],
    )
    fields.update(changes)
    return ImageClassifierMetadata(**fields)


@pytest.fixture(scope="module")
def plain_model() -> bytes:
    import tensorflow as tf
    import tf_keras as keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Rescaling(1 / 255.0)(inputs)  # takes raw RGB 0..255, like edgeclf models
    x = keras.layers.Conv2D(4, 3, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(len(LABELS), activation="softmax")(x)
    model = keras.Model(inputs, outputs)
    return tf.lite.TFLiteConverter.from_keras_model(model).convert()


@pytest.fixture(scope="module")
def annotated(plain_model) -> bytes:
    return embed_metadata(plain_model, _meta())


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    # Whole numbers, so the uint8 image the Task Library gets equals the float one LiteRT gets.
    return np.random.default_rng(0).integers(0, 256, (SIZE, SIZE, 3)).astype(np.uint8)


def _run_litert(model: bytes, image: np.ndarray) -> np.ndarray:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=model)
    interpreter.allocate_tensors()
    interpreter.set_tensor(
        interpreter.get_input_details()[0]["index"], image[None].astype(np.float32)
    )
    interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])[0].copy()


def test_litert_runs_annotated_model_identically(plain_model, annotated, image):
    assert annotated != plain_model
    np.testing.assert_array_equal(_run_litert(annotated, image), _run_litert(plain_model, image))


def test_constant_buffers_stay_16_byte_aligned(annotated):
    from ai_edge_litert import schema_py_generated as schema

    model = schema.Model.GetRootAs(annotated, 0)
    checked = 0
    for i in range(model.BuffersLength()):
        buffer = model.Buffers(i)
        if buffer.DataLength():
            start = buffer._tab.Vector(buffer._tab.Offset(4))  # field 0: data
            assert start % 16 == 0, f"buffer {i} data starts at {start}"
            checked += 1
    assert checked >= 3  # conv/dense weights and biases, plus the metadata itself


def test_our_reader_round_trips(plain_model, annotated):
    info = read_metadata(annotated)
    assert info is not None
    assert "error" not in info
    assert (info["name"], info["description"], info["version"]) == (
        "tiny-classifier",
        "A tiny test classifier.",
        "0.1.0",
    )
    assert (info["author"], info["license"]) == ("edgeclf tests", "Apache-2.0")
    assert info["min_parser_version"] == MIN_PARSER_VERSION
    [inp] = info["inputs"]
    assert inp["content_type"] == "ImageProperties"
    assert inp["color_space"] == "RGB"
    assert (inp["width"], inp["height"]) == (SIZE, SIZE)
    assert inp["mean"] == [0.0, 0.0, 0.0]
    assert inp["std"] == [1.0, 1.0, 1.0]
    assert (inp["min"], inp["max"]) == ([0.0], [255.0])
    [out] = info["outputs"]
    assert out["content_type"] == "FeatureProperties"
    assert (out["min"], out["max"]) == ([0.0], [1.0])
    assert out["associated_files"] == [{"name": LABELS_FILE_NAME, "type": "TENSOR_AXIS_LABELS"}]
    assert read_associated_files(annotated) == {LABELS_FILE_NAME: b"cat\ndog\nbird\n"}

    assert read_metadata(plain_model) is None
    assert read_associated_files(plain_model) == {}


def test_embedding_again_replaces_the_metadata(plain_model, annotated, image):
    assert embed_metadata(annotated, _meta()) == annotated  # deterministic, old zip dropped

    relabelled = embed_metadata(annotated, _meta(name="second", labels=["a", "b", "c"]))
    assert read_metadata(relabelled)["name"] == "second"
    assert read_associated_files(relabelled) == {LABELS_FILE_NAME: b"a\nb\nc\n"}
    assert relabelled.count(b"TFLITE_METADATA") == 1
    np.testing.assert_array_equal(_run_litert(relabelled, image), _run_litert(plain_model, image))


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(labels=["a", "b"]), "2 labels"),
        (dict(labels=["a", "b\nc", "d"]), "line break"),
        (dict(width=64), "input tensor is 32x32x3"),
        (dict(input_std=[1.0, 0.0, 1.0]), "input_std contains 0"),
        (dict(input_mean=[0.0, 0.0]), "1 or 3"),
    ],
)
def test_metadata_that_does_not_fit_is_refused(plain_model, changes, message):
    with pytest.raises(ExportError, match=message):
        embed_metadata(plain_model, _meta(**changes))


def test_embed_refuses_non_tflite_bytes():
    with pytest.raises(ModelError):
        embed_metadata(b"not a model at all", _meta())


_MODEL_KEYS = {"name", "description", "version", "author", "license", "min_parser_version",
               "associated_files", "inputs", "outputs"}
_TENSOR_KEYS = {"name", "description", "content_type", "color_space", "width", "height",
                "mean", "std", "min", "max", "associated_files"}


def _assert_documented(info) -> None:
    """What `edgeclf inspect --json` relies on: None, or the documented keys holding plain
    JSON values (str, not bytes; float, not numpy), plus "error" when the metadata is malformed."""
    if info is None:
        return
    assert set(info) - {"error"} == _MODEL_KEYS
    assert all(set(tensor) == _TENSOR_KEYS for tensor in info["inputs"] + info["outputs"])
    assert json.loads(json.dumps(info)) == info


def test_reader_survives_foreign_and_corrupt_bytes(plain_model, annotated):
    for junk in (b"", b"TFL3", b"\x00" * 8, b"\xff" * 64, b"PK\x05\x06" + b"\x00" * 18):
        assert read_metadata(junk) is None
        assert read_associated_files(junk) == {}
    _assert_documented(read_metadata(annotated))
    rng = random.Random(0)
    for _ in range(300):
        corrupt = bytearray(annotated)
        for _ in range(rng.randint(1, 8)):
            corrupt[rng.randrange(len(corrupt))] = rng.randrange(256)
        _assert_documented(read_metadata(bytes(corrupt)))  # must not raise
        assert isinstance(read_associated_files(bytes(corrupt)), dict)
    for cut in range(0, len(annotated), 97):
        _assert_documented(read_metadata(annotated[:cut]))


# Runs with tflite-support on sys.path. TensorFlow is blocked: metadata.py imports it only as
# an optional file opener, and TF 2.21 would clash with the protobuf 3.20 tflite-support needs.
_READER_SCRIPT = r"""
import json, sys
sys.modules["tensorflow"] = None
import numpy as np
from tflite_support import metadata
from tflite_support.metadata_writers import image_classifier
from tflite_support.task import core, processor, vision
from tensorflow_lite_support.metadata.cc.python import _pywrap_metadata_version

job = json.loads(sys.argv[1])
# Keep the array referenced: TensorImage only points at its pixels.
pixels = np.load(job["image"])
image = vision.TensorImage.create_from_array(pixels)
results = []
for model_path in job["read"]:
    with open(model_path, "rb") as f:
        buf = f.read()
    displayer = metadata.MetadataDisplayer.with_model_buffer(buf)
    result = {
        "module": metadata.__file__,
        "json": json.loads(displayer.get_metadata_json()),
        "files": displayer.get_packed_associated_file_list(),
        "labels": displayer.get_associated_file_buffer("labels.txt").decode("utf-8"),
        "min_parser_version": _pywrap_metadata_version.GetMinimumMetadataParserVersion(
            bytes(displayer.get_metadata_buffer())),
    }
    # One thread: multi-threaded XNNPACK sums in another order (~1e-4 off LiteRT's result).
    options = vision.ImageClassifierOptions(
        base_options=core.BaseOptions(file_name=model_path, num_threads=1),
        classification_options=processor.ClassificationOptions(max_results=-1))
    classifier = vision.ImageClassifier.create_from_options(options)
    categories = classifier.classify(image).classifications[0].categories
    result["classified"] = [[c.index, c.category_name, c.score] for c in categories]
    results.append(result)

# The other direction: Google's own writer, for our reader to read.
with open(job["plain"], "rb") as f:
    writer = image_classifier.MetadataWriter.create_for_inference(
        f.read(), [127.5], [127.5], [job["labels"]])
with open(job["google_out"], "wb") as f:
    f.write(writer.populate())

with open(job["out"], "w") as f:
    json.dump(results, f)
"""


@pytest.fixture(scope="module")
def google(plain_model, annotated, image, tmp_path_factory) -> dict:
    """Run tflite-support once: read our models, and write one with its own writer."""
    if not (READER_DIR / "tflite_support" / "__init__.py").is_file():
        pytest.skip(
            f"independent reader (tflite-support 0.4.4) not installed in {READER_DIR}: "
            "run `bash tests/install_metadata_reader.sh` or set EDGECLF_TFLITE_SUPPORT_DIR"
        )
    tmp = tmp_path_factory.mktemp("tflite_support")
    # A second model whose normalization is not the identity, to see the C++ apply it.
    shifted = embed_metadata(plain_model, _meta(input_mean=[127.5], input_std=[127.5]))
    for name, data in (
        ("ours.tflite", annotated),
        ("shifted.tflite", shifted),
        ("plain.tflite", plain_model),
        ("labels.txt", "\n".join(LABELS).encode() + b"\n"),
    ):
        (tmp / name).write_bytes(data)
    np.save(tmp / "image.npy", image)
    job = {
        "image": str(tmp / "image.npy"),
        "read": [str(tmp / "ours.tflite"), str(tmp / "shifted.tflite")],
        "plain": str(tmp / "plain.tflite"),
        "labels": str(tmp / "labels.txt"),
        "google_out": str(tmp / "google.tflite"),
        "out": str(tmp / "results.json"),
    }
    proc = subprocess.run(
        [sys.executable, "-c", _READER_SCRIPT, json.dumps(job)],
        env=dict(os.environ, PYTHONPATH=str(READER_DIR)),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, f"tflite-support reader failed:\n{proc.stderr[-3000:]}"
    ours, shifted_result = json.loads((tmp / "results.json").read_text())
    return {
        "ours": ours,
        "shifted": shifted_result,
        "google_model": (tmp / "google.tflite").read_bytes(),
    }


def test_google_tflite_support_reads_our_metadata(google):
    got = google["ours"]
    assert got["module"].startswith(str(READER_DIR))  # really Google's code, not ours

    meta = got["json"]
    assert meta["name"] == "tiny-classifier"
    assert meta["description"] == "A tiny test classifier."
    assert meta["version"] == "0.1.0"
    assert meta["author"] == "edgeclf tests"
    assert meta["license"] == "Apache-2.0"
    assert meta["min_parser_version"] == MIN_PARSER_VERSION
    # Google's C++ computes the same minimum parser version from the fields we wrote.
    assert got["min_parser_version"] == MIN_PARSER_VERSION

    [subgraph] = meta["subgraph_metadata"]
    [inp] = subgraph["input_tensor_metadata"]
    assert inp["content"]["content_properties_type"] == "ImageProperties"
    props = inp["content"]["content_properties"]
    assert props["color_space"] == "RGB"
    assert props["default_size"] == {"width": SIZE, "height": SIZE}
    [unit] = inp["process_units"]
    assert unit["options_type"] == "NormalizationOptions"
    assert unit["options"] == {"mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]}
    assert inp["stats"] == {"max": [255.0], "min": [0.0]}

    [out] = subgraph["output_tensor_metadata"]
    assert out["content"]["content_properties_type"] == "FeatureProperties"
    assert out["stats"] == {"max": [1.0], "min": [0.0]}
    [labels_file] = out["associated_files"]
    assert (labels_file["name"], labels_file["type"]) == (LABELS_FILE_NAME, "TENSOR_AXIS_LABELS")

    assert got["files"] == [LABELS_FILE_NAME]
    assert got["labels"] == "cat\ndog\nbird\n"


def test_google_task_library_classifies_with_our_metadata(google, annotated, image):
    # The C++ Task Library loads the model, applies our normalization, names the classes
    # from labels.txt and scores as LiteRT does on the same pixels (a transposed or BGR
    # image would be off by >1e-4).
    for result, pixels in (
        (google["ours"], image.astype(np.float32)),
        (google["shifted"], (image.astype(np.float32) - 127.5) / 127.5),
    ):
        classified = sorted(result["classified"])
        assert [name for _, name, _ in classified] == LABELS
        np.testing.assert_allclose(
            [score for *_, score in classified], _run_litert(annotated, pixels), rtol=1e-5, atol=1e-6
        )


def test_our_reader_and_writer_handle_google_written_metadata(google, image):
    theirs = google["google_model"]
    info = read_metadata(theirs)
    assert info["name"] == "ImageClassifier"  # tflite-support's default
    assert info["min_parser_version"] == MIN_PARSER_VERSION
    [inp] = info["inputs"]
    assert (inp["content_type"], inp["color_space"]) == ("ImageProperties", "RGB")
    assert (inp["mean"], inp["std"]) == ([127.5], [127.5])
    [out] = info["outputs"]
    assert out["associated_files"] == [{"name": LABELS_FILE_NAME, "type": "TENSOR_AXIS_LABELS"}]
    assert read_associated_files(theirs) == {LABELS_FILE_NAME: b"cat\ndog\nbird\n"}

    # Re-embedding over Google's metadata replaces it and keeps the model runnable.
    ours = embed_metadata(theirs, _meta(labels=["x", "y", "z"]))
    assert read_metadata(ours)["name"] == "tiny-classifier"
    assert read_associated_files(ours) == {LABELS_FILE_NAME: b"x\ny\nz\n"}
    assert ours.count(b"TFLITE_METADATA") == 1
    np.testing.assert_array_equal(_run_litert(ours, image), _run_litert(theirs, image))
