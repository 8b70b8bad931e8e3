#!/usr/bin/env bash
# The full flow on the real flowers128 photos in ../shared, offline: train, export, validate, bench.
# Run from the repository root after `make install`:  bash examples/flowers.sh
set -euo pipefail
SHARED=${SHARED:-../shared}
RUN=${RUN:-runs/flowers-mnv2-160}
EDGECLF=${EDGECLF:-.venv/bin/edgeclf}

"$EDGECLF" train "$SHARED/datasets/flowers128/train" \
  --test-dir "$SHARED/datasets/flowers128/test" \
  --arch mobilenetv2 --weights "$SHARED/weights/mobilenet_v2_1.0_224_no_top.h5" \
  --img-size 160 --out "$RUN"

"$EDGECLF" export "$RUN" --target tflite --quant int8          # -> $RUN/exports/tflite-int8
"$EDGECLF" inspect "$RUN/exports/tflite-int8"
"$EDGECLF" validate "$RUN/exports/tflite-int8" --data "$SHARED/datasets/flowers128/test" --threads 1
"$EDGECLF" bench "$RUN" --formats tflite:fp32,tflite:int8 --threads 1
