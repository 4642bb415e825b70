#!/usr/bin/env bash
# Full-size models on the CPU: peak RSS of loading SDXL base 1.0's UNet and SD3.5 medium's
# transformer (random bf16 weights at published configs) against the weight file, and one SDXL
# UNet step, in LatentFlow (f32, then bf16) and in diffusers/PyTorch, in the same run, with the same thread count.
# Needs the reference environment (tools/reference/setup.sh), ~10 GiB of disk and ~12 GiB of
# memory. BENCHMARKS.md records the results.
#   tools/bench/big_models.sh [DIR]
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
py=tools/reference/.venv/bin/python
dir="$(realpath -m "${1:-target/big-random}")"
threads="$(nproc)"
[ -f "$dir/flux-width/config.json" ] || $py tools/reference/bench_big_models.py "$dir" make
cargo bench -q -p latentflow-models --bench big_models --no-run
for dtype in f32 bf16; do
  for run in load:sdxl-unet load:sd35m load:flux-width step; do
    LATENTFLOW_BIG="$dir" LATENTFLOW_BIG_RUN="$run" LATENTFLOW_BIG_DTYPE="$dtype" \
      cargo bench -q -p latentflow-models --bench big_models
  done
done
for name in sdxl-unet sd35m flux-width; do
  $py tools/reference/bench_big_models.py "$dir" load "$name"
done
$py tools/reference/bench_big_models.py "$dir" step "$threads"
