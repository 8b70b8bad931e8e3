"""Backbones: each builds, trains a step, and preprocesses exactly like Keras's preprocess_input."""
from __future__ import annotations

import numpy as np
import pytest

from edgeclf import tfenv
from edgeclf.errors import ModelError
from edgeclf.pipeline.backbones import BACKBONES, build_classifier, configure_trainable


@pytest.mark.parametrize("arch", list(BACKBONES))
def test_each_backbone_builds_and_trains_one_step(arch):
    keras = tfenv.keras()
    backbone = BACKBONES[arch]
    classifier = build_classifier(backbone, 3, 32, "none", alpha=0.35 if backbone.has_alpha else 1.0)
    model = classifier.model
    # Flat graph (no nested Model), so tfmot can prune and quantize it later.
    assert not any(isinstance(layer, keras.Model) for layer in model.layers)
    assert model.input_shape == (None, 32, 32, 3) and model.output_shape == (None, 3)
    configure_trainable(classifier, backbone.fine_tune_at, freeze_batchnorm=True)
    frozen = [l for l in classifier.backbone_layers[1 : backbone.fine_tune_at] if l.weights]
    assert frozen and not any(l.trainable for l in frozen)
    assert not any(l.trainable for l in classifier.backbone_layers if isinstance(l, keras.layers.BatchNormalization))
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy")
    x = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype(np.float32)
    before = [w.numpy().copy() for w in model.trainable_weights]
    loss = model.train_on_batch(x, np.array([0, 1, 2, 0]))
    assert np.isfinite(loss)
    assert any(not np.allclose(b, w.numpy()) for b, w in zip(before, model.trainable_weights))
    probs = model.predict(x, verbose=0)
    assert np.allclose(probs.sum(axis=1), 1, atol=1e-5)


@pytest.mark.parametrize("arch", list(BACKBONES))
def test_in_model_preprocessing_matches_keras_preprocess_input(arch):
    keras = tfenv.keras()
    backbone = BACKBONES[arch]
    pixels = keras.Input((8, 8, 3))
    ours = keras.Model(pixels, backbone.add_preprocessing(keras, pixels))
    x = np.random.default_rng(1).uniform(0, 255, (2, 8, 8, 3)).astype(np.float32)
    reference = getattr(keras.applications, backbone.module).preprocess_input(x.copy())
    np.testing.assert_allclose(ours.predict(x, verbose=0), reference, atol=1e-5)


def test_shared_weights_load_and_mismatch_is_a_clear_error(mobilenet_weights):
    classifier = build_classifier(BACKBONES["mobilenetv2"], 2, 96, str(mobilenet_weights))
    conv = classifier.model.get_layer("Conv1").get_weights()[0]
    assert np.abs(conv).sum() > 1  # real weights, not an initialiser
    with pytest.raises(ModelError, match="does not fit mobilenetv2 \\(alpha 0.5\\)"):
        build_classifier(BACKBONES["mobilenetv2"], 2, 96, str(mobilenet_weights), alpha=0.5)


def test_imagenet_download_failure_is_a_clear_error(monkeypatch):
    keras = tfenv.keras()

    def offline(*args, **kwargs):
        raise Exception("URL fetch failure on https://storage.googleapis.com/...: None -- [Errno -2] Name or service not known")

    monkeypatch.setattr(keras.utils, "get_file", offline)
    monkeypatch.setattr("tf_keras.src.applications.mobilenet_v2.data_utils.get_file", offline)
    with pytest.raises(ModelError, match="could not download the ImageNet weights.*--weights PATH.*--weights none"):
        build_classifier(BACKBONES["mobilenetv2"], 2, 96, "imagenet")


def test_keras_style_efficientnet_file_with_std_as_variance_is_corrected(tmp_path, capsys):
    """Keras's own EfficientNet file holds the ImageNet std in the Normalization variance slot
    (it corrects only under weights="imagenet"); loaded by path it must normalise by the std."""
    keras = tfenv.keras()
    base = keras.applications.EfficientNetB0(include_top=False, weights=None, input_shape=(32, 32, 3))
    norm = next(layer for layer in base.layers if type(layer) is keras.layers.Normalization)
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    norm.adapt_mean.assign(mean), norm.adapt_variance.assign(std)  # as Keras's own file stores them
    keras_style = tmp_path / "keras_style_notop.h5"
    base.save_weights(keras_style)
    norm.adapt_variance.assign(np.square(std))
    right = tmp_path / "right_notop.h5"
    base.save_weights(right)

    pixels = np.random.default_rng(2).uniform(0, 255, (2, 32, 32, 3)).astype(np.float32)
    outputs = []
    for path in (keras_style, right):
        model = build_classifier(BACKBONES["efficientnetb0"], 2, 32, str(path)).model
        loaded = next(layer for layer in model.layers if type(layer) is keras.layers.Normalization)
        np.testing.assert_allclose(np.asarray(loaded.variance).reshape(-1), np.square(std), rtol=1e-5)
        normalised = keras.Model(model.input, loaded.output).predict(pixels, verbose=0)
        np.testing.assert_allclose(normalised, (pixels / 255 - mean) / std, rtol=1e-4, atol=1e-4)
        outputs.append(capsys.readouterr().err)
    assert "stores the ImageNet std in the Normalization variance" in outputs[0]
    assert "std" not in outputs[1]
