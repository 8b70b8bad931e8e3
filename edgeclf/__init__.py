"""edgeclf: train, quantize, export and verify image classifiers on the device they ship to."""
import os

__version__ = "0.1.0"

# tfmot works only with Keras 2 (tf-keras); this must be set before TensorFlow is imported anywhere.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
