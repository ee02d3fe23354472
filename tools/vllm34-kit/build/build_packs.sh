#!/bin/bash
# How packs/core.tar.xz and packs/moe.tar.xz were made (CPU machine, no GPU), for vLLM 0.34.0 on the
# device's torch 2.11.0+cu130. Inputs: /work/wheels34/vllm-0.34.0-*.whl and ../wheels/deps/ (carry34.txt
# lists the 38 wheels the device lacks; downloaded by `pip download -c device-constraints.txt -r want34.txt`).
set -eu
B=$(cd "$(dirname "$0")" && pwd); K=$B/..; T=${T:-/tmp/vllm34-pack}
PY=${PY:-$K/venv/bin/python}
rm -rf "$T" && mkdir -p "$T" && cd "$T"
$PY -m pip install -q --no-index --no-deps --no-compile --target site /work/wheels34/vllm-0.34.0-cp38-abi3-manylinux_2_28_x86_64.whl \
  $(sed "s#^#$K/wheels/deps/#" "$B/carry34.txt") 2>&1 | grep -v WARNING || true

# 1. Drop what an H100/H200 running a bf16 dense/MoE/MLA model never loads.
rm -f  site/vllm/vllm_flash_attn/_vllm_fa2_C.abi3.so      # FA2 (71 MiB): import is try/except; sm_90 uses FA3
rm -f  site/vllm/vllm-rs                                   # Rust front end binary, only with VLLM_RUST_FRONTEND_PATH
rm -rf site/vllm/third_party/fmha_sm100                    # Blackwell-only sources
rm -rf site/vllm/third_party/deep_gemm/include             # DeepGEMM JIT headers (fp8 JIT only)
rm -f  site/vllm/_deepselect_C.abi3.so                     # sm_100 only (its fatbin has no sm_90 image)
rm -f  site/vllm/_flashkda_C.abi3.so                       # Kimi-K3/GLM-5-next KDA kernels only
rm -rf site/xgrammar/lib site/bin                          # libxgrammar.a (static library), console scripts
find site -name __pycache__ -prune -exec rm -rf {} +

# 2. Zero the fatbin images an sm_90 GPU can never load (layout and size unchanged; see strip.py).
for f in _C_stable_libtorch _moe_C_stable_libtorch _flashmla_C; do
  python3 "$B/strip.py" site/vllm/$f.abi3.so site/vllm/$f.abi3.so.new && mv site/vllm/$f.abi3.so.new site/vllm/$f.abi3.so
done

# 3. The probe's vLLM plugin (records measure_kv_cache_bytes in the worker) travels in the payload, not here.
# 4. Split: the MoE kernels (and DeepGEMM's extension) travel on their own.
mkdir -p moe/vllm/third_party/deep_gemm && mv site/vllm/_moe_C_stable_libtorch.abi3.so moe/vllm/
# DeepGEMM's extension (fp8 GEMMs only; vLLM finds the package by find_spec, loads the .so lazily)
mv site/vllm/third_party/deep_gemm/_C_extension.abi3.so moe/vllm/third_party/deep_gemm/
tar -C site -cf - . | xz -9e -T2 > core.tar.xz
tar -C moe  -cf - . | xz -9e -T2 > moe.tar.xz
ls -l *.tar.xz

# 5. Optional packs/fi.tar.xz: FlashInfer 0.7.4 (0.7.3, which vLLM 0.34 pins, is no longer on PyPI) for
#    cases that ask for it ("flashinfer": true in a plan; unpacked to /tmp/site-fi, put on PYTHONPATH
#    only for those cases). Python files only (no JIT sources: nothing can JIT-compile from it) plus the
#    sampling module pre-built for sm_90a where FlashInfer looks for AOT modules (data/aot/sampling/),
#    the one module vLLM's sampler loads. Needs CUDA 13.0's nvcc here (/usr/local/cuda-13.0) and the
#    venv's nvidia cu13 headers (curand.h); linking needs a libcuda.so: the stub is enough.
FI_WHL=$K/wheels/fi/flashinfer_python-0.7.4-py3-none-any.whl
mkdir -p fib stub && $PY -m pip install -q --no-deps --no-compile --target fib/site "$FI_WHL" $K/wheels/deps/apache_tvm_ffi-0.1.11-*.whl 2>&1 | grep -v WARNING || true
gcc -shared -fPIC -o stub/libcuda.so.1 "$B/stubcuda.c" -Wl,-soname,libcuda.so.1 && ln -sf libcuda.so.1 stub/libcuda.so
NV=$($PY -c 'import nvidia,os;print(os.path.join(list(nvidia.__path__)[0],"cu13","include"))')
CUDA_HOME=/usr/local/cuda-13.0 PATH=/usr/local/cuda-13.0/bin:$(dirname $PY):$PATH FLASHINFER_CUDA_ARCH_LIST=9.0a \
  FLASHINFER_WORKSPACE_BASE=$T/fi FLASHINFER_EXTRA_CUDAFLAGS="-I$NV" PYTHONPATH=$T/fib/site LD_LIBRARY_PATH=$T/stub \
  $PY -c "from flashinfer.jit.sampling import gen_sampling_module; gen_sampling_module().build(verbose=False)" || true  # link fails: no -lcuda
D=$T/fi/.cache/flashinfer/0.7.4/90a/cached_ops/sampling
sed -i "s#    -L\$cuda_home/lib64/stubs \\\$#    -L\$cuda_home/lib64/stubs -L$T/stub \$#" $D/build.ninja
CUDA_HOME=/usr/local/cuda-13.0 $(dirname $PY)/ninja -C $D -f $D/build.ninja
mkdir -p fipack && (cd fib/site && tar -cf - --exclude='flashinfer/data' --exclude='*.cu' --exclude='*.cuh' --exclude='*.h' \
  --exclude='*.c' --exclude='__pycache__' flashinfer flashinfer_python-0.7.4.dist-info) | tar -C fipack -xf -
mkdir -p fipack/flashinfer/data/aot/sampling && cp $D/sampling.so fipack/flashinfer/data/aot/sampling/
tar -C fipack -cf - . | xz -9e -T2 > fi.tar.xz
ls -l fi.tar.xz
