"""Loads a YAML or JSON file into a pydantic model, with errors a person can act on.

Every error names the file, the line and the field, e.g.::

    examples/seed/manifest.yaml:12: models[0].max_model_len: Input should be a valid integer

YAML is composed into a node tree first (which keeps line numbers), then
validated; each pydantic error location is walked back through the tree to the
line it came from. JSON is a subset of YAML, so one loader serves both.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import pydantic
import yaml

from ..errors import BadInput

Model = TypeVar("Model", bound=pydantic.BaseModel)


class Strict(pydantic.BaseModel):
    """The base of every file format here: an unknown field is an error (a typo must not pass
    silently as a default), and a loaded value never changes."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)


class InputFileError(BadInput):
    """A file that cannot be used; ``str()`` lists every problem, one per line."""

    def __init__(self, path: Path | str, problems: Sequence[tuple[int | None, str, str]]):
        self.path = str(path)
        self.problems = list(problems)  # (line or None, field or "", message)
        super().__init__("\n".join(self._format(*p) for p in self.problems))

    def _format(self, line: int | None, field: str, message: str) -> str:
        where = f"{self.path}:{line}" if line else self.path
        return f"{where}: {field}: {message}" if field else f"{where}: {message}"


def load_model(model: type[Model], path: Path | str) -> Model:
    """Read ``path`` and validate it as ``model``; raise InputFileError naming file, line, field."""
    return load_located(model, path)[0]


def load_located(model: type[Model], path: Path | str) -> tuple[Model, Callable[[Sequence[str | int]], int | None]]:
    """Like load_model, plus a function giving the line of any key path (for errors found later)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputFileError(path, [(None, "", f"cannot read: {exc}")]) from None
    return parse_located(model, text, path)


def parse_model(model: type[Model], text: str, path: Path | str) -> Model:
    return parse_located(model, text, path)[0]


def parse_located(model: type[Model], text: str, path: Path | str):
    try:
        data = yaml.load(text, Loader=_FAST_LOADER)
    except yaml.YAMLError:
        data = _parse_slowly(text, path)  # the pure-Python loader's words for what is wrong
    if data is None:
        data = {}
    try:
        value = model.model_validate(data)
    except pydantic.ValidationError as exc:
        root = _compose(text)
        raise InputFileError(path, [_problem(root, err) for err in exc.errors()]) from None
    root: list[yaml.Node | None] = []  # composed when a line is first asked for

    def line_of(loc: Sequence[str | int]) -> int | None:
        if not root:
            root.append(_compose(text))
        return _line_of(root[0], loc)[0]

    return value, line_of


# libyaml where it is installed: about ten times faster than the pure-Python loader, which mattered
# where a file is re-read while serving (the fake NVML follows its fixture at every change; a
# drifted scrape waited 7 ms for it at 8 GPUs, benchmarks/RESULTS.md "Readings moving twice a
# second"). Line numbers and syntax errors still come from the pure-Python loader, as before.
_FAST_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _compose(text: str) -> yaml.Node | None:
    return yaml.compose(text, Loader=yaml.SafeLoader)


def _parse_slowly(text: str, path: Path | str):
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        reason = getattr(exc, "problem", None) or str(exc)
        raise InputFileError(path, [(line, "", f"not valid YAML/JSON: {reason}")]) from None


def field_path(loc: Sequence[str | int]) -> str:
    """``("models", 0, "config")`` -> ``models[0].config``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _problem(root: yaml.Node | None, err: dict) -> tuple[int | None, str, str]:
    # pydantic appends the failing validator's name for unions and tagged
    # validators; keep only the parts that are keys or indexes of the document.
    loc = tuple(part for part in err["loc"] if isinstance(part, int | str))
    line, _ = _line_of(root, loc)
    message = err["msg"]
    if err["type"] == "extra_forbidden":
        message = "unknown key (not part of the format; check its spelling)"
    return line, field_path(loc), message


def _line_of(node: yaml.Node | None, loc: Sequence[str | int]) -> tuple[int | None, int]:
    """The 1-based line of the deepest part of ``loc`` found in the document, and how many parts were found.

    A mapping value is reported on its key's line (for a block value, that is the
    line a person looks at); a missing key is reported where its parent starts.
    """
    if node is None:
        return None, len(loc)
    line, used = node.start_mark.line + 1, 0
    for part in loc:
        found = _child(node, part)
        if found is None:
            break
        line, node = found
        used += 1
    return line, used


def _child(node: yaml.Node, part: str | int) -> tuple[int, yaml.Node] | None:
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if key.value == str(part):
                return key.start_mark.line + 1, value
    elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
        item = node.value[part]
        return item.start_mark.line + 1, item
    return None
