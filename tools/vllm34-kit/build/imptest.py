import importlib, sys, traceback
mods = sys.argv[1:] or ["vllm", "vllm.LLM", "vllm.v1.worker.gpu_worker", "vllm.v1.worker.extensible_kv_cache",
        "vllm.v1.engine.core", "vllm.v1.worker.gpu.model_runner",
        "vllm.model_executor.models.llama", "vllm.model_executor.models.qwen2", "vllm.model_executor.models.deepseek_v2",
        "vllm.model_executor.models.qwen2_moe", "vllm.model_executor.models.mistral", "vllm.model_executor.models.gemma3",
        "vllm.v1.attention.backends.flash_attn", "vllm.v1.attention.backends.mla.flashmla",
        "vllm.v1.attention.backends.mla.flashattn_mla", "vllm.entrypoints.llm",
        "vllm.model_executor.layers.fused_moe.fused_moe"]
bad = 0
for m in mods:
    try:
        if m == "vllm.LLM":
            from vllm import LLM
        else:
            importlib.import_module(m)
        print("ok  ", m)
    except BaseException as e:
        bad += 1
        print("FAIL", m, type(e).__name__, str(e)[:300])
        traceback.print_exc(limit=-3)
sys.exit(1 if bad else 0)
