"""`edgeclf report`: the page opened in a real headless Chromium, and the inputs it must survive."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import make_image_folder

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
HOSTILE = '<img src=x onerror="alert(1)">'


def pct(value) -> str:
    return f"{100 * value:.1f}%"


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "edgeclf", *map(str, args)], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def chromium():
    """A headless Chromium through Playwright; a skip where it is absent, a failure in CI."""
    reason = None
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        reason = "playwright is not installed (pip install -e '.[dev]')"
    if reason is None and not CHROMIUM.is_file():
        reason = f"{CHROMIUM} is absent (bash .ci/system-packages.sh installs Debian's chromium)"
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the browser test: {reason}")
        pytest.skip(reason)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def open_page(browser, path: Path, screenshot: Path | None = None) -> dict:
    """Load a report from file://; return its text, console errors, requests and image sizes."""
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    errors, requests, dialogs = [], [], []
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("request", lambda request: requests.append(request.url))
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    page.goto(path.as_uri(), wait_until="load")
    images = page.evaluate("Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth])")
    text = page.inner_text("body")
    if screenshot is not None:
        page.screenshot(path=str(screenshot), full_page=True)
    seen = {"text": text, "errors": errors, "requests": requests, "images": images, "dialogs": dialogs, "page": page}
    return seen


def assert_page_is_self_contained(seen: dict) -> None:
    assert seen["errors"] == [] and seen["dialogs"] == []
    outside = [url for url in seen["requests"] if not url.startswith(("file://", "data:"))]
    assert outside == [], outside
    broken = [alt for alt, complete, width in seen["images"] if not (complete and width > 0)]
    assert broken == [], broken


# -- a real run: tiny model, an int8 export and a local bench with one failing format -----
@pytest.fixture(scope="module")
def benched_run(tiny_run, tiny_int8, tmp_path_factory) -> Path:
    from edgeclf.jobs.bench import bench

    run = tmp_path_factory.mktemp("report") / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("exports", "bench", "report.html"))
    shutil.copytree(tiny_int8, run / "exports" / "tflite-int8")
    summary = bench(run, [("tflite", "int8"), ("coreml", "fp32")], "local", str(tiny_run.parent / "data"),
                    runs=5, warmup=1, threads=1)
    assert summary["report"] == str(run / "report.html") and Path(summary["report"]).is_file()
    return run


def test_report_in_headless_chromium(benched_run, chromium, tmp_path):
    info = json.loads((benched_run / "run.json").read_text())
    manifest = json.loads((benched_run / "exports" / "tflite-int8" / "manifest.json").read_text())
    bench_json = json.loads(next((benched_run / "bench").glob("*/bench.json")).read_text())
    p50 = bench_json["rows"][0]["result"]["latency_ms"]["p50"]
    proc = run_cli("report", benched_run, "--out", tmp_path / "page.html")
    assert proc.returncode == 0, proc.stderr
    assert "report: " in proc.stdout

    seen = open_page(chromium, tmp_path / "page.html", tmp_path / "report.png")
    assert_page_is_self_contained(seen)
    assert len(seen["images"]) >= 8  # charts plus sample and mistake thumbnails
    text = seen["text"]
    assert f"{pct(info['metrics']['val']['top1'])}\nval top-1" in text
    assert pct(manifest["accuracy"]["agreement"]) in text and pct(manifest["accuracy"]["top1"]) in text
    assert f"{p50:.2f}" in text
    assert "coreml:fp32 did not run" in text
    assert "Best epoch" in text and "Images the model gets wrong" in text
    screenshot = (tmp_path / "report.png").read_bytes()
    assert screenshot[:8] == b"\x89PNG\r\n\x1a\n" and len(screenshot) > 20_000

    # Clicking a header sorts its table (descending on the second click).
    page = seen["page"]
    header = page.locator("#results table").nth(1).locator("th", has_text="class")
    header.click()
    header.click()
    first = page.locator("#results table").nth(1).locator("tbody tr td").first.inner_text()
    assert first == sorted(info["labels"])[-1]


# -- inputs the page must survive ---------------------------------------------------------
def old_run(root: Path, labels=("cat", "dog")) -> Path:
    """A run directory as an older edgeclf left it: no history, no split.json, no recorded mistakes."""
    run = root / "old-run"
    run.mkdir()
    (run / "labels.txt").write_text("".join(f"{label}\n" for label in labels))
    confusion = [[3 if i == j else 1 for j in range(len(labels))] for i in range(len(labels))]
    per_class = {label: {"precision": 0.75, "recall": 0.75, "support": 4} for label in labels}
    (run / "run.json").write_text(json.dumps({
        "config": {"arch": "mobilenetv2", "data_dir": "/data/pets"},
        "labels": list(labels),
        "metrics": {"val": {"n_images": 8, "top1": 0.8125, "per_class": per_class, "confusion": confusion}},
    }))
    return run


def test_an_older_run_with_a_broken_manifest_and_a_failed_device_still_renders(tmp_path, chromium):
    run = old_run(tmp_path, labels=("cat", HOSTILE))
    (run / "exports" / "tflite-int8").mkdir(parents=True)
    (run / "exports" / "tflite-int8" / "manifest.json").write_text(json.dumps({"target": "tflite", "quant": "int8"}))
    (run / "exports" / "onnx-fp32").mkdir()
    (run / "exports" / "onnx-fp32" / "manifest.json").write_text("{not json")
    (run / "bench" / "pi-1").mkdir(parents=True)
    (run / "bench" / "pi-1" / "bench.json").write_text(json.dumps({
        "device": {"name": "ssh://pi"}, "rows": [{"format": "tflite", "quant": "int8", "status": "ssh://pi is unreachable"}]}))

    proc = run_cli("report", run, "--json")
    assert proc.returncode == 0, proc.stderr
    written = json.loads(proc.stdout)
    problems = "\n".join(written["problems"])
    assert "run.json has no versions, dataset, history, timing, input" in problems
    assert "split.json is missing" in problems
    assert "tflite-int8/manifest.json has no io, model_file" in problems
    assert "onnx-fp32/manifest.json is not valid JSON" in problems

    page = (run / "report.html").read_text()
    assert HOSTILE not in page and "&lt;img src=x onerror=" in page
    seen = open_page(chromium, run / "report.html")
    assert_page_is_self_contained(seen)
    text = seen["text"]
    assert "What this page could not read" in text
    assert "81.2%" in text and HOSTILE in text  # the class name shows as text, not as markup
    assert "made by an older edgeclf" in text
    assert "tflite:int8 did not run: ssh://pi is unreachable" in text
    assert "no device measured any latency" in text


def test_a_run_without_exports_or_bench_gets_a_page_that_says_so(tmp_path):
    from edgeclf.report import write_report

    run = old_run(tmp_path)
    data = make_image_folder(tmp_path / "data", {"cat": 2, "dog": 2}, size=8)
    (run / "split.json").write_text(json.dumps({"how": "test", "classes": ["cat", "dog"], "splits": {
        "train": {"root": str(data), "files": [["cat/cat_000.png", 0], ["dog/dog_001.png", 1], ["dog/gone.png", 1]]}}}))
    written = write_report(run, tmp_path / "out.html")
    page = (tmp_path / "out.html").read_text()
    assert written["bytes"] == len(page) and written["artefacts"] == [] and written["benches"] == []
    assert "no artefacts under exports/ yet" in page and "no bench results under bench/ yet" in page
    assert page.count('class="thumb"') == 2  # the two sample images on disk, not the missing one
    assert "http://" not in page and "https://" not in page


def test_bad_input_is_one_line(tmp_path):
    not_a_run = make_image_folder(tmp_path / "images", {"a": 1, "b": 1}, size=8)
    for args, pattern in (
        ((not_a_run,), "is not an edgeclf run (no run.json)"),
        ((tmp_path / "missing",), "does not exist"),
        ((old_run(tmp_path), "--out", tmp_path), "is a directory"),
    ):
        proc = run_cli("report", *args)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode != 0 and len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
        assert pattern in lines[0]
    (tmp_path / "bad-run").mkdir()
    (tmp_path / "bad-run" / "run.json").write_text("{")
    proc = run_cli("report", tmp_path / "bad-run")
    assert proc.returncode != 0 and proc.stderr.startswith("error: ") and "not valid JSON" in proc.stderr
    assert not (tmp_path / "bad-run" / "report.html").exists()


def test_report_never_replaces_a_file_it_did_not_write(tmp_path):
    run = old_run(tmp_path)
    notes = tmp_path / "notes.html"
    notes.write_text("<html>my notes</html>")
    proc = run_cli("report", run, "--out", notes)
    assert proc.returncode != 0 and "is not an edgeclf report" in proc.stderr
    assert notes.read_text() == "<html>my notes</html>"
    ours = tmp_path / "ours.html"
    assert run_cli("report", run, "--out", ours).returncode == 0
    proc = run_cli("report", run, "--out", ours)
    assert proc.returncode != 0 and "already exists" in proc.stderr and "--overwrite" in proc.stderr
    assert run_cli("report", run, "--out", ours, "--overwrite").returncode == 0  # its own page, when asked
    assert run_cli("report", run).returncode == 0 and run_cli("report", run).returncode == 0  # the default place: its own


def test_runs_record_the_images_they_get_wrong():
    import numpy as np

    from edgeclf.pipeline.metrics import wrong_predictions

    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    wrong = wrong_predictions(probs, np.array([0, 0, 1, 1]), ["a.png", "b.png", "c.png", "d.png"], ["x", "y"])
    assert wrong == [
        {"path": "b.png", "true": "x", "predicted": "y", "confidence": 0.8},
        {"path": "c.png", "true": "y", "predicted": "x", "confidence": 0.6},
    ]
