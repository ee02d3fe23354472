"""The docs name what the code has: every alert, every manifest key, every flag (docs/design.md) and every
module (docs/architecture.md). A key, flag or module added without its line in the docs fails here."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest
import yaml

from vram_exporter.cli import build_parser
from vram_exporter.sources import manifest

ROOT = Path(__file__).resolve().parent.parent
DESIGN = (ROOT / "docs" / "design.md").read_text()
ARCHITECTURE = (ROOT / "docs" / "architecture.md").read_text()
MANIFEST_MODELS = (manifest.Manifest, manifest.ClusterSettings, manifest.WorkerEntry, manifest.ModelEntry,
                   manifest.ProcessMatch, manifest.LoraAdapterEntry, manifest.DraftModelEntry)


def section(text: str, heading: str) -> str:
    """The text under ``heading`` up to the next heading of the same or a higher level."""
    level = heading.split(" ")[0]
    start = text.index(f"\n{heading}\n")
    following = re.search(rf"\n#{{1,{len(level)}}} \S", text[start + 1:])  # not a YAML comment's "#  -"
    return text[start:start + 1 + following.start()] if following else text[start:]


def alert_names() -> list[str]:
    names = []
    for path in sorted((ROOT / "alerts").glob("*.yml")):
        for group in yaml.safe_load(path.read_text())["groups"]:
            names += [rule["alert"] for rule in group["rules"] if "alert" in rule]
    return names


def parser_flags(parser: argparse.ArgumentParser, path: str = "vram-exporter") -> list[tuple[str, str]]:
    flags = [(path, flag) for action in parser._actions for flag in action.option_strings
             if flag.startswith("--") and flag != "--help"]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                flags += parser_flags(sub, f"{path} {name}")
    return flags


def test_the_sections_are_found():
    assert len(alert_names()) >= 19
    assert len(parser_flags(build_parser())) >= 40
    assert "VRAMExporterDown" in section(DESIGN, "### Alerts")
    assert "nvml_error:" not in section(DESIGN, "### Manifest")  # the fixture's, the next section


@pytest.mark.parametrize("alert", alert_names())
def test_every_alert_is_in_the_design(alert):
    assert f"`{alert}`" in section(DESIGN, "### Alerts")


@pytest.mark.parametrize("key", sorted({(model.__name__, key) for model in MANIFEST_MODELS
                                        for key in model.model_fields}), ids=lambda k: f"{k[0]}.{k[1]}")
def test_every_manifest_key_is_in_the_design(key):
    assert re.search(rf"\b{key[1]}:", section(DESIGN, "### Manifest")), f"{key[0]}.{key[1]}"


@pytest.mark.parametrize("command_flag", parser_flags(build_parser()), ids=" ".join)
def test_every_flag_is_in_the_design(command_flag):
    flag = re.escape(command_flag[1])
    assert re.search(rf"(?<![\w.-]){flag}(?![\w.-])", section(DESIGN, "### Command line")), command_flag


def _modules() -> list[Path]:
    package = ROOT / "vram_exporter"
    return sorted(p.relative_to(package) for p in package.rglob("*.py") if p.name != "__init__.py")


@pytest.mark.parametrize("module", _modules(), ids=str)
def test_every_module_is_in_the_architecture(module):
    """A module is named in its wing's table; one of a backend's folder on its backend's line."""
    parts = module.parts
    if parts[:2] == ("rules", "backends") and len(parts) == 4:
        tree = section(ARCHITECTURE, "## A backend: one folder behind one contract")
        block = re.search(rf"\n  {parts[2]}/ .*?(?=\n  \S|\n```)", tree, re.S)
        assert block and parts[3] in block.group(0), module
    elif parts[:2] == ("rules", "backends"):
        assert parts[2] in section(ARCHITECTURE, "## A backend: one folder behind one contract"), module
    elif len(parts) == 1:
        wing = "### ground" if module.name != "cli.py" else "## Four wings by the direction of data"
        assert module.name in section(ARCHITECTURE, wing), module
    else:
        heading = next(h for h in re.findall(r"\n(### .*)", ARCHITECTURE) if h.startswith(f"### {parts[0]}/"))
        table = section(ARCHITECTURE, heading)
        assert f"`{module.name}`" in table or f"`{'/'.join(parts[1:])}`" in table \
            or (len(parts) > 2 and f"`{parts[1]}/`" in table and module.name in table), module
