"""Outputs never destroy what edgeclf did not write, never land inside their own inputs, and an
interrupted command leaves nothing that looks valid and nothing stuck (issue 10, items 1, 4, 5, 10)."""
from __future__ import annotations

import fcntl
import json
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


# -- issue 21: one output rule for every command (items 4, 5, 8, 17 and the mechanism) -----

def write_pipeline(root: Path, out: str, extra: str = "") -> Path:
    make_image_folder(root / "data" / "train", {"red": 4, "green": 4}, size=16)
    make_image_folder(root / "data" / "test", {"red": 2, "green": 2}, size=16)
    make_image_folder(root / "calib", {"red": 2, "green": 2}, size=16)
    path = root / "pipeline.yaml"
    path.write_text("data: {train: data/train, test: data/test}\n"
                    "train: {weights: none, alpha: 0.35, img_size: 32, head_epochs: 0, fine_tune_epochs: 1}\n"
                    "exports: [{target: tflite, quant: int8, calib_dir: calib}]\n"
                    f"devices: [local]\n{extra}out: {out}\n")
    return path


def tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.mark.parametrize("out", ["data/train/runs", "data/test/red/runs", "calib/runs", "data", "valdata/x"])
def test_run_refuses_out_in_or_around_any_input_before_writing_anything(tmp_path, out):
    path = write_pipeline(tmp_path, out, extra="validate: {data: valdata}\n")
    make_image_folder(tmp_path / "valdata", {"red": 1, "green": 1}, size=16)
    before = tree(tmp_path)
    for dry_run in ([], ["--dry-run"]):
        assert_refused(invoke("run", path, *dry_run), r"input")
        assert tree(tmp_path) == before  # no pipeline.json, no compare/ in the training data


def test_run_writes_no_comparison_when_every_stage_failed(tmp_path):
    from edgeclf.jobs import run as run_job, run_file
    from edgeclf.outputs import PIPELINE

    path = write_pipeline(tmp_path, "runs")
    (tmp_path / "runs" / "mobilenetv2").mkdir(parents=True)
    (tmp_path / "runs" / "pipeline.json").write_text(json.dumps(PIPELINE.stamp() | {"stages": []}))
    victim(tmp_path / "runs" / "mobilenetv2" / "run")  # train fails at once: not a run folder
    state = run_job.run(run_file.load(path))
    assert {s["name"]: s["status"] for s in state["stages"]}["compare"] == "skipped"
    assert not (tmp_path / "runs" / "compare").exists() and not (tmp_path / "runs" / "mobilenetv2" / "report").exists()


def test_a_foreign_pipeline_json_does_not_make_a_folder_ours(tmp_path):
    infra = tmp_path / "infra"
    infra.mkdir()
    aws = '{"pipeline": {"name": "deploy", "roleArn": "arn:aws:iam::1:role/x", "stages": []}}'
    (infra / "pipeline.json").write_text(aws)
    path = write_pipeline(tmp_path, "infra")
    assert_refused(invoke("run", path), r"did not write")
    assert (infra / "pipeline.json").read_text() == aws and tree(infra) == ["pipeline.json"]


@pytest.mark.parametrize("marker", ["run.json", "manifest.json", "bench.json", "bundle.json", "pipeline.json",
                                    "compare.json", "result.json", ".edgeclf-demo"])
def test_only_a_marker_edgeclf_wrote_makes_a_folder_replaceable(tmp_path, marker):
    from edgeclf.errors import UsageError
    from edgeclf.outputs import KINDS, check_replaceable

    kind = KINDS[marker]
    folder = victim(tmp_path / "out")
    for placeholder in ("", "{}", '{"format": 1}', '{"format": "someone.else/1"}', "[1]", "written by me\n"):
        (folder / marker).write_text(placeholder)
        with pytest.raises(UsageError, match="not an edgeclf"):
            check_replaceable(folder, marker, overwrite=True)
    (folder / marker).unlink()
    (folder / marker).symlink_to(tmp_path / "elsewhere")
    with pytest.raises(UsageError, match="not an edgeclf"):
        check_replaceable(folder, marker, overwrite=True)
    (folder / marker).unlink()
    (folder / marker).write_text(kind.tag + "\n" if kind.tag else json.dumps(kind.stamp()))
    check_replaceable(folder, marker, overwrite=True)  # ours: replaceable when asked
    with pytest.raises(UsageError, match="already exists"):
        check_replaceable(folder, marker, overwrite=False)


def test_export_does_not_replace_a_folder_with_an_empty_manifest(tiny_run, tmp_path):
    target = victim(tmp_path / "victim")
    (target / "manifest.json").write_text("")
    assert_refused(invoke("export", tiny_run, "--out", target, "--overwrite"), r"not an edgeclf artefact")
    assert (target / "precious" / "thesis.txt").read_text() == "x"


def test_bundle_is_refused_over_placeholders_and_inside_the_runs_images(tiny_run, tiny_int8, tmp_path):
    from edgeclf.bundle.builder import build_bundle
    from edgeclf.errors import UsageError
    from edgeclf.pipeline.runs import Run

    placeholder = victim(tmp_path / "placeholder")
    (placeholder / "bundle.json").write_text("")
    (placeholder / "SHA256SUMS").write_text("")
    with pytest.raises(UsageError, match="not an edgeclf bundle"):
        build_bundle(tiny_int8, placeholder, count=3, overwrite=True)
    assert (placeholder / "precious" / "thesis.txt").exists()
    train_root = Run.open(tiny_run).plan.roots["train"]
    before = tree(train_root)
    for out in (train_root / "red" / "bundle", train_root / "red" / "bundle.zip"):
        with pytest.raises(UsageError, match="inside the input folder"):
            build_bundle(tiny_int8, out, count=3)
    assert tree(train_root) == before


def test_budget_never_deletes_a_users_file_named_like_its_report(tiny_run, tmp_path, monkeypatch):
    from edgeclf.errors import UsageError
    from edgeclf.exporters.spec import ExportSpec
    from edgeclf.jobs import budget as budget_job
    from edgeclf.jobs.budget import BudgetSpec, export_within_budget
    from edgeclf.outputs import BUDGET_REPORT

    def export_run(run_dir, spec, **kwargs):  # a stand-in export that fits: this test is about the report file
        Path(spec.out).mkdir(parents=True)
        (Path(spec.out) / "model.tflite").write_bytes(b"stand-in")
        return {"export": {}, "accuracy": {"top1": 0.9, "drop": 0.0, "agreement": 1.0, "changed": 0}}

    monkeypatch.setattr(budget_job, "export_run", export_run)
    out = tmp_path / "tflite-int8"
    report = tmp_path / "tflite-int8.budget-report.json"
    report.write_text('{"my": "notes"}')
    spec = BudgetSpec(ExportSpec(quant="int8", out=str(out)), max_drop=1)
    with pytest.raises(UsageError, match="not an edgeclf budget report"):
        export_within_budget(tiny_run, spec)
    assert report.read_text() == '{"my": "notes"}' and not out.exists()
    report.write_text(json.dumps(BUDGET_REPORT.stamp() | {"budget": {"published": False}}))  # an earlier failure of ours
    export_within_budget(tiny_run, spec)
    assert (out / "manifest.json").is_file() and not report.exists()


@pytest.mark.parametrize("command", [
    ["bench", "{run}", "--formats", "tflite:fp32"], ["report", "{run}"], ["bundle", "{int8}"],
    ["train", "{data}", "--weights", "none", "--img-size", "32"], ["optimize", "{run}", "--prune", "0.5"],
    ["export", "{run}"], ["export", "{run}", "--quant", "int8", "--max-drop", "1"],
    ["audit", "{data}", "--embeddings", "off"]])
def test_no_command_writes_over_a_fifo_or_a_link(tiny_run, tiny_int8, image_folder, tmp_path, command):
    args = [a.format(data=image_folder, run=tiny_run, int8=tiny_int8) for a in command]
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    for target, message in ((fifo, "is a FIFO"), (link, "is a symbolic link")):
        assert_refused(invoke(*args, "--out", target, "--overwrite"), message)
    assert fifo.is_fifo() and link.is_symlink() and not (tmp_path / "elsewhere").exists()


def test_check_bundle_extracts_only_regular_files_and_folders(tmp_path):
    import zipfile

    from edgeclf.bundle import BundleError
    from edgeclf.bundle.check import check_bundle

    archive = tmp_path / "b.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("b/bundle.json", "{}")
        link = zipfile.ZipInfo("b/model.tflite")
        link.external_attr = 0o120777 << 16  # a symbolic link member, pointing out of the bundle
        z.writestr(link, "/etc/passwd")
    with pytest.raises(BundleError, match="'b/model.tflite', which is a link or special file"):
        check_bundle(archive)
