"""`edgeclf report` against hostile and odd inputs (issue 21, items 1, 8 and 13): it writes only a
regular file it may write, reads records of any shape into a page with a problem box, never
opens anything but regular image files under the run's own data folders, and stays bounded
for 2 to 2,000 classes."""
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import make_image_folder
from edgeclf.errors import UsageError
from edgeclf.outputs import BUNDLE


def run_cli(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "edgeclf", *map(str, args)], capture_output=True, text=True, timeout=timeout)


def make_run(root: Path, labels=("cat", "dog"), wrong=()) -> Path:
    """A small run directory with data on disk, as training leaves it (no model needed by the report)."""
    data = make_image_folder(root / "data", {label: 2 for label in labels}, size=8)
    run = root / "run"
    run.mkdir()
    (run / "labels.txt").write_text("".join(f"{label}\n" for label in labels))
    n = len(labels)
    confusion = [[3 if i == j else 1 for j in range(n)] for i in range(n)]
    per_class = {label: {"precision": 0.75, "recall": 0.75, "support": 4} for label in labels}
    (run / "run.json").write_text(json.dumps({
        "format": "edgeclf.run/1", "config": {"arch": "mobilenetv2", "data_dir": str(data)}, "labels": list(labels),
        "versions": {"edgeclf": "test"}, "dataset": {"split": "test", "train": {"n_images": 2 * n, "per_class": {label: 2 for label in labels}, "skipped": []}},
        "history": [{"stage": "fine-tune", "loss": 1.0, "val_loss": 0.9, "accuracy": 0.5, "val_accuracy": 0.6}],
        "timing": {"train_s": 1.0}, "input": {"shape": [1, 8, 8, 3]},
        "metrics": {"val": {"n_images": 4 * n, "top1": 0.75, "top5": 1.0, "per_class": per_class, "confusion": confusion,
                            "wrong": [{"path": str(p), "true": labels[0], "predicted": labels[1], "confidence": 0.9} for p in wrong]}},
    }))
    (run / "split.json").write_text(json.dumps({"how": "test", "classes": list(labels), "splits": {
        "train": {"root": str(data), "files": [[f"{label}/{label}_000.png", i] for i, label in enumerate(labels)]}}}))
    return run


# -- item 1: the page goes only where a regular file of ours may be replaced -----------------
def test_report_never_replaces_a_fifo_a_device_or_a_link(tmp_path):
    from edgeclf.report import write_report

    run = make_run(tmp_path)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    link = tmp_path / "link.html"
    link.symlink_to(tmp_path / "elsewhere.html")
    targets = [(fifo, "is a FIFO"), (link, "is a symbolic link")]
    if os.geteuid() == 0:
        device = tmp_path / "mynull"
        os.mknod(device, 0o666 | 0o020000, os.makedev(1, 3))  # a character device, like /dev/null
        targets.append((device, "is a device"))
    for target, message in targets:
        with pytest.raises(UsageError, match=message):
            write_report(run, target, overwrite=True)
    assert fifo.is_fifo() and link.is_symlink() and not (tmp_path / "elsewhere.html").exists()
    if os.geteuid() == 0:
        assert device.is_char_device()


def test_report_to_dev_stdout_is_a_plain_refusal(tmp_path):
    proc = run_cli("report", make_run(tmp_path), "--out", "/dev/stdout")
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and len(lines) == 1 and lines[0].startswith("error: /dev/stdout is a symbolic link"), proc.stderr
    assert proc.stdout == ""


def test_report_is_not_written_into_the_runs_images(tmp_path):
    from edgeclf.report import write_report

    run = make_run(tmp_path)
    with pytest.raises(UsageError, match="inside the input folder"):
        write_report(run, tmp_path / "data" / "cat" / "report.html")
    assert sorted(p.name for p in (tmp_path / "data" / "cat").iterdir()) == ["cat_000.png", "cat_001.png"]


# -- item 8: a bundle beside an artefact is not a second artefact ---------------------------
def test_report_does_not_list_a_bundle_as_an_artefact(tmp_path):
    from edgeclf.report.gather import gather

    run = make_run(tmp_path)
    manifest = {"format": "edgeclf.manifest/1", "target": "tflite", "quant": "int8"}
    for name in ("tflite-int8", "tflite-int8-bundle"):
        (run / "exports" / name).mkdir(parents=True)
        (run / "exports" / name / "manifest.json").write_text(json.dumps(manifest))
    (run / "exports" / "tflite-int8-bundle" / "bundle.json").write_text(json.dumps(BUNDLE.stamp()))
    assert [e["name"] for e in gather(run).exports] == ["tflite-int8"]


# -- item 13: records of the wrong shape ----------------------------------------------------
def _set(record: dict, dotted: str, value) -> dict:
    record = copy.deepcopy(record)
    *path, last = dotted.split(".")
    target = record
    for key in path:
        target = target[int(key) if isinstance(target, list) else key]
    target[int(last) if isinstance(target, list) else last] = value
    return record


RUN_MUTATIONS = [
    ("config", []), ("metrics", []), ("metrics.val", "x"), ("metrics.val.per_class", [1]), ("metrics.val.per_class.cat", 5),
    ("metrics.val.top1", "high"), ("metrics.val.wrong", "abc"), ("metrics.val.wrong", [{"path": 5, "confidence": "x"}]),
    ("metrics.val.confusion", "x"), ("metrics.val.confusion", [[1, "a"], [2]]), ("history", {"a": 1}), ("history", [1, 2]),
    ("history", [{"val_loss": "x", "stage": "s"}]), ("timing", {"train_s": "slow"}), ("dataset", {"train": {"per_class": [1], "skipped": "x"}}),
    ("dataset.train.skipped", [5]), ("optimization", {"prune": [], "source_metrics": [1]}), ("input", "x"), ("labels", "ab"),
]
MANIFEST = {"format": "edgeclf.manifest/1", "target": "tflite", "quant": "int8", "io": "uint8", "model_file": "model.tflite",
            "files": {"model.tflite": {"bytes": 10, "gzip_bytes": 5, "sha256": "0"}},
            "input": {"dtype": "uint8", "shape": [1, 8, 8, 3], "quantization": {"scale": 1.0, "zero_point": 0}}, "output": {},
            "accuracy": {"split": "val", "top1": 0.7, "float_top1": 0.75, "agreement": 0.9, "n_images": 8, "confusion": [[3, 1], [1, 3]]},
            "calibration": {"count": 4, "source": "x", "seed": 1, "sample_hash": "ab"}, "versions": {}, "conversion_s": 1.0}
MANIFEST_MUTATIONS = [("accuracy", []), ("files", {"model.tflite": {"bytes": "big"}}), ("files", [1]), ("input", []),
                      ("input.quantization", "x"), ("calibration", "x"), ("accuracy.agreement", "x"), ("accuracy.confusion", "x"),
                      ("accuracy.split", ["val"]), ("conversion_s", "slow")]
BENCH = {"format": "edgeclf.bench/1", "device": {"name": "pi", "kind": "ssh"}, "rows": [
    {"format": "tflite", "quant": "int8", "status": "ok", "size_mb": 1.0, "speedup": 1.0,
     "result": {"latency_ms": {"min": 1.0, "p50": 2.0, "p90": 3.0, "p99": 4.0}, "accuracy": {"top1": 0.7, "agreement": 0.9}}}]}
BENCH_MUTATIONS = [("rows", {}), ("rows", [1, "x"]), ("device", "pi"), ("rows.0.result", []), ("rows.0.result.latency_ms", []),
                   ("rows.0.result.latency_ms.p50", "fast"), ("rows.0.result.accuracy.top1", "x"), ("rows.0.speedup", "x"),
                   ("rows.0.size_mb", "big"), ("rows.0.result.device", "x")]


def _rounds(cases: list) -> list[list]:
    """Mutations grouped so that none in a round touches another's key in the same file (one page per round)."""
    rounds: list[list] = []
    for case in cases:
        name, (key, _) = case[0], case[2]
        parts = key.split(".")
        for group in rounds:
            clash = any(n == name and (k.split(".")[:len(parts)] == parts or parts[:len(k.split("."))] == k.split("."))
                        for n, _, (k, _) in group)
            if not clash:
                group.append(case)
                break
        else:
            rounds.append([case])
    return rounds


def test_records_of_the_wrong_shape_give_a_problem_box_and_a_page(tmp_path):
    import re

    from edgeclf.report import write_report

    run = make_run(tmp_path)
    files = {"run.json": (run / "run.json", json.loads((run / "run.json").read_text())),
             "exports/tflite-int8/manifest.json": (run / "exports" / "tflite-int8" / "manifest.json", MANIFEST),
             "pi/bench.json": (run / "bench" / "pi" / "bench.json", BENCH)}
    for path, _ in files.values():
        path.parent.mkdir(parents=True, exist_ok=True)
    cases = ([("run.json", None, m) for m in RUN_MUTATIONS]
             + [("exports/tflite-int8/manifest.json", None, m) for m in MANIFEST_MUTATIONS]
             + [("pi/bench.json", None, m) for m in BENCH_MUTATIONS])
    failures = []
    for number, group in enumerate(_rounds(cases)):
        records = {name: record for name, (_, record) in files.items()}
        for name, _, (key, value) in group:
            records[name] = _set(records[name], key, value)
        for name, (path, _) in files.items():
            path.write_text(json.dumps(records[name]))
        moved = any(key == "labels" for _, _, (key, _) in group)
        if moved:
            (run / "labels.txt").rename(run / "labels.moved")
        out = tmp_path / f"page-{number}.html"
        try:
            written = write_report(run, out, overwrite=True)
        except Exception as exc:  # the point: none may escape
            failures.append(f"round {number} {[c[2] for c in group]}: {type(exc).__name__}: {exc}")
            continue
        finally:
            if moved:
                (run / "labels.moved").rename(run / "labels.txt")
        page, problems = out.read_text(), "\n".join(written["problems"])
        assert "What this page could not read" in page and page.rstrip().endswith("</html>")
        for name, _, (key, value) in group:
            if not re.search(re.escape(f"{name}: {key}") + r"[. ]", problems):
                failures.append(f"{name} {key}={value!r}: not named (problems: {problems})")
    assert not failures, "\n".join(failures)


def test_a_fifo_named_as_a_wrong_image_does_not_hang_the_report(tmp_path):
    fifo = tmp_path / "data" / "cat" / "trap.png"
    fifo.parent.mkdir(parents=True)
    os.mkfifo(fifo)
    run = make_run(tmp_path, wrong=[fifo])
    proc = run_cli("report", run, "--json", timeout=90)
    assert proc.returncode == 0, proc.stderr
    assert "(image not available)" in (run / "report.html").read_text()


def test_only_regular_images_under_the_runs_data_folders_are_embedded(tmp_path):
    from edgeclf.report.figures import thumbnail
    from edgeclf.report.gather import gather, sample_images
    from edgeclf.report import write_report

    from PIL import Image

    private = tmp_path / "my-photos" / "holiday" / "holiday_000.png"
    private.parent.mkdir(parents=True)
    Image.new("RGB", (8, 8), (7, 77, 177)).save(private)  # unlike any image of the run
    inside = tmp_path / "data" / "cat" / "cat_001.png"
    escape = tmp_path / "data" / "cat" / "escape.png"
    run = make_run(tmp_path, wrong=[private, inside, escape])
    escape.symlink_to(private)  # a link inside the data folder that points out of it
    plan = json.loads((run / "split.json").read_text())
    plan["splits"]["train"]["files"].append(["../my-photos/holiday/holiday_000.png", 0])
    (run / "split.json").write_text(json.dumps(plan))
    report = gather(run)
    assert report.embeddable(private) is None and report.embeddable(escape) is None
    assert report.embeddable(inside) == inside.resolve()
    assert private not in sample_images(report)["cat"]
    page = write_report(run, tmp_path / "page.html")
    text = (tmp_path / "page.html").read_text()
    assert thumbnail(private) not in text and thumbnail(inside) in text
    assert text.count("(image not available)") == 2 and page["problems"] == []


def test_a_class_named_with_a_dot_keeps_its_float_recall():
    from edgeclf.report.gather import Report, _quant_cost

    report = Report(Path("."), {"metrics": {"val": {"per_class": {"a.b": {"recall": 0.5}, "c": {"recall": 1.0}}}}}, ["a.b", "c"], None)
    rows = _quant_cost({"split": "val", "confusion": [[1, 1], [0, 2]]}, report)
    assert [(r["class"], r["float_recall"], r["delta"]) for r in rows] == [("a.b", 0.5, 0.0), ("c", 1.0, 0.0)]


def test_2000_classes_in_bounded_memory_and_time(tmp_path):
    """A synthetic run (no model: the report reads records) with 2,000 classes and an artefact."""
    import numpy as np

    n = 2000
    labels = [f"class{i:04d}" for i in range(n)]
    run = tmp_path / "run"
    (run / "exports" / "tflite-int8").mkdir(parents=True)
    (run / "labels.txt").write_text("".join(f"{label}\n" for label in labels))
    confusion = (np.eye(n, dtype=int) * 3 + np.roll(np.eye(n, dtype=int), 1, axis=1)).tolist()
    per_class = {label: {"precision": 0.75, "recall": 0.75, "support": 4} for label in labels}
    (run / "run.json").write_text(json.dumps({
        "format": "edgeclf.run/1", "config": {"arch": "mobilenetv2", "data_dir": str(tmp_path / "data")}, "labels": labels,
        "dataset": {"split": "test", "train": {"n_images": 4 * n, "per_class": dict.fromkeys(labels, 4), "skipped": []}},
        "metrics": {"val": {"n_images": 4 * n, "top1": 0.75, "per_class": per_class, "confusion": confusion, "wrong": []}}}))
    (run / "exports" / "tflite-int8" / "manifest.json").write_text(json.dumps(MANIFEST | {"accuracy": MANIFEST["accuracy"] | {"confusion": confusion}}))
    # The child's peak is VmHWM of its own memory: ru_maxrss survives exec on Linux, so a child started
    # from a pytest worker that has loaded TensorFlow would report the worker's peak.
    code = ("import re, sys, time; from edgeclf.report import write_report; t = time.perf_counter(); "
            "w = write_report(sys.argv[1]); "
            "hwm = int(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read())[1]); "
            "print(time.perf_counter() - t, hwm / 1024, w['bytes'], w['problems'])")
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code, str(run)], capture_output=True, text=True, timeout=300)
    seconds = time.perf_counter() - started
    assert proc.returncode == 0, proc.stderr
    peak_mb = float(proc.stdout.split()[1])
    page = (run / "report.html").read_text()
    assert page.count("<tr>") > 2 * n  # every class is in the tables
    assert "could not be drawn" not in page and seconds < 120 and peak_mb < 1500, (seconds, peak_mb, proc.stdout)
    print(f"2000 classes: {proc.stdout.strip()} (wall {seconds:.1f} s, peak RSS {peak_mb:.0f} MB)")
