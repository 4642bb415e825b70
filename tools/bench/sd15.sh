#!/usr/bin/env bash
# SD 1.5-sized CPU benchmark: LatentFlow (candle) against diffusers/PyTorch on the same machine,
# in the same run, with the same thread count. Needs the reference environment
# (tools/reference/setup.sh). Results go to stdout; BENCHMARKS.md records them.
#   tools/bench/sd15.sh [MODEL_DIR] [txt2img]   (txt2img: only the 20-step runs)
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
py=tools/reference/.venv/bin/python
model="$(realpath -m "${1:-target/sd15-random}")"
threads="$(nproc)"
$py tools/reference/make_sd15_random.py "$model"
cargo build --release -q
if [ "${2:-}" != "txt2img" ]; then
  ours="$(mktemp)"
  theirs="$(mktemp)"
  echo "== LatentFlow (candle): f32, and the UNet in bf16"
  LATENTFLOW_SD15="$model" cargo bench -q -p latentflow-models --bench sd15 | tee "$ours"
  echo "== diffusers (PyTorch): f32, and the UNet in bf16"
  $py tools/reference/bench_sd15.py "$model" "$threads" | tee "$theirs"
  $py tools/reference/bench_sd15.py "$model" "$threads" bf16 | tee -a "$theirs"
  echo "== ratios (this run)"
  $py tools/bench/ratios.py "$ours" "$theirs"
  rm -f "$ours" "$theirs"
fi
echo "== 20-step 512x512 txt2img (DDIM, CFG 7.5): wall seconds, peak RSS KiB"
out="$(mktemp -d)"
/usr/bin/time -f "latentflow  %e s  %M KiB" ./target/release/latentflow run graphs/txt2img.yaml -q \
    --output-dir "$out" --set model="$model" --set width=512 --set height=512 --set steps=20 \
    --set sampler=ddim
/usr/bin/time -f "diffusers   %e s  %M KiB" $py tools/reference/bench_sd15.py "$model" "$threads" txt2img
rm -rf "$out"
