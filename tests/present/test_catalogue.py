"""The metric catalogue (present/catalogue.py) is every family served, and the design's list of them."""

from __future__ import annotations

import re
from types import SimpleNamespace

from conftest import GOLDEN, ROOT
from vram_exporter.present import vllm_instances
from vram_exporter.present.catalogue import CATALOGUE
from vram_exporter.present.exposition import escape_help
from vram_exporter.sources.vllm_instance import InstanceComparison


def _served() -> dict[str, tuple[str, str]]:
    """Each family in the golden /metrics bodies (text format): name -> (TYPE, HELP as written)."""
    served: dict[str, tuple[str, str]] = {}
    for path in GOLDEN.glob("*.prom"):
        text = path.read_text()
        helps = dict(re.findall(r"^# HELP (\S+) (.*)$", text, re.M))
        for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M):
            served[name] = (kind, helps[name])
    return served


def _instance_families():
    """The running-vLLM comparison families: served only with an instance to read, so in no golden."""
    comparison = InstanceComparison("m", "10.0.0.1:8000", 1, 2, 3, 4, 5)
    return [*vllm_instances.families([comparison]),
            vllm_instances.up_family({"m": SimpleNamespace(instance="10.0.0.1:8000", info=None)})]


def test_every_family_served_is_in_the_catalogue_as_served():
    for name, (kind, help_text) in _served().items():
        spec = CATALOGUE[name]
        assert kind == ("gauge" if spec.type == "info" else spec.type), name
        assert help_text == escape_help(spec.help), name


def test_every_catalogued_family_is_served_somewhere():
    built = {family.name for family in _instance_families()}
    assert built == set(CATALOGUE) - set(_served())


def test_design_lists_exactly_the_catalogue():
    design = (ROOT / "docs" / "design.md").read_text()
    section = design.split("### Metric catalogue", 1)[1].split("\n### ", 1)[0]
    assert set(re.findall(r"`(vram_[a-z0-9_]+)", section)) == set(CATALOGUE)
