#!/usr/bin/env bash
# LLM-connector CPU benchmark: LatentFlow (candle) against transformers/PyTorch on the same
# machine, in the same run, with the same thread count: a flan-t5-xl-sized T5 encoder on a
# 128-token prompt (f32, bf16), one ELLA connector step, the peak memory of loading the bf16
# T5 in bf16, and (with `unet`) the SD 1.5 UNet step ELLA's overhead is measured against. Needs
# the reference environment (tools/reference/setup.sh) and the authors' ELLA checkout in
# tools/reference/.cache/ELLA (see make_llm_fixtures.py). BENCHMARKS.md records the results.
#   tools/bench/llm.sh [DIR=target/llm-random] [unet]
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
py=tools/reference/.venv/bin/python
dir="$(realpath -m "${1:-target/llm-random}")"
threads="$(nproc)"
$py tools/reference/make_llm_random.py "$dir"
cargo build --release -q -p latentflow-models --benches
echo "== LatentFlow (candle)"
LATENTFLOW_LLM="$dir" cargo bench -q -p latentflow-models --bench llm
LATENTFLOW_LLM="$dir" cargo bench -q -p latentflow-models --bench llm -- load
echo "== transformers (PyTorch)"
$py tools/reference/bench_llm.py "$dir" "$threads"
$py tools/reference/bench_llm.py "$dir" "$threads" load
if [ "${2:-}" = "unet" ]; then
  sd="$(realpath -m target/sd15-random)"
  $py tools/reference/make_sd15_random.py "$sd"
  echo "== SD 1.5 UNet step, LatentFlow"
  LATENTFLOW_SD15="$sd" cargo bench -q -p latentflow-models --bench sd15 unet
  echo "== SD 1.5 UNet step, PyTorch"
  $py tools/reference/bench_sd15.py "$sd" "$threads" | grep -i unet
fi
