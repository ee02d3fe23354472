"""Our answer to one of GPUStack's selector calls, decided as the exporter decides it from GPUStack's API.

Runs in vram-exporter's environment, as a long-lived child of adapters.py (inside the gpustack==2.3.0
environment): one JSON request per stdin line, one JSON answer per stdout line. A request is what the
selector was handed, dumped by GPUStack's own schemas (workers, the model, its other instances), plus the
model's config and weight size as GPUStack resolved them from the hub (both null for a custom-backend model
whose GPUSTACK_MODEL_VRAM_CLAIM GPUStack takes: it reads neither). The answer comes from the same path
as the exporter against a live server (sources/gpustack_view.py: the API's objects -> rulebook specs ->
rules/cluster/replay.py), for one new pending instance of the model:
{"placed": bool, "worker": id, "gpus": [...], "claims": {"gpu": bytes}, "subordinates": [...],
 "utilization" / "subordinate_utilization": the claims' vram_utilization as GPUStack writes it (or null),
 "candidates": [every candidate the selector listed, each shaped as the chosen one above],
 "message": str, "not_modelled": str | null}.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from vram_exporter.errors import ModelError
from vram_exporter.rules import backends
from vram_exporter.rules.model import Architecture, Cluster, LoraAdapter, ModelSpec
from vram_exporter.sources.gpustack_api import GpuStackState, Model, ModelInstance, Worker
from vram_exporter.sources.gpustack_view import _requests, _sized, _specs, replay_state
from vram_exporter.sources.manifest import LoadedManifest

NEW_INSTANCE = 10**9  # the instance being scheduled: after every existing one


def answer(request: dict) -> dict:
    model_json = dict(request["model"], cluster_id=request["model"].get("cluster_id") or 1)
    model_json["local_path"] = model_json.get("local_path") or f"/hub/{model_json['name']}"
    model = Model.model_validate(model_json)
    workers = tuple(Worker.model_validate(dict(w, cluster_id=w.get("cluster_id") or 1)) for w in request["workers"])
    instances = tuple(ModelInstance.model_validate(dict(i, model_id=model.id)) for i in request["instances"])
    pending = ModelInstance.model_validate({"id": NEW_INSTANCE, "model_id": model.id, "state": "pending",
                                            "name": "new"})
    state = GpuStackState(workers, (model,), instances + (pending,))

    def read(_: Path) -> tuple[dict, int]:
        if request["config"] is None:  # the adapter looked neither up: GPUStack judges the model by its claim
            raise AssertionError("a model judged by GPUSTACK_MODEL_VRAM_CLAIM alone was read")
        return request["config"], int(request["weights"])

    specs, unknown = _specs(state.models, _overlay(request), read)
    if model.name in unknown:
        return {"placed": False, "message": "", "not_modelled": str(unknown[model.name])}
    requests = _requests(state, specs)
    # the workers in the order the test hands GPUStack's scheduler (its patched Worker.all), which decides ties
    verdict = replay_state(state, requests, listed_order=True)[NEW_INSTANCE]
    fraction = _fraction(specs[model.name], requests[model.name], workers)
    if not verdict.placed:
        return {"placed": False, "message": verdict.reason, "not_modelled": None, "fraction": fraction}
    picked = next((c for c in verdict.candidates if c.worker == verdict.worker and c.gpus == verdict.gpus), None)
    chosen = _placement(verdict.worker, verdict.gpus, verdict.claims, verdict.utilization,
                        verdict.subordinate_utilization, verdict.ram, picked.gpu_type if picked else None)
    return dict(chosen, placed=True, not_modelled=None, message=verdict.placed_message or verdict.reason,
                fraction=fraction,
                candidates=[_placement(c.worker, c.gpus, c.claims, c.utilization, c.subordinate_utilization, c.ram,
                                       c.gpu_type) for c in verdict.candidates] or [chosen])


def _overlay(request: dict) -> LoadedManifest | None:
    """The LoRA adapters' sizes GPUStack's hub lookups gave, as the exporter takes them from GPUStack's API: the
    overlay manifest's lora_adapters (the API says no size)."""
    if not request.get("lora_weights"):
        return None
    model = request["model"]
    spec = ModelSpec(name=model["name"], weights_bytes=int(request["weights"]),
                     arch=Architecture.from_config(request["config"]),
                     lora_adapters=tuple(LoraAdapter(name, int(size)) for name, size in request["lora_weights"].items()))
    return LoadedManifest(Path("overlay.yaml"), Cluster(), (spec,))


def _fraction(spec, request, workers) -> float | None:
    """The --mem-fraction-static our SGLang selector books for the model (None for other backends)."""
    if not backends.of(spec.backend).engine_sizes_own_fraction:
        return None
    sized = _sized(spec, request, workers)
    try:
        return backends.of(spec.backend).selector.booking(sized, sized.sizing_total).fraction
    except ModelError:
        return None


def _placement(worker: int, gpus, claims: dict, utilization, subordinate_utilization, ram, gpu_type) -> dict:
    """One placement as GPUStack's candidate holds it: the main worker's GPUs (none: CPU-only), claims and RAM
    claim, then each subordinate worker's."""
    subordinates: dict[int, dict[int, int]] = {}
    for (owner, gpu), claim in sorted(claims.items()):
        if owner != worker:
            subordinates.setdefault(owner, {})[gpu] = claim
    return {"worker": worker, "gpus": sorted(gpus), "utilization": utilization, "ram": ram, "gpu_type": gpu_type,
            "subordinate_utilization": subordinate_utilization,
            "claims": {str(g): c for (w, g), c in claims.items() if w == worker},
            "subordinates": [{"worker": w, "claims": {str(g): c for g, c in by_gpu.items()}}
                             for w, by_gpu in subordinates.items()]}


def main() -> None:
    for line in sys.stdin:
        try:
            reply = answer(json.loads(line))
        except Exception as exc:  # one bad case must not stop the others: the adapter shows it
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
