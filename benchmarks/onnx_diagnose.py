"""Where does a model's ONNX Runtime int8 (QDQ) error come from? Quantizer variants from one calibration.

    python benchmarks/onnx_diagnose.py RUN_DIR --data TEST_DIR [--ptq input,bias] [--calib-size 300]
        [--variants default,no-swish,no-sigmoid-mul,percentile,int16] [--json OUT.json]

The Keras model is prepared with the --ptq Keras techniques, converted by tf2onnx and
pre-processed once; ORT's quantize_static then runs per variant (per-channel int8 weights,
uint8 activations unless said otherwise), sharing one calibration cache where the method is the
same. Each variant is scored on the run's val split and on the test folder against the Keras
float model: agreement and changed predictions, and its float-kept op count.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edgeclf import tfenv  # noqa: E402
from edgeclf.pipeline.datasets import decode, map_to_labels, scan_folder  # noqa: E402
from edgeclf.pipeline.metrics import paired_difference  # noqa: E402
from edgeclf.pipeline.predict import predict_probs  # noqa: E402

# ORT's default op list (QLinearOpsRegistry + QDQRegistry, as quantize_static takes it) minus the ops a variant keeps in float.
VARIANTS = {
    "default": {},
    "no-sigmoid-mul": {"exclude_types": ("Sigmoid", "Mul")},  # swish and the SE gate in float
    "percentile": {"method": "Percentile"},
    "entropy": {"method": "Entropy"},
    "int16": {"activation": "QInt16"},
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--data", required=True)
    parser.add_argument("--ptq", default="input,bias")
    parser.add_argument("--calib-size", type=int, default=300)
    parser.add_argument("--variants", default="default,no-sigmoid-mul,percentile")
    parser.add_argument("--json")
    args = parser.parse_args(argv)

    import numpy as np
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    from edgeclf import calibration, ptq
    from edgeclf.exporters import onnx as onnx_exporter
    from edgeclf.exporters import onnx_quantize
    from edgeclf.pipeline.backbones import INPUT_NAME
    from edgeclf.pipeline.runs import Run

    tfenv.tf()
    run = Run.open(args.run_dir)
    model = run.load_model()
    calib = calibration.build(run, args.calib_size)
    folder = map_to_labels(scan_folder(Path(args.data), "test data"), run.labels, "test")
    test = decode("test", folder.root, run.labels, folder.samples, run.img_size)
    val = run.plan.decode("val", run.img_size)
    splits = {name: (data, predict_probs(model, data.images)) for name, data in (("val", val), ("test", test))}
    prepared, _ = ptq.prepare_keras(model, calib.images, ptq.parse(args.ptq))
    work = Path(tempfile.mkdtemp(prefix="onnx-diagnose-"))
    pre = onnx_quantize._pre_processed(onnx_exporter.convert(prepared, run.img_size), work)
    op_types = Counter(node.op_type for node in onnx.load(str(pre)).graph.node)
    print("float graph ops:", dict(op_types), flush=True)
    results = []
    for name in args.variants.split(","):
        variant = VARIANTS[name]
        method = variant.get("method", "MinMax")
        quantized_types = [t for t in {**QLinearOpsRegistry, **QDQRegistry} if t in op_types and t not in variant.get("exclude_types", ())]
        out = work / f"{name}.onnx"
        quantize_static(str(pre), str(out), onnx_quantize.CalibrationReader(calib), quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=getattr(QuantType, variant.get("activation", "QUInt8")),
                        weight_type=QuantType.QInt8, calibrate_method=getattr(CalibrationMethod, method),
                        op_types_to_quantize=quantized_types,
                        extra_options={"TensorQuantOverrides": {INPUT_NAME: [{"rmin": np.float32(0.0), "rmax": np.float32(255.0)}]}},
                        calibration_cache_path=str(work / f"calibration-{method}.json"))
        row = {"variant": name, "quantized_op_types": quantized_types}
        text = f"{name:<18}"
        for split, (data, float_probs) in splits.items():
            probs = onnx_quantize._run_onnx(out, data.images)
            paired = paired_difference(probs, data.labels, float_probs)
            row[split] = {"n": len(data), "changed": paired["changed"], "agreement": 1 - paired["changed"] / len(data),
                          "drop": paired["drop"], "drop_ci95": paired["drop_ci95"]}
            text += f" {split} changed {paired['changed']:>4} agree {100 * row[split]['agreement']:5.1f}% drop {100 * paired['drop']:+.2f}"
        results.append(row)
        print(text, flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"ptq": args.ptq, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
