# Two entry points for a fresh Debian machine with Python 3.11 and root:
#   make demo   installs what it needs and serves the seed scenario (no GPU needed)
#   make test   installs everything the tests need (Python and Debian packages) and runs every test
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
LISTEN ?= :9845
GPUSTACK_VENV ?= .venv-gpustack
SGLANG_WHEEL  := .cache/sglang/sglang-0.5.9-py3-none-any.whl
# vLLM's KV code per version (tests/rules/test_vllm_source.py): only the .py files read, out of each wheel
VLLM_VERSIONS := 0.17.1 0.32.0 0.33.0 0.34.0
# LoRA and speculative decoding (tests/rules/test_vllm_lora_source.py, test_vllm_draft_source.py)
VLLM_LORA_FILES := $(addprefix vllm/lora/,layers/base_linear.py layers/column_parallel_linear.py \
                   layers/row_parallel_linear.py layers/logits_processor.py layers/vocab_parallel_embedding.py \
                   layers/vocal_parallel_embedding.py layers/utils.py punica_wrapper/punica_base.py \
                   ops/triton_ops/lora_kernel_metadata.py utils.py peft_helper.py) \
                   $(addprefix vllm/model_executor/models/,registry.py llama.py mistral.py qwen2.py qwen3.py phi3.py \
                   granite.py gemma2.py gemma3.py) \
                   vllm/config/lora.py vllm/config/speculative.py vllm/v1/cudagraph_dispatcher.py \
                   vllm/v1/worker/gpu/lora_utils.py vllm/v1/spec_decode/draft_model.py
VLLM_FILES    := vllm/v1/kv_cache_interface.py vllm/v1/core/kv_cache_utils.py vllm/v1/core/kv_cache_planning.py \
                 vllm/v1/worker/extensible_kv_cache.py vllm/v1/worker/utils.py vllm/config/cache.py \
                 vllm/config/vllm.py $(VLLM_LORA_FILES)
# the stamp names the file list, so a longer list extracts again
VLLM_STAMP    := .extracted-$(shell echo '$(VLLM_FILES)' | cksum | cut -d' ' -f1)
VLLM_SOURCES  := $(foreach v,$(VLLM_VERSIONS),.cache/vllm/$(v)/$(VLLM_STAMP))

SGLANG_VERSIONS := 0.5.6.post2 0.5.18 0.5.22 0.5.23
SGLANG_WHEELS := .cache/sglang/.versions-$(subst $() ,-,$(SGLANG_VERSIONS))
IMAGE ?= localhost/vram-exporter:dev
# Debian packages the tests run for real: promtool/prometheus, alertmanager/amtool, headless chromium,
# buildah + mmdebstrap (the container image, built on a Debian base: tools/build_image.sh), and
# systemd-analyze (deploy/systemd's unit is verified).
DEBIAN_TOOLS    := promtool prometheus prometheus-alertmanager amtool chromium buildah mmdebstrap systemd-analyze
DEBIAN_PACKAGES := prometheus prometheus-alertmanager chromium buildah mmdebstrap systemd
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test test-gpustack gpustack-suite image venv debian-deps postgres-deps fixtures golden conformance soak clean vllm-sources

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@$(PYTHON) -m venv $(VENV) 2>/dev/null || { \
	  echo "python3 -m venv is missing: installing Debian's python3-venv"; \
	  $(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv \
	  && $(PYTHON) -m venv $(VENV); }
	$(PY) -m pip install -q --disable-pip-version-check --upgrade pip
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test]'
	@touch $@

demo: venv
	@echo
	@echo "vram-exporter demo: the seed scenario of docs/design.md (Qwen2.5-1.5B on a 6 GiB RTX A2000, 1 GiB"
	@echo "reserved) replayed from examples/seed/: GPUStack would leave the model Pending."
	@echo "  browser:    http://localhost$(LISTEN)/   (the explain page: why, and which knob fixes it)"
	@echo "  metrics:    curl http://localhost$(LISTEN)/metrics"
	@echo "  Prometheus: scrape localhost$(LISTEN) (examples/prometheus.yml, with alerts/ and grafana/)"
	@echo "  terminal:   $(VENV)/bin/vram-exporter check --manifest examples/seed/manifest.yaml --nvml.fixture examples/seed/fixture.yaml"
	@echo "  stop:       Ctrl-C"
	@echo
	$(VENV)/bin/vram-exporter --nvml.fixture examples/seed/fixture.yaml --manifest examples/seed/manifest.yaml \
	  --web.listen-address $(LISTEN)

debian-deps:
	@missing=""; for tool in $(DEBIAN_TOOLS); do command -v $$tool >/dev/null || missing="$$missing $$tool"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages for:$$missing"; \
	  $(SUDO) apt-get update -qq && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(DEBIAN_PACKAGES) >/dev/null; \
	fi

# Every test, the real-GPUStack ones included (they need postgresql-15 and gpustack==2.3.0 in its own
# venv: about 900 MB and 2-3 minutes the first time, then about 70 s of tests).
test: debian-deps postgres-deps venv $(GPUSTACK_VENV)/.installed $(SGLANG_WHEEL) $(SGLANG_WHEELS) $(VLLM_SOURCES) gpustack-suite
	GPUSTACK_PYTHON=$(GPUSTACK_VENV)/bin/python SGLANG_WHEEL=$(SGLANG_WHEEL) $(PY) -m pytest

# GPUStack's own selector tests (conformance/gpustack_suite/upstream/, copied at the commit in its SOURCE:
# the 2.3.0 wheel ships no tests) run against gpustack 2.3.0 and then with its selectors swapped for ours;
# prints "<test file>: N/M agree" per file and fails on a disagreement not listed in
# conformance/gpustack_suite/expected_disagreements.json, or on a listed one that now agrees.
gpustack-suite: venv $(GPUSTACK_VENV)/.installed
	$(PY) conformance/gpustack_suite/run.py --gpustack-python $(GPUSTACK_VENV)/bin/python

# SGLang's wheel (source only, no install: its functions run on the CPU in tests/rules/test_rulebook_sglang.py).
$(SGLANG_WHEEL): venv
	$(PY) -m pip download -q --disable-pip-version-check --no-deps sglang==0.5.9 -d .cache/sglang

# vLLM's wheels (240-430 MB each, about a minute apiece): downloaded once, the few .py files its KV check is
# made of kept under .cache/vllm/<version>/ (a few MB), the wheel deleted.
vllm-sources: $(VLLM_SOURCES)

.cache/vllm/%/$(VLLM_STAMP): | venv
	rm -rf .cache/vllm/$*.tmp && mkdir -p .cache/vllm/$*.tmp
	$(PY) -m pip download -q --disable-pip-version-check --no-deps vllm==$* -d .cache/vllm/$*.tmp
	$(PY) -c 'import sys, zipfile, glob; z = zipfile.ZipFile(glob.glob(".cache/vllm/$*.tmp/*.whl")[0]); \
	  names = set(z.namelist()); [z.extract(f, ".cache/vllm/$*") for f in sys.argv[1:] if f in names]' $(VLLM_FILES)
	rm -rf .cache/vllm/$*.tmp
	@touch $@

# The other SGLang versions whose rules are checked (tests/rules/test_rulebook_sglang_versions.py), one pip call
# each (pip refuses several versions of one package at once); the newer wheels are built per platform.
$(SGLANG_WHEELS): venv
	for v in $(SGLANG_VERSIONS); do \
		$(PY) -m pip download -q --disable-pip-version-check --no-deps sglang==$$v -d .cache/sglang || exit 1; done
	touch $@

# Only the end-to-end tests against a real GPUStack 2.3.0 server (all on 127.0.0.1).
test-gpustack: venv postgres-deps $(GPUSTACK_VENV)/.installed
	GPUSTACK_PYTHON=$(GPUSTACK_VENV)/bin/python $(PY) -m pytest -m gpustack_live

# The container image, built with buildah on a Debian bookworm base made from Debian's packages (no
# registry needed); `docker build .` builds the same Dockerfile on the official python:3.11-slim.
image: debian-deps
	tools/build_image.sh $(IMAGE)

postgres-deps:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && command -v psql >/dev/null || { \
	  echo "installing Debian's postgresql-15"; \
	  $(SUDO) apt-get update -qq && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql-15 >/dev/null; }

# Differential test against GPUStack's own scheduler code: gpustack==2.3.0 in a throwaway venv
# (about 900 MB, 2-3 minutes the first time), then random scenarios decided by both: single nodes
# (run.py, the selector alone) and whole clusters decided instance by instance (cluster_run.py:
# selector, placement scorer and pick; multi-worker, gpu_selector shapes, binpack, local directories).
SCENARIOS ?= 500
CLUSTER_SCENARIOS ?= 500
conformance: venv $(GPUSTACK_VENV)/.installed
	for selector in vllm sglang custom; do \
	  $(PY) conformance/run.py --gpustack-python $(GPUSTACK_VENV)/bin/python --scenarios $(SCENARIOS) \
	    --selector $$selector || exit 1; done
	$(PY) conformance/cluster_run.py --gpustack-python $(GPUSTACK_VENV)/bin/python --scenarios $(CLUSTER_SCENARIOS)
	$(PY) conformance/cluster_run.py --gpustack-python $(GPUSTACK_VENV)/bin/python --scenarios $(CLUSTER_SCENARIOS) \
	  --sglang 0.3 --categories 0.3 --per-replica 0.3

$(GPUSTACK_VENV)/.installed:
	$(PYTHON) -m venv $(GPUSTACK_VENV)
	$(GPUSTACK_VENV)/bin/pip install -q --disable-pip-version-check gpustack==2.3.0
	@touch $@

# Regenerate the synthetic fixtures and the golden /metrics files (review the diff before committing).
fixtures: venv
	$(PY) tools/make_fixtures.py
	$(PY) tools/convert_h100_probe.py ../shared/fixtures/real/h100-nvml-probe.json tests/fixtures

# An hour of churn and upstream faults against one exporter (tools/soak.py, GPUStack mode): RSS, open
# files and threads recorded every 10 s into soak.json; CI runs two minutes of it (tests/test_soak.py).
SOAK_SECONDS ?= 3600
soak: venv
	$(PY) tools/soak.py --gpustack --duration $(SOAK_SECONDS) --out soak.json

golden: venv
	$(PY) -m pytest tests/test_golden_metrics.py --update-golden

clean:
	rm -rf $(VENV) $(GPUSTACK_VENV) .cache .pytest_cache *.egg-info
