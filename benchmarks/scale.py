"""Benchmark streamed training (`--cache disk`) against the in-memory path.

    PYTHONPATH=. .venv/bin/python benchmarks/scale.py [--sizes 10000,50000] [--work /tmp/edgeclf-scale]
        [--flowers /work/shared/datasets/flowers128] [--baseline /path/to/other/checkout]

1. Generates synthetic image folders of each size (10 classes, 40 px JPEGs) under WORK (never
   committed), trains one epoch of MobileNetV2 alpha 0.35 at 32 px on each with `--cache disk`
   (and `--cache memory` for contrast), and reports each training process's peak RSS: with
   `disk` it must not grow with the image count.
2. Trains one epoch on flowers128 (train split, 128 px) with `--cache memory` and `--cache disk`
   and reports decode time, epoch time and training images/s. With `--baseline`, the default
   path is also timed with that checkout's code (e.g. main before this change).

Every training runs as its own `edgeclf train` process, and its peak RSS is that process's own
(VmHWM, through peak.py: wait4's ru_maxrss would carry over this script's peak).
Results go to WORK/results.json and a markdown table on stdout.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from peak import measured

REPO = Path(__file__).resolve().parent.parent
TINY = ["--arch", "mobilenetv2", "--weights", "none", "--alpha", "0.35", "--head-epochs", "0",
        "--fine-tune-epochs", "1", "--batch-size", "64", "--no-augment", "--val-split", "0.1", "--seed", "1"]


def generate(root: Path, count: int, classes: int = 10, size: int = 40) -> Path:
    """`count` small JPEGs, a noisy colour per class; reused when already complete."""
    done = root / ".complete"
    if done.is_file():
        return root
    shutil.rmtree(root, ignore_errors=True)
    rng = np.random.default_rng(0)
    colours = rng.integers(30, 225, (classes, 3))
    for i in range(count):
        label = i % classes
        folder = root / f"class{label:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        pixels = np.clip(colours[label] + rng.normal(0, 30, (size, size, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:06d}.jpg", quality=85)
    done.touch()
    return root


def train(data: Path, out: Path, extra: list[str], repo: Path = REPO) -> dict:
    """One `edgeclf train` process; returns its run.json timing, image counts and peak RSS."""
    shutil.rmtree(out, ignore_errors=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    argv = ["-m", "edgeclf", "train", str(data), "--out", str(out), "--json", *extra]
    env = dict(os.environ, PYTHONPATH=str(repo), CUDA_VISIBLE_DEVICES="-1")
    log = out.with_name(out.name + ".log")
    code, wall, peak = measured(argv, env, log, out.with_name(out.name + ".peak.json"))
    if code != 0:
        raise SystemExit(f"training failed (edgeclf {' '.join(argv[2:])}):\n{log.read_text()[-3000:]}")
    info = json.loads((out / "run.json").read_text())
    timing = info["timing"]
    n_train = info["dataset"]["train"]["n_images"]
    epoch_s = sum(v for k, v in timing.items() if k.endswith("_s") and k not in ("decode_s", "total_s"))
    return {
        "images": n_train + info["dataset"]["val"]["n_images"],
        "train_images": n_train,
        "decode_s": timing.get("decode_s"),
        "epoch_s": round(epoch_s, 2),
        "images_per_s": round(n_train / epoch_s, 1),
        "wall_s": round(wall, 1),
        "peak_rss_mb": peak["peak_rss_mb"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,50000")
    parser.add_argument("--work", type=Path, default=Path("/tmp/edgeclf-scale"))
    parser.add_argument("--flowers", type=Path, default=Path("/work/shared/datasets/flowers128"))
    parser.add_argument("--baseline", type=Path, help="another checkout whose default path to time on flowers")
    parser.add_argument("--caches", default="disk,memory", help="the --cache modes to train the synthetic folders with")
    parser.add_argument("--skip-synthetic", action="store_true")
    parser.add_argument("--skip-flowers", action="store_true")
    args = parser.parse_args()
    results: dict = {"synthetic": [], "flowers": []}
    if not args.skip_synthetic:
        for size in [int(s) for s in args.sizes.split(",")]:
            data = generate(args.work / f"images-{size}", size)
            for mode in args.caches.split(","):
                row = {"size": size, "cache": mode} | train(data, args.work / f"run-{size}-{mode}", [*TINY, "--img-size", "32", "--cache", mode])
                results["synthetic"].append(row)
                print(json.dumps(row), flush=True)
    if not args.skip_flowers and (args.flowers / "train").is_dir():
        flowers = [*TINY, "--img-size", "128", "--batch-size", "32"]
        runs = [("memory", REPO), ("disk", REPO)] + ([("memory (baseline)", args.baseline)] if args.baseline else [])
        for mode, repo in runs:
            cache = [] if "baseline" in mode else ["--cache", mode.split()[0]]
            row = {"cache": mode} | train(args.flowers / "train", args.work / f"flowers-{mode.split()[0]}-{len(results['flowers'])}", [*flowers, *cache], repo)
            results["flowers"].append(row)
            print(json.dumps(row), flush=True)
    args.work.mkdir(parents=True, exist_ok=True)
    (args.work / "results.json").write_text(json.dumps(results, indent=1))
    print("\n| data | cache | images | decode s | epoch s | train images/s | peak RSS MB |\n|---|---|---|---|---|---|---|")
    for row in results["synthetic"]:
        print(f"| synthetic {row['size']} @ 32 px | {row['cache']} | {row['images']} | {row['decode_s']} | {row['epoch_s']} | {row['images_per_s']} | {row['peak_rss_mb']} |")
    for row in results["flowers"]:
        print(f"| flowers128 @ 128 px | {row['cache']} | {row['images']} | {row['decode_s']} | {row['epoch_s']} | {row['images_per_s']} | {row['peak_rss_mb']} |")


if __name__ == "__main__":
    main()
