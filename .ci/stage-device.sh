#!/usr/bin/env bash
# Stages GPU test and bench executables for the device machine, which has CUDA but no Rust toolchain:
# builds them here and copies them into ./stage (or the directory named by the first argument; all
# of /stage* is git-ignored), with a checkpoint for the interop check (.ci/interop_check.py: Python
# safetensors, transformers' GPTQConfig, AutoGPTQ-style decode). Pass the directory in the device
# tool's `carry` and run `stage/run.sh` there. Test executables link libgptq statically; the .so is
# copied for C programs.
#
# A/B runs (different lent machines differ by up to ~10% on one binary, docs/perf.md): stage the
# baseline as `bash .ci/stage-device.sh stage-base`, change the code, stage it as usual, carry both
# and run `stage-base/bench-cuda quick` and `stage/bench-cuda quick` in one call. `.ci/bench-ab.py LOG A B`
# tables section B of a `bench-cuda profile` log against section A (sections start at `== NAME`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash .ci/kernel-syntax.sh
D=${1:-stage}
rm -rf "$D" && mkdir -p "$D"
cargo build --release
cargo test --release --no-run --message-format=json --test cuda 2>/dev/null |
    python3 -c '
import json, sys, shutil
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["test"]:
        shutil.copy(m["executable"], sys.argv[1] + "/test-" + m["target"]["name"])
' "$D"
if [ -f benches/cuda.rs ]; then
    cargo bench --no-run --bench cuda --message-format=json 2>/dev/null |
        python3 -c '
import json, sys, shutil
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "cuda":
        shutil.copy(m["executable"], sys.argv[1] + "/bench-cuda")
' "$D"
fi
cp target/release/libgptq.so "$D"/
# STAGE_NVRTC_LIB=DIR (a local libnvrtc.so.13 of the device's minor version, e.g. NVIDIA's
# nvidia-cuda-nvrtc wheel unpacked): compile the sm_90a kernels here into $D/cache, which run.sh
# copies into the kernel cache there, saving the device the ~30 s NVRTC takes per build.
if [ -n "${STAGE_NVRTC_LIB:-}" ]; then
    cargo build --release --example precompile
    LD_LIBRARY_PATH="$STAGE_NVRTC_LIB" GPTQ_CACHE_DIR="$D/cache" target/release/examples/precompile 90 ptx80
fi
# The kernels as NVRTC sees them, for a register/spill report with nvcc on the device machine.
cat kernels/common.cuh kernels/gptq_gemv.cu kernels/gptq_mma.cu kernels/gptq_dense.cu > "$D"/kernels.cu
# A small sharded act-order checkpoint for the interop check (Python safetensors + transformers there).
cargo run --release --quiet --example interop_fixture -- "$D"/interop
# STAGE_NVRTC12=1: also CUDA 12.0's NVRTC (NVIDIA's wheel, compressed) and stage/nvrtc12.sh, which
# runs the GPU tests and a few bench shapes with kernels compiled by it (the device has CUDA 13 only).
if [ "${STAGE_NVRTC12:-0}" = 1 ]; then
    w=$(mktemp -d)
    bash .ci/fetch-nvrtc.sh nvidia-cuda-nvrtc-cu12==12.0.76 "$w"
    tar cJf "$D"/nvrtc120.tar.xz -C "$w"/lib libnvrtc.so.12 libnvrtc-builtins.so.12.0
    rm -rf "$w"
    cat > "$D"/nvrtc12.sh <<'NV12'
#!/usr/bin/env bash
# GPU tests and bench shapes with kernels compiled by CUDA 12.0's NVRTC instead of the machine's.
S=$(dirname "$0")
mkdir -p /tmp/nv12 && tar xJf $S/nvrtc120.tar.xz -C /tmp/nv12
ln -sf libnvrtc.so.12 /tmp/nv12/libnvrtc.so  # the unversioned name is tried first; CUDA 13 has one
LD_LIBRARY_PATH=/tmp/nv12 GPTQ_CACHE_DIR=/tmp/cache-nvrtc12 $S/test-cuda --test-threads=1 2>&1 | grep -E "test result|FAILED|panicked"
echo "kernel cache (the key names the NVRTC version):"; ls /tmp/cache-nvrtc12
for m in 1 16; do
    for v in 12 13; do
        echo -n "NVRTC $v: "
        if [ $v = 12 ]; then L=/tmp/nv12; else L=; fi
        LD_LIBRARY_PATH=$L GPTQ_CACHE_DIR=/tmp/cache-nvrtc$v GPTQ_BENCH_SHAPE=8192x28672 GPTQ_BENCH_M=$m \
            $S/bench-cuda profile 2>&1 | grep -E "^ *$m "
    done
done
NV12
    chmod +x "$D"/nvrtc12.sh
fi
cat > "$D"/run.sh <<'RUN'
#!/usr/bin/env bash
# Runs on the device machine from the repository root. STAGE_TESTS=0 / STAGE_BENCH=0 skip a part;
# BENCH_ARGS (e.g. "quick") is passed to the bench; STAGE_SANITIZE=1 adds compute-sanitizer runs
# (memcheck with leak check, racecheck, initcheck) of the graph/two-stream and oracle-vector tests.
set -uo pipefail
S=$(dirname "$0")  # this staging directory
export GPTQ_CACHE_DIR=${GPTQ_CACHE_DIR:-/tmp/gptq-cache}
if [ -d $S/cache ]; then mkdir -p "$GPTQ_CACHE_DIR" && cp $S/cache/* "$GPTQ_CACHE_DIR"/; fi
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.limit --format=csv || true
status=0
if command -v nvcc >/dev/null || [ -x /usr/local/cuda/bin/nvcc ]; then
    echo "== kernel resources (nvcc -Xptxas -v, sm_90a)"
    PATH=$PATH:/usr/local/cuda/bin nvcc -cubin -gencode=arch=compute_90a,code=sm_90a -std=c++17 -Xptxas -v \
        $S/kernels.cu -o /tmp/gptq-kernels.cubin > /tmp/gptq-ptxas.txt 2>&1
    grep -E "error|warning|[1-9][0-9]* bytes spill" /tmp/gptq-ptxas.txt | head -20
    grep -A4 -E "entry function '(gptq_wg_|gptq_bulk_b4_f16_sym|gptq_mma_b4_m1_f16_sym)" /tmp/gptq-ptxas.txt | grep -E "entry|registers" | head -30
fi
for t in $S/test-*; do
    [ "${STAGE_TESTS:-1}" = 0 ] && break
    echo "== $t"
    "$t" --nocapture --test-threads=1 || status=1
done
# STAGE_KERNEL_ARCH=80 (or 86, 89): the GPU tests again with the kernels built for that older card
# as PTX the driver compiles for this one (GPTQ_CUDA_KERNEL_ARCH): the code an A100 runs.
for a in ${STAGE_KERNEL_ARCH:-}; do
    echo "== $S/test-cuda, GPTQ_CUDA_KERNEL_ARCH=$a"
    GPTQ_CUDA_KERNEL_ARCH=$a $S/test-cuda --test-threads=1 2>&1 | grep -E "^test |test result|panicked|NOTICE" || status=1
done
if [ "${STAGE_SANITIZE:-0}" = 1 ]; then
    CS=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
    for tool in "memcheck --leak-check full" racecheck initcheck; do
        echo "== compute-sanitizer $tool"
        $CS --tool $tool --error-exitcode 1 $S/test-cuda graph_replay --test-threads=1 2>&1 | tail -2 || status=1
    done
    echo "== compute-sanitizer memcheck (oracle vectors)"
    $CS --tool memcheck --error-exitcode 1 $S/test-cuda oracle --test-threads=1 2>&1 | tail -2 || status=1
fi
if command -v python3 >/dev/null && [ -d $S/interop ]; then
    echo "== interop"
    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 python3 .ci/interop_check.py $S/interop || status=1
fi
if [ "${STAGE_BENCH:-1}" != 0 ] && [ -x $S/bench-cuda ]; then echo "== bench"; $S/bench-cuda ${BENCH_ARGS:-} || status=1; fi
exit $status
RUN
chmod +x "$D"/run.sh
ls -la "$D"
