#!/usr/bin/env bash
# Install Google's tflite-support 0.4.4 as an independent TFLite Metadata reader for
# tests/test_tflite_metadata.py. It pins protobuf<4, which breaks TensorFlow 2.21, so it
# goes into its own --target directory (with protobuf 3.20.3), never into the venv; the
# test runs it in a subprocess with that directory on PYTHONPATH. numpy, absl-py and
# flatbuffers come from the venv.
#
# Idempotent: does nothing when the directory is already complete.
# Usage: bash tests/install_metadata_reader.sh [PYTHON]
#   PYTHON: the interpreter the tests run with (default: <repo>/.venv/bin/python); the
#           wheel has compiled parts, so it must match that interpreter's version.
#   EDGECLF_TFLITE_SUPPORT_DIR: target directory (default: <repo>/.venv/tflite-support-reader),
#           the same variable the test reads.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${1:-$repo/.venv/bin/python}"
dir="${EDGECLF_TFLITE_SUPPORT_DIR:-$repo/.venv/tflite-support-reader}"
version="0.4.4"
stamp="$dir/.installed-tflite-support-$version"

if [ -f "$stamp" ]; then
  exit 0
fi

if ! "$python" -c pass; then
  echo "install_metadata_reader.sh: cannot run $python (run 'make install' first?)" >&2
  exit 1
fi

# tflite-support 0.4.4 ships wheels for CPython 3.7-3.11 only, and none for Linux arm64:
# elsewhere the test skips, which is better than failing the whole test run.
if ! "$python" -c 'import sys, platform; sys.exit(not (sys.version_info[:2] <= (3, 11) and platform.machine() in ("x86_64", "AMD64")))'; then
  echo "install_metadata_reader.sh: no tflite-support $version wheel for this Python/platform; the independent-reader test will skip" >&2
  exit 0
fi

partial="$dir.partial"
rm -rf "$partial"
"$python" -m pip install --quiet --disable-pip-version-check --no-input \
  --no-deps --only-binary=:all: --target "$partial" \
  "tflite-support==$version" "protobuf==3.20.3"

# Prove it imports from there (and not TensorFlow, which would clash with protobuf 3.20).
PYTHONPATH="$partial" "$python" -c '
import sys
sys.modules["tensorflow"] = None
from tflite_support import metadata
from tflite_support.task import vision
assert metadata.__file__.startswith(sys.argv[1]), metadata.__file__
' "$partial"

rm -rf "$dir"
mv "$partial" "$dir"
touch "$stamp"
echo "install_metadata_reader.sh: tflite-support $version installed in $dir"
