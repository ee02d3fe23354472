"""pytest plugin that runs GPUStack's own scheduler tests (upstream/, at the commit in SOURCE) against
gpustack==2.3.0's code, or with its selectors swapped for ours.

Loaded with ``-p plugin`` inside the gpustack==2.3.0 virtual environment (run.py does it). What it changes,
and only that:

- 2.3.0 calls: the tests predate two 2.3.0 signatures. Selectors and the placement scorer now take a
  keyword-only ``resource_view=`` (policies/resource_view.py); a test that builds one without it gets
  ``ResourceView(model_instances)``, which is what 2.3.0's scheduler builds from the same instances when no
  other workload holds a reservation. ``scheduler.find_candidate`` now takes a database session first and
  reads the resource view from it; a test's ``find_candidate(config, model, workers, instances)`` gets a
  mock session and ``ResourceView(instances)``.
- The hub: configs and weight sizes come from hub_models.json (hub.py), never the network.
- With GPUSTACK_SUITE_SELECTORS=ours: the vLLM, SGLang and custom-backend selectors are ours
  (adapters.py), everywhere a test or GPUStack's scheduler reaches them; each assert then judges our answer.
"""

import functools
import inspect
import os
from unittest.mock import MagicMock

import hub
from gpustack.config import Config
from gpustack.policies import utils as policy_utils
from gpustack.policies.resource_view import ResourceView
from gpustack.policies.candidate_selectors import base_candidate_selector
from gpustack.policies.candidate_selectors.custom_backend_resource_fit_selector import (
    CustomBackendResourceFitSelector,
)
from gpustack.policies.candidate_selectors.sglang_resource_fit_selector import SGLangResourceFitSelector
from gpustack.policies.candidate_selectors.vllm_resource_fit_selector import VLLMResourceFitSelector
from gpustack.policies.scorers.placement_scorer import PlacementScorer
from gpustack.scheduler import calculator, scheduler

OURS = os.environ.get("GPUSTACK_SUITE_SELECTORS") == "ours"


def _default_resource_view(cls):
    """``cls(..., model_instances, ...)`` without resource_view= gets ResourceView(model_instances)."""
    original = cls.__init__
    names = list(inspect.signature(original).parameters)
    position = names.index("model_instances") - 1  # without self

    @functools.wraps(original)
    def __init__(self, *args, **kwargs):
        if "resource_view" not in kwargs:
            instances = kwargs.get("model_instances", args[position] if len(args) > position else [])
            kwargs["resource_view"] = ResourceView(list(instances or []))
        original(self, *args, **kwargs)

    cls.__init__ = __init__


for _cls in (VLLMResourceFitSelector, SGLangResourceFitSelector, CustomBackendResourceFitSelector, PlacementScorer):
    _default_resource_view(_cls)

_find_candidate = scheduler.find_candidate


@functools.wraps(_find_candidate)
async def find_candidate(*args, **kwargs):
    """The tests' ``find_candidate(config, model, workers, model_instances)``, called as 2.3.0 takes it."""
    if args and isinstance(args[0], Config):
        args = (MagicMock(),) + args
    if kwargs.get("resource_view") is None:
        instances = kwargs.get("model_instances", args[4] if len(args) > 4 else [])
        kwargs["resource_view"] = ResourceView(list(instances or []))
    return await _find_candidate(*args, **kwargs)


scheduler.find_candidate = find_candidate
calculator.get_pretrained_config_with_workers = hub.get_pretrained_config_with_workers
base_candidate_selector.get_pretrained_config_with_workers = hub.get_pretrained_config_with_workers
policy_utils.get_model_weight_size = hub.get_model_weight_size

if OURS:
    import adapters  # noqa: E402,F401 - swaps the selectors in on import
