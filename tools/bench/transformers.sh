#!/usr/bin/env bash
# Diffusion-transformer CPU benchmark: one step of DiT-XL/2-256, PixArt-α-XL-2-512, SD3.5
# medium's width (4 of 24 blocks) and FLUX.1-dev's width (1 + 2 of 19 + 38 blocks), random
# weights, in LatentFlow and in diffusers/PyTorch, in the same run, with the same thread count.
# Needs the reference environment (tools/reference/setup.sh). BENCHMARKS.md records the results.
#   tools/bench/transformers.sh [DIR]
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
py=tools/reference/.venv/bin/python
dir="$(realpath -m "${1:-target/transformers-random}")"
threads="$(nproc)"
[ -f "$dir/flux/config.json" ] || $py tools/reference/bench_transformers.py "$dir" make
echo "== LatentFlow (candle)"
LATENTFLOW_TRANSFORMERS="$dir" cargo bench -q -p latentflow-models --bench transformers
echo "== diffusers (PyTorch)"
$py tools/reference/bench_transformers.py "$dir" "$threads"
