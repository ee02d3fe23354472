"""What GPUStack's tests fetch from a model hub at run time, served offline from hub_models.json.

Runs inside the gpustack==2.3.0 virtual environment (a pytest plugin, loaded by plugin.py). The
selectors ask the hub for two things: a model's pretrained config (``get_pretrained_config_with_workers``)
and its weight size (``get_model_weight_size``: the sum of the weight files in the repository's root).
Each answer comes from hub_models.json, where every entry says where its numbers come from. A repository
the file does not know raises, naming it: a test never silently gets a made-up model.
"""

import json
import tempfile
from pathlib import Path

from transformers import AutoConfig

DATA = Path(__file__).with_name("hub_models.json")


class UnknownRepository(LookupError):
    pass


def _entries() -> dict:
    return json.loads(DATA.read_text())["models"]


def _repo_of(model) -> str:
    return model.huggingface_repo_id or model.model_scope_model_id or ""


def _entry(model) -> dict:
    repo = _repo_of(model)
    entry = _entries().get(repo)
    if entry is None:
        raise UnknownRepository(f"hub_models.json has no entry for {repo!r}")
    return entry


_CONFIGS: dict[str, object] = {}


def pretrained_config(model):
    """The repository's config.json parsed by transformers, as the hub lookup returns it."""
    repo = _repo_of(model)
    if repo not in _CONFIGS:
        with tempfile.TemporaryDirectory() as directory:
            (Path(directory) / "config.json").write_text(json.dumps(_entry(model)["config"]))
            _CONFIGS[repo] = AutoConfig.from_pretrained(directory, trust_remote_code=False)
    return _CONFIGS[repo]


async def get_pretrained_config_with_workers(model, workers=None, trust_remote_code=False):
    return pretrained_config(model)


def get_model_weight_size(model, token=None) -> int:
    return int(_entry(model)["weights_bytes"])


def config_dict(model) -> dict:
    return _entry(model)["config"]
