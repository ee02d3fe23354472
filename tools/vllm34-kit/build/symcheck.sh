#!/bin/bash
# Every unversioned undefined symbol of vLLM 0.34's .so files that torch 2.11.0's libtorch*/libc10* do not
# export. Expected: only Python C-API (Py*, _Py*), CUDA driver (cu*), cuBLAS(Lt) and libdl names, which the
# interpreter, libcuda and torch's own CUDA libraries provide at run time. Usage: bash symcheck.sh VLLM_SITE TORCH_LIB
set -u
V=${1:-../wheels/v34}; T=${2:-../wheels/t211/torch/lib}
nm -D --defined-only "$T"/*.so 2>/dev/null | awk '{print $NF}' | sort -u > /tmp/torch_defined.txt
for f in $(cd "$V" && find vllm -name '*.so' | sort); do
  nm -D --undefined-only "$V/$f" | awk '$1=="U"{print $2}' | grep -v '@' | sort -u > /tmp/und.txt
  miss=$(comm -23 /tmp/und.txt /tmp/torch_defined.txt)
  other=$(echo "$miss" | grep -v -E '^(_?Py|cu[A-Z]|cublas|dl(open|sym|error|addr)$)' | grep .)
  printf '%-50s torch-ABI symbols used: %3d, all exported by torch 2.11: %s%s\n' "$f" \
    "$(grep -cE '^(aoti_torch|torch_)' /tmp/und.txt)" \
    "$([ -z "$(echo "$miss" | grep -E '^(aoti_torch|torch_|_Z)')" ] && echo yes || echo NO)" \
    "$([ -n "$other" ] && echo "; other missing: $other" | tr '\n' ' ')"
done
