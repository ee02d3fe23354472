"""GPUStack's vLLM, SGLang and custom-backend selectors with their answers replaced by ours.

Imported by plugin.py (inside the gpustack==2.3.0 environment) when GPUSTACK_SUITE_SELECTORS=ours. Each
adapter is a subclass of GPUStack's selector, so a test that reaches into it (patches
``_init_model_parameters``, sets ``_num_attention_heads``) still can; only ``select_candidates`` is ours:
it hands what the selector was given, and the model facts the selector parsed (the test's changes
included), to ours.py in vram-exporter's environment, and returns our verdict as GPUStack's objects (one
candidate per placement our selector lists, each with its claims and subordinate workers, which
GPUStack's own placement scorer then ranks; none and our message when we leave it pending). The adapters
replace GPUStack's classes everywhere a test or GPUStack's scheduler
looks them up.
"""

import atexit
import json
import os
import subprocess
import sys
from types import SimpleNamespace

from gpustack import policies
from gpustack.policies import candidate_selectors, utils as policy_utils
from gpustack.policies.base import ModelInstanceScheduleCandidate
from gpustack.policies.candidate_selectors import (
    base_candidate_selector,
    custom_backend_resource_fit_selector,
    sglang_resource_fit_selector,
    vllm_resource_fit_selector,
)
from gpustack.scheduler import scheduler
from gpustack.schemas.models import BackendEnum, ComputedResourceClaim, ModelInstanceSubordinateWorker
from gpustack.utils import lora_model_source

import hub

_CHILD = None


def _ours(request: dict) -> dict:
    global _CHILD
    if _CHILD is None:
        _CHILD = subprocess.Popen([os.environ["GPUSTACK_SUITE_OURS_PYTHON"], os.path.join(os.path.dirname(__file__),
                                                                                          "ours.py")],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        atexit.register(_CHILD.terminate)
    _CHILD.stdin.write(json.dumps(request) + "\n")
    _CHILD.stdin.flush()
    reply = json.loads(_CHILD.stdout.readline())
    if "error" in reply and os.environ.get("GPUSTACK_SUITE_DUMP"):
        with open(os.environ["GPUSTACK_SUITE_DUMP"], "w") as dump:
            json.dump(request, dump)
    if "error" in reply:
        raise RuntimeError(f"vram-exporter failed on this case: {reply['error']}")
    return reply


def _config_dict(config) -> dict:
    if isinstance(config, SimpleNamespace):
        return dict(vars(config))
    return config.to_dict()


class _Ours:
    async def select_candidates(self, workers):
        if self.BACKEND == BackendEnum.CUSTOM.value and policy_utils.get_vram_claim_from_model_env(self._model) is not None:
            # GPUStack's custom selector sizes it by the claim alone (estimate_model_vram returns it first) and
            # reads neither config.json nor the weights: neither is looked up, so neither is handed over
            config, weights = None, None
        else:
            config, weights = await self._model_facts(workers), policy_utils.get_model_weight_size(self._model, None)
        reply = _ours({
            "workers": [w.model_dump(mode="json") for w in workers],
            # a test that builds the selector itself leaves model.backend unset: the selector names it
            "model": dict(self._model.model_dump(mode="json"), backend=self._model.backend or self.BACKEND),
            "instances": [mi.model_dump(mode="json") for mi in self._model_instances],
            "config": config,
            "weights": weights,
            "lora_weights": await _lora_weights(self._model, workers),
        })
        if reply.get("not_modelled"):
            raise NotImplementedError(f"not modelled by vram-exporter: {reply['not_modelled']}")
        if reply.get("fraction") is not None:  # SGLang: the --mem-fraction-static our selector books
            self._mem_fraction_static_by_gpu_type = {_gpu_type(workers): reply["fraction"]}
        if not reply["placed"]:
            self._messages = [reply["message"]]
            return []
        self._messages = [reply["message"]] if reply["message"] else []
        return [_candidate(candidate, workers) for candidate in reply["candidates"]]

    async def _model_facts(self, workers) -> dict:
        """config.json as the selector parsed it, the test's changes included."""
        await self._init_model_parameters(workers)  # GPUStack's parse: a test may change what it finds
        config = _config_dict(await base_candidate_selector.get_pretrained_config_with_workers(
            self._model, workers, trust_remote_code=True))
        heads = getattr(self, "_num_attention_heads", None)
        if heads and heads != config.get("num_attention_heads"):
            config["num_attention_heads"] = heads
        vocab = getattr(getattr(self, "_model_params", None), "vocab_size", None)
        if vocab and vocab != config.get("vocab_size"):
            config["vocab_size"] = vocab
        return config


async def _lora_weights(model, workers) -> dict:
    """Each LoRA adapter's weights as GPUStack's estimate counts them (policies/utils.py::
    estimate_lora_weights_bytes, asked one entry at a time), by the name the API shows."""
    sizes = {}
    for entry in lora_model_source.normalized_lora_list(model):
        alone = model.model_copy(update={"lora_list": [entry]})
        sizes[entry.lora_name] = await policy_utils.estimate_lora_weights_bytes(alone, None, workers, None)
    return sizes


def _claim(claims: dict, utilization, ram=None) -> ComputedResourceClaim:
    return ComputedResourceClaim(is_unified_memory=False, vram={int(g): b for g, b in claims.items()},
                                 vram_utilization=utilization, ram=ram)


def _gpu_type(workers) -> str:
    """The GPU type of the workers' first GPU (cuda, rocm, ...), as GPUStack keys its fractions."""
    for worker in workers:
        for gpu in (worker.status.gpu_devices or []) if worker.status else []:
            if gpu.type:
                return gpu.type
    return "*"


def _candidate(reply: dict, workers) -> ModelInstanceScheduleCandidate:
    by_id = {w.id: w for w in workers}
    subordinates = [ModelInstanceSubordinateWorker(
        worker_id=s["worker"], worker_ip=by_id[s["worker"]].ip, total_gpus=len(s["claims"]), gpu_type=reply["gpu_type"],
        gpu_indexes=sorted(int(g) for g in s["claims"]), computed_resource_claim=_claim(s["claims"], reply["subordinate_utilization"]))
        for s in reply["subordinates"]]
    return ModelInstanceScheduleCandidate(
        worker=by_id[reply["worker"]], gpu_indexes=reply["gpus"] or None,  # none: a CPU-only candidate
        gpu_type=reply["gpu_type"],
        computed_resource_claim=_claim(reply["claims"], reply["utilization"], reply.get("ram")),
        subordinate_workers=subordinates)


class OursVLLM(_Ours, vllm_resource_fit_selector.VLLMResourceFitSelector):
    BACKEND = BackendEnum.VLLM.value


class OursSGLang(_Ours, sglang_resource_fit_selector.SGLangResourceFitSelector):
    BACKEND = BackendEnum.SGLANG.value


class OursCustom(_Ours, custom_backend_resource_fit_selector.CustomBackendResourceFitSelector):
    BACKEND = BackendEnum.CUSTOM.value


for _name, _ours_cls in (("VLLMResourceFitSelector", OursVLLM), ("SGLangResourceFitSelector", OursSGLang),
                         ("CustomBackendResourceFitSelector", OursCustom)):
    for _module in (candidate_selectors, vllm_resource_fit_selector, sglang_resource_fit_selector,
                    custom_backend_resource_fit_selector, scheduler, policies):
        if hasattr(_module, _name):
            setattr(_module, _name, _ours_cls)
del sys, hub
