"""The explain page in a real headless Chromium, its what-if, and /api/v1/fit, against a running exporter.

The screenshots the README shows (docs/explain-*.png) are taken here: ``--update-golden`` writes them.
"""

from __future__ import annotations

import base64
import html.parser
import json
import shutil
import subprocess
import tempfile
import threading
import urllib.error
import urllib.parse
from pathlib import Path

import bcrypt
import pytest
from PIL import Image

from conftest import FIXTURES, ROOT, ExporterProcess, exporter_command, require_tool

# Relative to ROOT, where the exporter runs: the screenshots show the paths a reader has.
SEED = ["--nvml.fixture", "examples/seed/fixture.yaml", "--manifest", "examples/seed/manifest.yaml"]
SEED_MODEL = "qwen2.5-1.5b-instruct"
DOCS = ROOT / "docs"
# The flags this machine's closed network needs (and no sandbox as root).
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars"]
# Colours of the page (present/pages.py, present/page_demand.py) looked for in the screenshots.
FIX_BACKGROUND = (0xE9, 0xF7, 0xEE)
SHORT_RED = (0xD9, 0x3A, 0x3A)
CLAIM_AMBER = (0xF2, 0xC1, 0x4E)
ESTIMATE_PURPLE = (0x8E, 0x5C, 0xC2)
WHAT_IF_BANNER = (0xFF, 0xF6, 0xDB)


def chromium(*args: str) -> subprocess.CompletedProcess:
    binary = require_tool("chromium")
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run([binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
                              capture_output=True, text=True, timeout=120)


def screenshot(url: str, path: Path, size: str = "1200,1400") -> dict[tuple[int, int, int], int]:
    """A Chromium screenshot of ``url``; {colour: pixels}."""
    result = chromium(f"--screenshot={path}", f"--window-size={size}", url)
    assert path.exists(), result.stderr
    colours = Image.open(path).convert("RGB").getcolors(maxcolors=1 << 22)
    assert len(colours) > 50, "the page looks blank"
    return {rgb: n for n, rgb in colours}


def keep(shot: Path, name: str, update: bool) -> None:
    """--update-golden: the screenshot becomes the README's docs/<name>."""
    if update:
        shutil.copy(shot, DOCS / name)


def what_if(**fields: str) -> str:
    return "/what-if?" + urllib.parse.urlencode({"model": SEED_MODEL, **fields})


def status_and_text(exporter, path: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    try:
        with exporter.get(path, headers) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


# --- the live page -----------------------------------------------------------------------


def test_page_renders_the_verdicts_without_javascript(start_exporter):
    exporter = start_exporter(*SEED)
    dom = chromium("--dump-dom", exporter.url + "/").stdout
    assert "<script" not in exporter.text("/")
    assert SEED_MODEL in dom and "will not fit" in dom
    assert "GPUStack leaves it Pending" in dom and "vLLM alone would start on GPU 0" in dom
    assert "The current available GPU only has 4.99 GiB allocatable VRAM (83.32%)." in dom
    assert "lower --system-reserved vram to 0 GiB and set --gpu-memory-utilization=0.91" in dom
    assert dom.count("<svg") == 2 and "<rect" in dom  # the GPU's bars, and the model's demand on them
    assert "assumes vLLM 0.33: version unknown: the rules of vLLM 0.33 are assumed" in dom  # no cuda_version


def test_working_fixes_come_first_and_the_futile_ones_are_greyed_and_short(start_exporter, tmp_path, update_golden):
    exporter = start_exporter(*SEED)
    dom = chromium("--dump-dom", exporter.url + "/").stdout
    section = dom[dom.index(f'id="{SEED_MODEL}"'):]
    working = ["lower --system-reserved vram to 0 GiB and set --gpu-memory-utilization=0.91",
               "set GPUSTACK_MODEL_VRAM_CLAIM=5342012375 (4.98 GiB) or less with --gpu-memory-utilization=0.83",
               "pin it to GPU 0 (gpu_selector)"]
    fixes_list = section[section.index('<ul class="fixes">'):section.index("</ul>")]
    assert all(fix in fixes_list for fix in working)
    # The knobs that cannot help: after the working ones, named in a single greyed line, the full
    # sentences folded away, and none of them in the list of fixes.
    futile = section.index('<details class="dim"><summary>Cannot help on their own: ')
    assert futile > section.index(working[-1])
    summary = section[futile:section.index("</summary>", futile)]
    assert "--system-reserved vram" in summary and "--gpu-memory-utilization" in summary
    assert "does not help" not in fixes_list and "no value of --gpu-memory-utilization" not in fixes_list
    # The working fixes come before the numbers and the reasons.
    assert section.index(working[0]) < section.index("headroom per check") < section.index("<h4>Why</h4>")
    shot = tmp_path / "page.png"
    count = screenshot(exporter.url + "/", shot, "1200,1000")
    assert count.get(FIX_BACKGROUND, 0) > 20_000, "the working fixes are not drawn as prominent boxes"
    # The verdict of the page before: futile fixes in bold red (#b00020) text at the top of the fixes.
    keep(shot, "explain-page.png", update_golden)


def test_the_demand_is_drawn_on_gpustacks_bar_with_the_gaps(start_exporter, tmp_path):
    """docs/design.md#the-seed-scenario-worked: E 5.45 GiB > g x T 5.39 GiB > A 4.99 GiB; both gaps drawn red and named."""
    exporter = start_exporter(*SEED)
    dom = chromium("--dump-dom", exporter.url + "/").stdout
    assert ('aria-label="GPU 0: estimate E 5.45 GiB &gt; g x total 5.39 GiB: 0.06 GiB short; '
            'g x total 5.39 GiB &gt; allocatable 4.99 GiB: 0.40 GiB short"') in dom
    count = screenshot(exporter.url + "/", tmp_path / "page.png", "1200,1000")
    for colour in (CLAIM_AMBER, ESTIMATE_PURPLE):
        assert count.get(colour, 0) > 2_000, f"the demand's {colour} is missing"
    # With the fix applied the same drawing has no gap left: its red is the legend's swatch alone.
    fixed = screenshot(exporter.url + what_if(system_reserved_vram="0", gpu_memory_utilization="0.91"),
                       tmp_path / "fixed.png", "1200,1000")
    assert fixed.get(ESTIMATE_PURPLE, 0) > 2_000 and fixed.get(SHORT_RED, 0) < 250
    assert count.get(SHORT_RED, 0) - fixed.get(SHORT_RED, 0) > 300, "the gaps are not drawn"


def test_page_without_manifest_shows_gpus_only(start_exporter):
    exporter = start_exporter("--nvml.fixture", str(ROOT / "tests/fixtures/node-8xh100.yaml"))
    page = exporter.text("/")
    assert "No manifest given" in page and page.count("<svg") == 8
    assert "<form" not in page  # nothing to change without a model


def test_api_fit_is_the_same_document_as_check_json(start_exporter):
    exporter = start_exporter(*SEED)
    with exporter.get("/api/v1/fit") as response:
        assert response.headers["Content-Type"].startswith("application/json")
        api = json.loads(response.read())
    cli = subprocess.run([*exporter_command(), "check", "--format", "json", *SEED],
                         capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert api == json.loads(cli.stdout)


# --- the cluster table -------------------------------------------------------------------


def test_cluster_table_puts_gpustacks_pending_next_to_ours(start_exporter, recorded_gpustack, tmp_path,
                                                           update_golden):
    """With GPUStack as the source (its recorded answers): one row per GPUStack model, its pending
    count as the API says it, ours beside it, and why."""
    key = tmp_path / "key"
    key.write_text("recorded\n")
    exporter = start_exporter("--nvml.fixture", "examples/seed/fixture.yaml",
                              "--manifest", "tests/fixtures/gpustack/overlay.yaml",
                              "--gpustack.url", recorded_gpustack.url, "--gpustack.api-key-file", str(key),
                              "--gpustack.worker-name", "seed-node")
    dom = chromium("--dump-dom", exporter.url + "/").stdout
    rows = table_rows(dom, "Cluster: GPUStack's verdict next to ours")
    models = json.loads((FIXTURES / "gpustack/models.json").read_text())["items"]
    instances = json.loads((FIXTURES / "gpustack/model-instances.json").read_text())["items"]
    truth = {m["name"]: sum(1 for i in instances if i["model_id"] == m["id"] and i["state"] == "pending")
             for m in models}
    assert {row[0]: int(row[2]) for row in rows} == truth
    assert {row[0]: int(row[3]) for row in rows} == truth  # the rulebooks agree on every one
    seed = next(row for row in rows if row[0] == "seed-qwen")
    assert seed[4] == "Pending, both agree" and "only has 4.99 GiB allocatable VRAM (83.32%)" in seed[5]
    assert "This node is worker seed-node" in dom.replace("<code>", "").replace("</code>", "")
    shot = tmp_path / "cluster.png"
    screenshot(exporter.url + "/", shot, "1200,1150")
    keep(shot, "explain-cluster.png", update_golden)


class _Tables(html.parser.HTMLParser):
    """The cells of every table after each <h2>, as text."""

    def __init__(self) -> None:
        super().__init__()
        self.heading, self.tables, self._text, self._row, self._in = "", {}, "", None, None

    def handle_starttag(self, tag, attrs):
        if tag in ("h2", "td", "th"):
            self._in, self._text = tag, ""
        elif tag == "tr":
            self._row = []

    def handle_endtag(self, tag):
        if tag == "h2":
            self.heading = self._text.strip()
        elif tag in ("td", "th") and self._row is not None:
            self._row.append(" ".join(self._text.split()))
        elif tag == "tr" and self._row is not None:
            self.tables.setdefault(self.heading, []).append(self._row)
            self._row = None
        if tag in ("h2", "td", "th"):
            self._in = None

    def handle_data(self, data):
        if self._in:
            self._text += data


def table_rows(dom: str, heading: str) -> list[list[str]]:
    parser = _Tables()
    parser.feed(dom)
    return parser.tables[heading][1:]  # without the header row


# --- the what-if -------------------------------------------------------------------------


class _Forms(html.parser.HTMLParser):
    """Each form's action and the fields a browser submits (inputs' values, each select's selected option)."""

    def __init__(self) -> None:
        super().__init__()
        self.forms: list[dict] = []
        self._select: str | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "form":
            self.forms.append({"action": a.get("action"), "method": a.get("method"), "fields": {}})
        elif tag == "input" and self.forms and (a.get("type") != "checkbox" or "checked" in a):
            self.forms[-1]["fields"][a["name"]] = a.get("value", "")  # an unticked box is not sent
        elif tag == "select":
            self._select = a["name"]
            self.forms[-1]["fields"][self._select] = None
        elif tag == "option" and self._select and (self.forms[-1]["fields"][self._select] is None or "selected" in a):
            self.forms[-1]["fields"][self._select] = a.get("value", "")  # the first, or the selected one

    def handle_endtag(self, tag):
        if tag == "select":
            self._select = None


def submit(exporter, page: str, model: str, **typed: str) -> tuple[int, str]:
    """What a browser does on Submit in the model's form: a GET of its action with its fields."""
    parser = _Forms()
    parser.feed(page)
    form = next(f for f in parser.forms if f["fields"].get("model") == model)
    assert form["method"] == "get"
    fields = {**form["fields"], **typed}
    return status_and_text(exporter, f"{form['action']}?{urllib.parse.urlencode(fields)}")


@pytest.mark.parametrize(("typed", "verdict"), [
    # docs/design.md#the-seed-scenario-worked, the fix matrix (GPUStack >= 0.7), each change made through the form.
    ({"system_reserved_vram": "0"}, "Pending"),
    ({"gpu_memory_utilization": "0.8"}, "Pending"),
    ({"system_reserved_vram": "0", "gpu_memory_utilization": "0.91"}, "fits on GPU 0"),
    ({"vram_claim": "4GiB", "gpu_memory_utilization": "0.8"}, "fits on GPU 0"),
    ({"max_model_len": "4k", "kv_cache_dtype": "fp8"}, "Pending"),  # vLLM's side cannot move GPUStack's
])
def test_what_if_form_recomputes_the_verdicts(start_exporter, typed, verdict):
    exporter = start_exporter(*SEED)
    status, page = submit(exporter, exporter.text("/"), SEED_MODEL, **typed)
    assert status == 200
    row = table_rows(page, "")[0]  # the banner's table comes before any <h2> of the page
    assert row[0] == SEED_MODEL and row[1] == "Pending" and row[2] == verdict


def test_what_if_link_reproduces_it_and_the_live_state_is_untouched(start_exporter, tmp_path, update_golden):
    exporter = start_exporter(*SEED)
    # /api/v1/fit first: it waits for the fixes, which a scrape right after start-up may come before
    # (the fix search follows the plan): "before" is then the settled state, as "after" is.
    fit = exporter.text("/api/v1/fit")
    before = (exporter.text("/metrics"), fit)
    status, page = submit(exporter, exporter.text("/"), SEED_MODEL, vram_claim="4GiB", gpu_memory_utilization="0.80",
                          max_model_len="")
    assert status == 200
    link = "/what-if?" + urllib.parse.urlencode(
        {"model": SEED_MODEL, "gpu_memory_utilization": "0.8", "vram_claim": str(4 * 2**30)})
    assert f'<a href="{link.replace("&", "&amp;")}">' in page  # canonical: set fields only, values normalised
    again = exporter.text(link)
    assert again == page
    assert "<li>qwen2.5-1.5b-instruct: GPUSTACK_MODEL_VRAM_CLAIM=4294967296</li>" in page
    # The form of the model is open and holds what was typed, to change it further.
    assert 'name="gpu_memory_utilization" value="0.8"' in page and "<details class=\"try\" open>" in page
    assert (exporter.text("/metrics").split("vram_exporter_collect_duration")[0],
            exporter.text("/api/v1/fit")) == (before[0].split("vram_exporter_collect_duration")[0], before[1])
    assert "will not fit" in exporter.text("/")
    shot = tmp_path / "what-if.png"
    count = screenshot(exporter.url + link, shot, "1200,1250")
    assert count.get(WHAT_IF_BANNER, 0) > 20_000
    keep(shot, "explain-what-if.png", update_golden)


@pytest.mark.parametrize(("query", "field", "message"), [
    ({"gpu_memory_utilization": "2"}, "gpu_memory_utilization", "2 is not in (0, 1]"),
    ({"gpu_memory_utilization": "nan"}, "gpu_memory_utilization", "nan is not in (0, 1]"),
    ({"gpu_memory_utilization": "0,9"}, "gpu_memory_utilization", "'0,9' is not a number"),
    ({"system_reserved_vram": "1.5"}, "system_reserved_vram", "whole GiB"),
    ({"system_reserved_vram": "99999"}, "system_reserved_vram", "more than 1024 GiB"),
    ({"max_model_len": "-5"}, "max_model_len", "expected tokens like 32768, 4k, 128K or auto"),
    ({"max_model_len": "0"}, "max_model_len", "expected 1 to 100000000 tokens"),
    ({"kv_cache_dtype": "int4"}, "kv_cache_dtype", "'int4' is not one of auto, float16"),
    ({"vram_claim": "lots"}, "vram_claim", "not a size: 'lots'"),
    ({"vram_claim": "0"}, "vram_claim", "expected 1 byte to 1 PiB"),
    ({"model": "no-such-model"}, "model", "'no-such-model' is not one of this node's models"),
    ({"model": ""}, "model", "choose the model to change"),
    ({"colour": "red"}, "colour", "unknown field"),
    ({"max_model_len": "9" * 200}, "max_model_len", "longer than 128 characters"),
    ({"gpu_memory_utilization": "1e-400"}, "gpu_memory_utilization", "1e-400 is not in (0, 1]"),
    ({"system_reserved_vram": "\uff11"}, "system_reserved_vram", "'\\uff11': unexpected characters"),
    ({"\x00": "1"}, "'\\x00'", "unknown field"),
])
def test_what_if_bad_input_is_a_400_page_naming_the_field(start_exporter, query, field, message):
    exporter = start_exporter(*SEED)
    status, page = status_and_text(exporter, what_if(**query))
    assert status == 400
    assert f"<li><code>{escape(field)}</code>: " in page and escape(message) in page
    # The live verdicts of the model (or the first few, when it is not one), with the form to correct.
    assert "will not fit" in page and 'action="/what-if"' in page


def test_what_if_a_field_given_twice_is_refused(start_exporter):
    exporter = start_exporter(*SEED)
    status, page = status_and_text(exporter, what_if() + "&gpu_memory_utilization=0.8&gpu_memory_utilization=0.9")
    assert status == 400 and "<li><code>gpu_memory_utilization</code>: given more than once</li>" in page


def test_what_if_input_is_escaped_everywhere(start_exporter):
    exporter = start_exporter(*SEED)
    attack = '"><script>alert(1)</script><img src=x onerror=alert(2)>'
    for query in ({"model": attack}, {"vram_claim": attack}, {attack: "1"}):
        status, page = status_and_text(exporter, what_if(**query))
        assert status == 400
        assert "<script" not in page and "<img" not in page and "onerror=alert(2)>" not in page
    dom = chromium("--dump-dom", exporter.url + what_if(vram_claim=attack)).stdout
    assert "<script" not in dom and "<img" not in dom


def hashed(password: str) -> str:
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()


def test_what_if_is_behind_the_web_configs_basic_auth(start_exporter, tmp_path):
    config = tmp_path / "web.yml"
    config.write_text(f"basic_auth_users:\n  alice: {hashed('secret')}\n")
    exporter = ExporterProcess(*SEED, "--web.config.file", str(config), ready=False)
    try:
        good = {"Authorization": "Basic " + base64.b64encode(b"alice:secret").decode()}
        exporter.wait_ready(auth="alice:secret")
        path = what_if(system_reserved_vram="0", gpu_memory_utilization="0.91")
        assert status_and_text(exporter, path)[0] == 401
        assert status_and_text(exporter, path, {"Authorization": "Basic " + base64.b64encode(b"alice:x").decode()})[0] == 401
        status, page = status_and_text(exporter, path, good)
        assert status == 200 and "fits</span> on GPU 0" in page
    finally:
        exporter.stop()


def test_a_what_if_never_holds_the_liveness_probe(start_exporter, tmp_path):
    """8 GPUs x 200 models: while a what-if is computed (a whole plan and its fixes, in a thread), the
    liveness probe is answered, three times over, before the what-if is done."""
    import sys

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import scenarios

    fixture_path, manifest_path = scenarios.write(tmp_path, 8, 200, 0)
    exporter = start_exporter("--nvml.fixture", str(fixture_path), "--manifest", str(manifest_path))
    first = json.loads(exporter.text("/api/v1/fit"))["models"][0]["name"]  # the live plan and its fixes exist
    order: list[str] = []
    path = "/what-if?" + urllib.parse.urlencode({"model": first, "system_reserved_vram": "2"})
    page = threading.Thread(target=lambda: (status_and_text(exporter, path), order.append("what-if")))
    page.start()
    for _ in range(3):
        exporter.text("/-/healthy")
        order.append("healthy")
    page.join(60)
    assert order.index("what-if") == len(order) - 1, order


def escape(text: str) -> str:
    from html import escape as html_escape

    return html_escape(text)


class _Links(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tries: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "a" and a.get("class") == "try":
            self.tries.append(a["href"])


@pytest.mark.parametrize("example", ["seed", "node-8xh100"])
def test_every_try_it_link_of_a_working_fix_makes_the_model_fit(start_exporter, example):
    """The fixes (rules/fixes.py) and the what-if (the rulebooks again, on the changed inputs) agree: each
    working fix's link shows its model fitting."""
    exporter = start_exporter("--nvml.fixture", f"examples/{example}/fixture.yaml",
                              "--manifest", f"examples/{example}/manifest.yaml")
    live = json.loads(exporter.text("/api/v1/fit"))
    expected = sum(1 for m in live["models"] for f in m["fixes"] if f["works"] and f["change"])
    parser = _Links()
    parser.feed(exporter.text("/"))
    assert len(parser.tries) == expected > 0
    for link in (href.replace("&amp;", "&") for href in parser.tries):
        status, page = status_and_text(exporter, link)
        assert status == 200, page
        model = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(link).query))["model"]
        rows = {row[0]: row for row in table_rows(page, "")}
        assert rows[model][2].startswith("fits"), (link, rows[model])


def test_a_refused_what_if_costs_one_models_section(start_exporter):
    exporter = start_exporter("--nvml.fixture", "examples/node-8xh100/fixture.yaml",
                              "--manifest", "examples/node-8xh100/manifest.yaml")
    names = [m["name"] for m in json.loads(exporter.text("/api/v1/fit"))["models"]]
    status, page = status_and_text(exporter, "/what-if?model=deepseek-v2-lite-chat&gpu_memory_utilization=x")
    assert status == 400
    assert [name for name in names if f'<div class="model" id="{name}">' in page] == ["deepseek-v2-lite-chat"]
    assert f"{len(names) - 1} more models: see" in page


VLLM_034_SHORT = """\
cluster: {scheduler: gpustack, system_reserved_vram: 0GiB}
models:
  - name: llama-034-small-share
    engine_version: 0.34.0
    weights_bytes: 16060522496
    config: {num_hidden_layers: 32, num_attention_heads: 32, num_key_value_heads: 8, hidden_size: 4096,
             intermediate_size: 14336, vocab_size: 128256, torch_dtype: bfloat16, max_position_embeddings: 131072}
    max_model_len: 32768
    backend_parameters: ["--gpu-memory-utilization=0.22", "--kv-cache-memory-bytes=2G"]
"""


def test_vllm_034s_own_knobs_have_what_if_links_and_fields(start_exporter, tmp_path):
    """vLLM 0.34 at 0.22 of an H100 with 2 GiB of KV cache asked: the fix that removes the KV cache's sizing
    flags links to a what-if where the model fits (the extensible cache takes what is free); the form offers
    that and --kv-cache-memory-bytes, and a size typed there is what the model's vLLM then reads."""
    manifest = tmp_path / "manifest.yaml"
    manifest.write_text(VLLM_034_SHORT)
    exporter = start_exporter("--nvml.fixture", "examples/node-8xh100/fixture.yaml", "--manifest", str(manifest))
    (model,) = json.loads(exporter.text("/api/v1/fit"))["models"]
    unset = next(f for f in model["fixes"] if f["knob"] == "unset_gpu_memory_utilization")
    assert unset["works"] and unset["change"] == {"unset_gpu_memory_utilization": True}
    assert "remove --gpu-memory-utilization and --kv-cache-memory-bytes" in unset["action"]
    page = exporter.text("/")
    parser = _Links()
    parser.feed(page)
    link = next(href.replace("&amp;", "&") for href in parser.tries if "unset_gpu_memory_utilization=yes" in href)
    status, after = status_and_text(exporter, link)
    assert status == 200, after
    assert "<li>llama-034-small-share: none of --gpu-memory-utilization, --kv-cache-memory-bytes, " \
           "--num-gpu-blocks-override</li>" in after
    assert table_rows(after, "")[0][2].startswith("fits"), table_rows(after, "")[0]
    # The form: the box and the size field, each a what-if of its own
    status, sized = submit(exporter, page, "llama-034-small-share", kv_cache_memory_bytes="8G")
    assert status == 200 and "<li>llama-034-small-share: --kv-cache-memory-bytes=8192M</li>" in sized
    assert 'name="kv_cache_memory_bytes" value="8192M"' in sized  # kept to change further, normalised
    status, refused = submit(exporter, page, "llama-034-small-share", unset_gpu_memory_utilization="yes",
                             gpu_memory_utilization="0.5")
    assert status == 400 and "removed by unset_gpu_memory_utilization" in refused


def test_an_sglang_model_has_no_kv_cache_bytes_knob(start_exporter):
    exporter = start_exporter("--nvml.fixture", "examples/mixed-backends/fixture.yaml",
                              "--manifest", "examples/mixed-backends/manifest.yaml")
    models = {m["name"]: m["backend"] for m in json.loads(exporter.text("/api/v1/fit"))["models"]}
    sglang = next(name for name, backend in models.items() if backend == "sglang")
    status, page = status_and_text(exporter, "/what-if?" + urllib.parse.urlencode(
        {"model": sglang, "kv_cache_memory_bytes": "8G"}))
    assert status == 400 and "runs on SGLang, which has no such flag" in page
