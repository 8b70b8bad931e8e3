"""Hand-off bundles for app teams: model, model card, golden vectors and integration code.

`edgeclf bundle` writes one (builder.py); `edgeclf check-bundle` replays its golden vectors
on any device (check.py). A bundle is recognised by its BUNDLE_FILE marker's content (outputs.py).
"""
from __future__ import annotations

from edgeclf.errors import EdgeclfError
from edgeclf.outputs import BUNDLE

BUNDLE_FILE = "bundle.json"
SUMS_FILE = "SHA256SUMS"
GOLDEN_DIR = "golden"
GOLDEN_FILE = "golden.json"
BUNDLE_FORMAT = BUNDLE.format  # marks bundle.json as ours (outputs.py)


class BundleError(EdgeclfError):
    """A bundle that is incomplete, tampered with, or whose golden vectors do not match."""
