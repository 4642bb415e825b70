#!/usr/bin/env bash
# Tiny 20-step txt2img (DDIM, CFG 7.5): LatentFlow against diffusers on the same tiny model, in
# the same run, with the same thread count. Needs the reference environment
# (tools/reference/setup.sh). BENCHMARKS.md records the results.
#   tools/bench/tiny_txt2img.sh [MODEL_DIR] [WIDTH] [HEIGHT] [RUNS]
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
py=tools/reference/.venv/bin/python
model="$(realpath "${1:-tests/fixtures/tiny-sd}")"
width="${2:-64}"
height="${3:-48}"
runs="${4:-5}"
threads="$(nproc)"
cargo build --release -q --workspace
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
run() {
  ./target/release/latentflow run graphs/txt2img.yaml --events json --output-dir "$out" \
    --set model="$model" --set width="$width" --set height="$height" --set steps=20 \
    --set sampler=ddim --set cfg=7.5 --set prompt="a red circle on a blue background" \
    --set negative=""
}
run > /dev/null # warm-up (page cache, plugin cache)
samples=()
walls=()
for _ in $(seq "$runs"); do
  t0=$(date +%s.%N)
  ms=$(run | $py -c 'import json,sys
ev=[json.loads(l) for l in sys.stdin if l.startswith("{")]
print(next(e["ms"] for e in ev if e.get("event")=="node_finished" and e.get("node")=="sample"))')
  t1=$(date +%s.%N)
  samples+=("$ms")
  walls+=("$(echo "$t1 - $t0" | bc)")
done
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
echo "latentflow sampling (20 steps, node time) median $(median "${samples[@]}") ms;" \
  "whole run (process start, load, encode, sample, decode, PNG) median $(median "${walls[@]}") s ($runs runs)"
$py tools/reference/bench_tiny.py "$model" "$width" "$height" "$threads" "$runs"
