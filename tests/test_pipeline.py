"""`edgeclf run`: pipeline file checks, stage caching, resume, several devices, several backbones."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import check_records, make_image_folder

EDGECLF = [sys.executable, "-m", "edgeclf"]
TRAIN = "{weights: none, alpha: 0.35, img_size: 32, head_epochs: 0, fine_tune_epochs: 1, batch_size: 8, augment: false, seed: 1}"
DEAD = "ssh://127.0.0.1:9"  # the discard port: nothing listens, ssh is refused at once


def run_cli(*args, cwd=None):
    return subprocess.run([*EDGECLF, *map(str, args)], capture_output=True, text=True, timeout=900, cwd=cwd)


def write_project(root: Path, exports: str, devices: str = "[local]", arch: str = "mobilenetv2", extra: str = "") -> Path:
    """A pipeline file of the issue's shape, with folders relative to it."""
    if not (root / "images").is_dir():
        make_image_folder(root / "images" / "train", {"red": 8, "green": 8}, size=32)
        make_image_folder(root / "images" / "test", {"red": 3, "green": 3}, size=32)
    path = root / "pipeline.yaml"
    path.write_text(
        "data: {train: images/train, test: images/test}\n"
        f"train: {TRAIN[:-1]}, arch: {arch}}}\n"
        f"exports:\n{exports}"
        f"devices: {devices}\n"
        "validate: {runs: 3, warmup: 1, threads: 1}\n"
        f"{extra}"
        "out: runs/tiny\n"
    )
    return path


FP32 = "  - {target: tflite, quant: fp32}\n"
INT8 = "  - {target: tflite, quant: int8, calib_size: 8}\n"


def statuses(state: dict) -> dict:
    return {s["name"]: s["status"] for s in state["stages"]}


def load_and_run(path, **kwargs) -> dict:
    from edgeclf.jobs import run as run_job, run_file

    return run_job.run(run_file.load(path), **kwargs)


# ------------------------------------------------------------------------------------------
# Checked before any work: one clear line each
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("change, message", [
    (("img_size: 32", "img_sz: 32"), r"pipeline.yaml line 2: unknown key 'img_sz' in train \(use one of: arch, weights, img_size"),
    (("img_size: 32", "img-size: big"), r"line 2: train.img_size must be an integer or empty, not 'big'"),
    (("[local]", "[local, nowhere]"), r"line 5: devices: unknown device 'nowhere'"),
    (("images/test", "images/gone"), r"line 1: data.test .*images/gone is not a folder"),
    (("quant: fp32", "quant: fp33"), r"line 4: exports: --quant fp33 is not available for tflite"),
    (("runs: 3", "runs: 0"), r"line 6: validate: --runs must be at least 1 and --warmup at least 0"),
    (("target: tflite", "target: onnx"), r"bundle names 'onnx-fp32', which is not a tflite export of this file \(with app code\)"),
])
def test_bad_pipeline_files_fail_with_one_line_before_any_work(tmp_path, change, message):
    path = write_project(tmp_path, FP32, extra="bundle: [onnx-fp32]\n" if "onnx" in change[1] else "")
    path.write_text(path.read_text().replace(*change))
    proc = run_cli("run", path)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert __import__("re").search(message, lines[0]), lines[0]
    assert not (tmp_path / "runs").exists()  # nothing was started


def test_out_folder_not_written_by_edgeclf_is_refused(tmp_path):
    path = write_project(tmp_path, FP32)
    (tmp_path / "runs" / "tiny").mkdir(parents=True)
    (tmp_path / "runs" / "tiny" / "notes.txt").write_text("mine")
    proc = run_cli("run", path, "--dry-run")
    assert proc.returncode != 0 and "did not write" in proc.stderr
    assert (tmp_path / "runs" / "tiny" / "notes.txt").read_text() == "mine"


# ------------------------------------------------------------------------------------------
# One pipeline through its life: run, cached rerun, changed export, interrupted run, --force
# ------------------------------------------------------------------------------------------
def test_pipeline_runs_caches_reruns_only_what_changed_and_resumes(tmp_path, monkeypatch):
    path = write_project(tmp_path, FP32 + INT8)
    out = tmp_path / "runs" / "tiny"
    names = ["train", "export/tflite-fp32", "validate/tflite-fp32@local", "export/tflite-int8",
             "validate/tflite-int8@local", "report", "compare"]

    plan = json.loads(run_cli("run", path, "--dry-run", "--json").stdout)
    assert [(s["name"], s["status"]) for s in plan["stages"]] == [(n, "will run") for n in names]
    assert plan["stages"][0]["why"] == "never ran" and plan["stages"][1]["why"] == "train reruns"

    first = load_and_run(path)
    assert statuses(first) == dict.fromkeys(names, "ran")
    assert json.loads((out / "pipeline.json").read_text()) == json.loads(json.dumps(first))
    assert {"name", "key", "status", "seconds", "output"} <= set(first["stages"][0])
    assert (out / first["stages"][0]["output"] / "model.keras").is_file()
    rows = json.loads((out / "compare" / "compare.json").read_text())["rows"]
    assert [(r["export"], r["device"], r["status"]) for r in rows] == [("tflite-fp32", "local", "ok"), ("tflite-int8", "local", "ok")]
    assert all(r["test_top1"] is not None and r["p50_ms"] > 0 and r["params"] > 0 and r["weights"].startswith("none") for r in rows)
    assert (out / "compare" / "compare.png").stat().st_size > 1000
    assert check_records(out) == {"run", "audit", "manifest", "result", "pipeline"}  # the report shows results, writes no bench.json

    again = run_cli("run", path, "--json")  # a new process: nothing to do, so no model is even loaded
    assert again.returncode == 0, again.stderr
    assert statuses(json.loads(again.stdout)) == dict.fromkeys(names, "cached")
    assert "train: cached" in again.stderr
    assert "all 7 stages cached" in run_cli("run", path).stdout
    page = out / "mobilenetv2" / "report" / "report.html"  # the run's page, with this pipeline's device results
    assert page.is_file() and "tflite-int8" in page.read_text() and "edgeclf run on local" in page.read_text()

    # One export setting changes: only that export and what reads it will run.
    path.write_text(path.read_text().replace("calib_size: 8", "calib_size: 10"))
    plan = {s["name"]: s for s in load_and_run(path, dry_run=True)["stages"]}
    assert {n for n, s in plan.items() if s["status"] == "will run"} == {"export/tflite-int8", "validate/tflite-int8@local", "report", "compare"}
    assert plan["export/tflite-int8"]["why"] == "its settings changed"

    # Interrupted in the middle of that export: nothing half-written, and the rerun resumes there.
    from edgeclf.jobs import run as run_job

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(run_job, "export_run", interrupted)
    with pytest.raises(KeyboardInterrupt):
        load_and_run(path)
    monkeypatch.undo()
    record = {s["name"]: s for s in json.loads((out / "pipeline.json").read_text())["stages"]}["export/tflite-int8"]
    assert record["key"] == first["stages"][3]["key"]  # still the last finished one, so it reruns next time
    resumed = load_and_run(path)
    assert statuses(resumed) == {**dict.fromkeys(names, "cached"), "export/tflite-int8": "ran",
                                 "validate/tflite-int8@local": "ran", "report": "ran", "compare": "ran"}
    manifest = json.loads((out / "mobilenetv2" / "run" / "exports" / "tflite-int8" / "manifest.json").read_text())
    assert manifest["calibration"]["count"] == 10

    forced = {s["name"]: s for s in load_and_run(path, dry_run=True, force="export/tflite-fp32")["stages"]}
    assert {n for n, s in forced.items() if s["status"] == "will run"} == {"export/tflite-fp32", "validate/tflite-fp32@local", "report", "compare"}
    assert forced["export/tflite-fp32"]["why"] == "--force"
    assert "names no stage" in run_cli("run", path, "--force", "bundle").stderr


# ------------------------------------------------------------------------------------------
# Several devices at once
# ------------------------------------------------------------------------------------------
def _devices_file(tmp_path: Path, ssh_device) -> Path:
    path = tmp_path / "devices.yaml"
    path.write_text(
        "targets:\n"
        f"  loop:\n    ssh: {ssh_device.alias}\n    python: {sys.executable}\n    ssh_config: {ssh_device.ssh_config}\n"
        "groups:\n  here: [local, loop]\n"
    )
    return path


def test_parallel_bench_one_table_and_a_dead_device_is_one_failed_row(tiny_run, ssh_device, tmp_path):
    from edgeclf.devices import DeviceOptions
    from edgeclf.jobs.bench import bench
    from edgeclf.jobs.validate import validate_on_devices

    options = DeviceOptions(devices_file=str(_devices_file(tmp_path, ssh_device)), timeout=120)
    summary = bench(tiny_run, [("tflite", "fp32"), ("tflite", "int8")], ["here", DEAD], str(tiny_run.parent / "data"),
                    runs=5, warmup=1, threads=1, options=options, out=str(tmp_path / "bench"))
    rows = {(r["device"], r["format"], r["quant"]): r for r in summary["rows"]}
    assert len(rows) == 6 and [d["name"] for d in summary["devices"]] == ["local", "loop", DEAD]
    for device in ("local", "loop"):
        for quant in ("fp32", "int8"):
            row = rows[(device, "tflite", quant)]
            assert row["status"] == "ok" and row["p50_ms"] > 0 and row["top1"] is not None and row["peak_rss_mb"]
    assert rows[("loop", "tflite", "int8")]["result"]["device"]["kind"] == "ssh"
    for quant in ("fp32", "int8"):
        assert "127.0.0.1:9 is unreachable" in rows[(DEAD, "tflite", quant)]["status"]
    assert summary["devices"][2]["status"].startswith("127.0.0.1:9 is unreachable")
    csv_lines = (tmp_path / "bench" / "bench.csv").read_text().splitlines()
    assert csv_lines[0].startswith("device,format,quant") and len(csv_lines) == 7
    assert check_records(tmp_path / "bench") == {"bench"}

    measured = validate_on_devices(tiny_run / "exports" / "tflite-int8", ["loop", DEAD], None, runs=3, warmup=0,
                                   threads=1, options=options)
    assert [(r["device_name"], r["status"] == "ok") for r in measured["rows"]] == [("loop", True), (DEAD, False)]


def test_local_ssh_and_emulated_pi_side_by_side(tiny_run, ssh_device, pi_device, tmp_path):
    from edgeclf.devices import DeviceOptions
    from edgeclf.jobs.bench import bench

    path = _devices_file(tmp_path, ssh_device)
    path.write_text(path.read_text().replace("groups:", f"  pi:\n    ssh: {pi_device.alias}\n    python: {pi_device.python}\n"
                                             f"    ssh_config: {pi_device.ssh_config}\n    emulated: true\ngroups:"))
    summary = bench(tiny_run, [("tflite", "int8")], ["local", "loop", "pi"], None, runs=3, warmup=1, threads=1,
                    options=DeviceOptions(devices_file=str(path), timeout=300), out=str(tmp_path / "bench"))
    rows = {r["device"]: r for r in summary["rows"]}
    assert all(r["status"] == "ok" for r in rows.values()), rows
    assert rows["pi"]["emulated"] and rows["pi"]["result"]["device"]["arch"] == "aarch64"


# ------------------------------------------------------------------------------------------
# Several backbones: the model-choice table
# ------------------------------------------------------------------------------------------
def test_two_backbones_give_one_row_per_backbone_format_and_device(tmp_path):
    path = write_project(tmp_path, FP32, devices=f"[local, '{DEAD}']", arch="[mobilenetv2, efficientnetb0]")
    state = load_and_run(path)
    by_status = statuses(state)
    assert by_status["train/mobilenetv2"] == by_status["train/efficientnetb0"] == "ran"
    assert by_status["validate/efficientnetb0/tflite-fp32@local"] == "ran"
    assert by_status[f"validate/mobilenetv2/tflite-fp32@{DEAD}"] == "failed"
    assert by_status["compare"] == "ran"
    rows = json.loads((tmp_path / "runs" / "tiny" / "compare" / "compare.json").read_text())["rows"]
    assert [(r["backbone"], r["export"], r["device"]) for r in rows] == [
        (b, "tflite-fp32", d) for b in ("mobilenetv2", "efficientnetb0") for d in ("local", DEAD)]
    ok = {r["backbone"]: r for r in rows if r["device"] == "local"}
    assert all(r["status"] == "ok" and r["test_top1"] is not None and r["p50_ms"] > 0 for r in ok.values())
    assert ok["mobilenetv2"]["weights"] == "none, alpha 0.35" and ok["efficientnetb0"]["weights"] == "none"
    assert ok["efficientnetb0"]["params"] > ok["mobilenetv2"]["params"]
    assert all("unreachable" in r["status"] for r in rows if r["device"] == DEAD)
    assert (tmp_path / "runs" / "tiny" / "compare" / "compare.png").is_file()


def test_interrupted_training_continues_from_its_checkpoint(tmp_path, monkeypatch):
    """A run stopped during training leaves only <run>.partial; the rerun resumes it, not a fresh train."""
    from edgeclf.jobs import run as run_job, run_file
    from edgeclf.jobs import train as training

    pf = run_file.load(write_project(tmp_path, FP32, devices="[]"))
    config = pf.trains[0]
    calls = []

    def stopped(what):
        def call(config_or_out, overwrite):
            calls.append(what if what == "train" else (what, str(config_or_out)))
            raise KeyboardInterrupt  # as if Ctrl-C came during the epochs
        return call

    monkeypatch.setattr(training, "train", stopped("train"))
    with pytest.raises(KeyboardInterrupt):
        run_job.run(pf)
    partial = training.partial_dir(Path(config.out))
    partial.mkdir(parents=True)  # what an interrupted `edgeclf train` leaves: its state after some epochs
    (partial / training.STATE_FILE).write_text(json.dumps({"config": config.to_dict(), "plan": {}, "stage": "scratch", "epoch": 1,
                                                                "history": [], "best": None, "stages_done": [], "timing": {}}))

    monkeypatch.setattr(training, "resume", stopped("resume"))
    with pytest.raises(KeyboardInterrupt):
        run_job.run(run_file.load(pf.path))  # out holds only our pipeline.json and the partial run: still ours
    assert calls == ["train", ("resume", config.out)]

    edited = json.loads((partial / training.STATE_FILE).read_text())
    edited["config"]["seed"] += 1  # a partial run of other settings is not resumed
    (partial / training.STATE_FILE).write_text(json.dumps(edited))
    with pytest.raises(KeyboardInterrupt):
        run_job.run(run_file.load(pf.path))
    assert calls[-1] == "train" and not partial.exists()
