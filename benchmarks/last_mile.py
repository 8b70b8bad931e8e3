"""The last mile on pets3 (full-resolution photos) with a MobileNetV2 at 160 px.

    nice .venv/bin/python benchmarks/last_mile.py --work /tmp/last-mile [--runs DEFAULT_RUN ANDROID_RUN]

1. Trains two runs (unless --runs names them or --work already holds them): training's default
   kernel and `--resize android`, each exported (into --work, never inside a run) to TFLite fp32 and int8 with `--last-mile`: the
   resize-sensitivity tables, float and int8, measured on the test split.
2. Bundles the int8 (and fp32) artefacts and plants app mistakes in tensors made from the raw
   golden images: BGR, nearest, Skia and OpenCV bilinear without antialias, centre-crop, a
   float model fed [-1, 1], and EXIF orientation ignored (on copies of the test photos given an
   EXIF rotation); `check_golden.py --tensors` must name each, and must pass training's own
   tensors and tensors made with the matching kernel.
3. The android run replayed through Skia (Skia's decoder, then the android kernel) must pass.

Writes last_mile.json into --work and prints the tables as Markdown.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
PETS = SHARED / "datasets" / "pets3"
WEIGHTS = SHARED / "weights" / "mobilenet_v2_1.0_224_no_top.h5"
EDGECLF = [sys.executable, "-m", "edgeclf"]
SIZE = 160


def edgeclf(*args: str) -> None:
    print("$ edgeclf " + " ".join(args), flush=True)
    subprocess.run([*EDGECLF, *args], check=True)


def train(work: Path, kernel: str) -> Path:
    run = work / f"run-{kernel}"
    if not (run / "run.json").is_file():
        edgeclf("train", str(PETS / "train"), "--test-dir", str(PETS / "test"), "--out", str(run), "--weights", str(WEIGHTS),
                "--img-size", str(SIZE), "--head-epochs", "4", "--fine-tune-epochs", "2", "--resize", kernel, "--seed", "1",
                "--overwrite")
    return run


def export(run: Path, work: Path, quant: str, last_mile: bool = True) -> Path:
    out = work / "exports" / f"{run.name}-tflite-{quant}"
    if not (out / "manifest.json").is_file() or (last_mile and "last_mile" not in json.loads((out / "manifest.json").read_text())):
        edgeclf("export", str(run), "--quant", quant, "--out", str(out), "--overwrite", *(["--last-mile"] if last_mile else []))
    return out


def bundle(artefact: Path, count: int = 8) -> Path:
    out = artefact.with_name(artefact.name + "-bundle")
    edgeclf("bundle", str(artefact), "--out", str(out), "--golden", str(count), "--overwrite")
    return out


def check(bundle_dir: Path, tensors: Path | None = None) -> str:
    argv = [sys.executable, "check_golden.py", *(["--tensors", str(tensors)] if tensors else [])]
    return subprocess.run(argv, cwd=bundle_dir, capture_output=True, text=True).stdout


def skia_decoded(path: Path) -> Image.Image:
    """Skia's own codec (what Android decodes with), turned upright by the EXIF orientation if needed."""
    import skia

    from edgeclf.bundle.raw import _oriented
    from edgeclf.pipeline import preprocess

    data = path.read_bytes()
    rgba = skia.Image.MakeFromEncoded(skia.Data.MakeWithCopy(data)).toarray(colorType=skia.kRGBA_8888_ColorType)
    return _oriented(np.ascontiguousarray(rgba[..., :3]), data, preprocess.decode_rgb(data).size)


def plant(bundle_dir: Path, work: Path, name: str, make) -> dict:
    """Tensors from the raw golden files by `make(path) -> pixels or float values`; the replay's verdict."""
    from edgeclf.bundle.raw import to_tensor

    golden = json.loads((bundle_dir / "golden" / "golden.json").read_text())
    folder = work / "planted" / f"{bundle_dir.name}-{name.replace(' ', '-')}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for vector in golden["raw"]["vectors"]:
        np.save(folder / f"{vector['id']}.npy", to_tensor(make(bundle_dir / vector["file"]), golden["input"]))
    out = check(bundle_dir, folder)
    lines = [line for line in out.splitlines() if line.startswith(("PASS raw", "FAIL raw"))]
    diagnoses = [line.split("diagnosis: ", 1)[1].split(":", 1)[0] if "diagnosis: " in line else None for line in lines]
    return {"planted": name, "images": len(lines), "passed": sum(line.startswith("PASS") for line in lines),
            "diagnoses": diagnoses, "example": lines[0] if lines else out[-500:]}


def rotated_run(run: Path, work: Path) -> Path:
    """A copy of `run` whose test split is the test photos re-saved with EXIF orientation 6 (portrait)."""
    rotated = work / "pets3-exif6-test"
    if not rotated.is_dir():
        for src in sorted((PETS / "test").rglob("*.jpg")):
            dst = rotated / src.relative_to(PETS / "test")
            dst.parent.mkdir(parents=True, exist_ok=True)
            with Image.open(src) as img:
                exif = Image.Exif()
                exif[0x0112] = 6
                # Stored sideways, shown upright: what a phone writes for a portrait shot.
                img.convert("RGB").transpose(Image.Transpose.ROTATE_90).save(dst, quality=95, exif=exif)
    copy = work / "run-exif6"
    if not copy.is_dir():
        shutil.copytree(run, copy, ignore=shutil.ignore_patterns("exports", "cache", "*.partial"))
        split = json.loads((copy / "split.json").read_text())
        split["splits"]["test"]["root"] = str(rotated)
        (copy / "split.json").write_text(json.dumps(split, indent=1))
    return copy


def kernel_differences(size: int = SIZE) -> dict:
    """Each kernel against training's on the pets3 test photos: mean (over images) of the mean and
    the largest absolute level difference, as the issue's table measured it on one photo."""
    from edgeclf.pipeline import resize
    from edgeclf.pipeline.images import decode_rgb

    sums = {name: [0.0, 0] for name in resize.KERNELS}
    photos = sorted((PETS / "test").rglob("*.jpg"))
    for path in photos:
        image = decode_rgb(path)
        ref = resize.fit(image, size).astype(np.int64)
        for name in resize.KERNELS:
            diff = np.abs(resize.fit(image, size, name).astype(np.int64) - ref)
            sums[name][0] += diff.mean()
            sums[name][1] = max(sums[name][1], int(diff.max()))
    return {name: {"mean": round(total / len(photos), 2), "max": worst} for name, (total, worst) in sums.items()}


def replayed(results: dict, work: Path, verdict: dict) -> None:
    """One replay's verdict, printed and saved at once (a long benchmark keeps what it measured)."""
    results["replay"].append(verdict)
    print(f"replay {verdict['bundle']} / {verdict['planted']}: {verdict['passed']} of {verdict['images']} pass, "
          f"diagnoses {verdict['diagnoses']}; e.g. {verdict['example']}", flush=True)
    (work / "last_mile.json").write_text(json.dumps(results, indent=1))


def markdown(table: dict) -> str:
    from edgeclf.lastmile.sensitivity import markdown as render

    return "\n".join(render(table))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--work", default="/tmp/last-mile")
    parser.add_argument("--runs", nargs=2, type=Path, metavar=("DEFAULT_RUN", "ANDROID_RUN"),
                        help="existing runs at 160 px on pets3: training's kernel and --resize android")
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    from edgeclf.pipeline.images import load_image

    results: dict = {"size": SIZE, "tables": {}, "replay": [], "kernel_differences": kernel_differences()}
    default, android = args.runs or (train(work, "pil-bilinear"), train(work, "android"))
    artefacts = {}
    # int8 tables carry the float model's columns too; the android run needs no fp32 artefact.
    for run, quants in ((default, ("fp32", "int8")), (android, ("int8",))):
        for quant in quants:
            artefacts[run, quant] = export(run, work, quant)
            manifest = json.loads((artefacts[run, quant] / "manifest.json").read_text())
            results["tables"][f"{run.name} {quant}"] = manifest["last_mile"]

    int8 = bundle(artefacts[default, "int8"])
    fp32 = bundle(artefacts[default, "fp32"])
    load = lambda kernel="pil-bilinear", **kw: (lambda p: load_image(p, SIZE, kernel, **kw))  # noqa: E731
    for target, name, make in [
        (int8, "training", load()),
        (int8, "bgr", lambda p: load_image(p, SIZE)[..., ::-1]),
        (int8, "resize nearest", load("nearest")),
        (int8, "resize android", load("android")),
        (int8, "resize opencv-linear", load("opencv-linear")),
        (int8, "centre-crop", load(aspect="centre-crop")),
        (fp32, "training", load()),
        (fp32, "float-minus1-1", lambda p: load_image(p, SIZE).astype(np.float32) / 127.5 - 1),
    ]:
        replayed(results, work, {"bundle": target.name} | plant(target, work, name, make))

    skia_bundle = bundle(artefacts[android, "int8"])
    from edgeclf.pipeline import resize

    replayed(results, work, {"bundle": "android " + skia_bundle.name} | plant(
        skia_bundle, work, "skia decode + android resize", lambda p: resize.fit(skia_decoded(p), SIZE, "android")))
    replayed(results, work, {"bundle": "android " + skia_bundle.name} | plant(
        skia_bundle, work, "resize android (Pillow decode)", load("android")))
    replayed(results, work, {"bundle": "android " + skia_bundle.name} | plant(
        skia_bundle, work, "resize pil-bilinear (training's default)", load()))

    rotated = rotated_run(default, work)
    exif = bundle(export(rotated, work, "int8", last_mile=False))
    replayed(results, work, {"bundle": "exif6 " + exif.name} | plant(exif, work, "training", load()))
    replayed(results, work, {"bundle": "exif6 " + exif.name} | plant(exif, work, "exif-ignored", load(orient=False)))
    (work / "last_mile.json").write_text(json.dumps(results, indent=1))

    print("\n### kernels against pil-bilinear on the pets3 test photos\n\n| kernel | mean abs difference | max |\n| --- | --- | --- |")
    for name, d in results["kernel_differences"].items():
        print(f"| {name} | {d['mean']} | {d['max']} |")
    for key, table in results["tables"].items():
        print(f"\n### {key}\n\n{markdown(table)}")
    print("\n### replay\n\n| bundle | planted | images | passed | diagnoses |\n| --- | --- | --- | --- | --- |")
    for r in results["replay"]:
        print(f"| {r['bundle']} | {r['planted']} | {r['images']} | {r['passed']} | {', '.join(sorted(set(map(str, r['diagnoses']))))} |")


if __name__ == "__main__":
    main()
