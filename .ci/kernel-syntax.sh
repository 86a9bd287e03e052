#!/usr/bin/env bash
# Parses and instantiates every kernel in kernels/ with the host compiler (CUDA built-ins stubbed,
# inline PTX dropped), so template and syntax errors show here instead of in NVRTC on the device.
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
{ echo "#include \"$PWD/.ci/kernel-syntax/shim.h\""; cat kernels/common.cuh kernels/gptq_gemv.cu kernels/gptq_mma.cu kernels/gptq_dense.cu; } > "$tmp/all.cpp"
${CXX:-g++} -std=c++17 -fsyntax-only -w "$tmp/all.cpp"
echo "kernels parse and instantiate"
