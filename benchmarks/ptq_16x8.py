"""16x8 (int16 activations, int8 weights) through the TFLite converter's own route, scored on val and test.

    python benchmarks/ptq_16x8.py RUN_DIR RECIPE OUT.tflite [TEST_DIR]

RECIPE is the --ptq Keras techniques (not `input` on EfficientNetB0: its per-channel PAD keeps a
float pad value that 16x8 cannot load). Prints changed predictions against the Keras float model
and the one-thread p50.
"""
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import numpy as np
import ptq_diagnose as d
from edgeclf import tfenv, ptq, calibration
from edgeclf.pipeline.runs import Run
from edgeclf.pipeline.predict import predict_probs
from edgeclf.pipeline.metrics import paired_difference
from edgeclf.devices.host import predict_file

run_dir, recipe, out = sys.argv[1], sys.argv[2], Path(sys.argv[3])
test_dir = Path(sys.argv[4] if len(sys.argv) > 4 else "../shared/datasets/flowers128/test")
tf = tfenv.tf()
run = Run.open(run_dir)
model = run.load_model()
calib = calibration.build(run, 300).images
test = d.load_images(test_dir, run.labels, run.img_size, None, 0)
val = run.plan.decode("val", run.img_size)
prepared, _ = ptq.prepare_keras(model, calib, ptq.parse(recipe))
c = tf.lite.TFLiteConverter.from_keras_model(prepared)
c.optimizations = [tf.lite.Optimize.DEFAULT]
c.representative_dataset = lambda: ([im[None].astype(np.float32)] for im in calib)
c.target_spec.supported_ops = [tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8]
t = time.perf_counter()
with tfenv.native_stderr_silenced():
    out.write_bytes(c.convert())
print(f"converted in {time.perf_counter() - t:.0f} s; float ops {d.float_op_census(out.read_bytes())}", flush=True)
for name, data in (("val", val), ("test", test)):
    fp = predict_probs(model, data.images)
    probs = predict_file(out, data.images, threads=2, label=name)
    p = paired_difference(probs, data.labels, fp)
    print(f"16x8 {recipe} {name}: changed {p['changed']}/{len(data)} agree {100*(1-p['changed']/len(data)):.1f}% drop {100*p['drop']:+.2f} ci {p['drop_ci95']}", flush=True)
print(f"p50 1 thread {d.p50_ms(out, test.images[0]):.2f} ms", flush=True)
