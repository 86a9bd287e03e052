#!/usr/bin/env bash
# Compiles the kernels with the oldest CUDA 12 NVRTC and with CUDA 13's (tests/nvrtc.rs), for every
# architecture the library runs on: no GPU needed. NVRTC comes from NVIDIA's Python wheels (the
# plain libnvrtc.so.<major> a CUDA install has), put on LD_LIBRARY_PATH, so the library finds it by
# the versioned names it searches.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${GPTQ_NVRTC_WHEELS:-${TMPDIR:-/tmp}/gptq-nvrtc-wheels}
mkdir -p "$dir"
for spec in "12.0 nvidia-cuda-nvrtc-cu12==12.0.76" "13.0 nvidia-cuda-nvrtc==13.0.88"; do
    set -- $spec
    want=$1 pkg=$2
    dest="$dir/$want"
    bash .ci/fetch-nvrtc.sh "$pkg" "$dest"
    ls "$dest/lib"
    out=$(LD_LIBRARY_PATH="$dest/lib" cargo test --release --test nvrtc -- --nocapture 2>&1) || { echo "$out"; exit 1; }
    echo "$out" | grep -E "^NVRTC|test result"
    # A skipped test (no NVRTC found) or another version loaded must not pass silently.
    echo "$out" | grep -q "^NVRTC $want sm_90:" || { echo "NVRTC $want was not the one used:"; echo "$out"; exit 1; }
done
