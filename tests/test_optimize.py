"""`edgeclf optimize`: pruning, QAT and PQAT on tiny runs, the quantizability pre-flight, and export."""
from __future__ import annotations

import contextlib
import json
import os
import tempfile

import numpy as np
import pytest

from edgeclf import tfenv
from edgeclf.devices.host import predict_file
from edgeclf.errors import ModelError, UsageError
from edgeclf.exporters.spec import ExportSpec
from edgeclf.jobs import optimize as optimizing
from edgeclf.jobs.export import export_run
from edgeclf.jobs.optimize import OptimizeConfig, optimize
from edgeclf.pipeline import batchnorm, distribute, quant_aware, streaming
from edgeclf.pipeline.predict import predict_probs
from edgeclf.pipeline.runs import Run

RUN_FILES = ["audit.json", "confusion_matrix.png", "labels.txt", "model.keras", "run.json", "split.json", "training.png"]


@pytest.fixture(scope="module")
def pqat_run(tiny_run):
    """PQAT the way the README describes it: prune the float run, then QAT the pruned run."""
    pruned = tiny_run.parent / "pruned-for-pqat"
    optimize(OptimizeConfig(run_dir=str(tiny_run), out=str(pruned), prune=0.5, epochs=1))
    out = tiny_run.parent / "pqat"
    return out, optimize(OptimizeConfig(run_dir=str(pruned), out=str(out), qat=True, epochs=1))


def _int8_weights(path):
    """Constant int8 4-D tensors (conv and depthwise kernels) of a .tflite file."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    found = []
    for detail in interpreter.get_tensor_details():
        if detail["dtype"] == np.int8 and len(detail["shape"]) == 4:
            try:
                found.append((detail["name"], interpreter.get_tensor(detail["index"])))
            except ValueError:  # activations have no data before invoke
                continue
    return found


# -- options -----------------------------------------------------------------------------
@pytest.mark.parametrize("sparsity", [0.0, 1.0, -0.2, 1.5])
def test_sparsity_outside_zero_one_is_a_usage_error(sparsity, tmp_path):
    with pytest.raises(UsageError, match="not a sparsity in"):
        OptimizeConfig(run_dir=str(tmp_path), out=str(tmp_path / "o"), prune=sparsity)


def test_other_bad_options(tmp_path):
    with pytest.raises(UsageError, match="nothing to do"):
        OptimizeConfig(run_dir=str(tmp_path), out=str(tmp_path / "o"))
    with pytest.raises(UsageError, match="--prune-for needs --prune"):
        OptimizeConfig(run_dir=str(tmp_path), out=str(tmp_path / "o"), qat=True, prune_for="xnnpack")
    with pytest.raises(UsageError, match="--out is missing"):
        OptimizeConfig(run_dir=str(tmp_path), qat=True)
    with pytest.raises(UsageError, match="--distill 1.0 is not a weight in"):
        OptimizeConfig(run_dir=str(tmp_path), out=str(tmp_path / "o"), qat=True, distill=1.0)
    OptimizeConfig(run_dir=str(tmp_path), check=True)  # the pre-flight alone needs no --out


def test_bad_cache_and_distribute_are_one_line_usage_errors(tmp_path, monkeypatch, capsys):
    with pytest.raises(UsageError, match="--cache ram is not supported") as error:
        OptimizeConfig(run_dir=str(tmp_path), out=str(tmp_path / "o"), qat=True, cache="ram")
    assert "use one of auto, memory, disk, none" in str(error.value)
    with pytest.raises(UsageError, match="--distribute tpu is not supported") as error:
        OptimizeConfig(run_dir=str(tmp_path), out=str(tmp_path / "o"), qat=True, distribute="tpu")
    assert "use one of none, mirrored, multi-worker" in str(error.value)
    from edgeclf.cli.main import main

    for flag, value in (("--cache", "ram"), ("--distribute", "tpu")):
        monkeypatch.setattr("sys.argv", ["edgeclf", "optimize", str(tmp_path), "--qat", "--out", str(tmp_path / "o"), flag, value])
        with pytest.raises(SystemExit) as exit_info:
            main()
        assert exit_info.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"error: Invalid value for '{flag}': '{value}'"), err
        assert "see `edgeclf optimize --help`" in err[0]
    assert os.listdir(tmp_path) == []


def test_distillation_mixes_the_teachers_probabilities_into_the_targets():
    from edgeclf.pipeline.epochs import epoch_dataset

    keras, tf = tfenv.keras(), tfenv.tf()
    uniform = keras.Sequential([keras.Input((4, 4, 3)), keras.layers.GlobalAveragePooling2D(),
                                keras.layers.Dense(3, activation="softmax", kernel_initializer="zeros")])
    images = tf.constant(np.random.default_rng(0).integers(0, 255, (6, 4, 4, 3), dtype=np.uint8))
    labels = tf.constant([0, 1, 2, 0, 1, 2])
    _, targets = next(iter(epoch_dataset(images, labels, 3, 6, seed=0, global_epoch=0, teacher=uniform, teacher_weight=0.25)))
    targets = targets.numpy()
    np.testing.assert_allclose(targets.sum(1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(np.sort(targets, 1), [[0.25 / 3, 0.25 / 3, 0.75 + 0.25 / 3]] * 6, rtol=1e-6)


def test_cli_reports_a_bad_sparsity_in_one_line(tmp_path):
    from click.testing import CliRunner

    from edgeclf.cli.main import cli

    result = CliRunner().invoke(cli, ["optimize", str(tmp_path), "--prune", "1.2", "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert "not a sparsity in (0, 1)" in result.output


# -- pre-flight ----------------------------------------------------------------------------
def test_preflight_names_the_problem_layers_of_a_nested_model():
    from edgeclf.pipeline.backbones import build_classifier, get_backbone

    keras = tfenv.keras()
    inner = build_classifier(get_backbone("mobilenetv2"), 3, 32, "none", alpha=0.35).model
    pixels = keras.Input((32, 32, 3), name="pixels")
    scaled = keras.layers.Rescaling(1.0, name="outer_scale")(pixels)
    nested = keras.Model(pixels, inner(scaled), name="wrapper")

    findings = {f.layer: f for f in quant_aware.preflight(nested)}
    assert findings[inner.name].handling == quant_aware.FLATTEN
    assert findings["outer_scale"].handling == quant_aware.OUTPUT_CONFIG
    assert findings["preprocess"].kind == "Rescaling" and findings["preprocess"].handling == quant_aware.OUTPUT_CONFIG
    assert not [f for f in findings.values() if f.handling == quant_aware.IMPOSSIBLE]

    flat = quant_aware.flatten(nested)
    assert not quant_aware.nested_models(flat)
    images = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype(np.float32)
    np.testing.assert_allclose(flat(images), nested(images), atol=1e-6)
    # The whole model quantizes once the pre-flight's fixes are applied.
    qat = quant_aware.quantize(nested, list(findings.values()))
    assert any(type(layer).__name__ == "QuantizeWrapperV2" for layer in qat.layers)


def test_preflight_fails_clearly_where_qat_is_impossible():
    keras = tfenv.keras()
    pixels = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, name="conv")(pixels)
    x = keras.layers.LayerNormalization(name="layer_norm")(x)
    model = keras.Model(pixels, keras.layers.GlobalAveragePooling2D()(x))
    findings = quant_aware.preflight(model)
    assert [(f.layer, f.handling) for f in findings] == [("layer_norm", quant_aware.IMPOSSIBLE)]
    with pytest.raises(ModelError, match=r"layer_norm \(LayerNormalization\).*--quant int8"):
        quant_aware.require_quantizable(findings)


def test_batchnorm_folding_keeps_the_outputs_and_leaves_exact_biases(tiny_run):
    keras = tfenv.keras()
    run = Run.open(tiny_run)
    model = run.load_model()
    images = run.plan.decode("val", run.img_size).images.astype(np.float32)
    before = model(images, training=False).numpy()
    folded = batchnorm.fold_batchnorm(model)
    batch_norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert folded and len(folded) == len(batch_norms)  # every MobileNetV2 BatchNorm follows a conv
    np.testing.assert_allclose(model(images, training=False).numpy(), before, atol=1e-5)
    for layer in batch_norms:
        assert not layer.trainable
        np.testing.assert_array_equal(layer.gamma.numpy(), 1.0)
        np.testing.assert_array_equal(layer.moving_mean.numpy(), 0.0)
        np.testing.assert_array_equal(layer.moving_variance.numpy() + np.float32(layer.epsilon), 1.0)


def test_all_zero_kernel_channels_get_a_range_the_converter_can_use():
    from edgeclf.pipeline.backbones import build_classifier, get_backbone

    model = build_classifier(get_backbone("mobilenetv2"), 3, 32, "none", alpha=0.35).model
    batchnorm.fold_batchnorm(model)
    conv = model.get_layer("block_1_expand")
    kernel = conv.kernel.numpy()
    kernel[..., :2] = 0.0  # two output channels pruned away entirely
    conv.kernel.assign(kernel)
    images = np.random.default_rng(0).uniform(0, 255, (8, 32, 32, 3)).astype(np.float32)
    qat = quant_aware.quantize(model, quant_aware.preflight(model), calibration_images=images)
    wrapper = next(layer for layer in qat.layers if getattr(layer, "layer", None) is not None and layer.layer.name == "block_1_expand")
    ranges = quant_aware.weights_by_name(wrapper)
    assert (ranges["kernel_max"].numpy()[:2] == 0).all()  # what tfmot learns from all-zero channels
    before = qat(images, training=False).numpy()

    assert quant_aware.widen_collapsed_weight_ranges(qat) >= 2
    highs = ranges["kernel_max"].numpy()
    assert (highs > 0).all() and highs[0] == np.median(highs[2:])
    np.testing.assert_array_equal(qat(images, training=False).numpy(), before)  # zero stays zero


def test_check_reports_without_writing(tiny_run, tmp_path):
    report = optimizing.check(OptimizeConfig(run_dir=str(tiny_run), check=True))
    assert report["qat_possible"] and [f["layer"] for f in report["findings"]] == ["preprocess"]


# -- pruning, QAT, PQAT ----------------------------------------------------------------------
def test_pruning_reaches_the_target_and_strips_the_wrappers(tiny_run, tmp_path):
    out = tmp_path / "pruned"
    result = optimize(OptimizeConfig(run_dir=str(tiny_run), out=str(out), prune=0.6, epochs=2))
    assert sorted(os.listdir(out)) == RUN_FILES
    info = json.loads((out / "run.json").read_text())
    prune = info["optimization"]["prune"]
    assert abs(prune["sparsity"]["overall"] - 0.6) <= 0.01
    assert prune["schedule"] == "polynomial" and info["optimization"]["qat"] is False
    assert info["optimization"]["source_run"] == str(tiny_run)
    assert set(info["metrics"]) == {"val"} and result["metrics"]["val"]["n_images"] == 15
    assert all(abs(s - 0.6) <= 0.02 for s in prune["sparsity"]["per_layer"].values())
    model = Run.open(out).load_model()
    assert not [layer for layer in model.layers if "prune" in type(layer).__name__.lower()]
    # The saved weights hold the zeros.
    kernels = [layer.kernel.numpy() for layer in model.layers if type(layer).__name__ == "Conv2D"]
    zeros = sum((k == 0).sum() for k in kernels) / sum(k.size for k in kernels)
    assert abs(zeros - 0.6) <= 0.01


def test_disk_cache_lives_in_the_staging_directory_and_does_not_ship(tiny_run, tmp_path, monkeypatch):
    created = []
    original = streaming.DiskImages.create

    def spy(path, *args):
        created.append(path)
        return original(path, *args)

    monkeypatch.setattr(streaming.DiskImages, "create", staticmethod(spy))
    source = _snapshot(tiny_run)
    out = tmp_path / "pruned"
    result = optimize(OptimizeConfig(run_dir=str(tiny_run), out=str(out), prune=0.5, epochs=1, cache="disk"))
    assert sorted(p.parent.name for p in created) == ["stream-cache", "stream-cache"]  # train and val
    assert {p.parent.parent.name[: len(".pruned.tmp-")] for p in created} == {".pruned.tmp-"}
    assert sorted(os.listdir(out)) == RUN_FILES and os.listdir(tmp_path) == ["pruned"]
    run = Run.open(out)
    assert run.load_model().output_shape == (None, 3)
    assert run.metrics["val"]["n_images"] == result["metrics"]["val"]["n_images"] == 15
    assert run.info["optimization"]["recipe"]["cache"] == "disk"
    assert abs(run.info["optimization"]["prune"]["sparsity"]["overall"] - 0.5) <= 0.01
    assert _snapshot(tiny_run) == source  # the source run is only read


def _snapshot(folder) -> dict:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(folder.rglob("*"))}


def test_pqat_under_mirrored_strategy(tiny_run, tmp_path, monkeypatch):
    """Pruning, then QAT, with the model and both wrappers built under tf.distribute.MirroredStrategy
    (one replica on a machine without GPUs)."""
    strategies = []
    original = optimizing.FineTuner.fit

    def fit(self, model, *args, **kwargs):
        strategies.append((type(model.distribute_strategy).__name__, type(model.trainable_variables[0]).__name__))
        return original(self, model, *args, **kwargs)

    monkeypatch.setattr(optimizing.FineTuner, "fit", fit)
    out = tmp_path / "mirrored"
    optimize(OptimizeConfig(run_dir=str(tiny_run), out=str(out), prune=0.5, qat=True, epochs=1, distribute="mirrored"))
    assert sorted(os.listdir(out)) == RUN_FILES
    run = Run.open(out)
    record = run.info["optimization"]
    assert record["recipe"]["distribute"] == "mirrored" and record["scheme"] == "Default8BitPrunePreserveQuantizeScheme"
    assert abs(record["sparsity_after_qat"] - 0.5) <= 0.01
    assert [h["stage"] for h in run.info["history"]] == ["prune", "qat"]
    assert strategies == [("MirroredStrategy", "MirroredVariable")] * 2  # both phases really trained distributed
    model = run.load_model()
    split = run.plan.decode("val", run.img_size)
    assert len(set(predict_probs(model, split.images).argmax(1))) > 1  # still input-dependent


def test_a_non_chief_worker_writes_only_into_scratch_it_deletes(tiny_run, tmp_path, monkeypatch):
    """A multi-worker cluster's other workers run the same job, but --out stays the chief's: the
    same placement as `edgeclf train` (distribute.place), here with this process as worker 1."""
    scratch = tmp_path / "worker-tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    monkeypatch.setattr(distribute, "cluster_role", lambda name: distribute.Role(False, "worker 1"))
    seen = []
    original = distribute.place

    def place(*args, **kwargs):
        with original(*args, **kwargs) as where:
            seen.append(where)
            yield where

    monkeypatch.setattr(distribute, "place", contextlib.contextmanager(place))
    result = optimize(OptimizeConfig(run_dir=str(tiny_run), out=str(tmp_path / "opt"), prune=0.5, epochs=1, cache="disk"))
    assert result["metrics"]["val"]["n_images"] == 15
    assert [(w.chief, w.out.parent.parent) for w in seen] == [(False, scratch)]
    assert os.listdir(tmp_path) == ["worker-tmp"] and os.listdir(scratch) == []


def test_constant_schedule_and_xnnpack_policy_prune_only_1x1_convolutions(tiny_run, tmp_path):
    out = tmp_path / "xnnpack"
    optimize(OptimizeConfig(run_dir=str(tiny_run), out=str(out), prune=0.7, prune_schedule="constant",
                            prune_for="xnnpack", epochs=1))
    prune = json.loads((out / "run.json").read_text())["optimization"]["prune"]
    model = Run.open(out).load_model()
    one_by_one = {layer.name for layer in model.layers if type(layer).__name__ == "Conv2D" and layer.kernel_size == (1, 1)}
    assert set(prune["sparsity"]["per_layer"]) == one_by_one
    assert abs(prune["sparsity"]["overall"] - 0.7) <= 0.01
    # Keras MobileNetV2 starts with a SAME-padded stem, which the policy's own check rejects: recorded, not hidden.
    assert prune["xnnpack_policy"]["model_supported"] is False and "Conv2D 3x3" in prune["xnnpack_policy"]["reason"]
    manifest = export_run(out, ExportSpec(quant="fp32", out=str(tmp_path / "fp32")))
    assert manifest["details"]["xnnpack_sparse"]["converter"] == "EXPERIMENTAL_SPARSITY"


def _agreement_of_int8_export(run_dir, out):
    """Top-1 agreement on the val split between a run's Keras model and its int8 TFLite export."""
    run = Run.open(run_dir)
    split = run.plan.decode("val", run.img_size)
    keras_top1 = predict_probs(run.load_model(), split.images).argmax(1)
    manifest = export_run(run_dir, ExportSpec(quant="int8", calib_size=12, out=str(out)))
    tflite_top1 = predict_file(out / "model.tflite", split.images).argmax(1)
    assert len(set(keras_top1)) > 1, "the model predicts one class: agreement would prove nothing"
    return float((tflite_top1 == keras_top1).mean()), manifest


def _all_zero_channels_with_usable_ranges(qat_model) -> int:
    """How many output channels of per-channel quantized kernels are all zero; fails if any
    such kernel channel still has a collapsed (max <= min) range, which int8 cannot encode."""
    zero_channels = 0
    for layer in qat_model.layers:
        ranges = quant_aware.weights_by_name(layer)
        for name in quant_aware.KERNELS:
            high, low = ranges.get(name + "_max"), ranges.get(name + "_min")
            if high is None or len(high.shape) != 1:
                continue
            assert (high.numpy() > low.numpy()).all(), f"{layer.name}.{name} has a collapsed range"
            # Output channels are the last axis (Conv2D), or the last two flattened (depthwise, multiplier 1).
            channels = ranges[name].numpy().reshape(-1, high.shape[0])
            zero_channels += int((~channels.any(axis=0)).sum())
    return zero_channels


def test_qat_model_exports_to_int8_that_agrees_with_it(tiny_run, tmp_path, monkeypatch):
    out = tmp_path / "qat"
    optimize(OptimizeConfig(run_dir=str(tiny_run), out=str(out), qat=True, epochs=1))
    info = json.loads((out / "run.json").read_text())["optimization"]
    assert info["qat"] is True and info["scheme"] == "Default8BitQuantizeScheme" and info["prune"] is None
    assert info["batchnorm_folded"] > 0 and info["depthwise_weights"] == "per_channel"
    assert [f["layer"] for f in info["preflight"]] == ["preprocess"]
    model = Run.open(out).load_model()
    # The count is the kernels' all-zero output channels, and none is left with a [0, 0] range.
    assert info["zero_channels_given_a_range"] == _all_zero_channels_with_usable_ranges(model)
    # Depthwise kernels carry one range per channel, as the TFLite export quantizes them.
    depthwise = [layer for layer in model.layers if type(getattr(layer, "layer", None)).__name__ == "DepthwiseConv2D"]
    assert depthwise
    for layer in depthwise:
        ranges = quant_aware.weights_by_name(layer)
        assert ranges["depthwise_kernel_max"].shape == (layer.layer.depthwise_kernel.shape[2],)
    # A QAT run needs no calibration images: with its training images gone, the export uses
    # the ranges QAT learned (the PQAT test below exports with real calibration images).
    from edgeclf import calibration

    monkeypatch.setattr(calibration, "training_images_available", lambda run: False)
    agreement, manifest = _agreement_of_int8_export(out, tmp_path / "int8")
    assert manifest["calibration"]["source"].startswith("pixel-range probe")
    assert agreement >= 0.9
    assert manifest["details"]["quantization_coverage"]["ops_integer_fraction"] == 1.0
    assert manifest["input"]["quantization"] == {"scale": 1.0, "zero_point": 0}
    assert manifest["source_run"]["optimization"]["qat"] is True
    with pytest.raises(UsageError, match="a QAT run learned int8 ranges"):
        export_run(out, ExportSpec(quant="int16x8", out=str(tmp_path / "16x8")))
    assert not (tmp_path / "16x8").exists()
    # QAT twice is refused, and so is pruning what QAT trained.
    with pytest.raises(UsageError, match="already had quantization-aware training"):
        optimize(OptimizeConfig(run_dir=str(out), out=str(tmp_path / "again"), qat=True))
    with pytest.raises(UsageError, match="already had quantization-aware training; pruning"):
        optimize(OptimizeConfig(run_dir=str(out), out=str(tmp_path / "again"), prune=0.5))


def test_pqat_keeps_its_sparsity_through_int8_export(pqat_run, tmp_path):
    out, result = pqat_run
    record = json.loads((out / "run.json").read_text())["optimization"]
    assert record["scheme"] == "Default8BitPrunePreserveQuantizeScheme"
    assert record["prune"] is None and record["previous"]["prune"]["target"] == 0.5
    assert abs(record["sparsity_after_qat"] - 0.5) <= 0.01
    assert result["optimization"]["sparsity_after_qat"] == record["sparsity_after_qat"]
    agreement, _ = _agreement_of_int8_export(out, tmp_path / "int8")
    assert agreement >= 0.9
    kernels = _int8_weights(tmp_path / "int8" / "model.tflite")
    pointwise = [w for name, w in kernels if w.shape[1:3] == (1, 1) and w.shape[0] > 1]
    assert pointwise, "no 1x1 convolution kernels found in the int8 model"
    zeros = sum((w == 0).sum() for w in pointwise) / sum(w.size for w in pointwise)
    assert zeros >= 0.49, f"only {zeros:.3f} of the int8 1x1 kernels are zero"


@pytest.mark.parametrize("cache", ["auto", "disk"])
def test_interrupted_optimize_leaves_no_run_directory(cache, tiny_run, tmp_path, monkeypatch):
    def explode(self, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(optimizing.FineTuner, "fit", explode)
    with pytest.raises(KeyboardInterrupt):
        optimize(OptimizeConfig(run_dir=str(tiny_run), out=str(tmp_path / "opt"), prune=0.5, cache=cache))
    assert os.listdir(tmp_path) == []  # with --cache disk, its file went with the staging directory


def test_runs_load_exactly_as_keras_loads_them(tiny_run, pqat_run, tmp_path):
    """The run loader builds the model from the archive's config and loads the extracted weights
    (Keras's own loader seeks inside the zip, slowly): the same weights and outputs, QAT included."""
    from edgeclf.pipeline.runs import MODEL_FILE

    keras = tfenv.keras()
    images = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3)).astype(np.float32)
    for run_dir in (tiny_run, pqat_run[0]):
        ours = Run.open(run_dir).load_model()
        with quant_aware.quantize_scope():
            theirs = keras.models.load_model(run_dir / MODEL_FILE, compile=False)
        assert [w.name for w in ours.weights] == [w.name for w in theirs.weights]
        assert all(np.array_equal(a.numpy(), b.numpy()) for a, b in zip(ours.weights, theirs.weights))
        assert np.array_equal(ours(images, training=False).numpy(), theirs(images, training=False).numpy())
        assert Run.open(run_dir).info["params"] == theirs.count_params()  # what the comparison table shows
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    for name in ("run.json", "labels.txt"):
        (damaged / name).write_bytes((tiny_run / name).read_bytes())
    (damaged / MODEL_FILE).write_bytes((tiny_run / MODEL_FILE).read_bytes()[:5000])
    with pytest.raises(ModelError, match="cannot load .*model.keras: not a Keras model archive"):
        Run.open(damaged).load_model()
