"""Load vLLM 0.34's native extensions into torch 2.11 on a CPU (stub libcuda): registration of every op
runs at load time, so a schema torch 2.11 cannot parse or a missing symbol fails here."""
import sys, torch, os, traceback
root = sys.argv[1]
libs = ["_C_stable_libtorch", "vllm_flash_attn/_vllm_fa3_C", "_moe_C_stable_libtorch", "_flashmla_C",
        "_flashmla_extension_C", "_deepselect_C", "_flashkda_C", "cumem_allocator", "vllm_flash_attn/_vllm_fa2_C"]
for l in libs:
    p = os.path.join(root, "vllm", l + ".abi3.so")
    if not os.path.exists(p):
        print("absent", l); continue
    try:
        torch.ops.load_library(p); print("OK  ", l)
    except Exception as e:
        print("FAIL", l, repr(e)[:600])
for ns in ["_C", "_C_cache_ops", "_C_cuda_utils", "_C_custom_ar", "_vllm_fa3_C", "_moe_C", "_flashmla_C"]:
    try:
        n = len(list(getattr(torch.ops, ns)))
    except Exception as e:
        n = repr(e)[:100]
    print("namespace", ns, n)
print(torch.ops._C.rms_norm.default._schema)
print(torch.ops._C_cache_ops.reshape_and_cache_flash.default._schema)
print(torch.ops._vllm_fa3_C.fwd.default._schema)
for op in ["_C::rms_norm", "_C_cache_ops::reshape_and_cache_flash", "_vllm_fa3_C::fwd", "_moe_C::topk_softmax"]:
    try:
        d = torch._C._dispatch_dump(op)
        print(op, "kernels:", [l.split(":")[0].strip() for l in d.splitlines() if "kernel" in l or l.startswith(("CUDA", "Meta", "CPU"))][:6])
    except Exception as e:
        print(op, repr(e)[:200])
n = sum(1 for o in torch._C._dispatch_get_all_op_names() if o.split("::")[0] in ("_C", "_C_cache_ops", "_C_cuda_utils", "_C_custom_ar", "_vllm_fa3_C", "_moe_C", "_flashmla_C", "_flashmla_extension_C"))
print("vllm ops registered:", n)
