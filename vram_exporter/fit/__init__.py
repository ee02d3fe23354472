"""The two rulebooks, as pure functions with no I/O: GPUStack's placement and vLLM's memory rules."""
