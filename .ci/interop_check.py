"""Checks a libgptq-written checkpoint with other implementations: Python safetensors reads every
file, transformers parses config.json and its GPTQ quantization_config, and each layer decoded with
AutoGPTQ's torch unpacking (v1: zero = stored + 1) equals libgptq's own dequantization.
Usage: python3 .ci/interop_check.py <model-dir> (the .ref directory beside it holds the references)."""
import json, os, sys
import numpy as np
import torch
from safetensors import safe_open

d = sys.argv[1]
ref = d.rstrip("/") + ".ref"
tensors = {}
index = json.load(open(os.path.join(d, "model.safetensors.index.json")))
for shard in sorted(set(index["weight_map"].values())):
    with safe_open(os.path.join(d, shard), framework="pt") as f:
        for name in f.keys():
            tensors[name] = f.get_tensor(name)
print(f"safetensors: {len(tensors)} tensors from {len(set(index['weight_map'].values()))} shards")

import transformers
from transformers import AutoConfig, GPTQConfig
cfg = AutoConfig.from_pretrained(d)
q = GPTQConfig.from_dict(cfg.quantization_config)
print(f"transformers {transformers.__version__}: GPTQConfig bits={q.bits} group_size={q.group_size} desc_act={q.desc_act} sym={q.sym}")
assert q.bits == 4 and q.group_size == 128 and q.desc_act

bits = 4
shifts = torch.arange(0, 32, bits, dtype=torch.int32)
worst = 0.0
for prefix in sorted({n.rsplit(".", 1)[0] for n in tensors if n.endswith(".qweight")}):
    qw, qz = tensors[prefix + ".qweight"], tensors[prefix + ".qzeros"]
    sc, gi = tensors[prefix + ".scales"].float(), tensors[prefix + ".g_idx"].long()
    codes = (qw.unsqueeze(1) >> shifts.view(1, -1, 1)) & 0xF          # [K/8, 8, N]
    codes = codes.reshape(-1, qw.shape[1])                               # [K, N]
    zeros = (qz.unsqueeze(2) >> shifts.view(1, 1, -1)) & 0xF             # [G, N/8, 8]
    zeros = zeros.reshape(qz.shape[0], -1) + 1                           # v1: stored + 1
    w = sc[gi] * (codes.float() - zeros[gi].float())                     # [K, N]
    ours = np.fromfile(os.path.join(ref, prefix + ".f32"), dtype="<f4").reshape(w.shape[1], w.shape[0])
    err = float(np.abs(w.T.numpy() - ours).max())
    worst = max(worst, err)
    print(f"{prefix}: K={w.shape[0]} N={w.shape[1]}, act-order g_idx: {not torch.equal(gi, torch.arange(w.shape[0]) // 128)}, max |AutoGPTQ decode - libgptq| = {err:.3g}")
assert worst == 0.0, worst
print("interop check passed")
