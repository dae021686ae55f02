#!/usr/bin/env bash
# Issue 5 report: Llama-3.1-8B target + Llama-3.2-1B draft on H100. Where does
# speculative decoding stop paying (best k, speedup < 1) for acceptance 0.6, 0.8,
# 0.9 at context 1k, and where does that batch move at 16k?
#
#   bash validation/spec_report.sh [OUT_DIR]     (default validation/spec)
#
# Uses the shipped calibration (validation/calibrations/h100-sxm.yaml) and the loop
# overhead fitted by `gpusim spec-validate --write-overhead`
# (validation/calibrations/speculative/h100-sxm.yaml) when they exist. Writes
# OUT_DIR/h100-8b-1b.md (tables), OUT_DIR/h100-8b-1b.html (Plotly heatmaps) and
# OUT_DIR/h100-8b-1b.csv (every acceptance, ctx, batch, k).
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-validation/spec}"
mkdir -p "$out"
# the stack the speculative loops were measured on (validation/data/*/spec_steps.csv)
gpusim spec-sweep --gpu h100-sxm --model llama-3.1-8b --draft llama-3.2-1b --stack torch-hf \
  --acceptance 0.6 --acceptance 0.8 --acceptance 0.9 \
  --ctxs 1024,16384 --batches 1,2,4,8,16,32,64,128,256,512,1024 --ks 1-8 \
  --max-batch 1024 --calibration auto --overhead auto \
  --report "$out/h100-8b-1b.md" --html "$out/h100-8b-1b.html" --out "$out/h100-8b-1b.csv" \
  --format table
