#!/usr/bin/env bash
# Stages GPU test and bench executables for the device machine, which has CUDA but no Rust toolchain:
# builds them here and copies them into ./stage (git-ignored), with a checkpoint for the interop
# check (.ci/interop_check.py: Python safetensors, transformers' GPTQConfig, AutoGPTQ-style decode). Pass `stage` in the device tool's
# `carry` and run `stage/run.sh` there. Test executables link libgptq statically; the .so is copied
# for C programs.
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf stage && mkdir -p stage
cargo build --release
cargo test --release --no-run --message-format=json --test cuda 2>/dev/null |
    python3 -c '
import json, sys, shutil
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["test"]:
        shutil.copy(m["executable"], "stage/test-" + m["target"]["name"])
'
if [ -f benches/cuda.rs ]; then
    cargo bench --no-run --bench cuda --message-format=json 2>/dev/null |
        python3 -c '
import json, sys, shutil
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "cuda":
        shutil.copy(m["executable"], "stage/bench-cuda")
'
fi
cp target/release/libgptq.so stage/
# A small sharded act-order checkpoint for the interop check (Python safetensors + transformers there).
cargo run --release --quiet --example interop_fixture -- stage/interop
cat > stage/run.sh <<'RUN'
#!/usr/bin/env bash
# Runs on the device machine from the repository root.
set -uo pipefail
export GPTQ_CACHE_DIR=${GPTQ_CACHE_DIR:-/tmp/gptq-cache}
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.limit --format=csv || true
status=0
for t in stage/test-*; do
    echo "== $t"
    "$t" --nocapture --test-threads=1 || status=1
done
if command -v python3 >/dev/null && [ -d stage/interop ]; then
    echo "== interop"
    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 python3 .ci/interop_check.py stage/interop || status=1
fi
if [ -x stage/bench-cuda ]; then echo "== bench"; stage/bench-cuda || status=1; fi
exit $status
RUN
chmod +x stage/run.sh
ls -la stage
