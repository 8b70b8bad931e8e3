"""Benchmark `edgeclf audit`: real findings on flowers128, precision/recall on a planted set, scale.

    PYTHONPATH=. .venv/bin/python benchmarks/audit.py [--work /tmp/edgeclf-audit] [--parts flowers,planted,scale,cost]
        [--sizes 10000,50000] [--weights /work/shared/weights/mobilenet_v2_1.0_224_no_top.h5]

flowers: audits flowers128 train + test (cheap checks; with --weights also embeddings) and prints
    the pixel-identical groups, label conflicts and leaks, the top-20 near-duplicate pairs, and a
    contact sheet of those 20 pairs (WORK/flowers-near20.png) to judge them by eye.
planted: copies pets3 (train + test) into WORK/planted, plants copies of training images (PNG of
    the decoded pixels; or JPEG q60-90 re-encoded, resized 0.5-0.9x, cropped 5-10%, brightened
    +-15% or mirrored) in the same class, another class and/or the test split, audits it and
    prints precision and recall per kind. Findings among pets3's own files are listed apart.
scale: audits scale.py's generated folders (10 classes of 40 px JPEGs), each in its own process
    (peak RSS: each process's own VmHWM, through peak.py): cheap checks, then embeddings (MobileNetV2 alpha 0.35 at 32 px,
    random init: the cost is what is measured, not the quality).
cost: trains MobileNetV2 (160 px, --weights) on pets3 for 2 head + 2 fine-tune epochs with the
    audit's embeddings on, and prints what one image costs to embed next to one image of a head
    epoch and of a fine-tune epoch: the constants of `--audit-embeddings auto` (jobs/audit.py).
Results go to WORK/results.json.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
from peak import measured  # noqa: E402
FLOWERS = Path("/work/shared/datasets/flowers128")
PETS = Path("/work/shared/datasets/pets3")
PAIR_KINDS = ("exact_duplicate", "near_duplicate", "cross_split_leak", "label_conflict")


def audit_json(data: Path, out: Path, *extra: str) -> tuple[dict, dict]:
    """One `edgeclf audit` process; returns audit.json and its wall time and peak RSS."""
    shutil.rmtree(out, ignore_errors=True)
    argv = ["-m", "edgeclf", "audit", str(data), "--out", str(out), "--json", *extra]
    env = dict(os.environ, PYTHONPATH=str(REPO), CUDA_VISIBLE_DEVICES="-1")
    log = out.with_name(out.name + ".log")
    code, wall, peak = measured(argv, env, log, out.with_name(out.name + ".peak.json"))
    if code != 0:
        raise SystemExit(f"audit failed: edgeclf {' '.join(argv[2:])}\n{log.read_text()[-3000:]}")
    return json.loads((out / "audit.json").read_text()), {"wall_s": round(wall, 1), "peak_rss_mb": peak["peak_rss_mb"]}


def short(path: str) -> str:
    return "/".join(Path(path).parts[-3:])


# -- flowers ---------------------------------------------------------------------------
def flowers(work: Path, weights: str | None) -> dict:
    extra = ["--test-dir", str(FLOWERS / "test"), "--img-size", "128"]
    extra += ["--weights", weights] if weights else ["--embeddings", "off"]
    audit, cost = audit_json(FLOWERS / "train", work / "flowers", *extra)
    by_kind = lambda kind: [f for f in audit["findings"] if f["kind"] == kind]
    print(f"\n## flowers128 (train + test, {sum(audit['summary']['images'].values())} images, {cost})")
    for kind in ("exact_duplicate", "label_conflict", "cross_split_leak"):
        print(f"\n{kind}: {len(by_kind(kind))}")
        for f in by_kind(kind):
            print(f"  {f['score']:.3f} {f.get('match', '')}: " + ", ".join(f"{short(p)} [{s}]" for p, s in zip(f["files"], f["splits"])))
    near = by_kind("near_duplicate")[:20]
    print("\nnear_duplicate, top 20 of", len(by_kind("near_duplicate")))
    for n, f in enumerate(near, 1):
        print(f"  {n:2d}. {f['score']:.3f} {f['match']}: " + " ~ ".join(short(p) for p in f["files"]))
    contact_sheet([f["files"] for f in near], work / "flowers-near20.png")
    print(f"contact sheet: {work / 'flowers-near20.png'}")
    print(f"likely_label_error: {len(by_kind('likely_label_error'))}")
    for f in by_kind("likely_label_error")[:10]:
        print(f"  {f['score']:.3f} {short(f['files'][0])} [{f['splits'][0]}] filed as {f['classes'][0]}, probe says {f['predicted']}")
    return {"summary": audit["summary"], "cost": cost, "near20": [f["files"] + [f["score"]] for f in near]}


def contact_sheet(pairs: list[list[str]], path: Path, side: int = 128) -> None:
    """One row per pair (or group), numbered, the files side by side."""
    from PIL import ImageDraw

    width = max((len(p) for p in pairs), default=2)
    sheet = Image.new("RGB", (40 + width * (side + 4), max(1, len(pairs)) * (side + 4)), "white")
    draw = ImageDraw.Draw(sheet)
    for row, files in enumerate(pairs):
        draw.text((4, row * (side + 4) + side // 2), str(row + 1), fill="black")
        for col, file in enumerate(files):
            with Image.open(file) as img:
                thumb = ImageOps.exif_transpose(img).convert("RGB").resize((side, side))
            sheet.paste(thumb, (40 + col * (side + 4), row * (side + 4)))
    sheet.save(path)


# -- planted -----------------------------------------------------------------------------
def transform(img: Image.Image, how: str, rng: np.random.Generator) -> Image.Image:
    w, h = img.size
    if how == "resize":
        f = rng.uniform(0.5, 0.9)
        return img.resize((max(1, round(w * f)), max(1, round(h * f))), Image.BILINEAR)
    if how == "crop":
        f = rng.uniform(0.05, 0.10)  # of each dimension, split between the two sides at random
        dx, dy = round(w * f), round(h * f)
        left, top = int(rng.integers(0, dx + 1)), int(rng.integers(0, dy + 1))
        return img.crop((left, top, w - (dx - left), h - (dy - top)))
    if how == "brightness":
        return ImageEnhance.Brightness(img).enhance(1 + rng.choice([-1, 1]) * rng.uniform(0.05, 0.15))
    if how == "mirror":
        return ImageOps.mirror(img)
    return img  # "jpeg": the re-encoding alone


TRANSFORMS = ("jpeg", "resize", "crop", "brightness", "mirror")
# (where the copy goes, what truth it makes): same class/split, other class, test split, both
PLACES = (("same", ()), ("other_class", ("label_conflict",)), ("test", ("cross_split_leak",)),
          ("test_other_class", ("cross_split_leak", "label_conflict")))


def build_planted(root: Path, copies: int = 160, seed: int = 0) -> list[dict]:
    """pets3 copied under root, plus `copies` planted copies; returns the truth, one entry per copy."""
    rng = np.random.default_rng(seed)
    shutil.rmtree(root, ignore_errors=True)
    for split in ("train", "test"):
        shutil.copytree(PETS / split, root / split)
    classes = sorted(p.name for p in (root / "train").iterdir())
    originals = sorted((root / "train").rglob("*.jpg"))
    chosen = rng.choice(len(originals), copies, replace=False)
    truth = []
    for n, index in enumerate(chosen):
        original = originals[index]
        exact = n % 3 == 0
        place, extra = PLACES[n % len(PLACES)]
        cls = original.parent.name
        if "other_class" in place:
            cls = classes[(classes.index(cls) + 1 + int(rng.integers(len(classes) - 1))) % len(classes)]
        split = "test" if "test" in place else "train"
        with Image.open(original) as img:
            pixels = ImageOps.exif_transpose(img).convert("RGB")
        target = root / split / cls / f"planted_{n:03d}_{original.stem}"
        if exact:
            target = target.with_suffix(".png")
            pixels.save(target)
            how = "png of the decoded pixels"
        else:
            name = TRANSFORMS[(n // len(PLACES)) % len(TRANSFORMS)]
            quality = int(rng.integers(60, 91))
            target = target.with_suffix(".jpg")
            transform(pixels, name, rng).save(target, quality=quality)
            how = f"{name}, jpeg q{quality}"
        kinds = ("exact_duplicate" if exact else "near_duplicate", *extra)
        truth.append({"original": str(original), "copy": str(target), "kinds": kinds, "how": how})
    return truth


def score_planted(audit: dict, truth: list[dict]) -> dict:
    """Precision and recall per kind.

    pets3 holds near-duplicates of its own (judged by eye: WORK/planted-base.png). A finding that
    ties a planted copy to such a twin of its original is true, so "the same photo" is a connected
    component of the planted (original, copy) edges and of the findings among pets3's own files.
    Those findings are counted apart ("on pets3's own files"), not in the precision.
    """
    copies = {t["copy"]: t for t in truth}
    parent: dict[str, str] = {}

    def root(x: str) -> str:
        while parent.get(x, x) != x:
            x = parent[x]
        return x

    def join(a: str, b: str) -> None:
        parent[root(a)] = root(b)

    base = [f for f in audit["findings"] if f["kind"] in PAIR_KINDS and f["files"] and not any(p in copies for p in f["files"])]
    for t in truth:
        join(t["original"], t["copy"])
    for f in base:
        for other in f["files"][1:]:
            join(f["files"][0], other)
    same = lambda a, b: root(a) == root(b)
    results = {}
    for kind in PAIR_KINDS:
        expected = [t for t in truth if kind in t["kinds"]]
        found = [f for f in audit["findings"] if f["kind"] == kind]
        planted = [f for f in found if any(p in copies for p in f["files"])]

        def true(f) -> bool:
            files = f["files"]
            if kind == "cross_split_leak":
                return any(same(files[0], other) for other in files[1:])
            together = all(same(files[0], other) for other in files[1:])
            return together and (kind != "label_conflict" or len(set(f["classes"])) > 1)

        def recalls(f, t) -> bool:
            if kind == "cross_split_leak":
                return f["files"][0] == t["copy"] and any(same(t["original"], o) for o in f["files"][1:])
            return t["copy"] in f["files"] and any(same(t["original"], o) for o in f["files"] if o != t["copy"])

        true_findings = [f for f in planted if true(f)]
        recalled = [t for t in expected if any(recalls(f, t) for f in found)]
        results[kind] = {
            "planted": len(expected), "recalled": len(recalled),
            "recall": round(len(recalled) / len(expected), 3) if expected else None,
            "findings_on_planted": len(planted), "true": len(true_findings),
            "precision": round(len(true_findings) / len(planted), 3) if planted else None,
            "false": [[short(p) for p in f["files"]] for f in planted if not true(f)][:10],
            "missed": [f"{short(t['copy'])} ({t['how']})" for t in expected if t not in recalled],
            "on_base_files": len(found) - len(planted),
        }
    return results, [f["files"] for f in base if f["kind"] in ("exact_duplicate", "near_duplicate")]


def planted(work: Path, weights: str | None) -> dict:
    root = work / "planted"
    truth = build_planted(root)
    out = {}
    variants = [("cheap", ["--embeddings", "off"])] + ([("embeddings", ["--weights", weights])] if weights else [])
    for name, extra in variants:
        audit, cost = audit_json(root / "train", work / f"planted-audit-{name}", "--test-dir", str(root / "test"), *extra)
        result, base = score_planted(audit, truth)
        contact_sheet(base[:30], work / f"planted-base-{name}.png", side=96)
        out[name] = {"cost": cost, "kinds": result, "base_pairs": base}
        print(f"\n## planted set, {name} checks ({len(truth)} copies in {sum(audit['summary']['images'].values())} images, {cost})")
        print("| kind | planted | recall | precision | findings on pets3's own files |\n|---|---|---|---|---|")
        for kind, r in result.items():
            print(f"| {kind} | {r['planted']} | {r['recall']} | {r['precision']} ({r['true']}/{r['findings_on_planted']}) | {r['on_base_files']} |")
        for kind, r in result.items():
            for miss in r["missed"]:
                print(f"  missed {kind}: {miss}")
            for false in r["false"]:
                print(f"  false {kind}: {false}")
    return out


# -- scale -------------------------------------------------------------------------------
def scale(work: Path, sizes: list[int]) -> list[dict]:
    from scale import generate

    rows = []
    for size in sizes:
        data = generate(work / f"images-{size}", size)
        for name, extra in (("cheap", ["--embeddings", "off"]),
                            ("cheap + embeddings", ["--weights", "none", "--embeddings", "on", "--img-size", "32", "--alpha", "0.35"])):
            audit, cost = audit_json(data, work / f"scale-{size}-{name.split()[-1]}", *extra)
            row = {"images": size, "checks": name, **cost, "seconds": audit["summary"]["seconds"]}
            rows.append(row)
            print(json.dumps(row), flush=True)
    print("\n| images | checks | wall s | peak RSS MB | stages (s) |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['images']} | {r['checks']} | {r['wall_s']} | {r['peak_rss_mb']} | {r['seconds']} |")
    return rows


def cost(work: Path, weights: str | None) -> dict:
    if not weights:
        raise SystemExit("the cost part needs --weights (embedding with random weights is not what train does)")
    out = work / "cost-run"
    shutil.rmtree(out, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "edgeclf", "train", str(PETS / "train"), "--test-dir", str(PETS / "test"),
                    "--weights", weights, "--img-size", "160", "--head-epochs", "2", "--fine-tune-epochs", "2",
                    "--patience", "99", "--audit-embeddings", "on", "--out", str(out)], check=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
    info = json.loads((out / "run.json").read_text())
    timing, audit = info["timing"], json.loads((out / "audit.json").read_text())
    n_train = info["dataset"]["train"]["n_images"]
    n_images = sum(audit["summary"]["images"].values())
    row = {"images": n_images, "train_images": n_train,
           "embed_ms": 1000 * audit["summary"]["seconds"]["embeddings"] / n_images,
           "head_ms": 1000 * timing["head_s"] / (2 * n_train), "fine_tune_ms": 1000 * timing["fine_tune_s"] / (2 * n_train)}
    row |= {"embed_per_head_image": row["embed_ms"] / row["head_ms"], "fine_tune_per_head_image": row["fine_tune_ms"] / row["head_ms"]}
    print(f"cost: embedding {row['embed_ms']:.1f} ms/image ({n_images} images); training {row['head_ms']:.1f} ms per "
          f"image and head epoch, {row['fine_tune_ms']:.1f} per image and fine-tune epoch ({n_train} training images); "
          f"embedding = {row['embed_per_head_image']:.2f} head-epoch images, fine-tune = {row['fine_tune_per_head_image']:.2f}")
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/edgeclf-audit"))
    parser.add_argument("--parts", default="flowers,planted,scale")
    parser.add_argument("--sizes", default="10000,50000")
    parser.add_argument("--weights", help="backbone weights for the embedding checks (flowers, planted)")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    parts = args.parts.split(",")
    results_file = args.work / "results.json"
    results = json.loads(results_file.read_text()) if results_file.is_file() else {}
    if "flowers" in parts:
        results["flowers"] = flowers(args.work, args.weights)
    if "planted" in parts:
        results["planted"] = planted(args.work, args.weights)
    if "cost" in parts:
        results["cost"] = cost(args.work, args.weights)
    if "scale" in parts:
        results["scale"] = scale(args.work, [int(s) for s in args.sizes.split(",")])
    results_file.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
