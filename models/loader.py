"""Loading scenarios from YAML, with errors a person can act on.

Every failure becomes a :class:`ScenarioError` whose message is one line:
``FILE:LINE: FIELD.PATH: what is wrong (what is allowed)``. The line is found by walking
the YAML node tree along the field path pydantic reports.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any, Optional, Union

import yaml
from pydantic import ValidationError

from models.scenario import Scenario

__all__ = ["DEFAULT_SCENARIO", "ScenarioError", "default_scenario", "load_scenario", "parse_scenario"]

DEFAULT_SCENARIO = "hailan-default"

# pydantic puts a discriminated union's tag into the error location; people never wrote it.
_TAGS = {
    "call", "publish", "seq", "par", "maybe", "choice", "repeat",
    "exponential", "constant", "uniform", "lognormal", "gamma", "empirical",
    "poisson", "uniform_int", "discrete", "piecewise",
}


class ScenarioError(ValueError):
    """A scenario that cannot be used; ``str()`` is the one-line reason."""

    def __init__(self, source: str, message: str, line: Optional[int] = None, path: str = "") -> None:
        self.source = source
        self.line = line
        self.path = path
        self.reason = message
        where = f"{source}:{line}" if line else source
        super().__init__(f"{where}: {message}")


def _format_loc(loc: tuple) -> tuple[str, list]:
    """('services', 2, 'operations', 'x', 'calls', 'seq', 'seq', 0) -> 'services[2]...seq[0]'."""
    parts: list = []
    clean: list = []
    items = list(loc)
    for i, item in enumerate(items):
        if isinstance(item, str) and item in _TAGS:
            # A tag is followed by the same key (call trees) or by the tag's own fields
            # (distributions, arrivals); it is never a key the user typed twice.
            if i + 1 < len(items) and items[i + 1] == item and i > 0 and items[i - 1] != item:
                continue
            if item not in ("call", "publish", "seq", "par", "maybe", "choice", "repeat"):
                continue
        if isinstance(item, int):
            parts.append(f"[{item}]")
        else:
            parts.append(("." if parts else "") + str(item))
        clean.append(item)
    return "".join(parts), clean


def _line_of(root: Optional[yaml.Node], loc: list) -> Optional[int]:
    node, line = root, (root.start_mark.line + 1 if root is not None else None)
    for key in loc:
        if isinstance(node, yaml.MappingNode):
            nxt = None
            for k, v in node.value:
                if getattr(k, "value", None) == str(key):
                    nxt, line = v, k.start_mark.line + 1
                    break
            node = nxt
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
            node = node.value[key]
            line = node.start_mark.line + 1
        else:
            break
        if node is None:
            break
    return line


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def parse_scenario(text: str, source: str = "<scenario>", base_dir: Union[str, Path] = ".") -> Scenario:
    """Validate YAML text as a scenario; raise :class:`ScenarioError` on any problem."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        raise ScenarioError(source, f"YAML syntax error: {exc.problem or exc}", line) from None
    except yaml.YAMLError as exc:
        raise ScenarioError(source, f"YAML error: {exc}") from None
    if not isinstance(data, dict):
        raise ScenarioError(source, f"a scenario is a YAML mapping, got {type(data).__name__}", 1)
    try:
        return Scenario.model_validate(data, context={"base_dir": str(base_dir)})
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        first = errors[0]
        path, clean = _format_loc(first["loc"])
        msg = first["msg"]
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        if first["type"] == "extra_forbidden":
            msg = "unknown field (check the spelling; `hailan-sim schema` lists every field)"
        elif first["type"] not in ("value_error", "call_tree_node", "missing"):
            msg = f"{msg} (got {_short(first.get('input'))})"
        more = f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})" if len(errors) > 1 else ""
        line = _line_of(root, clean)
        text_path = f"{path}: " if path else ""
        raise ScenarioError(source, f"{text_path}{msg}{more}", line, path) from None
    except RecursionError:
        raise ScenarioError(source, "the scenario is nested too deeply") from None


def load_scenario(path: Union[str, Path, None] = None) -> Scenario:
    """Load a scenario file; ``None`` gives the built-in default scenario."""
    if path is None:
        return default_scenario()
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ScenarioError(str(p), "no such file") from None
    except IsADirectoryError:
        raise ScenarioError(str(p), "is a directory, not a scenario file") from None
    except UnicodeDecodeError:
        raise ScenarioError(str(p), "is not UTF-8 text") from None
    except OSError as exc:
        raise ScenarioError(str(p), f"cannot read: {exc.strerror}") from None
    return parse_scenario(text, str(p), p.parent)


def default_scenario() -> Scenario:
    """The spec's twelve services under the load documented in ``models/data/default.yaml``."""
    ref = resources.files("models") / "data" / "default.yaml"
    return parse_scenario(ref.read_text(encoding="utf-8"), "<built-in default>")
