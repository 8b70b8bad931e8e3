#!/usr/bin/env bash
# Regenerate edgeclf/exporters/tflite_metadata_schema/metadata_schema_generated.py from the
# committed metadata_schema.fbs (see PROVENANCE.md there). A development-time step only:
# flatc is not needed to install, run or test edgeclf.
# Needs flatc (Debian/Ubuntu: apt-get install flatbuffers-compiler); the committed module
# was made with flatc 2.0.8.
# Usage: bash tools/gen_metadata_schema.sh
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dir="$repo/edgeclf/exporters/tflite_metadata_schema"
flatc="${FLATC:-flatc}"

if ! command -v "$flatc" >/dev/null; then
  echo "gen_metadata_schema.sh: flatc not found (apt-get install flatbuffers-compiler, or set FLATC)" >&2
  exit 1
fi

out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
# --gen-onefile writes one module (plus an empty __init__.py we do not need).
"$flatc" --python --gen-object-api --gen-onefile -o "$out" "$dir/metadata_schema.fbs"
mv "$out/metadata_schema_generated.py" "$dir/metadata_schema_generated.py"
echo "gen_metadata_schema.sh: wrote $dir/metadata_schema_generated.py with $("$flatc" --version)"
