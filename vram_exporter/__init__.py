"""vram-exporter: will each model fit on these GPUs under GPUStack's scheduler and vLLM's memory rules?"""

__version__ = "0.1.0"
