"""Hand-off bundles for app teams: model, model card, golden vectors and integration code.

`edgeclf bundle` writes one (builder.py); `edgeclf check-bundle` replays its golden vectors
on any device (check.py). A bundle is recognised by its BUNDLE_FILE marker's content (outputs.py).
"""
from __future__ import annotations

import re

from edgeclf.errors import EdgeclfError
from edgeclf.outputs import BUNDLE

BUNDLE_FILE = "bundle.json"
SUMS_FILE = "SHA256SUMS"
GOLDEN_DIR = "golden"
GOLDEN_FILE = "golden.json"
BUNDLE_FORMAT = BUNDLE.format  # marks bundle.json as ours (outputs.py)


class BundleError(EdgeclfError):
    """A bundle that is incomplete, tampered with, or whose golden vectors do not match."""


# SHA256SUMS lines as `sha256sum` writes and `sha256sum -c` reads them: a name holding a
# backslash or line break is escaped, and its line starts with a backslash.
SUMS_ESCAPES = {"\\": "\\\\", "\n": "\\n", "\r": "\\r"}


def sums_line(digest: str, name: str) -> str:
    escaped = "".join(SUMS_ESCAPES.get(ch, ch) for ch in name)
    return ("\\" if escaped != name else "") + f"{digest}  {escaped}\n"


def parse_sums_line(line: str) -> tuple[str, str]:
    """(digest, name) of one SHA256SUMS line; an empty name if it is malformed."""
    escaped = line.startswith("\\")
    digest, _, name = line[escaped:].partition("  ")
    if escaped:
        name = re.sub(r"\\(.)", lambda m: {"\\": "\\", "n": "\n", "r": "\r"}.get(m.group(1), "\0"), name)
    return digest, "" if "\0" in name else name
