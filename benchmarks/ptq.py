"""Post-training int8 recipes, each technique alone and combined, on one run's test folder.

    python benchmarks/ptq.py RUN_DIR --data TEST_DIR [--target tflite|onnx|openvino]
        [--recipes 'none;bias;cle,bias'] [--json OUT.json]

For each recipe (edgeclf.ptq techniques, see `edgeclf export --ptq`): test top-1 of the int8
model, its drop from the Keras float model, top-1 agreement with the float model, and how
many predictions changed. Goal of issue 12: agreement >= 97% and drop <= 0.5 point.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edgeclf import console  # noqa: E402
from edgeclf.devices.host import predict_file  # noqa: E402
from edgeclf.exporters.spec import ExportSpec  # noqa: E402
from edgeclf.jobs.export import EXPORTS_DIR, export_run  # noqa: E402
from edgeclf.pipeline.datasets import decode, map_to_labels, scan_folder  # noqa: E402
from edgeclf.pipeline.metrics import paired_difference  # noqa: E402
from edgeclf.pipeline.predict import predict_probs  # noqa: E402
from edgeclf.pipeline.runs import Run  # noqa: E402

RECIPES = {
    "tflite": ["none", "input", "round", "bias", "input,bias", "round,bias", "input,round,bias", "input,round,bias,ranges",
               "cle,bias,ranges"],
    "onnx": ["none", "input", "bias", "input,bias", "input,round,bias"],
    "openvino": ["none", "input", "round", "round,bias", "input,bias", "input,round,bias"],
}


def measure(run_dir: str, data: str, target: str, recipes: list[str], calib_size: int) -> dict:
    run = Run.open(run_dir)
    folder = map_to_labels(scan_folder(Path(data), "test data"), run.labels, "test")
    test = decode("test", folder.root, run.labels, folder.samples, run.img_size)
    float_probs = predict_probs(run.load_model(), test.images)
    float_top1 = float((float_probs.argmax(1) == test.labels).mean())
    rows = []
    for recipe in recipes:
        out = run.path / EXPORTS_DIR / f"{target}-int8-ptq-{recipe.replace(',', '+')}"
        console.info(f"exporting {target} int8 with --ptq {recipe}")
        started = time.perf_counter()
        spec = ExportSpec(target=target, quant="int8", ptq=recipe, calib_size=calib_size, out=str(out))
        manifest = export_run(run_dir, spec, overwrite=True)
        seconds = time.perf_counter() - started
        probs = predict_file(out / manifest["model_file"], test.images, label=f"--ptq {recipe} on test")
        paired = paired_difference(probs, test.labels, float_probs)
        rows.append({
            "recipe": recipe,
            "top1": float((probs.argmax(1) == test.labels).mean()),
            "agreement": 1 - paired["changed"] / len(test),
            **paired,  # changed, gained, lost, drop, drop_ci95 (exact McNemar-based)
            "val": manifest.get("accuracy") and {k: manifest["accuracy"][k] for k in ("top1", "float_top1", "agreement")},
            "export_s": round(seconds, 1),
            "ptq": manifest["details"].get("ptq"),
        })
    return {"run": str(run.path), "target": target, "data": str(folder.root), "n_test_images": len(test), "float_top1": float_top1,
            "calib_size": calib_size, "recipes": rows}


def print_table(result: dict) -> None:
    print(f"{result['target']} int8  run {result['run']}  test {result['data']} ({result['n_test_images']} images)  "
          f"Keras float top-1 {100 * result['float_top1']:.2f}%  calibration {result['calib_size']} images")
    header = f"{'--ptq':<18}{'test top-1':>11}{'drop':>8}{'agree':>8}{'changed':>9}{'gained':>8}{'lost':>6}{'drop 95% CI':>17}{'val agree':>11}{'export s':>10}"
    print(header)
    print("-" * len(header))
    for row in result["recipes"]:
        val = f"{100 * row['val']['agreement']:.1f}%" if row["val"] else "-"
        ci = "[{:+.2f}, {:+.2f}]".format(*(100 * x for x in row["drop_ci95"]))
        print(f"{row['recipe']:<18}{100 * row['top1']:>10.2f}%{100 * row['drop']:>+7.2f}p{100 * row['agreement']:>7.1f}%"
              f"{row['changed']:>9}{row['gained']:>8}{row['lost']:>6}{ci:>17}{val:>11}{row['export_s']:>10}")
    for row in result["recipes"]:
        met = row["agreement"] >= 0.97 and row["drop"] <= 0.005
        print(f"goal --ptq {row['recipe']}: agreement >= 97% and drop <= 0.5 point -> {'met' if met else 'NOT met'}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--data", required=True, help="test folder, one subfolder per class")
    parser.add_argument("--target", default="tflite", choices=sorted(RECIPES))
    parser.add_argument("--recipes", help="recipes separated by ';' (each a comma list) [default: every combination the target offers]")
    parser.add_argument("--calib-size", type=int, default=300)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)
    recipes = args.recipes.split(";") if args.recipes else RECIPES[args.target]
    result = measure(args.run_dir, args.data, args.target, [r for r in recipes if r], args.calib_size)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print_table(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
