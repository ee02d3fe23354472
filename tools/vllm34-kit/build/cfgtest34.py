"""CPU check: vLLM 0.34's ModelConfig resolves every payload model folder (config.json only) with the
device's transformers 5.17 / huggingface_hub 1.33: architecture, max_model_len, sliding window, MLA."""
import os, sys
from vllm.config import ModelConfig
root = sys.argv[1]
for m in sorted(os.listdir(root)):
    try:
        mc = ModelConfig(model=os.path.join(root, m), skip_tokenizer_init=True, dtype="auto")
        print(f"ok   {m}: arch={mc.architectures} max_len={mc.max_model_len} dtype={mc.dtype} "
              f"sw={mc.get_sliding_window()} mla={mc.use_mla} moe={getattr(mc, 'is_moe', None)}")
    except Exception as e:
        print(f"FAIL {m}: {type(e).__name__}: {str(e)[:300]}")
