"""Our LoRA rules (rules/backends/vllm/lora.py) against vLLM's own code, per version (0.17.1, 0.32.0, 0.33.0,
0.34.0), exact to the byte.

vLLM's LoRA layer classes (``vllm/lora/layers/*.py``) are compiled from each wheel's source as they are and
built the way ``vllm/lora/utils.py::from_layer`` builds them: the first class of ``_all_lora_classes`` whose
``can_replace_layer`` takes the base layer, then its ``create_lora_weights``; the model's modules and packed
lists come from the model class's own ``packed_modules_mapping`` and ``embedding_modules``
(``vllm/model_executor/models/<name>.py``, as registry.py maps the architecture). ``torch`` is a stand-in that
records what each ``torch.zeros`` / ``torch.empty`` / ``torch.tensor`` allocates on the GPU. The punica wrapper's
tensors come from ``PunicaWrapperBase.__init__`` and ``LoRAKernelMeta.make``, the CUDA graph sets from
``get_captured_lora_counts`` and the capture cases (``cudagraph_dispatcher.py::_get_lora_cases``; 0.34:
``gpu/lora_utils.py::get_lora_capture_cases``).

What is not vLLM's here: the base layers' partition arithmetic (``vllm/model_executor/layers/linear.py``:
column-parallel outputs and row-parallel inputs divided by TP, KV heads max(1, heads // TP)), the lm_head's
reindexing map length (its vocabulary padded to 64, vocab_parallel_embedding.py), and torch's rounding of
each allocation to 512 bytes (lora.py ``allocated``).
"""

from __future__ import annotations

import ast
import math
import random
from dataclasses import dataclass
from types import SimpleNamespace

import pytest

from vllm_source import SOURCES, VERSIONS, Dtype, _compile, source
from vram_exporter.errors import ModelError
from vram_exporter.rules.backends.vllm import lora, versions
from vram_exporter.rules.flags import MAX_LORA_RANKS, VllmLoraParams
from vram_exporter.rules.model import Architecture, LoraAdapter

CASES = 40
KEEP_DECORATORS = {"classmethod", "staticmethod", "property", "dataclass", "_not_fully_sharded_can_replace",
                   "_fully_sharded_can_replace"}


class FakeTorch:
    """torch as far as LoRA's allocations go: each tensor's shape and dtype, on the GPU unless device='cpu'."""

    long, int32, int64, bool, float32 = Dtype(size=8), Dtype(size=4), Dtype(size=8), Dtype(size=1), Dtype(size=4)

    def __init__(self):
        self.allocations: list[int] = []
        self.nn = SimpleNamespace(Module=object)

    def _tensor(self, shape, dtype, device):
        tensor = SimpleNamespace(shape=tuple(shape), dtype=dtype, view=lambda *s: SimpleNamespace(shape=s))
        if device != "cpu":
            self.allocations.append(math.prod(shape) * dtype.size)
        return tensor

    def zeros(self, *shape, dtype, device=None):
        return self._tensor(shape[0] if len(shape) == 1 and isinstance(shape[0], tuple) else shape, dtype, device)

    empty = zeros

    def tensor(self, data, dtype, device=None):
        return self._tensor((len(data),), dtype, device)


def _classes(version: str, module: str, names: set[str] | None, ns: dict) -> None:
    """Compile the classes (all, or ``names``) and module-level functions named in KEEP of ``vllm/<module>``
    into ``ns``, with decorators other than KEEP_DECORATORS dropped."""
    tree = source(version, module)
    nodes = []
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and (names is None or node.name in names):
            for item in ast.walk(node):
                if isinstance(item, (ast.FunctionDef, ast.ClassDef)):
                    item.decorator_list = [d for d in item.decorator_list
                                           if isinstance(d, ast.Name) and d.id in KEEP_DECORATORS]
            nodes.append(node)
    _compile(nodes, version, module, ns)


def _functions(version: str, module: str, names: tuple[str, ...], ns: dict) -> None:
    tree = source(version, module)
    nodes = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in names]
    for node in nodes:
        node.decorator_list = []
    _compile(nodes, version, module, ns)


def _divide(a, b):  # vllm/distributed/utils.py::divide
    assert a % b == 0, f"{a} is not divisible by {b}"
    return a // b


# --- the base layers vLLM wraps (vllm/model_executor/layers/linear.py, vocab_parallel_embedding.py) ---------
class LinearBase:
    def __init__(self, tp, **fields):
        self.tp_size, self.tp_rank, self.prefix, self.quant_method = tp, 0, "", None
        vars(self).update(fields)


class ColumnParallelLinear(LinearBase):
    def __init__(self, tp, input_size, output_size, **fields):
        super().__init__(tp, input_size=input_size, output_size=output_size,
                         output_size_per_partition=output_size // tp, gather_output=False, **fields)


class MergedColumnParallelLinear(ColumnParallelLinear):
    def __init__(self, tp, input_size, output_sizes):
        super().__init__(tp, input_size, sum(output_sizes), output_sizes=list(output_sizes))


class QKVParallelLinear(ColumnParallelLinear):
    def __init__(self, tp, hidden, head_size, heads, kv_heads):
        num_kv = max(1, kv_heads // tp)
        sizes = [heads // tp * head_size * tp, num_kv * head_size * tp, num_kv * head_size * tp]
        super().__init__(tp, hidden, sum(sizes), output_sizes=sizes, head_size=head_size, total_num_heads=heads,
                         num_heads=heads // tp, total_num_kv_heads=kv_heads, num_kv_heads=num_kv,
                         num_kv_head_replicas=max(1, tp // kv_heads))


class RowParallelLinear(LinearBase):
    def __init__(self, tp, input_size, output_size):
        super().__init__(tp, input_size=input_size, output_size=output_size,
                         input_size_per_partition=input_size // tp)


class ReplicatedLinear(LinearBase):
    pass


class VocabParallelEmbedding:
    def __init__(self, tp, vocab, hidden):
        self.tp_size, self.org_vocab_size, self.embedding_dim, self.vocab = tp, vocab, hidden, vocab
        self.num_added_embeddings_per_partition = 0  # 0.17.1 reads it: no added vocabulary
        self.weight = SimpleNamespace(device="cuda", dtype=None)


class ParallelLMHead(VocabParallelEmbedding):
    def get_sharded_to_full_mapping(self):
        """None on one rank; else one index per padded vocabulary entry (padding to 64)."""
        return None if self.tp_size < 2 else [0] * (math.ceil(self.vocab / 64) * 64)


class LoraLayers:
    """One version's LoRA layer classes, compiled from its source, and ``from_layer``'s pick among them."""

    def __init__(self, version: str, tp: int):
        self.version, self.tp = version, tp
        self.torch = FakeTorch()
        ns = {"torch": self.torch, "nn": self.torch.nn, "divide": _divide, "math": math,
              "envs": SimpleNamespace(VLLM_LORA_ENABLE_DUAL_STREAM=False), "_get_lora_device": lambda layer: "cuda",
              "current_platform": SimpleNamespace(is_cuda_alike=lambda: True, can_update_inplace=lambda: True),
              "maybe_get_oot_by_class": lambda cls: cls, "get_tensor_model_parallel_world_size": lambda: tp,
              "get_tensor_model_parallel_rank": lambda: 0, "BaseLayerWithLoRA": type("BaseLayerWithLoRA", (), {}),
              "LinearBase": LinearBase, "ColumnParallelLinear": ColumnParallelLinear,
              "MergedColumnParallelLinear": MergedColumnParallelLinear, "QKVParallelLinear": QKVParallelLinear,
              "RowParallelLinear": RowParallelLinear, "ReplicatedLinear": ReplicatedLinear,
              "VocabParallelEmbedding": VocabParallelEmbedding, "ParallelLMHead": ParallelLMHead,
              "dataclass": dataclass}
        _functions(version, "lora/layers/utils.py", ("_not_fully_sharded_can_replace", "_fully_sharded_can_replace"), ns)
        embedding = next(m for m in ("lora/layers/vocab_parallel_embedding.py", "lora/layers/vocal_parallel_embedding.py")
                         if (SOURCES / version / "vllm" / m).exists())  # the file's older (misspelt) name
        for module in ("lora/layers/base_linear.py", "lora/layers/column_parallel_linear.py",
                       "lora/layers/row_parallel_linear.py", "lora/layers/logits_processor.py", embedding):
            _classes(version, module, None, ns)
        self.ns = ns
        order = next(n for n in source(version, "lora/utils.py").body if isinstance(n, ast.AnnAssign | ast.Assign)
                     and "_all_lora_classes" in ast.unparse(n.targets[0] if isinstance(n, ast.Assign) else n.target))
        self.order = [ns[e.id] for e in order.value.elts if e.id in ns]  # the MoE and model-specific ones: not here

    def from_layer(self, layer, config, packed: list[str]):
        """vllm/lora/utils.py::from_layer: the first class that can replace ``layer``, its weights created."""
        for cls in self.order:
            if cls.can_replace_layer(source_layer=layer, lora_config=config, packed_modules_list=packed,
                                     model_config=None):
                wrapped = cls(layer)
                wrapped.create_lora_weights(config.max_loras, config, None)
                return wrapped
        return layer

    def logits_processor(self, lm_head, config, vocab: int):
        """from_layer_logits_processor."""
        wrapped = self.ns["LogitsProcessorWithLoRA"](SimpleNamespace(vocab_size=vocab), lm_head.embedding_dim, None,
                                                     "cuda", lm_head.get_sharded_to_full_mapping())
        wrapped.create_lora_weights(config.max_loras, config, None)


def _registered(version: str, architecture: str) -> tuple[str, str]:
    registry = ast.unparse(source(version, "model_executor/models/registry.py"))
    return ast.literal_eval(registry.split(f"'{architecture}': ", 1)[1].split(")", 1)[0] + ")")


def _class_chain(version: str, architecture: str):
    """The class registry.py maps ``architecture`` to, then its ForCausalLM bases (Mistral and Phi3 extend
    llama.py's LlamaForCausalLM)."""
    module, cls = _registered(version, architecture)
    while cls is not None:
        node = next(n for n in source(version, f"model_executor/models/{module}.py").body
                    if isinstance(n, ast.ClassDef) and n.name == cls)
        yield node
        bases = [b.id for b in node.bases if isinstance(b, ast.Name) and b.id.endswith("ForCausalLM")]
        cls, module = (bases[0], "llama") if bases else (None, None)


def model_class(version: str, architecture: str) -> tuple[dict, dict]:
    """(packed_modules_mapping, embedding_modules) of the model's class, its bases' where it sets none."""
    found: dict[str, object] = {}
    for node in _class_chain(version, architecture):
        for item in node.body:
            target = item.targets[0] if isinstance(item, ast.Assign) else getattr(item, "target", None)
            name = getattr(target, "id", None)
            if name in ("packed_modules_mapping", "embedding_modules") and name not in found:
                found[name] = ast.literal_eval(item.value)
    return found.get("packed_modules_mapping", {}), found.get("embedding_modules", {})  # SupportsLoRA's default: {}


def has_lm_head(version: str, architecture: str) -> bool:
    """Whether the model's class or a base it extends builds an lm_head module (Gemma-2's logits come from
    embed_tokens)."""
    inits = [f for node in _class_chain(version, architecture) for f in node.body
             if isinstance(f, ast.FunctionDef) and f.name == "__init__"]
    return any("self.lm_head = " in ast.unparse(init) for init in inits)


def theirs(version: str, arch: Architecture, params: VllmLoraParams, tp: int) -> int:
    """The bytes vLLM's own classes allocate for the LoRA slots of ``arch`` on one GPU (pipeline size 1)."""
    layers = LoraLayers(version, tp)
    architecture = arch.architectures[0]
    packed, embeddings = model_class(version, architecture)
    config = SimpleNamespace(max_loras=params.max_loras, max_lora_rank=params.max_lora_rank, lora_dtype=Dtype(size=2),
                             fully_sharded_loras=params.fully_sharded_loras)
    hidden, width, hd = arch.hidden_size, arch.intermediate_size, arch.head_dim
    decoder = {"qkv_proj": QKVParallelLinear(tp, hidden, hd, arch.attention_heads, arch.kv_heads),
               "o_proj": RowParallelLinear(tp, arch.attention_heads * hd, hidden),
               "gate_up_proj": MergedColumnParallelLinear(tp, hidden, [width, width]),
               "down_proj": RowParallelLinear(tp, width, hidden)}
    for _ in range(arch.layers):
        for name, layer in decoder.items():
            layers.from_layer(layer, config, packed.get(name, []))
    if "embed_tokens" in embeddings:
        layers.from_layer(VocabParallelEmbedding(tp, arch.vocab_size, hidden), config, [])
    if "lm_head" in embeddings and has_lm_head(version, architecture):
        head = ParallelLMHead(tp, arch.vocab_size, hidden)
        assert layers.from_layer(head, config, []) is head  # not wrapped itself: its logits processor is
        layers.logits_processor(head, config, arch.vocab_size)
    return sum(lora.allocated(size) for size in layers.torch.allocations)


def random_arch(rng: random.Random) -> Architecture:
    heads = rng.choice([8, 16, 28, 32, 40, 64])
    config = {"architectures": [rng.choice(sorted(lora.LAYOUTS))], "num_hidden_layers": rng.randint(1, 6),
              "num_attention_heads": heads, "num_key_value_heads": rng.choice([1, 2, 4, 8, heads]),
              "head_dim": rng.choice([64, 128, 256]), "hidden_size": rng.choice([896, 2048, 3584, 4096]),
              "intermediate_size": rng.choice([4864, 11008, 18944]), "vocab_size": rng.choice([32000, 128256, 152064]),
              "max_position_embeddings": 32768}
    return Architecture.from_config(config)


@pytest.mark.parametrize("version", VERSIONS)
def test_lora_slots_are_vllms_to_the_byte(version):
    rng = random.Random(f"lora-{version}")
    for _ in range(CASES):
        arch, tp = random_arch(rng), rng.choice([1, 2, 4, 8])
        params = VllmLoraParams(max_loras=rng.randint(1, 8), max_lora_rank=rng.choice(MAX_LORA_RANKS[1:]),
                                fully_sharded_loras=rng.random() < 0.3)
        ours = sum(size for _, size in lora.stacked_tensors(arch, params, tp=tp, pp=1, dtype=2))
        assert ours == theirs(version, arch, params, tp), (arch, params, tp)


@pytest.mark.parametrize("version", VERSIONS)
def test_layouts_are_the_model_classes(version):
    """Every architecture we model: its packed slices and embedding modules as vLLM's class declares them."""
    for architecture, layout in lora.LAYOUTS.items():
        packed, embeddings = model_class(version, architecture)
        assert len(packed.get("qkv_proj", ["qkv_proj"])) == layout.qkv_slices, architecture
        assert len(packed.get("gate_up_proj", ["gate_up_proj"])) == layout.gate_up_slices, architecture
        assert ("embed_tokens" in embeddings) == layout.embeddings, architecture
        assert has_lm_head(version, architecture) == layout.lm_head, architecture


@pytest.mark.parametrize("version", VERSIONS)
def test_punica_tensors_are_vllms(version):
    torch = FakeTorch()
    ns = {"torch": torch, "dataclass": dataclass, "field": __import__("dataclasses").field,
          "PunicaWrapperABC": object, "bisect": __import__("bisect")}
    _classes(version, "lora/punica_wrapper/punica_base.py", {"PunicaWrapperBase"}, ns)
    _classes(version, "lora/ops/triton_ops/lora_kernel_metadata.py", {"LoRAKernelMeta"}, ns)
    rules = versions.rules_for(version)
    rng = random.Random(f"punica-{version}")
    for _ in range(10):
        loras, tokens, seqs = rng.randint(1, 16), rng.choice([2048, 8192, 16384, 5000]), rng.choice([256, 1024])
        torch.allocations.clear()
        ns["PunicaWrapperBase"](tokens, seqs, "cuda")
        for _ in range(2):  # PunicaWrapperGPU: token_mapping_meta and prompt_mapping_meta
            make = ns["LoRAKernelMeta"].make
            make(loras, tokens, "cuda", **({"captured_lora_counts": None} if "captured_lora_counts" in
                                           make.__code__.co_varnames else {}))
        assert lora.punica_bytes(rules, max_loras=loras, max_num_batched_tokens=tokens, max_num_seqs=seqs) == \
            sum(lora.allocated(size) for size in torch.allocations)


@pytest.mark.parametrize("version", VERSIONS)
def test_graph_sets_are_vllms_capture_cases(version):
    ns: dict = {}
    _functions(version, "lora/utils.py", ("get_captured_lora_counts",), ns)
    counts = ns["get_captured_lora_counts"]
    if version == "0.34.0":  # the v2 model runner's
        _functions(version, "v1/worker/gpu/lora_utils.py", ("get_lora_capture_cases",), ns)
        cases = lambda config: ns["get_lora_capture_cases"](config, SimpleNamespace(cudagraph_specialize_lora=True))
    else:
        _classes(version, "v1/cudagraph_dispatcher.py", {"CudagraphDispatcher"}, ns)
        dispatcher = ns["CudagraphDispatcher"]

        def cases(config):
            this = SimpleNamespace(vllm_config=SimpleNamespace(lora_config=config), specialize_lora_count=
                                   config.specialize_active_lora, compilation_config=SimpleNamespace(
                                       cudagraph_specialize_lora=True))
            return dispatcher._get_lora_cases(this)
    for max_loras in range(1, 20):
        for specialize in (False, True):
            params = VllmLoraParams(max_loras=max_loras, specialize_active_lora=specialize)
            assert lora.graph_sets(params) == len(cases(params)), (max_loras, specialize)


def test_what_gpustack_passes_for_its_adapters():
    """worker/backends/vllm.py: --max-loras is the number of adapters, --max-lora-rank their largest rank
    rounded up to vLLM's choices, unless the model sets it; the model's own flags come after and win."""
    adapters = (LoraAdapter("a", 10, rank=8), LoraAdapter("b", 10, rank=24, pattern_rank=40))
    assert lora.gpustack_flags(adapters, user_sets_rank=False) == ("--enable-lora", "--max-loras=2",
                                                                   "--max-lora-rank=64")
    assert lora.gpustack_flags(adapters, user_sets_rank=True) == ("--enable-lora", "--max-loras=2")
    with pytest.raises(ModelError, match="rank"):
        lora.gpustack_flags((LoraAdapter("c", 10),), user_sets_rank=False)
    assert lora.gpustack_rank(600) == 600  # passed through: vLLM then refuses it


def test_adapter_above_max_lora_rank_is_refused_as_vllm_checks_it():
    adapter = (LoraAdapter("a", 10, rank=16, pattern_rank=64),)
    params = VllmLoraParams(max_lora_rank=32)
    assert lora.rank_refusal(adapter, params, versions.rules_for("0.17.1")) is None  # r alone in 0.17.1
    assert "LoRA rank 64 is greater than max_lora_rank 32" in lora.rank_refusal(adapter, params,
                                                                                versions.rules_for("0.32.0"))


@pytest.mark.parametrize("version", VERSIONS)
def test_rank_check_reads_what_the_version_reads(version):
    """peft_helper.py validate_legal: r alone, or the largest of r and rank_pattern."""
    text = ast.unparse(source(version, "lora/peft_helper.py"))
    assert ("rank_pattern.values()" in text.split("def validate_legal", 1)[1].split("def ", 1)[0]) == \
        versions.rules_for(version).lora_rank_pattern_checked
