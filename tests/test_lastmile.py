"""App mistakes (lastmile/): the sensitivity table measured on a real artefact."""
from __future__ import annotations

import html
import json
import shutil
from pathlib import Path

import numpy as np

from edgeclf.lastmile import mistakes, sensitivity
from edgeclf.pipeline.images import load_image
from edgeclf.pipeline.runs import Run


def test_mistakes_read_the_file_as_an_app_would(tiny_run):
    run = Run.open(tiny_run)
    path = run.plan.samples["val"][0].path
    found = {m.name: m for m in mistakes.mistakes(run.resize)}
    assert "resize pil-bilinear" not in found and "resize android" in found
    ref = load_image(path, 32)
    assert np.array_equal(found["bgr"].read(path, 32, run.resize), ref[..., ::-1])
    assert np.allclose(found["float-minus1-1"].read(path, 32, run.resize), ref / 127.5 - 1, atol=1e-6)
    truncated = found["truncation"].read(path, 32, run.resize).astype(int)
    assert set(np.unique(truncated - ref)) <= {-1, 0} and (truncated - ref).mean() < -0.2
    assert not np.array_equal(found["resize android"].read(path, 32, run.resize), ref)


def test_sensitivity_table_in_the_manifest(tiny_run, tmp_path):
    from edgeclf.exporters.spec import ExportSpec
    from edgeclf.jobs.export import export_run

    run = tmp_path / "run"  # a copy, so the report sees this export and the shared run stays as it is
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("exports"))
    artefact = run / "exports" / "tflite-int8"
    manifest = export_run(run, ExportSpec(quant="int8", calib_size=30, out=str(artefact), last_mile=True))
    table = json.loads((artefact / "manifest.json").read_text())["last_mile"]
    assert table == json.loads(json.dumps(manifest["last_mile"]))
    rows = {r["name"]: r for r in table["rows"]}
    assert table["split"] == "val" and table["training_kernel"] == "pil-bilinear"
    training = rows["training"]
    assert training["float_agreement"] == 1.0 and training["drop"] == 0
    assert rows["float-minus1-1"]["top1"] is None and "uint8" in rows["float-minus1-1"]["note"]
    assert rows["float-minus1-1"]["float_top1"] is not None
    for name in ("resize android", "resize opencv-area", "resize tf-bilinear", "centre-crop", "bgr", "exif-ignored", "truncation"):
        assert 0 <= rows[name]["top1"] <= 1 and rows[name]["drop_ci95"] is not None, name
    # BGR swaps the synthetic classes' dominant colours: the artefact must notice.
    assert rows["bgr"]["agreement"] < 0.9 and not rows["bgr"]["within_noise"]
    assert any("Largest drop" in line or "beyond noise" in line for line in table["recommendation"])
    assert len(sensitivity.markdown(table)) > len(table["rows"])

    from edgeclf.report.gather import gather
    from edgeclf.report.render import render

    page = render(gather(run))
    section = page[page.index("App mistakes and resize sensitivity"):]
    assert "tflite-int8: val split, 15 images, trained with pil-bilinear" in section
    assert "resize android" in section and html.escape(table["recommendation"][-1]) in section


def test_recommendation_does_not_call_a_gain_the_largest_drop():
    """pets3 at 160 px: every resizer within noise, most of them a gain of one image. The old
    recommendation named pil-bicubic's 0.0 the "largest drop"."""
    def row(name, kind, drop, agreement, noise=True):
        return {"name": name, "kind": kind, "drop": drop, "agreement": agreement, "within_noise": noise}

    table = {"training_kernel": "pil-bilinear", "rows": [
        row("training", "training", 0.0, 1.0), row("resize pil-bicubic", "resize", 0.0, 1.0),
        row("resize android", "resize", -0.009, 0.991), row("letterbox", "aspect", -0.027, 0.973)]}
    last = sensitivity.recommendation(table)[-1]
    assert "Largest drop" not in last and "letterbox (agreement 97.3%" in last, last
    table["rows"].append(row("resize nearest", "resize", 0.05, 0.9, noise=False))
    assert sensitivity.recommendation(table)[-1].startswith("Largest drop among the resizers: resize nearest (5.0 points")


def test_other_real_decoders_measure_the_tolerance_on_jpeg_only(tmp_path):
    """A portrait JPEG (stored sideways, EXIF orientation 6): every other decoder's pixels are turned
    upright before they are compared, the ones with libjpeg's defaults land exactly on Pillow's, and
    the fast IDCT does not; a PNG decodes alike everywhere, so nothing is measured."""
    from PIL import Image

    from conftest import synthetic_image
    from edgeclf.bundle.raw import decoded_elsewhere, level_difference

    exif = Image.Exif()
    exif[0x0112] = 6
    synthetic_image(1, 2, 96).resize((120, 90)).save(tmp_path / "portrait.jpg", quality=85, exif=exif)
    data = (tmp_path / "portrait.jpg").read_bytes()
    expected = load_image(tmp_path / "portrait.jpg", 32)
    found = {name.split(" ")[0] + (" ifast" if "IFAST" in name else " plain" if "fancy" in name else ""):
             level_difference(pixels, expected) for name, pixels in decoded_elsewhere(data, 32, "pil-bilinear").items()}
    assert set(found) == {"opencv", "skia", "libjpeg ifast", "libjpeg plain"}, found
    assert found["opencv"]["max"] <= 1 and found["skia"]["max"] <= 1, found  # upright, same IDCT: no difference
    assert found["libjpeg ifast"]["mean"] > 0 and found["libjpeg ifast"]["max"] < 40, found
    synthetic_image(1, 2, 96).save(tmp_path / "lossless.png")
    assert decoded_elsewhere((tmp_path / "lossless.png").read_bytes(), 32, "pil-bilinear") == {}



def test_raw_golden_images_are_each_classes_largest_photos(tmp_path):
    """On pets3 the first golden photos were 300x225: scaled to 160 px, a resize mistake there stays
    within decoder noise. Each class's largest photos go first."""
    from conftest import synthetic_image
    from edgeclf.bundle.raw import choose

    paths = []
    for name, side in {"a0": 20, "a1": 90, "a2": 50, "b0": 30, "b1": 70}.items():
        paths.append(tmp_path / f"{name}.png")
        synthetic_image(0, 0, side).save(paths[-1])
    chosen, skipped = choose(paths, np.array([0, 0, 0, 1, 1]), count=3)
    assert [paths[i].stem for i in chosen] == ["a1", "a2", "b1"] and skipped == []

# --- raw golden images in the bundle, replayed standalone -------------------------------------
import hashlib  # noqa: E402
import subprocess  # noqa: E402

import pytest  # noqa: E402

from test_bundle import CLEAN_ENV, litert_python  # noqa: E402,F401  (a venv without edgeclf)


@pytest.fixture(scope="module")
def raw_bundle(tiny_int8, tmp_path_factory):
    from edgeclf.bundle.builder import build_bundle

    return Path(build_bundle(tiny_int8, tmp_path_factory.mktemp("raw-bundle") / "b", count=6)["path"])


def check(python, bundle, *args):
    return subprocess.run([str(python), "check_golden.py", *args], cwd=bundle, capture_output=True, text=True,
                          timeout=300, env=CLEAN_ENV)


def test_raw_golden_images_are_the_source_files_with_the_whole_contract(raw_bundle, tiny_run):
    golden = json.loads((raw_bundle / "golden" / "golden.json").read_text())
    contract = golden["preprocessing"]
    assert contract["resize"]["name"] == "pil-bilinear" and contract["resize"]["aspect"] == "squash"
    assert {"decoder", "exif", "colour", "dtype", "quantization", "tensor", "normalisation"} <= set(contract)
    raw = golden["raw"]
    assert raw["count"] == 4 == len(raw["vectors"])  # capped at 4, one class after another
    assert {v["true_label"] for v in raw["vectors"]} == {"red", "green", "blue"}
    run = Run.open(tiny_run)
    sources = {s.path.name: s.path for s in run.plan.samples["val"]}
    for vector in raw["vectors"]:
        data = (raw_bundle / vector["file"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == vector["sha256"]
        source = next(p for p in sources.values() if p.read_bytes() == data)  # the very file, byte for byte
        assert np.array_equal(np.load(raw_bundle / vector["tensor"])[0], load_image(source, 32))
        assert "resize android" in vector["candidates"] and "bgr" in vector["candidates"]
    tol = raw["tolerance"]
    assert tol["mean"] == 0.25 and tol["measured_decoders"] == {}  # PNG: exact everywhere
    # Each mistake's measured distance from training's pixels, against the tolerance it must exceed to be caught.
    separation = tol["mistake_separation"]
    assert set(separation) == {name for v in raw["vectors"] for name in v["candidates"]}
    for name in ("bgr", "resize android", "resize nearest"):
        assert separation[name]["mean"] > tol["mean"] and name not in tol["undetectable"], name
    assert all(separation[name]["mean"] <= tol["mean"] for name in tol["undetectable"])
    with np.load(raw_bundle / raw["vectors"][0]["mistakes"]) as stored:  # pixels, not float tensors: the bundle stays small
        assert all(stored[name].dtype == np.uint8 and stored[name].shape == (1, 32, 32, 3) for name in stored.files)
    costs = {m["name"]: m for m in raw["mistakes"]}
    assert costs["bgr"]["agreement"] is not None and "float-minus1-1" not in costs  # uint8 input: not a possible mistake
    card = (raw_bundle / "MODEL_CARD.md").read_text()
    assert "## App mistakes and resize sensitivity" in card and "| resize android |" in card
    kotlin = next((raw_bundle / "android").glob("*Classifier.kt")).read_text()
    assert "trained with\n     *  `pil-bilinear`" in kotlin and "createScaledBitmap(bitmap, width, height, true)" in kotlin
    assert "writeTensors(to dir: URL" in (raw_bundle / "ios" / "GoldenRawReplay.swift").read_text()


def test_replay_passes_training_and_diagnoses_planted_mistakes(raw_bundle, litert_python, tmp_path):
    from edgeclf.bundle.raw import to_tensor

    ok = check(litert_python, raw_bundle)
    assert ok.returncode == 0 and ok.stdout.count("PASS raw ") == 4, ok.stdout + ok.stderr
    golden = json.loads((raw_bundle / "golden" / "golden.json").read_text())
    inp = golden["input"]
    vectors = golden["raw"]["vectors"]
    files = [raw_bundle / v["file"] for v in vectors]

    def plant(name, make):
        folder = tmp_path / name
        folder.mkdir()
        for vector, path in zip(vectors, files):
            np.save(folder / f"{vector['id']}.npy", to_tensor(make(path), inp))
        return folder

    matched = check(litert_python, raw_bundle, "--tensors", str(plant("same", lambda p: load_image(p, 32))))
    assert matched.returncode == 0 and matched.stdout.count("PASS raw ") == 4, matched.stdout
    planted = {"bgr": lambda p: load_image(p, 32)[..., ::-1],
               "resize android": lambda p: load_image(p, 32, "android"),
               "resize nearest": lambda p: load_image(p, 32, "nearest")}
    for name, make in planted.items():
        out = check(litert_python, raw_bundle, "--tensors", str(plant(name.replace(" ", "-"), make)))
        assert out.returncode == 1 and out.stdout.count(f"diagnosis: {name}: ") == 4, out.stdout
        assert "measured on the val split: top-1" in out.stdout
    noise = check(litert_python, raw_bundle, "--tensors",
                  str(plant("noise", lambda p: np.random.default_rng(0).integers(0, 256, (32, 32, 3)).astype(np.uint8))))
    assert noise.stdout.count("diagnosis: unknown") == 4, noise.stdout

    outputs = tmp_path / "outputs"
    outputs.mkdir()
    for vector in vectors:
        np.save(outputs / f"{vector['id']}.npy", np.load(raw_bundle / vector["output"])[0])
    assert check(litert_python, raw_bundle, "--outputs", str(outputs)).returncode == 0
    first = vectors[0]
    np.save(outputs / f"{first['id']}.npy", np.load(raw_bundle / first["output"])[0][::-1])
    bad = check(litert_python, raw_bundle, "--outputs", str(outputs))
    assert bad.returncode == 1 and f"FAIL raw {first['id']}" in bad.stdout
