"""Where an ONNX model spends its time in ONNX Runtime, per op type, one thread: fp32 next to int8.

    python benchmarks/ort_profile.py MODEL.onnx [MODEL2.onnx ...] [--runs 30]

Prints, per model, the p50 latency and the time per op type after ORT's graph optimisations
(the kernels it really runs: QLinearConv, DequantizeLinear, ...), from ORT's own profiler.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np


def profile(path: str, runs: int) -> dict:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.enable_profiling = True
    options.profile_file_prefix = str(Path(tempfile.mkdtemp()) / "ort")
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    detail = session.get_inputs()[0]
    shape = [d if isinstance(d, int) else 1 for d in detail.shape]
    image = np.random.default_rng(0).uniform(0, 255, shape).astype(np.float32)
    times = []
    for _ in range(runs + 3):
        started = time.perf_counter()
        session.run(None, {detail.name: image})
        times.append(time.perf_counter() - started)
    trace = json.loads(Path(session.end_profiling()).read_text())
    per_op, counts = defaultdict(float), defaultdict(int)
    for event in trace:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            op = event.get("args", {}).get("op_name", "?")
            per_op[op] += event["dur"] / 1000 / (runs + 3)
            counts[op] += 1
    return {"p50_ms": 1000 * float(np.median(times[3:])),
            "ops": {op: (per_op[op], counts[op] // (runs + 3)) for op in sorted(per_op, key=lambda o: -per_op[o])}}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+")
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args(argv)
    for path in args.models:
        result = profile(path, args.runs)
        print(f"{path}: p50 {result['p50_ms']:.2f} ms (1 thread)")
        for op, (ms, count) in list(result["ops"].items())[:12]:
            print(f"  {op:<28}{count:>5} nodes {ms:>8.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
