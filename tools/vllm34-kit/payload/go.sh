#!/bin/bash
# Device side: bash payload/go.sh PLAN      (PLAN = 1, 2, ... or none: unpack + smoke test only)
# Unpacks whatever ../packs/*.tar.xz travelled with this call into /tmp/site (kept while the machine
# stays warm: 30 s after a call), smoke-tests the native kernels, then runs plan-PLAN.json's cases, each
# in its own process group. Everything lands in $OUT: setup.txt, results.jsonl (one JSON line per case),
# log.txt (vLLM's full output). DEADLINE_S (default 540) bounds the plan; cases already done on this warm
# machine are skipped. PROBE_LLM_EXTRA='{"compilation_config": {...}}' is merged into every case's LLM(...)
# arguments (a fallback if torch 2.11's inductor fails with vLLM 0.34; recorded in results.jsonl).
set -u
P=$(cd "$(dirname "$0")" && pwd); K=$P/../packs; S=/tmp/site; OUT=${OUT:-/tmp/out}
mkdir -p "$S" "$OUT"
unpack() {  # $1 tar.xz file, $2 name for the marker; fi.tar.xz (FlashInfer, opt-in per case) goes to /tmp/site-fi
  local dst=$S; [ "$2" = fi ] && dst=/tmp/site-fi && mkdir -p "$dst"
  [ -f "$dst/.ok-$2" ] && { echo "$2 already unpacked"; return 0; }
  (tar -C "$dst" -xJf "$1" || python3 -c "import tarfile,sys; tarfile.open(sys.argv[1]).extractall(sys.argv[2])" "$1" "$dst") \
    && touch "$dst/.ok-$2" && echo "unpacked $2 to $dst"
}
{
  date; nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version --format=csv,noheader
  for t in "$K"/*.tar.xz; do [ -e "$t" ] && unpack "$t" "$(basename "$t" .tar.xz)"; done
  ls -a "$S" /tmp/site-fi 2>/dev/null | grep '^\.ok-' | tr '\n' ' '; echo
  which nvcc ninja gcc 2>&1 | tr '\n' ' '; echo
  python3 -c "import sys,torch,triton,transformers,huggingface_hub,tokenizers;print(sys.version.split()[0],'torch',torch.__version__,'triton',triton.__version__,'transformers',transformers.__version__,'hf_hub',huggingface_hub.__version__,'tokenizers',tokenizers.__version__)"
} >> "$OUT/setup.txt" 2>&1
cat "$OUT/setup.txt"
ls -a "$S" | grep -qE '^\.ok-core$' || { echo "no vLLM payload in $S (the machine went cold?): carry packs/core.tar.xz again"; exit 3; }
export PYTHONPATH=$S:$P/plugin HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1 \
  VLLM_ALLOW_INSECURE_SERIALIZATION=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false \
  VLLM_PLUGINS=vram_probe VLLM_USE_FLASHINFER_SAMPLER=${VLLM_USE_FLASHINFER_SAMPLER:-0}
# Smoke test (once per warm machine): rms_norm from _C and reshape_and_cache_flash from _C_cache_ops
# must run on the GPU and agree with PyTorch (their fatbins were stripped to sm_90 images); FA3 must load
# and run one varlen forward.
if [ ! -f /tmp/vram_probe34_smoke_ok ]; then
python3 - <<'PY' 2>&1 | tail -6 | tee -a "$OUT/setup.txt"
import torch, vllm, vllm._custom_ops as ops
from vllm.vllm_flash_attn import flash_attn_interface as fa
x = torch.randn(64, 4096, device="cuda", dtype=torch.bfloat16); w = torch.rand(4096, device="cuda", dtype=torch.bfloat16)
out = torch.empty_like(x); ops.rms_norm(out, x, w, 1e-6)
ref = (x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + 1e-6) * w.float()).bfloat16()
k = torch.randn(16, 8, 128, device="cuda", dtype=torch.bfloat16); v = torch.randn_like(k)
kc = torch.zeros(4, 16, 8, 128, device="cuda", dtype=torch.bfloat16); vc = torch.zeros_like(kc)
one = torch.ones(1, device="cuda"); ops.reshape_and_cache_flash(k, v, kc, vc, torch.arange(16, device="cuda"), "auto", one, one)
q = torch.randn(16, 8, 128, device="cuda", dtype=torch.bfloat16)
cu = torch.tensor([0, 16], device="cuda", dtype=torch.int32)
o = fa.flash_attn_varlen_func(q, k, v, max_seqlen_q=16, cu_seqlens_q=cu, max_seqlen_k=16, cu_seqlens_k=cu, causal=True, fa_version=3)
o = o[0] if isinstance(o, tuple) else o
s = torch.einsum("qhd,khd->hqk", q.float(), k.float()) / 128 ** 0.5
s = s.masked_fill(torch.triu(torch.ones(16, 16, dtype=torch.bool, device="cuda"), 1), float("-inf"))
r = torch.einsum("hqk,khd->qhd", s.softmax(-1), v.float())
torch.cuda.synchronize()
print("vllm", vllm.__version__, "torch", torch.__version__, torch.cuda.get_device_name(0),
      "| rms_norm max err", (out.float() - ref.float()).abs().max().item(), "| cache ok", bool(torch.equal(kc[0], k)),
      "| FA3", fa.FA3_AVAILABLE, fa.FA3_UNAVAILABLE_REASON, "| FA3 max err", (o.float() - r).abs().max().item())
open("/tmp/vram_probe34_smoke_ok", "w").write("ok\n")
PY
fi
# FlashInfer (packs/fi.tar.xz, opt-in per case): its pre-built sampling module must load and sample.
if [ -f /tmp/site-fi/.ok-fi ] && [ ! -f /tmp/vram_probe34_fi_ok ]; then
PYTHONPATH=$PYTHONPATH:/tmp/site-fi python3 - <<'PY' 2>&1 | tail -4 | tee -a "$OUT/setup.txt"
import torch, flashinfer, flashinfer.sampling as fs
from flashinfer.jit.sampling import gen_sampling_module
logits = torch.randn(8, 151936, device="cuda")
ids = fs.top_k_top_p_sampling_from_logits(logits, torch.full((8,), 50, device="cuda", dtype=torch.int32),
                                           torch.full((8,), 0.9, device="cuda"), deterministic=True)
torch.cuda.synchronize()
top = logits.topk(50, dim=-1).indices
print("flashinfer", flashinfer.__version__, "AOT", gen_sampling_module().is_aot, "| sampled ids within top-50:",
      bool((top == ids.view(-1, 1)).any(-1).all()))
open("/tmp/vram_probe34_fi_ok", "w").write("ok\n")
PY
fi
[ "${1:-none}" = none ] && exit 0
[ -f "$P/plan-$1.json" ] || { echo "no plan $P/plan-$1.json"; exit 2; }
[ "${PROBE_RERUN:-0}" = 1 ] && rm -f /tmp/vram_probe34_done.txt   # run again cases already done on this machine
python3 "$P/run_probe.py" --plan "$P/plan-$1.json" --out "$OUT" --deadline-s "${DEADLINE_S:-540}"
