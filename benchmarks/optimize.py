"""Benchmark `edgeclf optimize` on flowers128: float, PTQ, QAT, PQAT and XNNPACK-pruned MobileNetV2,
plus EfficientNetB0 PTQ vs QAT.

    .venv/bin/python benchmarks/optimize.py [--runs RUN_DIR ...] [--work /work/bench/optimize] [--prune-epochs 10] [--qat-epochs 2]

For every recipe it reports test top-1 of the exported TFLite model (on the run's test split),
the gzip-compressed size of the int8 .tflite, and 1-thread p50 latency on this machine.
The source run is whichever of --runs has the higher test top-1 in its run.json. Results go to
WORK/results.json and a markdown table on stdout. Finished steps are reused on a re-run.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from edgeclf import tfenv  # noqa: E402
from edgeclf.artefacts import gzip_size  # noqa: E402
from edgeclf.devices import runner  # noqa: E402
from edgeclf.devices.host import open_model, predict_file  # noqa: E402
from edgeclf.exporters.spec import ExportSpec  # noqa: E402
from edgeclf.jobs.export import export_run  # noqa: E402
from edgeclf.jobs.optimize import OptimizeConfig, optimize  # noqa: E402
from edgeclf.pipeline.config import TrainConfig  # noqa: E402
from edgeclf.pipeline.metrics import classification_metrics  # noqa: E402
from edgeclf.pipeline.runs import Run  # noqa: E402

DEFAULT_RUNS = ["/work/bench/flowers-mnv2-160-ft60", "/work/bench/flowers-mnv2-160", "/work/bench/flowers-mnv2-160-ls"]
FLOWERS = Path("/work/shared/datasets/flowers128")


def best_run(candidates: list[str]) -> Path:
    scored = []
    for path in candidates:
        try:
            run = Run.open(path)
        except Exception:
            continue
        top1 = (run.metrics.get("test") or {}).get("top1")
        if top1 is not None:
            scored.append((top1, Path(path)))
    if not scored:
        sys.exit(f"no finished run with a test split among {candidates}")
    return max(scored)[1]


def latency_p50(path: Path, img_size: int, runs: int) -> float:
    model = open_model(path, threads=1)
    sample = np.random.default_rng(0).integers(0, 256, (1, img_size, img_size, 3), dtype=np.uint8)
    return runner.benchmark(model, sample, warmup=5, runs=runs)["p50"]


def interleaved_latency(models: dict, img_size: int, runs: int, rounds: int = 5) -> dict:
    """1-thread p50 of each model, alternating between them round by round, so that other load on
    the machine hits them alike; reports each round's p50 and the lowest."""
    found = {key: [] for key, path in models.items() if path.is_file()}
    for _ in range(rounds):
        for key in found:
            found[key].append(latency_p50(models[key], img_size, runs))
    return {key: {"p50_by_round": values, "best_p50": min(values)} for key, values in found.items()}


def measure(run_dir: Path, quant: str, out: Path, test, latency_runs: int, calib_size: int) -> dict:
    """Export `run_dir`, then score the artefact on the test split and time it."""
    if not (out / "manifest.json").is_file():
        export_run(run_dir, ExportSpec(quant=quant, calib_size=calib_size, out=str(out)))
    manifest = json.loads((out / "manifest.json").read_text())
    model_file = out / manifest["model_file"]
    probs = predict_file(model_file, test.images, label=f"test {out.name}")
    metrics = classification_metrics(probs, test.labels, test.classes)
    run = Run.open(run_dir)
    return {
        "run": str(run_dir),
        "quant": quant,
        "test_top1": metrics["top1"],
        "keras_test_top1": (run.metrics.get("test") or {}).get("top1"),
        "tflite_bytes": model_file.stat().st_size,
        "gzip_bytes": gzip_size(model_file),
        "latency_p50_ms": latency_p50(model_file, run.img_size, latency_runs),
        "details": {k: manifest["details"].get(k) for k in ("xnnpack_sparse", "quantization_coverage")},
        "optimization": _brief(run.info.get("optimization")),
    }


def _brief(record):
    if not record:
        return None
    prune = record.get("prune") or {}
    return {
        "qat": record.get("qat"),
        "scheme": record.get("scheme"),
        "prune_target": prune.get("target"),
        "sparsity": (prune.get("sparsity") or {}).get("overall"),
        "sparsity_after_qat": prune.get("sparsity_after_qat"),
        "xnnpack_policy": prune.get("xnnpack_policy"),
        "timing": None,
    }


def optimized(source: Path, out: Path, **settings) -> Path:
    if not (out / "run.json").is_file():
        started = time.perf_counter()
        optimize(OptimizeConfig(run_dir=str(source), out=str(out), **settings), overwrite=True)
        print(f"  {out.name}: {time.perf_counter() - started:.0f} s", flush=True)
        tfenv.keras().backend.clear_session()
    return out


def efficientnet(work: Path, args, results: dict) -> None:
    """EfficientNetB0 from random init (no ImageNet weights here): PTQ int8 vs QAT int8."""
    from edgeclf.jobs.train import train

    run_dir = work / f"effb0-{args.effnet_size}-scratch"
    if not (run_dir / "run.json").is_file():
        train(TrainConfig(
            data_dir=str(FLOWERS / "train"), test_dir=str(FLOWERS / "test"), out=str(run_dir), arch="efficientnetb0",
            weights="none", img_size=args.effnet_size, head_epochs=0, fine_tune_epochs=args.effnet_epochs,
            lr=1e-3, augment=True, seed=42,
        ), overwrite=True)
    test = Run.open(run_dir).plan.decode("test", args.effnet_size)
    results["effb0_float"] = measure(run_dir, "fp32", work / "effb0-fp32", test, args.latency_runs, args.calib_size)
    results["effb0_ptq_int8"] = measure(run_dir, "int8", work / "effb0-ptq-int8", test, args.latency_runs, args.calib_size)
    qat = optimized(run_dir, work / "effb0-qat", qat=True, epochs=args.qat_epochs)
    results["effb0_qat_int8"] = measure(qat, "int8", work / "effb0-qat-int8", test, args.latency_runs, args.calib_size)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", nargs="+", default=DEFAULT_RUNS)
    parser.add_argument("--work", default="/work/bench/optimize")
    parser.add_argument("--prune-epochs", type=int, default=10)
    parser.add_argument("--qat-epochs", type=int, default=2)
    parser.add_argument("--latency-runs", type=int, default=30)
    parser.add_argument("--calib-size", type=int, default=300)
    parser.add_argument("--effnet-size", type=int, default=64)
    parser.add_argument("--effnet-epochs", type=int, default=4)
    parser.add_argument("--skip-effnet", action="store_true")
    parser.add_argument("--only", nargs="*", help="run only these recipe keys")
    args = parser.parse_args()
    tfenv.set_verbose(False)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    results_path = work / "results.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}

    source = best_run(args.runs)
    run = Run.open(source)
    results["source"] = {"run": str(source), "test_top1": run.metrics["test"]["top1"]}
    print(f"source run: {source} (test top-1 {run.metrics['test']['top1']:.4f})", flush=True)
    test = run.plan.decode("test", run.img_size)
    m = dict(test=test, latency_runs=args.latency_runs, calib_size=args.calib_size)

    def step(key, fn):
        if args.only and key not in args.only:
            return
        started = time.perf_counter()
        results[key] = fn()
        results[key]["wall_s"] = round(time.perf_counter() - started, 1)
        results_path.write_text(json.dumps(results, indent=1))
        r = results[key]
        print(f"{key}: top-1 {r['test_top1']:.4f}, gzip {r['gzip_bytes'] / 1e6:.3f} MB, p50 {r['latency_p50_ms']:.2f} ms", flush=True)

    step("float_fp32", lambda: measure(source, "fp32", work / "float-fp32", **m))
    step("ptq_int8", lambda: measure(source, "int8", work / "ptq-int8", **m))
    step("qat_int8", lambda: measure(optimized(source, work / "qat", qat=True, epochs=args.qat_epochs), "int8", work / "qat-int8", **m))
    for target in (0.5, 0.75):
        tag = f"{int(target * 100)}"
        # Prune first (its own epochs), then QAT on the pruned run: PQAT keeps the zeros.
        pruned = lambda t=target, g=tag: optimized(source, work / f"pruned{g}", prune=t, epochs=args.prune_epochs)  # noqa: E731
        step(f"pruned{tag}_ptq_int8", lambda p=pruned: measure(p(), "int8", work / f"pruned{tag}-ptq-int8", **m))
        step(f"pqat{tag}_int8", lambda p=pruned, g=tag: measure(
            optimized(p(), work / f"pqat{g}", qat=True, epochs=args.qat_epochs), "int8", work / f"pqat{g}-int8", **m))
    step("xnnpack75_fp32", lambda: measure(
        optimized(source, work / "xnnpack75", prune=0.75, prune_for="xnnpack", epochs=args.prune_epochs), "fp32", work / "xnnpack75-fp32", **m))
    if not args.only or "latency" in args.only:
        results["latency_fp32_interleaved"] = interleaved_latency(
            {key: work / d / "model.tflite" for key, d in (("float_fp32", "float-fp32"), ("xnnpack75_fp32", "xnnpack75-fp32"))},
            run.img_size, args.latency_runs)
        results_path.write_text(json.dumps(results, indent=1))
        print("fp32 p50, interleaved rounds (ms):", results["latency_fp32_interleaved"], flush=True)
    if not args.skip_effnet and (not args.only or any(k.startswith("effb0") for k in args.only)):
        efficientnet(work, args, results)
        results_path.write_text(json.dumps(results, indent=1))

    print("\n| recipe | test top-1 | int8/fp32 .tflite gzip | fp32/int8 p50 (1 thread) |")
    print("|---|---|---|---|")
    for key, r in results.items():
        if isinstance(r, dict) and "test_top1" in r and "quant" in r:
            print(f"| {key} | {100 * r['test_top1']:.2f}% | {r['gzip_bytes'] / 1e6:.3f} MB | {r['latency_p50_ms']:.2f} ms |")
    print(f"\nresults: {results_path}")


if __name__ == "__main__":
    main()
