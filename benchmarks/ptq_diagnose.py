"""Where does a model's full-integer TFLite int8 error come from? Op groups and blocks kept float, one at a time.

    python benchmarks/ptq_diagnose.py RUN_DIR --data TEST_DIR [--ptq input,bias] [--calib-size 300]
        [--weights best.npz --arch efficientnetb0 --img-size 160 --train TRAIN_DIR] [--json OUT.json]

The Keras model (a run's, or an architecture with saved weights for a run still training) is
prepared with the --ptq Keras techniques and calibrated once by the TFLite converter. Its
calibration is then quantized by the converter's own quantizer (`mlir_quantize`) several times:
fully, with one group of ops left float (`denylisted_nodes`, as tf.lite's QuantizationDebugger
does it), with 16-bit activations, and with edited ranges. Each variant is scored on the test
folder against the Keras float model: top-1 agreement and changed predictions. A group whose
float version removes many changes is where the error comes from.

Groups follow EfficientNet's layer names (block2a_expand_conv, ..._activation, ..._se_excite);
the op-type groups apply to any model.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edgeclf import tfenv  # noqa: E402
from edgeclf.devices.host import predict_file  # noqa: E402
from edgeclf.exporters import tflite_flatbuffer  # noqa: E402
from edgeclf.pipeline.datasets import decode, map_to_labels, scan_folder, stratified_sample  # noqa: E402
from edgeclf.pipeline.metrics import paired_difference  # noqa: E402
from edgeclf.pipeline.predict import predict_probs  # noqa: E402

ROLE = re.compile(r"(block\d+[a-z]|stem|top)_([a-z_]+?)(?:/|;|$)")

def op_table(calibrated: bytes) -> list[dict]:
    """Each op of the calibrated float model: type, output tensor name, block and role."""
    model = tflite_flatbuffer.unpack(calibrated)
    ops, _ = tflite_flatbuffer._enum_names()
    graph = model.subgraphs[0]
    rows = []
    for op in graph.operators:
        code = model.operatorCodes[op.opcodeIndex]
        name = graph.tensors[op.outputs[0]].name.decode()
        match = ROLE.search(name)
        rows.append({"op": ops.get(max(code.builtinCode, code.deprecatedBuiltinCode), "?"), "node": name,
                     "block": match.group(1) if match else "", "role": match.group(2) if match else ""})
    return rows

def groups(rows: list[dict]) -> dict[str, list[str]]:
    """Named sets of nodes to keep float."""
    named = defaultdict(list)
    for r in rows:
        if r["op"] in ("QUANTIZE", "DEQUANTIZE"):
            continue
        role, op = r["role"], r["op"]
        named[f"op {op}"].append(r["node"])
        if op in ("LOGISTIC", "MUL") and (role.endswith("activation") or role == "se_reduce"):
            named["swish (LOGISTIC+MUL)"].append(r["node"])
        if role == "se_reduce" and op in ("LOGISTIC", "MUL"):
            named["swish inside SE"].append(r["node"])
        if role.startswith("se_"):
            named["SE: all its ops"].append(r["node"])
        if role in ("se_expand", "se_excite") and op in ("LOGISTIC", "MUL"):
            named["SE gate (sigmoid + excite MUL)"].append(r["node"])
        if role == "se_excite":
            named["SE excite MUL output"].append(r["node"])
        if op == "DEPTHWISE_CONV_2D":
            named["depthwise conv outputs"].append(r["node"])
        if r["block"] == "top":
            named["top_conv + its swish"].append(r["node"])
        if r["block"] == "stem":
            named["stem conv + its swish"].append(r["node"])
        if r["block"]:
            named[f"block {r['block'][:6]}"].append(r["node"])
    return dict(named)

def float_op_census(model_bytes: bytes) -> dict:
    """How many ops compute in float (their first output is float32) and of which types: shows
    whether a denylist took effect, since a denylisted op must come out float."""
    model = tflite_flatbuffer.unpack(model_bytes)
    ops, types = tflite_flatbuffer._enum_names()
    graph = model.subgraphs[0]
    census: dict[str, int] = defaultdict(int)
    for op in graph.operators:
        code = model.operatorCodes[op.opcodeIndex]
        name = ops.get(max(code.builtinCode, code.deprecatedBuiltinCode), "?")
        if name not in ("QUANTIZE", "DEQUANTIZE") and types.get(graph.tensors[op.outputs[0]].type) == "FLOAT32":
            census[name] += 1
    return dict(census)

def p50_ms(path: Path, image, runs: int = 30) -> float:
    """Median latency of one invoke, one thread (a rough figure on a shared machine)."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path), num_threads=1)
    interpreter.allocate_tensors()
    detail = interpreter.get_input_details()[0]
    interpreter.set_tensor(detail["index"], np.asarray(image, np.float32)[None].astype(detail["dtype"]))
    times = []
    for _ in range(runs + 3):
        started = time.perf_counter()
        interpreter.invoke()
        times.append(time.perf_counter() - started)
    return 1000 * float(np.median(times[3:]))

def load_images(folder: Path, labels: list[str], size: int, count: int | None, seed: int):
    scanned = map_to_labels(scan_folder(folder, "images", min_classes=1), labels, "images")
    samples = scanned.samples if count is None else stratified_sample(scanned.samples, len(labels), count, seed)
    return decode("images", scanned.root, labels, samples, size)

def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", nargs="?")
    parser.add_argument("--data", required=True)
    parser.add_argument("--ptq", default="input,bias")
    parser.add_argument("--calib-size", type=int, default=300)
    parser.add_argument("--weights", help="best.npz of a run still training (with --arch, --img-size, --train)")
    parser.add_argument("--arch", default="efficientnetb0")
    parser.add_argument("--img-size", type=int, default=160)
    parser.add_argument("--train", help="calibration images folder (default: the run's)")
    parser.add_argument("--only", help="comma list of group names to try (default: all)")
    parser.add_argument("--val", action="store_true", help="also score on the run's val split")
    parser.add_argument("--calibrated", help="cache of the calibrated model: read if it exists, else written")
    parser.add_argument("--ranges", default="", help="also try range edits: comma list of plain, swish")
    parser.add_argument("--json")
    args = parser.parse_args(argv)

    from edgeclf.exporters import tflite_ranges as ranges

    tf = tfenv.tf()
    if args.weights:
        from edgeclf.pipeline.backbones import build_classifier, get_backbone

        labels = sorted(p.name for p in Path(args.data).iterdir() if p.is_dir())
        model = build_classifier(get_backbone(args.arch), len(labels), args.img_size, "none").model
        with np.load(args.weights) as saved:
            model.set_weights([saved[f"arr_{i}"] for i in range(len(saved.files))])
        calib = load_images(Path(args.train), labels, args.img_size, args.calib_size, 0).images
        size = args.img_size
    else:
        from edgeclf import calibration
        from edgeclf.pipeline.runs import Run

        run = Run.open(args.run_dir)
        labels, size, model = run.labels, run.img_size, run.load_model()
        calib = calibration.build(run, args.calib_size).images
    test = load_images(Path(args.data), labels, size, None, 0)
    splits = {"test": (test, predict_probs(model, test.images))}
    if args.val:
        val = run.plan.decode("val", size)
        splits = {"val": (val, predict_probs(model, val.images)), **splits}
    cache = Path(args.calibrated) if args.calibrated else None
    if cache is not None and cache.exists():
        calibrated = cache.read_bytes()
        print(f"calibrated model read from {cache}")
    else:
        calibrated = calibrate(tf, ranges, model, calib, args.ptq)
        if cache is not None:
            cache.write_bytes(calibrated)
    named = groups(op_table(calibrated))
    from tensorflow.lite.python import convert

    results = []
    work = Path(tempfile.mkdtemp(prefix="ptq-diagnose-"))

    def score(label, model_bytes, timed=False):
        path = work / "m.tflite"
        path.write_bytes(model_bytes)
        row = {"variant": label, "float_ops": float_op_census(model_bytes)}
        text = f"{label:<44}"
        for split, (data, float_probs) in splits.items():
            probs = predict_file(path, data.images, threads=2, label=f"{label} on {split}")
            paired = paired_difference(probs, data.labels, float_probs)
            row[split] = {"n": len(data), "changed": paired["changed"], "agreement": 1 - paired["changed"] / len(data),
                          "drop": paired["drop"], "drop_ci95": paired["drop_ci95"],
                          "top1": float((probs.argmax(1) == data.labels).mean())}
            text += f" {split} changed {paired['changed']:>4} agree {100 * row[split]['agreement']:5.1f}% drop {100 * paired['drop']:+.2f}"
        if timed:
            row["p50_ms_1thread"] = p50_ms(path, test.images[0])
            text += f"  p50 {row['p50_ms_1thread']:.2f} ms"
        results.append(row)
        print(text + f"  float ops {sum(row['float_ops'].values())}", flush=True)

    def quantized(denylisted=None, inference_type=None, source=None):
        kwargs = {"denylisted_nodes": denylisted} if denylisted else {}
        if inference_type is not None:
            kwargs["inference_type"] = inference_type
        with tfenv.native_stderr_silenced():
            return convert.mlir_quantize(source or calibrated, False, input_data_type=tf.float32, output_data_type=tf.float32, **kwargs)

    float_path = work / "float.tflite"
    float_path.write_bytes(calibrated)
    print(f"float (calibrated model): p50 {p50_ms(float_path, test.images[0]):.2f} ms, 1 thread", flush=True)
    score("full int8", quantized(), timed=True)
    for edit in filter(None, args.ranges.split(",")):
        edited, info = ranges.with_mse_ranges(calibrated, calib, plain=edit == "plain", swish_aware=edit == "swish")
        print(f"ranges {edit}: {info['narrowed']} of {info['tensors']} tensors narrowed")
        score(f"ranges {edit}", quantized(source=edited))
    try:
        from tensorflow.compiler.mlir.lite import types_pb2 as _types_pb2
        score("16x8 (int16 activations)", quantized(inference_type=_types_pb2.QUANTIZED_INT16), timed=True)
    except Exception as exc:  # noqa: BLE001 - a diagnosis script reports and goes on
        print(f"16x8 failed: {exc}")
    wanted = set(args.only.split(",")) if args.only else None
    for name, nodes in named.items():
        if wanted is not None and name not in wanted:
            continue
        if name.startswith("op ") and name[3:] in ("SOFTMAX", "RESHAPE"):
            continue
        try:
            score(f"float: {name} ({len(nodes)})", quantized(denylisted=nodes))
        except Exception as exc:  # noqa: BLE001
            print(f"float: {name} failed: {str(exc)[:200]}")
    if args.json:
        Path(args.json).write_text(json.dumps({"ptq": args.ptq, "results": results}, indent=2))
    return 0

def calibrate(tf, ranges, model, calib, recipe: str) -> bytes:
    """The Keras model prepared with the --ptq Keras techniques, calibrated by the TFLite converter."""
    from edgeclf import ptq

    prepared, _ = ptq.prepare_keras(model, calib, ptq.parse(recipe))
    converter = tf.lite.TFLiteConverter.from_keras_model(prepared)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([image[None].astype(np.float32)] for image in calib)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    started = time.perf_counter()
    calibrated = ranges.calibrate_only(converter)
    print(f"calibrated in {time.perf_counter() - started:.0f} s")
    return calibrated

if __name__ == "__main__":
    sys.exit(main())
