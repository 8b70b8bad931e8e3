"""Export one run to TFLite, ONNX and OpenVINO (fp32 and int8) and compare them on a test folder.

    python benchmarks/export_formats.py RUN_DIR --data TEST_DIR [--runs 200] [--rounds 5] [--json OUT.json]

For each format: test top-1 against the Keras model's, top-1 agreement with it, model size
(all model files: OpenVINO's .xml + .bin), and host latency with one thread (p50). Latency
is measured in interleaved rounds, every model once per round, so load from other jobs on
the machine hits all formats alike; the table shows the median of the per-round p50s, their
spread (max - min), and the fastest single run, with the load average while measuring.
All int8 exports read the same calibration set: the table shows its sample hash per format.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edgeclf import console  # noqa: E402
from edgeclf.artefacts import Artefact  # noqa: E402
from edgeclf.devices import runner  # noqa: E402
from edgeclf.devices.host import open_model, predict_file  # noqa: E402
from edgeclf.exporters.spec import ExportSpec  # noqa: E402
from edgeclf.jobs.export import default_out, export_run  # noqa: E402
from edgeclf.layout import sha256_file  # noqa: E402
from edgeclf.pipeline.datasets import decode, map_to_labels, scan_folder  # noqa: E402
from edgeclf.pipeline.predict import predict_probs  # noqa: E402
from edgeclf.pipeline.runs import Run  # noqa: E402

FORMATS = [("tflite", "fp32"), ("tflite", "int8"), ("onnx", "fp32"), ("onnx", "int8"), ("openvino", "fp32"), ("openvino", "int8")]
NOT_MODEL_FILES = {"labels.txt", "quant_debug.csv"}


def reusable(run: Run, spec: ExportSpec) -> dict | None:
    """The manifest of an earlier export with the same settings whose files are intact, if any."""
    out = default_out(run, spec)
    try:
        manifest = Artefact.open(out).manifest
    except Exception:
        return None
    settings = {k: v for k, v in spec.to_dict().items() if k != "out"}
    same = {k: v for k, v in manifest["export"].items() if k != "out"} == settings
    intact = all(sha256_file(out / name) == entry["sha256"] for name, entry in manifest["files"].items())
    if same and intact:
        manifest["path"] = str(out)
        return manifest
    return None


def measure(run_dir: str, data: str, calib_size: int, runs: int, warmup: int, rounds: int, reuse: bool) -> dict:
    run = Run.open(run_dir)
    folder = map_to_labels(scan_folder(Path(data), "test data"), run.labels, "test")
    test = decode("test", folder.root, run.labels, folder.samples, run.img_size)
    keras_probs = predict_probs(run.load_model(), test.images)
    float_top1 = float((keras_probs.argmax(1) == test.labels).mean())

    rows = []
    for target, quant in FORMATS:
        spec = ExportSpec(target=target, quant=quant, calib_size=calib_size)
        manifest = reusable(run, spec) if reuse else None
        if manifest is None:
            console.info(f"exporting {target} {quant}")
            manifest = export_run(run_dir, spec)
        else:
            console.info(f"reusing {manifest['path']}")
        path = Path(manifest["path"]) / manifest["model_file"]
        probs = predict_file(path, test.images, label=f"{target} {quant} on test")
        quantization = manifest["details"].get("quantization") or {}
        rows.append({
            "target": target,
            "quant": quant,
            "path": str(path),
            "top1": float((probs.argmax(1) == test.labels).mean()),
            "agreement": float((probs.argmax(1) == keras_probs.argmax(1)).mean()),
            "max_abs_diff": float(np.abs(probs - keras_probs).max()),
            "bytes": sum(e["bytes"] for name, e in manifest["files"].items() if name not in NOT_MODEL_FILES),
            "val": manifest.get("accuracy") and {k: manifest["accuracy"][k] for k in ("top1", "float_top1", "agreement")},
            "calibration_hash": (manifest.get("calibration") or {}).get("sample_hash"),
            "per_channel": quantization.get("per_channel_choice"),
            "conversion_s": manifest["conversion_s"],
        })

    # Latency: every model once per round, interleaved, one thread each.
    models = [open_model(row["path"], threads=1) for row in rows]
    sample = test.images[:1]
    per_round = [[] for _ in rows]
    load_before = os.getloadavg()
    for r in range(rounds):
        for i, model in enumerate(models):
            per_round[i].append(runner.benchmark(model, sample, warmup, runs))
        console.info(f"latency round {r + 1}/{rounds} done")
    load_after = os.getloadavg()
    for row, stats, model in zip(rows, per_round, models):
        p50s = [s["p50"] for s in stats]
        row["latency_ms"] = {
            "p50": float(np.median(p50s)),
            "p50_per_round": p50s,
            "p50_spread": float(max(p50s) - min(p50s)),
            "min": float(min(s["min"] for s in stats)),
            "runs": runs * rounds,
            "runtime": f"{model.runtime} {model.runtime_version}",
        }
    return {
        "run": str(run.path),
        "data": str(folder.root),
        "n_test_images": len(test),
        "float_top1": float_top1,
        "calib_size": calib_size,
        "threads": 1,
        "load_average": {"before": [round(x, 2) for x in load_before], "after": [round(x, 2) for x in load_after]},
        "device": runner.device_info(),
        "formats": rows,
    }


def print_table(result: dict) -> None:
    float_top1 = result["float_top1"]
    fp32_p50 = {row["target"]: row["latency_ms"]["p50"] for row in result["formats"] if row["quant"] == "fp32"}
    print(f"run {result['run']}  test {result['data']} ({result['n_test_images']} images)  Keras float top-1 {100 * float_top1:.2f}%")
    load = result["load_average"]
    print(
        f"cpu {result['device'].get('cpu')}, {result['device'].get('cores')} cores; latency with 1 thread, "
        f"{result['formats'][0]['latency_ms']['runs']} runs per model in interleaved rounds; "
        f"load average {load['before'][0]:.1f} before, {load['after'][0]:.1f} after"
    )
    header = f"{'format':<16}{'test top-1':>11}{'vs float':>10}{'agree':>8}{'size MB':>9}{'p50 ms':>9}{'spread':>8}{'min ms':>8}{'vs fp32':>9}  calib hash"
    print(header)
    print("-" * len(header))
    for row in result["formats"]:
        lat = row["latency_ms"]
        speedup = fp32_p50[row["target"]] / lat["p50"] if lat["p50"] else float("nan")
        print(
            f"{row['target'] + ' ' + row['quant']:<16}{100 * row['top1']:>10.2f}%{100 * (row['top1'] - float_top1):>+9.2f}p"
            f"{100 * row['agreement']:>7.1f}%{row['bytes'] / 1e6:>9.2f}{lat['p50']:>9.2f}{lat['p50_spread']:>8.2f}{lat['min']:>8.2f}{speedup:>8.2f}x"
            f"  {(row['calibration_hash'] or '-')[:12]}"
        )
    by = {(row["target"], row["quant"]): row for row in result["formats"]}
    for target in ("onnx", "openvino"):
        if (target, "int8") in by:
            delta = 100 * (by[(target, "int8")]["top1"] - float_top1)
            print(f"goal {target} int8 within 0.5 points of float top-1: {delta:+.2f} points -> {'met' if delta >= -0.5 else 'NOT met'}")
    if ("openvino", "fp32") in by and ("openvino", "int8") in by:
        fp32, int8 = by[("openvino", "fp32")]["latency_ms"], by[("openvino", "int8")]["latency_ms"]
        print(
            f"goal openvino int8 >= 2x faster than fp32: {fp32['p50'] / int8['p50']:.2f}x by p50, {fp32['min'] / int8['min']:.2f}x by fastest run"
            f" -> {'met' if fp32['p50'] / int8['p50'] >= 2 else 'NOT met'}"
        )
    for row in result["formats"]:
        choice = row.get("per_channel")
        if choice and "per_tensor" in choice:
            pc, pt = choice["per_channel"], choice["per_tensor"]
            print(
                f"{row['target']} {row['quant']} per-channel choice: {'per-channel' if choice['chosen'] else 'per-tensor'} "
                f"({choice['why']}; on {choice['judged_on']}: per-channel agreement {100 * pc['agreement']:.1f}% "
                f"mean|dp| {pc['mean_abs_diff']:.4f}, per-tensor {100 * pt['agreement']:.1f}% mean|dp| {pt['mean_abs_diff']:.4f})"
            )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--data", required=True, help="test folder, one subfolder per class")
    parser.add_argument("--calib-size", type=int, default=300)
    parser.add_argument("--runs", type=int, default=100, help="timed invocations per model per round")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--reuse", action="store_true", help="reuse intact earlier exports with the same settings")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)
    result = measure(args.run_dir, args.data, args.calib_size, args.runs, args.warmup, args.rounds, args.reuse)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print_table(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
