"""Hostile and damaged files (issue 10, items 11-13): every one is a clean EdgeclfError, never a crash."""
from __future__ import annotations

import errno
import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import make_image_folder
from edgeclf.errors import EdgeclfError, ModelError

RUNNER_EVERY = 15  # each runner case is a subprocess: about a second
FUZZ_CASES = 300


def mutate(data: bytes, rng: random.Random) -> bytes:
    """A byte flip, a truncation or a zeroed run; most hit the first 4 KB, where the flatbuffer's tables are."""
    out = bytearray(data)
    head = min(len(out), 4096)

    def position() -> int:
        return rng.randrange(head) if rng.random() < 0.7 else rng.randrange(len(out))

    kind = rng.choice(("flip", "truncate", "zero"))
    if kind == "flip":
        for _ in range(rng.randint(1, 8)):
            out[position()] ^= 1 << rng.randrange(8)
    elif kind == "truncate":
        del out[rng.randrange(len(out)):]
    else:
        start = position()
        end = min(len(out), start + rng.randint(1, 64))
        out[start:end] = bytes(end - start)
    return bytes(out)


def test_mutated_tflite_models_fail_cleanly(tiny_int8, tmp_path):
    """inspect and validate's model reading on hundreds of corrupt models; every RUNNER_EVERY-th is
    also validated on the local device, whose runner process loads it into LiteRT.

    LiteRT aborts the whole process on some corrupt models, which is why models are only ever
    loaded into an interpreter in the runner's own process (validate) or after edgeclf wrote them
    (export scoring): the abort must come back as one clean error.
    """
    from edgeclf.artefacts import Artefact
    from edgeclf.jobs.inspect import inspect_model
    from edgeclf.jobs.validate import input_size, validate

    original = (tiny_int8 / "model.tflite").read_bytes()
    rng = random.Random(20240610)
    path = tmp_path / "model.tflite"
    outcomes = {"clean error": 0, "read": 0}
    for case in range(FUZZ_CASES):
        path.write_bytes(mutate(original, rng))
        steps = [lambda: inspect_model(path), lambda: input_size(Artefact.open(path))]
        if case % RUNNER_EVERY == 0:
            steps.append(lambda: validate(path, "local", runs=1, warmup=0))
        for step in steps:
            try:
                step()
                outcomes["read"] += 1
            except EdgeclfError:
                outcomes["clean error"] += 1
            except Exception as exc:  # noqa: BLE001 - the point is that nothing else escapes
                pytest.fail(f"mutation {case}: {type(exc).__name__}: {exc}")
    assert outcomes["clean error"] > FUZZ_CASES // 4  # the mutations really do break models


def test_empty_onnx_file_is_not_a_valid_model(tmp_path):
    from edgeclf.jobs.inspect import inspect_model

    (tmp_path / "empty.onnx").write_bytes(b"")
    with pytest.raises(ModelError, match=r"empty.onnx is not an ONNX model \(the file is empty\)"):
        inspect_model(tmp_path / "empty.onnx")


def test_garbage_openvino_xml_is_one_clean_error_without_log_noise(tmp_path, capfd):
    from edgeclf.jobs.inspect import inspect_model

    (tmp_path / "model.xml").write_text("garbage, not XML\n")
    (tmp_path / "model.bin").write_bytes(b"\0" * 16)
    with pytest.raises(ModelError, match=r"model.xml is not an OpenVINO IR model") as info:
        inspect_model(tmp_path / "model.xml")
    assert "model.bin" not in str(info.value)  # the weights file is not what is wrong
    assert capfd.readouterr().err == ""


def test_runner_reports_a_model_it_cannot_load_as_a_model_error(tmp_path):
    """The manifest gives the input size, so the on-device runner is the first to open the file."""
    from edgeclf.jobs.validate import validate

    (tmp_path / "model.onnx").write_bytes(b"this is not a protobuf")
    manifest = {"model_file": "model.onnx", "labels": ["a", "b"], "input": {"shape": [1, 32, 32, 3]}}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelError, match=r"local cannot load the model: .*re-export"):
        validate(tmp_path, "local", runs=1, warmup=0)


def fake_run(root: Path, record) -> Path:
    """A run directory as far as Run.open looks: the model file is never loaded by these tests."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "model.keras").write_bytes(b"not loaded")
    (root / "labels.txt").write_text("red\ngreen\nblue\n")
    (root / "run.json").write_text(json.dumps(record))
    return root


GOOD_RECORD = {"config": {"arch": "mobilenetv2", "seed": 1},
               "input": {"shape": [1, 32, 32, 3], "preprocessing": "raw RGB"}}


@pytest.mark.parametrize("record, problem", [
    ({}, "is missing config.arch, config.seed, input.shape, input.preprocessing"),
    ({**GOOD_RECORD, "input": {"preprocessing": "raw RGB"}}, "is missing input.shape"),
    ([], "holds a JSON list, not an object"),  # issue 21 item 17: not "not valid JSON"
])
def test_run_json_with_missing_keys_names_the_file_and_key(tmp_path, record, problem):
    from edgeclf.pipeline.runs import Run

    run_dir = fake_run(tmp_path / "run", record)
    with pytest.raises(ModelError, match=rf"run.json {problem}.*re-run `edgeclf train`"):
        Run.open(run_dir).img_size


def test_report_of_a_run_json_list_says_it_must_be_an_object(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "edgeclf", "report", fake_run(tmp_path / "run", [1, 2])],
                          capture_output=True, text=True, timeout=300)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and len(lines) == 1, proc.stderr
    assert "run.json holds a JSON list, not an object" in lines[0] and "not valid JSON" not in lines[0]


@pytest.mark.parametrize("manifest, problem", [
    ([], "holds a JSON list, not an object"),
    ({"labels": ["a"], "input": {"shape": [1, 8, 8, 3]}}, "has no model_file"),
    ({"model_file": "model.tflite", "input": {"shape": [1, 8, 8, 3]}}, "has no labels list"),
    ({"model_file": "model.tflite", "labels": ["a"], "input": {}}, r"has no input.shape"),
])
def test_manifest_with_missing_keys_names_the_file_and_key(tmp_path, manifest, problem):
    from edgeclf.artefacts import Artefact

    (tmp_path / "model.tflite").write_bytes(b"x")
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelError, match=rf"manifest.json {problem}"):
        Artefact.open(tmp_path).img_size


@pytest.mark.parametrize("escape", ["absolute", "dotdot", "symlink", "bin-symlink"])
def test_manifest_model_file_must_stay_inside_its_folder(tmp_path, escape):
    from edgeclf.artefacts import Artefact

    outside = tmp_path / "secret.tflite"
    outside.write_bytes(b"private")
    artefact = tmp_path / "artefact"
    artefact.mkdir()
    model_file = {"absolute": str(outside), "dotdot": "../secret.tflite"}.get(escape, "model.tflite")
    if escape == "symlink":
        (artefact / "model.tflite").symlink_to(outside)
    if escape == "bin-symlink":
        model_file = "model.xml"
        (artefact / "model.xml").write_text("<net/>")
        (tmp_path / "secret.bin").write_bytes(b"private")
        (artefact / "model.bin").symlink_to(tmp_path / "secret.bin")
    manifest = {"model_file": model_file, "labels": ["a", "b"], "input": {"shape": [1, 8, 8, 3]}}
    (artefact / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelError, match=r"model_file .*inside the export directory|leads outside"):
        Artefact.open(artefact)


def run_main(monkeypatch, capsys, *args) -> tuple[int, str, str]:
    """The real entry point in-process: (exit code, stderr, stdout)."""
    from edgeclf.cli.main import main

    monkeypatch.setattr(sys, "argv", ["edgeclf", *map(str, args)])
    with pytest.raises(SystemExit) as exit_info:
        main()
    captured = capsys.readouterr()
    return exit_info.value.code, captured.err, captured.out


@pytest.mark.parametrize("code, expected", [
    (errno.EACCES, r"error: cannot access .*locked.* \(permission denied: .*writable folder\)"),
    (errno.EROFS, r"error: cannot write .*locked.* \(read-only file system: choose a writable folder\)"),
    (errno.ENOSPC, r"error: disk full while writing .*locked.* \(free some space"),
])
def test_file_system_failures_are_one_clear_line(tmp_path, monkeypatch, capsys, code, expected):
    """We run as root in CI, so the refusal is injected where train creates its work folder."""
    data = make_image_folder(tmp_path / "data", {"a": 3, "b": 3}, size=8)
    real_mkdir = Path.mkdir

    def refusing_mkdir(self, *args, **kwargs):
        if "locked" in str(self):
            raise (PermissionError if code == errno.EACCES else OSError)(code, "refused", str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", refusing_mkdir)
    exit_code, err, out = run_main(monkeypatch, capsys, "train", data, "--weights", "none", "--img-size", "32",
                              "--out", tmp_path / "locked" / "run")
    assert exit_code == 1
    # the audit's progress line comes first; the failure itself is one line and the last
    *progress, error = err.strip().splitlines()
    assert all(line.startswith("audit: ") for line in progress) and "unexpected" not in err
    assert __import__("re").search(expected, error), err


def test_predict_an_unreadable_image_fails(tmp_path, monkeypatch, capsys):
    run_dir = fake_run(tmp_path / "run", GOOD_RECORD)
    (tmp_path / "broken.png").write_bytes(b"not a png at all")
    exit_code, err, out = run_main(monkeypatch, capsys, "predict", run_dir, tmp_path / "broken.png")
    assert exit_code == 1
    assert err.strip().splitlines()[-1].startswith(f"error: cannot read {tmp_path / 'broken.png'}")


def test_predict_reports_the_good_images_and_fails_on_the_bad_ones(tiny_run, tmp_path, monkeypatch, capsys):
    data = make_image_folder(tmp_path / "data", {"red": 1}, size=40)
    good = data / "red" / "red_000.png"
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 truncated jpeg")
    exit_code, err, out = run_main(monkeypatch, capsys, "predict", tiny_run, good, bad, "--json")
    assert exit_code == 1
    assert err.strip().splitlines()[-1].startswith("error: 1 of 2 images could not be read: ")
    results = json.loads(out)  # the readable image is still labelled
    assert results[0]["top"] and results[1]["error"] and not results[1]["top"]


def test_predict_a_folder_points_to_evaluate(tmp_path, monkeypatch, capsys):
    run_dir = fake_run(tmp_path / "run", GOOD_RECORD)
    data = make_image_folder(tmp_path / "data", {"red": 1}, size=8)
    exit_code, err, out = run_main(monkeypatch, capsys, "predict", run_dir, data)
    assert exit_code == 2
    assert f"error: {data} is a folder, not an image" in err and f"edgeclf evaluate {run_dir} --data {data}" in err


def test_progress_in_a_log_is_plain_full_lines(capsys):
    """Not a terminal (pytest captures stderr): no bars to redraw, so no blank runs and nothing cut short."""
    from edgeclf import console

    status = "loss 0.123 acc 0.456 | val 0.789 0.654 and a status long enough to overflow 80 columns"
    with console.progress(transient=False) as bar:
        for epoch in (1, 2):
            task = bar.add_task(f"fine_tune {epoch}/15", total=4, status="")
            for _ in range(4):
                bar.update(task, advance=1, status="loss 0.5")
            bar.update(task, status=status)
    for _ in range(3):
        with console.progress() as bar:  # transient: evaluation, decoding, conversion
            bar.advance(bar.add_task("evaluating", total=2, status=""))
    lines = capsys.readouterr().err.splitlines()
    assert lines == [f"fine_tune 1/15  4/4  0:00:00  {status}", f"fine_tune 2/15  4/4  0:00:00  {status}"]


def test_restored_epoch_is_counted_within_its_stage(tmp_path, capsys):
    """Two stages (a pretrained backbone file): the message counts epochs as the progress lines do."""
    from conftest import tiny_config
    from edgeclf import tfenv
    from edgeclf.jobs.train import train

    keras = tfenv.keras()
    weights = tmp_path / "backbone.h5"
    keras.applications.MobileNetV2(input_shape=(32, 32, 3), alpha=0.35, include_top=False, weights=None).save_weights(weights)
    data = make_image_folder(tmp_path / "data", {"red": 4, "green": 4, "blue": 4}, size=32)
    train(tiny_config(data, tmp_path / "run", weights=str(weights), head_epochs=1, fine_tune_epochs=2, patience=100))
    err = capsys.readouterr().err
    restored = [line for line in err.splitlines() if "restored" in line]
    assert len(restored) == 2 and restored[1].startswith("fine_tune: restored epoch ")
    assert restored[1].split("restored epoch ")[1].split(",")[0] in ("1/2", "2/2"), restored
    assert "\n\n" not in err and "fine_tune 2/2  " in err


def test_names_from_a_model_are_printed_as_text_not_markup(tiny_int8, tmp_path, monkeypatch, capsys):
    """A tensor called "[/oops]" must not be taken for rich markup (MarkupError) by `inspect`."""
    from edgeclf.exporters import tflite_flatbuffer

    model = tflite_flatbuffer.unpack((tiny_int8 / "model.tflite").read_bytes())
    graph = model.subgraphs[0]
    graph.tensors[graph.inputs[0]].name = "[/oops]"
    (tmp_path / "odd [red].tflite").write_bytes(tflite_flatbuffer.pack(model))
    exit_code, err, out = run_main(monkeypatch, capsys, "inspect", tmp_path / "odd [red].tflite")
    assert exit_code == 0, err
    assert "[/oops]" in out and "odd [red].tflite" in out
