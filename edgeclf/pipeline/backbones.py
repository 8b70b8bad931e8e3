"""The supported backbones and the classifier built around them.

Every classifier takes raw RGB pixels in 0..255 and runs the backbone's own
preprocessing inside the graph, so exported artefacts need no normalisation code.
The model is one flat functional graph (not a model nested in a model), which is
what tfmot's pruning and quantization-aware training need.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgeclf import console, tfenv
from edgeclf.errors import ModelError, UsageError, first_line

INPUT_NAME = "image"


@dataclass(frozen=True)
class Backbone:
    name: str
    keras_name: str  # attribute of keras.applications
    module: str  # keras.applications submodule holding preprocess_input
    input_range: str  # what the backbone itself expects
    in_graph_preprocessing: str
    default_size: int
    min_size: int
    fine_tune_at: int  # index in the stand-alone backbone's layer list (0 is its input)
    has_alpha: bool = False

    def add_preprocessing(self, keras, pixels):
        """Layers from raw 0..255 pixels to what the backbone expects."""
        if self.input_range == "[-1, 1]":
            return keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name="preprocess")(pixels)
        return pixels  # EfficientNet rescales and normalises inside its own graph


BACKBONES = {
    b.name: b
    for b in (
        Backbone(
            "mobilenetv2", "MobileNetV2", "mobilenet_v2", "[-1, 1]", "x / 127.5 - 1",
            default_size=224, min_size=32, fine_tune_at=60, has_alpha=True,
        ),
        Backbone(
            "efficientnetb0", "EfficientNetB0", "efficientnet", "[0, 255]",
            "inside the backbone (Rescaling + Normalization)",
            default_size=224, min_size=32, fine_tune_at=162,
        ),
        Backbone(
            "nasnetmobile", "NASNetMobile", "nasnet", "[-1, 1]", "x / 127.5 - 1",
            default_size=224, min_size=32, fine_tune_at=590,
        ),
    )
}


def get_backbone(name: str) -> Backbone:
    try:
        return BACKBONES[name.lower()]
    except KeyError:
        raise UsageError(f"unknown architecture '{name}'", f"choose one of {', '.join(BACKBONES)}") from None


@dataclass
class Classifier:
    model: object  # keras.Model: raw pixels in, softmax probabilities out
    backbone_layers: list  # backbone layers in stand-alone order, index 0 being its input


def build_classifier(
    backbone: Backbone,
    num_classes: int,
    img_size: int,
    weights: str,
    alpha: float = 1.0,
    dropout: float = 0.4,
) -> Classifier:
    keras = tfenv.keras()
    pixels = keras.Input((img_size, img_size, 3), name=INPUT_NAME)
    prepared = backbone.add_preprocessing(keras, pixels)
    kwargs = {"input_tensor": prepared, "include_top": False}
    if backbone.has_alpha:
        kwargs["alpha"] = alpha
    constructor = getattr(keras.applications, backbone.keras_name)
    base = _construct(constructor, backbone, weights, kwargs)
    features = keras.layers.GlobalAveragePooling2D(name="pool")(base.output)
    features = keras.layers.Dropout(dropout, name="dropout")(features)
    probs = keras.layers.Dense(num_classes, activation="softmax", name="classifier")(features)
    model = keras.Model(pixels, probs, name=f"edgeclf_{backbone.name}")
    # base.layers starts with our input (and our preprocessing layer, when there is one).
    backbone_layers = base.layers if prepared is pixels else [base.layers[0]] + base.layers[2:]
    return Classifier(model, backbone_layers)


def _construct(constructor, backbone: Backbone, weights: str, kwargs: dict):
    if weights == "none":
        return constructor(weights=None, **kwargs)
    if weights == "imagenet":
        try:
            return constructor(weights="imagenet", **kwargs)
        except Exception as exc:  # keras wraps every download failure in a bare Exception
            if "URL fetch failure" in str(exc) or isinstance(exc, OSError):
                raise ModelError(
                    f"could not download the ImageNet weights for {backbone.name} (no network?)",
                    "pass --weights PATH to a local backbone weights file (.h5/.keras), or --weights none",
                ) from exc
            raise
    path = Path(weights)
    if not path.is_file():
        raise UsageError(f"weights file {path} does not exist", "pass 'imagenet', 'none' or a path to an .h5/.keras file")
    if path.suffix not in (".h5", ".keras"):
        raise UsageError(f"weights file {path} is not .h5 or .keras", "pass backbone weights saved by Keras")
    try:
        base = constructor(weights=str(path), **kwargs)
    except (ValueError, OSError, KeyError) as exc:
        raise ModelError(
            f"weights file {path} does not fit {backbone.name}{_alpha_note(backbone, kwargs)}: {first_line(exc, 200)}",
            "use weights saved from the same backbone with include_top=False",
        ) from exc
    if backbone.name == "efficientnetb0":
        correct_std_as_variance(base, path)
    return base


# ImageNet's per-channel pixel std, as Keras's EfficientNet files store it (see below).
IMAGENET_STD = (0.229, 0.224, 0.225)


def correct_std_as_variance(base, path) -> bool:
    """Keras's own EfficientNet weight file stores the ImageNet std, not std², in the Normalization
    layer's variance slot, and makes up for it with an extra scaling only under weights="imagenet";
    loaded by path it normalises by sqrt(std), slightly wrong. Such a file is recognised by that
    variance and corrected in place (variance = std²). Returns True when it corrected."""
    import numpy as np

    keras = tfenv.keras()
    norms = [layer for layer in base.layers if type(layer) is keras.layers.Normalization]
    if len(norms) != 1:
        return False
    norm = norms[0]
    variance = np.asarray(norm.adapt_variance).reshape(-1)
    if variance.shape != (3,) or not np.allclose(variance, IMAGENET_STD, atol=1e-4):
        return False
    norm.adapt_variance.assign(np.reshape(np.square(variance), norm.adapt_variance.shape))
    norm.finalize_state()  # the layer divides by `variance`, a tensor derived from the weight
    console.warn(f"{path} stores the ImageNet std in the Normalization variance (Keras's own file): "
                 f"corrected to std² so that inputs are normalised as the weights were trained")
    return True


def _alpha_note(backbone: Backbone, kwargs: dict) -> str:
    return f" (alpha {kwargs['alpha']})" if backbone.has_alpha else ""



def configure_trainable(classifier: Classifier, fine_tune_at: int | None, freeze_batchnorm: bool) -> None:
    """Freeze the backbone below `fine_tune_at` (all of it when None); the head always trains.

    Frozen BatchNorm layers run in inference mode in tf-keras, which pretrained backbones
    need: the shared MobileNetV2 weights hold no batch statistics at all. A backbone trained
    from scratch keeps BatchNorm training, with a faster-moving average than Keras's 0.999 so
    that the inference statistics catch up within a short run.
    """
    keras = tfenv.keras()
    for index, layer in enumerate(classifier.backbone_layers):
        trainable = fine_tune_at is not None and index >= fine_tune_at
        if isinstance(layer, keras.layers.BatchNormalization):
            if freeze_batchnorm:
                trainable = False
            else:
                layer.momentum = min(layer.momentum, 0.9)
        layer.trainable = trainable
