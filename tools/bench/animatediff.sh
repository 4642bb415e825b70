#!/usr/bin/env bash
# AnimateDiff CPU benchmark: one 16-frame 256×256 step (SD 1.5 + a v2-sized motion adapter,
# random weights, CFG batch 2) in LatentFlow and in diffusers/PyTorch, in the same run, with the
# same thread count, and the peak memory each step adds. Needs the reference environment
# (tools/reference/setup.sh). BENCHMARKS.md records the results.
#   tools/bench/animatediff.sh [SD15_DIR] [MOTION_DIR]
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
py=tools/reference/.venv/bin/python
model="$(realpath -m "${1:-target/sd15-random}")"
motion="$(realpath -m "${2:-target/motion-random}")"
threads="$(nproc)"
[ -f "$model/model_index.json" ] || $py tools/reference/make_sd15_random.py "$model"
[ -f "$motion/config.json" ] || $py tools/reference/bench_animatediff.py "$model" "$motion" make
echo "== LatentFlow (candle)"
LATENTFLOW_SD15="$model" LATENTFLOW_MOTION="$motion" cargo bench -q -p latentflow-models --bench animatediff
echo "== diffusers (PyTorch)"
$py tools/reference/bench_animatediff.py "$model" "$motion" "$threads"
