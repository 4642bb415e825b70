#!/usr/bin/env bash
# NVIDIA's CUDA 13.0 compiler from PyPI wheels (pinned with hashes), for building the `cuda`
# feature of the candle plugins on a machine without a CUDA toolkit. Pinned to 13.0: newer nvcc
# emits PTX that the GPU test machine's driver (580, CUDA 13.0) refuses.
#
#   eval "$(tools/gpu/cuda-toolkit.sh [DIR])"     # default DIR: target/cuda-toolkit
#
# installs the wheels into DIR once and prints the exports cargo needs: CUDA_HOME, PATH and
# CUDA_COMPUTE_CAP (90: the H100/H200 of the GPU machine; no nvidia-smi here to ask).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
dir="${1:-$here/../../target/cuda-toolkit}"
if [ ! -x "$dir/nvidia/cu13/bin/nvcc" ]; then
    python3 -m pip install --quiet --no-deps --require-hashes --target "$dir" \
        -r "$here/cuda-requirements.txt" >&2
fi
home="$(cd "$dir/nvidia/cu13" && pwd)"
echo "export CUDA_HOME='$home'"
echo "export PATH='$home/bin':\"\$PATH\""
echo "export CUDA_COMPUTE_CAP='${CUDA_COMPUTE_CAP:-90}'"
