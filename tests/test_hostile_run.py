"""Hostile pipeline files and pipeline state for `edgeclf run` (issue 21 items 6, 14, 15): one test per defect.

Most are parse-level or dry-run; one real tiny pipeline run checks that a cached stage's
outputs are verified before it counts as cached.
"""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from edgeclf.errors import UsageError
from test_pipeline import FP32, load_and_run, statuses, write_project

EDGECLF = [sys.executable, "-m", "edgeclf"]


def run_cli(*args, timeout=300, **kwargs):
    return subprocess.run([*EDGECLF, *map(str, args)], capture_output=True, text=True, timeout=timeout, **kwargs)


def one_line_error(proc) -> str:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "unexpected" not in lines[0], lines[0]
    return lines[0]


def load(path, **kwargs):
    from edgeclf.jobs import run_file

    return run_file.load(path, **kwargs)


# -- item 6: a YAML alias bomb is refused before it is expanded ----------------------------------

def billion_laughs(levels: int = 9) -> str:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, levels)]
    return "\n".join(lines) + "\ndata: {train: .}\ntrain: {}\nout: o\n"


def test_a_yaml_alias_bomb_is_one_line_error_in_bounded_memory(tmp_path):
    bomb = tmp_path / "pipeline.yaml"
    bomb.write_text(billion_laughs())
    assert bomb.stat().st_size < 600  # 9^9 values once expanded

    def one_gigabyte():
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))

    line = one_line_error(run_cli("run", bomb, "--dry-run", timeout=60, preexec_fn=one_gigabyte))
    assert "pipeline.yaml line 1: YAML anchors and aliases (&name, *name) are not supported" in line


def test_even_one_alias_is_refused_naming_its_line(tmp_path):
    path = write_project(tmp_path, FP32)
    path.write_text(path.read_text().replace("validate: {runs: 3", "validate: &v {runs: 3") + "extra: *v\n")
    with pytest.raises(UsageError, match="pipeline.yaml line 6: YAML anchors and aliases"):
        load(path)


def test_deeply_nested_yaml_is_one_line_error(tmp_path):
    path = tmp_path / "pipeline.yaml"
    path.write_text("data: " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(UsageError, match="nests lists or mappings too deeply"):
        load(path)


# -- item 14: non-UTF-8 files, duplicated keys, exports' budget options --------------------------

def test_a_non_utf8_pipeline_file_is_one_line_error(tmp_path):
    path = write_project(tmp_path, FP32)
    path.write_bytes(path.read_bytes().replace(b"runs/tiny", b"runs/t\xe9ny"))  # Latin-1, as an old editor saves it
    line = one_line_error(run_cli("run", path, "--dry-run"))
    assert "pipeline.yaml is not UTF-8 text (byte 0xe9" in line and "save it as UTF-8" in line


@pytest.mark.parametrize("extra, message", [
    ("out: runs/other\n", r"line 8: key 'out' is given twice \(first on line 7\)"),
    ("", r"line 2: key 'img_size' is given twice"),  # img-size and img_size are one key
])
def test_a_duplicated_key_is_an_error_not_last_wins(tmp_path, extra, message):
    path = write_project(tmp_path, FP32)
    text = path.read_text() + extra
    if not extra:
        text = text.replace("img_size: 32", "img_size: 32, img-size: 64")
    path.write_text(text)
    with pytest.raises(UsageError, match=message):
        load(path)


def test_exports_take_the_accuracy_budget_options_of_export(tmp_path):
    from edgeclf.jobs import run as run_job

    path = write_project(tmp_path, "  - {target: tflite, quant: int8, max_drop: 1.5, min_agreement: 0.9, allow_float_layers: true}\n")
    export = load(path).exports[0]
    assert (export.budget.max_drop, export.budget.min_agreement, export.budget.allow_float_layers) == (1.5, 0.9, True)
    stage = next(s for s in run_job.plan(load(path)) if s.kind == "export")
    assert stage.settings["budget"] == {"max_drop": 1.5, "min_agreement": 0.9, "allow_float_layers": True}

    path.write_text(path.read_text().replace("quant: int8", "quant: fp32"))  # the budget's own checks, at its line
    with pytest.raises(UsageError, match="line 4: exports: an accuracy budget needs --quant int8"):
        load(path)


# -- item 14: a damaged training state has a documented way out: `edgeclf run --restart` ---------

def test_a_damaged_training_state_names_restart_and_restart_trains_again(tmp_path, monkeypatch):
    from edgeclf.jobs import run as run_job
    from edgeclf.jobs import train as training

    path = write_project(tmp_path, FP32, devices="[]")
    config = load(path).trains[0]
    calls = []

    def interrupted(config, overwrite):
        calls.append(config.out)
        raise KeyboardInterrupt  # as if Ctrl-C came during the epochs
    monkeypatch.setattr(training, "train", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_job.run(load(path))
    partial = training.partial_dir(Path(config.out))
    partial.mkdir(parents=True)
    (partial / training.STATE_FILE).write_text('{"config": {"data_dir"')  # cut off by a full disk
    monkeypatch.undo()

    proc = run_cli("run", path)
    assert proc.returncode != 0 and "unexpected" not in proc.stderr and "JSONDecodeError" not in proc.stderr, proc.stderr
    record = {s["name"]: s for s in json.loads((tmp_path / "runs" / "tiny" / "pipeline.json").read_text())["stages"]}["train"]
    assert record["status"] == "failed" and "state.json is unreadable" in record["error"] and "--restart" in record["error"]
    assert "--restart" in run_cli("run", "--help").stdout

    monkeypatch.setattr(training, "train", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_job.run(load(path), restart=True)
    assert calls == [config.out, config.out] and not partial.exists()  # discarded, then trained from the start


# -- item 14: a cached stage's outputs must still be there, unchanged ----------------------------

def test_a_stage_whose_outputs_were_deleted_or_changed_is_not_cached(tmp_path):
    budget = "  - {target: tflite, quant: int8, calib_size: 8, max_drop: 100}\n"
    path = write_project(tmp_path, FP32 + budget, devices="[]")
    out = tmp_path / "runs" / "tiny"
    first = load_and_run(path)
    assert set(statuses(first).values()) == {"ran"}
    run_dir = out / "mobilenetv2" / "run"
    manifest = json.loads((run_dir / "exports" / "tflite-int8" / "manifest.json").read_text())
    assert manifest["budget"]["max_drop"] == 1.0 and manifest["budget"]["chosen"]  # the entry's max_drop reached the budget
    assert set(statuses(load_and_run(path, dry_run=True)).values()) == {"cached"}

    (run_dir / "exports" / "tflite-fp32" / "model.tflite").unlink()
    plan = {s["name"]: s for s in load_and_run(path, dry_run=True)["stages"]}
    assert plan["export/tflite-fp32"]["why"] == "its output model.tflite is missing"
    assert plan["train"]["status"] == plan["export/tflite-int8"]["status"] == "cached"
    again = load_and_run(path)
    assert statuses(again)["export/tflite-fp32"] == "ran" and statuses(again)["train"] == "cached"
    assert (run_dir / "exports" / "tflite-fp32" / "model.tflite").is_file()

    model = run_dir / "model.keras"
    before = model.stat()
    model.write_bytes(b"\0" * before.st_size)  # same size, same mtime, other bytes
    os.utime(model, ns=(before.st_atime_ns, before.st_mtime_ns))
    plan = {s["name"]: s for s in load_and_run(path, dry_run=True)["stages"]}
    assert plan["train"]["why"] == "its output model.keras changed"
    assert {s["status"] for s in plan.values()} == {"will run"}


# -- item 15: a pipeline file's device settings that can run local commands need a flag ----------

@pytest.mark.parametrize("extra, key", [
    ("validate: {runs: 3, ssh_config: evil_ssh_config}\n", "validate.ssh_config"),
    ("validate: {insecure_host_key: true}\n", "validate.insecure_host_key"),
    ("devices_file: devices.yaml\n", "devices_file"),
])
def test_pipeline_device_settings_that_can_run_commands_need_trust(tmp_path, extra, key):
    marker = tmp_path / "proxy-command-ran"
    (tmp_path / "evil_ssh_config").write_text(f"Host *\n  ProxyCommand touch {marker}\n")
    (tmp_path / "devices.yaml").write_text(f"targets:\n  board:\n    ssh: pi@board\n    ssh_config: {tmp_path / 'evil_ssh_config'}\n")
    devices = "[board]" if key == "devices_file" else "['ssh://pi@board']"
    path = write_project(tmp_path, FP32, devices=devices, extra=extra)
    if "validate: {runs: 3," in extra or "insecure" in extra:  # one validate section
        path.write_text(path.read_text().replace("validate: {runs: 3, warmup: 1, threads: 1}\n", "", 1))

    line = one_line_error(run_cli("run", path, "--dry-run", cwd=tmp_path))
    assert f"{key} " in line and "a pipeline file is not trusted by default" in line
    assert "pass --trust-pipeline-devices if you trust pipeline.yaml" in line
    assert not marker.exists() and not (tmp_path / "runs").exists()

    trusted = load(path, trust_devices=True)  # the user's word makes the setting take effect
    if key == "devices_file":
        assert trusted.devices == ["board"] and trusted.device_options.devices_file == str(tmp_path / "devices.yaml")
    elif key == "validate.ssh_config":
        assert trusted.device_options.ssh_config == str(tmp_path / "evil_ssh_config")
    else:
        assert trusted.device_options.insecure_host_key is True


def test_harmless_device_settings_need_no_trust(tmp_path):
    path = write_project(tmp_path, FP32, devices="['ssh://pi@board']")
    path.write_text(path.read_text().replace("threads: 1}", "threads: 1, remote_python: /opt/venv/bin/python, insecure_host_key: false}"))
    pf = load(path)
    assert pf.device_options.remote_python == "/opt/venv/bin/python" and pf.device_options.ssh_config is None
