"""Post-training int8 techniques: equalization keeps the float model, bias correction lowers the
rounding error and ships in the int8 model, MSE ranges narrow min/max, and the export wires them."""
from __future__ import annotations

import json

import numpy as np
import pytest

from edgeclf.errors import UsageError


def _keras():
    from edgeclf import tfenv

    return tfenv.keras()


def _conv_model(seed: int = 0):
    """raw pixels -> Rescaling -> Conv (with one outlier weight per channel) -> ReLU -> GAP -> Dense."""
    keras = _keras()
    inputs = keras.Input((12, 12, 3))
    x = keras.layers.Rescaling(1 / 255.0)(inputs)
    x = keras.layers.Conv2D(6, 3, use_bias=True, name="conv")(x)
    x = keras.layers.ReLU(name="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(3, name="head")(x)
    model = keras.Model(inputs, outputs)
    rng = np.random.default_rng(seed)
    # Small positive weights plus one large one: the int8 step (max/127) is coarse for the small
    # ones, and positive inputs turn their rounding into a mean shift of the output.
    kernel = rng.uniform(0.001, 0.02, (3, 3, 3, 6)).astype(np.float32)
    kernel[0, 0, 0, :] = 1.0
    model.get_layer("conv").set_weights([kernel, np.zeros(6, np.float32)])
    return model


def _images(n: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 12, 12, 3)).astype(np.float32)


def _conv_output(model, images):
    keras = _keras()
    return keras.Model(model.input, model.get_layer("conv").output)(images, training=False).numpy()


def test_rounding_delta_matches_the_symmetric_per_channel_grid():
    from edgeclf.ptq.bias_correction import rounding_delta

    kernel = np.array([[0.5, -2.0], [0.3, 1.0]], np.float32)  # Dense (in, out): channels are columns
    quantized = kernel + rounding_delta(kernel)
    scales = np.array([0.5, 2.0]) / 127
    np.testing.assert_allclose(quantized, np.round(kernel / scales) * scales, atol=1e-7)
    assert rounding_delta(np.zeros((2, 2), np.float32)).max() == 0  # all-zero channel: no scale 0 division


def _rounded(model):
    """A copy whose conv kernel is rounded to the converter's int8 grid (biases kept)."""
    from edgeclf.pipeline.quant_aware import independent_copy
    from edgeclf.ptq.bias_correction import rounding_delta

    copy = independent_copy(model)
    kernel, bias = copy.get_layer("conv").get_weights()
    copy.get_layer("conv").set_weights([kernel + rounding_delta(kernel), bias])
    return copy


def test_bias_correction_lowers_the_mean_output_error_of_rounded_weights():
    from edgeclf.ptq import bias_correction

    original, model = _conv_model(), _conv_model()
    held_out = _images(32, seed=2)
    reference = _conv_output(original, held_out)
    before = np.abs((_conv_output(_rounded(model), held_out) - reference).mean(axis=(0, 1, 2)))
    details = bias_correction.correct_biases(model, _images(32))
    after = np.abs((_conv_output(_rounded(model), held_out) - reference).mean(axis=(0, 1, 2)))
    assert details["corrected"] == 2  # conv and head
    assert after.mean() < 0.2 * before.mean()


def test_bias_correction_after_output_aware_rounding_measures_the_shift_from_the_float_kernel():
    """Rounding moves kernels onto the grid, so the shift bias correction removes is the one from
    the float kernel it was given, not the (now zero) distance to the grid."""
    from edgeclf.ptq import bias_correction, rounding

    original, model = _conv_model(), _conv_model()
    float_kernels, _ = rounding.round_weights(model, _images(32))
    held_out = _images(32, seed=2)
    reference = _conv_output(original, held_out)
    before = np.abs((_conv_output(model, held_out) - reference).mean(axis=(0, 1, 2)))
    bias_correction.correct_biases(model, _images(32), reference=float_kernels)
    after = np.abs((_conv_output(model, held_out) - reference).mean(axis=(0, 1, 2)))
    assert before.mean() > 1e-4 and after.mean() < 0.3 * before.mean()


def _int8_conv_input(model, index: int, dtype):
    """The only CONV_2D of `model` converted to TFLite int8: its input `index` tensor and stored values (None for an activation)."""
    from edgeclf import tfenv
    from edgeclf.exporters import tflite_flatbuffer

    tf = tfenv.tf()
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([image[None]] for image in _images(16))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    unpacked = tflite_flatbuffer.unpack(converter.convert())
    graph = unpacked.subgraphs[0]
    ops, _ = tflite_flatbuffer._enum_names()
    conv = [op for op in graph.operators
            if ops[max(unpacked.operatorCodes[op.opcodeIndex].builtinCode,
                       unpacked.operatorCodes[op.opcodeIndex].deprecatedBuiltinCode)] == "CONV_2D"]
    assert len(conv) == 1
    tensor = graph.tensors[conv[0].inputs[index]]
    data = unpacked.buffers[tensor.buffer].data  # None for an activation
    return tensor, None if data is None else np.frombuffer(bytes(data), dtype)


def test_corrected_bias_survives_tflite_conversion():
    from edgeclf.ptq import bias_correction

    model = _conv_model()
    bias_correction.correct_biases(model, _images(16))
    expected = model.get_layer("conv").get_weights()[1]
    assert np.abs(expected).max() > 1e-3
    bias_tensor, stored = _int8_conv_input(model, 2, np.int32)
    dequantized = stored * np.asarray(bias_tensor.quantization.scale)
    # The Rescaling folds into the conv (kernel / 255, no offset), so the bias is the Keras bias.
    np.testing.assert_allclose(dequantized, expected, atol=float(np.max(bias_tensor.quantization.scale)))


def test_mse_range_narrows_a_long_tail_and_keeps_a_flat_one():
    from edgeclf.exporters.tflite_ranges import BINS, mse_optimal

    tail = np.zeros(BINS)
    tail[: BINS // 10] = 100_000
    tail[-1] = 1  # one outlier at the recorded max
    low, high, ratio = mse_optimal(tail, 0.0, 10.0)
    assert low == 0.0 and high < 5.0 and ratio < 0.5
    flat = np.full(BINS, 10)
    low, high, _ = mse_optimal(flat, -1.0, 1.0)
    assert low <= -0.99 and high >= 0.99


def test_swish_input_range_lets_the_negative_tail_go():
    """A tensor that feeds swish: values below about -6 all map to ~0, so the chosen minimum cuts
    them (finer steps where swish varies), while plain MSE, which must keep them, cannot."""
    from edgeclf.exporters.tflite_ranges import BINS, mse_optimal, swish_optimal

    low, high = -40.0, 10.0
    centres = low + (np.arange(BINS) + 0.5) * (high - low) / BINS
    counts = np.where(centres > -4, 1000, 20).astype(np.int64)  # a long, thin negative tail
    s_low, s_high, ratio = swish_optimal(counts, low, high)
    m_low, _, _ = mse_optimal(counts, low, high)
    assert -12 < s_low < -4 and s_high >= 9 and ratio < 0.3
    assert m_low < s_low


def test_swish_ranges_find_every_swish_and_stay_full_integer():
    """LOGISTIC + MUL of the same tensor is a swish; the technique edits exactly those inputs."""
    from edgeclf import tfenv
    from edgeclf.exporters import tflite_flatbuffer
    from edgeclf.exporters import tflite_ranges

    keras, tf = _keras(), tfenv.tf()
    inputs = keras.Input((12, 12, 3))
    x = keras.layers.Rescaling(1 / 255.0)(inputs)
    x = keras.layers.Conv2D(8, 3, activation="swish", name="conv")(x)
    x = keras.layers.DepthwiseConv2D(3, activation="swish", name="dw")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x))
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([image[None]] for image in _images(16))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    calibrated = tflite_ranges.calibrate_only(converter)
    assert len(tflite_ranges.swish_inputs(tflite_flatbuffer.unpack(calibrated))) == 2
    edited, details = tflite_ranges.with_mse_ranges(calibrated, _images(16), plain=False, swish_aware=True)
    assert details["swish_inputs"] == 2 and details["tensors"] == 2
    quantized = tflite_ranges.quantize(edited, tf.uint8)
    assert not tflite_flatbuffer.float_ops(quantized)


def test_equalization_keeps_relu_models_exact_and_evens_weight_ranges():
    from edgeclf.ptq import equalize

    keras = _keras()
    inputs = keras.Input((10, 10, 3))
    x = keras.layers.Conv2D(4, 3, name="a")(inputs)
    x = keras.layers.ReLU()(x)
    x = keras.layers.DepthwiseConv2D(3, name="b")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Conv2D(2, 1, name="c")(x)
    x = keras.layers.ReLU(6.0)(x)
    x = keras.layers.Conv2D(2, 1, name="d")(x)
    model = keras.Model(inputs, x)
    kernel = np.random.default_rng(0).normal(0, 1, (3, 3, 3, 4)).astype(np.float32)
    kernel[..., 0] *= 30  # one channel 30x larger
    model.get_layer("a").set_weights([kernel, np.zeros(4, np.float32)])
    images = np.random.default_rng(1).uniform(0, 0.02, (20, 10, 10, 3)).astype(np.float32)
    before = model(images).numpy()
    details = equalize.equalize(model)
    after = model(images).numpy()
    assert details["links"] == 2
    assert details["skipped"][equalize.RELU6_WHY] == ["c"]
    np.testing.assert_allclose(after, before, atol=1e-5)
    ranges = np.abs(model.get_layer("a").get_weights()[0]).max(axis=(0, 1, 2))
    assert ranges.max() / ranges.min() < np.abs(kernel).max(axis=(0, 1, 2)).max() / np.abs(kernel).max(axis=(0, 1, 2)).min()


def test_equalization_keeps_mobilenetv2_logits_on_real_images(flowers, mobilenet_weights):
    from PIL import Image

    from edgeclf.pipeline.backbones import build_classifier, get_backbone
    from edgeclf.ptq import equalize, prepare_keras

    keras = _keras()
    classifier = build_classifier(get_backbone("mobilenetv2"), 5, 96, str(mobilenet_weights))
    model = classifier.model
    files = sorted((flowers / "train").glob("*/*.jpg"))[::150]
    images = np.stack([np.asarray(Image.open(f).convert("RGB").resize((96, 96)), np.float32) for f in files])
    equalized, details = prepare_keras(model, images, ("cle",))
    # Linear links (a project conv straight into the next expand or Conv_1) are equalized;
    # every link through ReLU6 is reported as skipped.
    assert details["cle"]["pairs"] == ["expanded_conv_project -> block_1_expand", "block_16_project -> Conv_1"]
    assert len(details["cle"]["skipped"][equalize.RELU6_WHY]) == 34  # 17 into a depthwise, 17 out of one
    held_out = images

    def logits(m):
        features = keras.Model(m.input, m.get_layer("pool").output)(held_out, training=False).numpy()
        kernel, bias = m.get_layer("classifier").get_weights()
        return features @ kernel + bias

    assert np.abs(logits(equalized) - logits(model)).max() <= 1e-4
    assert "its output goes to Add (not scale-equivariant or not a convolution)" in details["cle"]["skipped"]


def test_ptq_option_is_parsed_and_limited_to_what_each_format_offers():
    from edgeclf import ptq
    from edgeclf.exporters.spec import ExportSpec

    assert ptq.parse("ranges, CLE") == ("cle", "ranges")
    assert ptq.parse("none") == ()
    assert ExportSpec(quant="int8", ptq="bias,cle").ptq == "cle,bias"
    assert ExportSpec(target="onnx", quant="int8", ptq="bias,cle").ptq == "cle,bias"
    assert ExportSpec(target="openvino", quant="int8", ptq="bias").ptq == "bias"
    with pytest.raises(UsageError, match="not a technique"):
        ExportSpec(quant="int8", ptq="magic")
    with pytest.raises(UsageError, match="--ptq applies only"):
        ExportSpec(target="tflite", quant="fp32", ptq="bias")
    with pytest.raises(UsageError, match="--ptq ranges is not available for --target onnx") as exc:
        ExportSpec(target="onnx", quant="int8", ptq="bias,ranges")
    assert exc.value.fix == "use a comma list of input, cle, round, sequential, bias, or none"
    assert ptq.parse("bias,round,input") == ("input", "round", "bias")
    assert ptq.parse("sequential,input") == ("input", "sequential")
    with pytest.raises(UsageError, match="--ptq sequential is not available for --target openvino"):
        ExportSpec(target="openvino", quant="int8", ptq="sequential")  # NNCF's scheme is not the simulated one
    with pytest.raises(UsageError, match="sequential already does what round and bias would") as exc:
        ptq.parse("input,round,sequential,bias")
    assert "drop round,bias" in exc.value.fix
    from edgeclf import exporters
    from edgeclf.cli.export import command as export

    help_text = " ".join(next(p for p in export.params if p.name == "ptq").help.split())
    for name, shown in (("tflite", "TFLite"), ("onnx", "ONNX"), ("openvino", "OpenVINO")):
        assert f"{ptq.label(exporters.get(name).ptq_default)} for {shown}" in help_text  # the help says the real default


def test_ptq_default_is_chosen_per_format_and_backbone(monkeypatch):
    """A backbone with its own measured default gets it; the others get the format's."""
    import dataclasses

    from edgeclf import exporters, ptq
    from edgeclf.exporters.spec import ExportSpec

    tflite = exporters.get("tflite")
    custom = dataclasses.replace(tflite, ptq_default_by_arch={"efficientnetb0": ("input", "round", "bias")})
    assert ptq.for_format(custom, None, "efficientnetb0") == ("input", "round", "bias")
    assert ptq.for_format(custom, None, "mobilenetv2") == tflite.ptq_default
    assert ptq.for_format(custom, "bias", "efficientnetb0") == ("bias",)  # --ptq given: as given
    monkeypatch.setitem(exporters.registry(), "tflite", custom)  # ptq.prepare asks the spec with the run's arch
    assert ExportSpec(quant="int8").ptq_techniques("efficientnetb0") == ("input", "round", "bias")
    assert ExportSpec(quant="int8").ptq_techniques("mobilenetv2") == tflite.ptq_default
    for fmt in exporters.registry().values():
        assert fmt.default_ptq("mobilenetv2") == fmt.ptq_default  # measured on MobileNetV2 runs: no override
        for arch, techniques in fmt.ptq_default_by_arch.items():
            assert set(techniques) <= set(fmt.ptq) and arch in ("mobilenetv2", "efficientnetb0", "nasnetmobile")


def test_export_with_all_techniques_records_them_and_stays_integer(tiny_run, tmp_path):
    from edgeclf.jobs.export import export_run
    from edgeclf.exporters import tflite_flatbuffer
    from edgeclf.exporters.spec import ExportSpec

    manifest = export_run(tiny_run, ExportSpec(quant="int8", ptq="cle,bias,ranges", calib_size=30, out=str(tmp_path / "a")))
    details = manifest["details"]["ptq"]
    assert details["recipe"] == "cle,bias,ranges"
    assert details["cle"]["links"] > 0 and details["bias_correction"]["corrected"] > 0
    assert details["ranges"]["tensors"] > 0
    model_bytes = (tmp_path / "a" / manifest["model_file"]).read_bytes()
    assert tflite_flatbuffer.io_tensors(model_bytes)["inputs"][0]["dtype"] == "uint8"
    assert manifest["accuracy"]["agreement"] >= 0.8
    json.dumps(manifest)  # the details serialize


@pytest.mark.parametrize("target", ["onnx", "openvino"])
def test_onnx_and_openvino_int8_take_the_keras_techniques(tiny_run, tmp_path, target):
    """cle and bias rewrite the Keras model before conversion, so ORT's and NNCF's int8 get it too."""
    from edgeclf.jobs.export import export_run
    from edgeclf.exporters.spec import ExportSpec

    manifest = export_run(tiny_run, ExportSpec(target=target, quant="int8", ptq="cle,bias", calib_size=30, out=str(tmp_path / target)))
    details = manifest["details"]["ptq"]
    assert manifest["export"]["ptq"] == details["recipe"] == "cle,bias"
    assert details["batchnorm_folded"] > 0 and details["cle"]["links"] > 0 and details["bias_correction"]["corrected"] > 0
    assert manifest["accuracy"]["agreement"] >= 0.8  # the rewritten model still is the run's model


def test_openvino_accuracy_control_keeps_the_measured_drop_within_its_limit(tiny_run, tmp_path):
    """NNCF's quantize_with_accuracy_control, checked by our own scoring of the artefact on val."""
    from edgeclf.jobs.export import export_run
    from edgeclf.exporters.spec import ExportSpec

    spec = ExportSpec(target="openvino", quant="int8", accuracy_control=0.0, calib_size=30, out=str(tmp_path / "ac"))
    manifest = export_run(tiny_run, spec)
    assert manifest["details"]["quantization"]["tool"] == "nncf.quantize_with_accuracy_control"
    assert manifest["details"]["quantization"]["max_drop"] == 0.0
    assert manifest["accuracy"]["top1"] >= manifest["accuracy"]["float_top1"]
    with pytest.raises(UsageError, match="--accuracy-control applies only to --target openvino --quant int8"):
        ExportSpec(target="tflite", quant="int8", accuracy_control=0.5)


@pytest.mark.parametrize("arch", ["efficientnetb0", "nasnetmobile"])
def test_keras_techniques_on_the_other_backbones_keep_the_model_and_say_what_they_skipped(arch):
    """EfficientNetB0 (swish, squeeze-excite) and NASNetMobile (separable convs, many branches):
    equalization stays exact where it acts, and every skipped layer comes with its reason."""
    from edgeclf import ptq
    from edgeclf.pipeline.backbones import build_classifier, get_backbone

    model = build_classifier(get_backbone(arch), 3, 32, "none").model
    images = np.random.default_rng(0).integers(0, 256, (16, 32, 32, 3)).astype(np.uint8)
    float_images = images.astype(np.float32)
    before = model.predict(float_images, verbose=0)
    equalized, details = ptq.prepare_keras(model, images, ("cle",))
    assert np.abs(equalized.predict(float_images, verbose=0) - before).max() <= 1e-4
    skipped = details["cle"]["skipped"]
    assert skipped and all(isinstance(why, str) and why and layers for why, layers in skipped.items())
    corrected, details = ptq.prepare_keras(model, images, ("bias",))
    assert details["bias_correction"]["corrected"] > 0
    assert np.abs(corrected.predict(float_images, verbose=0) - before).max() < 0.05  # only the rounding shift moves
    json.dumps(details)  # recorded as is in the manifest
    folded, details = ptq.prepare_keras(model, images, ("input",))
    fold = details["input_fold"]
    assert fold["folded"] or fold["skipped"]  # EfficientNet's per-channel normalisation may not fold exactly
    assert np.abs(folded.predict(float_images, verbose=0) - before).max() <= 1e-4
    rounded, details = ptq.prepare_keras(model, images, ("input", "round", "bias"))
    assert details["rounding"]["rounded"] > 0
    assert all(why and layers for why, layers in details["rounding"]["skipped"].items())
    assert np.abs(rounded.predict(float_images, verbose=0) - before).max() < 0.05
    json.dumps(details)


def _pixels_model(padding: str, size: int = 13):
    """raw pixels -> Rescaling(x / 127.5 - 1) -> strided 3x3 conv -> GAP -> Dense, as MobileNetV2 starts."""
    keras = _keras()
    inputs = keras.Input((size, size, 3))
    x = keras.layers.Rescaling(1 / 127.5, offset=-1.0, name="preprocess")(inputs)
    x = keras.layers.Conv2D(4, 3, strides=2, padding=padding, use_bias=False, name="conv")(x)
    x = keras.layers.ReLU(6.0)(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(3, name="head")(x))
    rng = np.random.default_rng(3)
    model.get_layer("conv").set_weights([rng.normal(0, 0.5, (3, 3, 3, 4)).astype(np.float32)])
    return model


@pytest.mark.parametrize("padding,size", [("same", 13), ("same", 12), ("valid", 12)])
def test_input_fold_keeps_the_float_model_and_removes_the_scaling(padding, size):
    """Borders included: SAME padding becomes an explicit pad with the raw value that scales to zero."""
    from edgeclf.ptq import input_fold

    model = _pixels_model(padding, size)
    images = np.random.default_rng(4).integers(0, 256, (8, size, size, 3)).astype(np.float32)
    folded, details = input_fold.fold_input_scaling(model)
    assert details["folded"] and details["into"] == "conv" and details["layers"] == ["preprocess"]
    assert details["pad_value"] == (127.5 if padding == "same" else None)
    assert "preprocess" not in [layer.name for layer in folded.layers]
    np.testing.assert_allclose(folded.predict(images, verbose=0), model.predict(images, verbose=0), atol=1e-5)
    # Every pixel feature map value, not just the head's output:
    inner = _keras().Model(folded.input, folded.get_layer("conv").output)(images).numpy()
    reference = _keras().Model(model.input, model.get_layer("conv").output)(images).numpy()
    np.testing.assert_allclose(inner, reference, atol=1e-4)


def _normalized_pixels_model(size: int = 12):
    """raw pixels -> Rescaling(1/255) -> per-channel Normalization -> ZeroPadding2D -> VALID conv,
    as EfficientNetB0 starts."""
    keras = _keras()
    inputs = keras.Input((size, size, 3))
    x = keras.layers.Rescaling(1 / 255.0, name="rescale")(inputs)
    x = keras.layers.Normalization(mean=[0.485, 0.456, 0.406], variance=[0.229**2, 0.224**2, 0.225**2], name="norm")(x)
    x = keras.layers.ZeroPadding2D(((0, 1), (0, 1)), name="pad")(x)
    x = keras.layers.Conv2D(4, 3, strides=2, use_bias=False, name="conv")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(3, name="head")(x))
    model.get_layer("conv").set_weights([np.random.default_rng(6).normal(0, 0.5, (3, 3, 3, 4)).astype(np.float32)])
    return model


def test_input_fold_pads_each_channel_with_its_own_value():
    """A per-channel normalisation (EfficientNetB0) folds too: each channel pads with the raw value
    that scales to zero, borders included, and in TFLite int8 the pixels stay at their own scale
    from the input to the convolution (split, pad and concatenate share it)."""
    from edgeclf.ptq import input_fold

    model = _normalized_pixels_model()
    images = np.random.default_rng(7).integers(0, 256, (8, 12, 12, 3)).astype(np.float32)
    folded, details = input_fold.fold_input_scaling(model, images)
    assert details["folded"] and details["layers"] == ["rescale", "norm", "pad"] and details["into"] == "conv"
    np.testing.assert_allclose(details["pad_value"], [123.675, 116.28, 103.53], atol=1e-3)
    inner = _keras().Model(folded.input, folded.get_layer("conv").output)(images).numpy()
    reference = _keras().Model(model.input, model.get_layer("conv").output)(images).numpy()
    np.testing.assert_allclose(inner, reference, atol=1e-4)
    conv_input, _ = _int8_conv_input(folded, 0, np.int8)
    assert conv_input.quantization.scale[0] == pytest.approx(1.0, rel=1e-3)  # one int8 step per pixel level


def test_input_fold_says_why_it_cannot_fold():
    from edgeclf.ptq import input_fold

    keras = _keras()
    inputs = keras.Input((8, 8, 3))
    plain = keras.Model(inputs, keras.layers.Conv2D(2, 3)(inputs))
    same, details = input_fold.fold_input_scaling(plain)
    assert same is plain and "no in-graph pixel scaling" in details["skipped"]
    inputs = keras.Input((8, 8, 3))  # a fresh input: single_consumer counts every model's use of a layer
    zero = keras.Model(inputs, keras.layers.Conv2D(2, 3)(keras.layers.Rescaling(0.0)(inputs)))
    assert "scaled by zero" in input_fold.fold_input_scaling(zero)[1]["skipped"]


def test_output_aware_rounding_beats_nearest_on_the_layer_objective():
    """On correlated inputs the compensated rounding has a lower (w_q - w)^T H (w_q - w) than
    rounding to nearest, every weight stays on the per-row grid, and each row keeps its scale."""
    from edgeclf.ptq.rounding import quantize_rows

    rng = np.random.default_rng(0)
    mixing = rng.normal(size=(24, 24))
    inputs = rng.normal(size=(4000, 24)) @ mixing + 0.5  # correlated, with a mean
    h = inputs.T @ inputs / len(inputs)
    w = rng.normal(0, 0.1, (1, 16, 24))
    w[0, :, 0] = 0.4  # the largest weight of every row
    q = quantize_rows(w, h[None])
    scale = np.abs(w).max(axis=2, keepdims=True) / 127
    nearest = np.round(w / scale) * scale
    steps = q / scale
    np.testing.assert_allclose(steps, np.round(steps), atol=1e-6)
    np.testing.assert_allclose(np.abs(q).max(axis=2), np.abs(w).max(axis=2), rtol=1e-6)

    def objective(x):
        d = (x - w)[0]
        return np.einsum("ri,ij,rj->r", d, h, d)

    assert objective(q).mean() < 0.7 * objective(nearest).mean()  # measured 0.56 here


def test_sequential_rounding_stays_on_the_grid_and_lowers_the_int8_error(tiny_run, tmp_path):
    """Every kernel is left on the converter's per-channel grid (with each channel's largest
    weight kept, so the converter finds the same scale), and the int8 model is closer to the float
    one than plain PTQ and than rounding against the float model's inputs (`round,bias`)."""
    from edgeclf import ptq
    from edgeclf.devices.host import predict_file
    from edgeclf.exporters.spec import ExportSpec
    from edgeclf.jobs.export import export_run
    from edgeclf.pipeline.runs import Run
    from edgeclf.ptq import rounding

    run = Run.open(tiny_run)
    images = run.plan.decode("train", run.img_size).images
    model = run.load_model()
    float_probs = model.predict(images.astype(np.float32), verbose=0)
    rounded, details = ptq.prepare_keras(model, images, ("sequential",))
    layers, _ = rounding.targets(rounded)
    assert details["sequential"]["rounded"] == len(layers) > 40
    assert details["sequential"]["bias_recentred"] == len(layers)  # every one has a folded BatchNorm or a bias
    for layer in layers:
        kernel = layer.get_weights()[0]
        flat = kernel.reshape(-1, kernel.shape[2]) if hasattr(layer, "depthwise_kernel") else kernel.reshape(-1, kernel.shape[-1])
        steps = flat / (np.abs(flat).max(axis=0) / 127)
        np.testing.assert_allclose(steps, np.round(steps), atol=1e-3, err_msg=layer.name)
    assert all(len(layer._inbound_nodes) == 1 for layer in rounded.layers)  # the simulation left no graph behind
    errors = {}
    for recipe in ("none", "round,bias", "sequential"):
        out = tmp_path / recipe.replace(",", "+")
        manifest = export_run(str(tiny_run), ExportSpec(target="tflite", quant="int8", ptq=recipe, io="float32", out=str(out)))
        errors[recipe] = np.abs(predict_file(out / manifest["model_file"], images) - float_probs).mean()
    assert manifest["details"]["ptq"]["recipe"] == "sequential" and manifest["details"]["ptq"]["sequential"]["rounded"] == len(layers)
    # measured 0.0101 against 0.0111 (round,bias) and 0.0127 (none)
    assert errors["sequential"] < 0.95 * errors["round,bias"] and errors["sequential"] < 0.85 * errors["none"], errors


def test_rounded_kernel_ships_unchanged_in_the_tflite_int8_model():
    """The converter recomputes each channel's scale from max|w| and must land on our integers."""
    from edgeclf.ptq import rounding

    model = _conv_model()
    before, details = rounding.round_weights(model, _images(16))
    assert details["rounded"] == 2 and set(before) == {"conv", "head"}
    kernel = model.get_layer("conv").get_weights()[0]
    assert np.abs(kernel - before["conv"]).max() > 0  # something was rounded
    weights, stored = _int8_conv_input(model, 1, np.int8)
    stored = stored.reshape(weights.shape)  # (out, h, w, in)
    # The Rescaling (1/255) folds into the kernel, which scales each channel's grid with it.
    ours = np.transpose(kernel, (3, 0, 1, 2))
    ours_steps = ours / (np.abs(ours).max(axis=(1, 2, 3), keepdims=True) / 127)
    np.testing.assert_array_equal(stored, np.round(ours_steps).astype(np.int8))
    np.testing.assert_allclose(ours_steps, np.round(ours_steps), atol=1e-3)


def test_per_tensor_onnx_refuses_round_by_name(tiny_run, tmp_path):
    from edgeclf.jobs.export import export_run
    from edgeclf.exporters.spec import ExportSpec

    with pytest.raises(UsageError, match="--ptq round cannot be applied: not with --per-tensor"):
        export_run(tiny_run, ExportSpec(target="onnx", quant="int8", ptq="round", per_channel=False, calib_size=30,
                                        out=str(tmp_path / "o")))
    assert not (tmp_path / "o").exists()


def test_input_fold_keeps_the_model_when_the_fold_would_change_it(monkeypatch):
    """Checked on real inputs: a fold that moves the outputs, or a graph it cannot rebuild, is not used."""
    from edgeclf.ptq import input_fold

    model = _pixels_model("same", 13)
    images = np.random.default_rng(5).integers(0, 256, (4, 13, 13, 3)).astype(np.float32)
    monkeypatch.setattr(input_fold, "_same_padding", lambda *args: (0, 2))  # SAME pads (1, 1) here
    kept, details = input_fold.fold_input_scaling(model, images)
    assert kept is model and "outputs moved" in details["skipped"]
    monkeypatch.setattr(input_fold, "rebuild", lambda *args: (_ for _ in ()).throw(ValueError("odd graph")))
    kept, details = input_fold.fold_input_scaling(model, images)
    assert kept is model and details["skipped"].startswith("the graph could not be rebuilt (ValueError: odd graph")
