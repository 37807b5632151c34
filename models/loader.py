"""Loading scenarios from YAML, with errors a person can act on.

Every failure becomes a :class:`ScenarioError` whose message is one line:
``FILE:LINE: FIELD.PATH: what is wrong (what is allowed)``.

pydantic reports *where* a value failed as a location in the validated data, mixed with
its own bookkeeping (the tag of a discriminated union, the name of a union member). The
location is walked here alongside the scenario's types, which drops that bookkeeping,
finds the field's type (to say what would have been allowed) and the YAML node (to give
the line). Messages raised by validators may start with a field path of their own
(cross-reference checks in :mod:`hailan_sim.models.topology` do); that path is used the same way.
"""

from __future__ import annotations

import csv
import datetime as _dt
import difflib
import math
import re
import types
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from hailan_sim.models import yaml12
from hailan_sim.models.datafiles import MAX_INLINE_TIMES, MAX_SCENARIO_BYTES, read_bounded
from hailan_sim.models.scenario import Scenario

__all__ = ["DEFAULT_SCENARIO", "FieldType", "ScenarioError", "compose_yaml", "default_scenario", "describe_validation_error",
           "line_in_file", "line_of", "load_scenario", "parse_scenario", "show_value", "text_path"]

DEFAULT_SCENARIO = "hailan-default"

# Aliases may share one subtree many times; validation expands every use. A document
# that expands to more values than this (and to far more than it spells out) is refused
# before pydantic is asked to walk it ("billion laughs").
_MAX_EXPANDED = 1_000_000

# What a few field patterns mean, in words (the models describe the others).
_PATTERNS = {
    r"^[A-Za-z_][A-Za-z0-9_]*$": "a name of letters, digits and '_', not starting with a digit",
    r"^[a-z][a-z0-9_-]*$": "a name of lower-case letters, digits, '_' and '-', starting with a letter",
    r"^[a-z][a-z0-9-]*$": "a name of lower-case letters, digits and '-', starting with a letter",
    r"^[a-z][a-z0-9-]*(\.[A-Za-z_][A-Za-z0-9_]*)?$": (
        "'service.operation', or the name of an infrastructure component"
    ),
    r"^[a-z][a-z0-9-]*\.[A-Za-z_][A-Za-z0-9_]*$": "'service.operation'",
}

# A field path at the start of a validator's message: "services[1].port: ..." or
# "endpoints[0] (name) needs ...".
_PATH_AT_START = re.compile(r"^([A-Za-z_][\w-]*(?:\[\d+\])*(?:\.[A-Za-z_][\w-]*(?:\[\d+\])*)*)(: | )")
_PATH_PART = re.compile(r"([^.\[\]]+)|\[(\d+)\]")
# YAML 1.1's sexagesimal numbers (1:30 was 90); YAML 1.2 reads them as text.
_BASE_60 = re.compile(r"^[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+(?:\.[0-9_]*)?$")
_CYCLE = re.compile(r"call trees recurse: ([a-z][a-z0-9-]*)\.(\w+) -> ([a-z][a-z0-9-]*)\.(\w+)")


class ScenarioError(ValueError):
    """A scenario that cannot be used; ``str()`` is the one-line reason.

    Attributes: ``source`` (the file), ``line`` (1-based, or None), ``path`` (the field
    path, e.g. ``services[0].port``, or ``""``) and ``reason`` (the message after
    ``FILE:LINE: ``, which starts with the path when there is one).
    """

    def __init__(self, source: str, message: str, line: Optional[int] = None, path: str = "") -> None:
        self.source = _one_line(str(source))
        self.line = line
        self.path = path
        self.reason = _one_line(message)
        where = f"{self.source}:{line}" if line else self.source
        super().__init__(f"{where}: {self.reason}")


def _one_line(text: str) -> str:
    """``text`` with every kind of line break (YAML and Python know several) made a space."""
    return " ".join(text.splitlines())


# --------------------------------------------------------------------------- showing values


def _show(value: Any, limit: int = 60) -> str:
    """A value as it would look in YAML flow style, cut to about ``limit`` characters."""
    out: list[str] = []
    size = [0]

    def put(s: str) -> bool:
        out.append(s)
        size[0] += len(s)
        return size[0] < limit

    def walk(v: Any, depth: int) -> bool:
        if depth > 6:
            return put("...")
        if v is None:
            return put("null")
        if isinstance(v, bool):
            return put("true" if v else "false")
        if isinstance(v, float):
            if math.isnan(v):
                return put(".nan")
            if math.isinf(v):
                return put(".inf" if v > 0 else "-.inf")
            return put(repr(v))
        if isinstance(v, int):
            text = str(v) if abs(v) < 10**30 else f"{v:.3e}"
            return put(text)
        if isinstance(v, str):
            return put(repr(v if len(v) <= limit else v[:limit]))
        if isinstance(v, (_dt.date, _dt.datetime)):
            return put(v.isoformat())
        if isinstance(v, dict):
            if not put("{"):
                return False
            for i, (k, item) in enumerate(v.items()):
                if i and not put(", "):
                    return False
                if not walk(k, depth + 1) or not put(": ") or not walk(item, depth + 1):
                    return False
            return put("}")
        if isinstance(v, (list, tuple)):
            if not put("["):
                return False
            for i, item in enumerate(v):
                if i and not put(", "):
                    return False
                if not walk(item, depth + 1):
                    return False
            return put("]")
        return put(_one_line(repr(v)))

    walk(value, 0)
    text = "".join(out)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _num(x: Any) -> str:
    if isinstance(x, float) and x.is_integer() and abs(x) < 1e15:
        return str(int(x))
    if isinstance(x, int) and x == 2**63:
        return "2**63"
    return str(x)


# --------------------------------------------------------------------------- the scenario's types


class _Type:
    """A field's type with its constraints: ``Annotated``/``Optional`` taken apart."""

    __slots__ = ("tp", "cons", "nullable", "description", "discriminator", "tag")

    def __init__(self, tp: Any, extra: tuple = ()) -> None:
        self.cons: dict[str, Any] = {}
        self.nullable = False
        self.description: Optional[str] = None
        self.discriminator: Optional[str] = None
        self.tag: Optional[str] = None
        for m in extra:
            self._meta(m)
        while True:
            origin = get_origin(tp)
            if origin is Annotated:
                args = get_args(tp)
                tp = args[0]
                for m in args[1:]:
                    self._meta(m)
                continue
            if origin in (Union, types.UnionType):
                args = get_args(tp)
                rest = tuple(a for a in args if a is not type(None))
                if len(rest) < len(args):
                    self.nullable = True
                if len(rest) == 1:
                    tp = rest[0]
                    continue
                tp = Union[rest]  # type: ignore[valid-type]
            break
        self.tp = tp

    def _meta(self, m: Any) -> None:
        if isinstance(m, FieldInfo):
            if m.description and not self.description:
                self.description = m.description
            if isinstance(m.discriminator, str):
                self.discriminator = m.discriminator
            for sub in m.metadata:
                self._meta(sub)
            return
        tag = getattr(m, "tag", None)
        if type(m).__name__ == "Tag" and isinstance(tag, str):
            self.tag = tag
            return
        for name in ("gt", "ge", "lt", "le", "min_length", "max_length", "pattern", "allow_inf_nan"):
            value = getattr(m, name, None)
            if value is not None and name not in self.cons:
                self.cons[name] = value

    # ------------------------------------------------------------------ shape

    @property
    def is_union(self) -> bool:
        return get_origin(self.tp) in (Union, types.UnionType)

    @property
    def is_model(self) -> bool:
        return isinstance(self.tp, type) and issubclass(self.tp, BaseModel)

    def members(self) -> list[_Type]:
        return [_Type(a) for a in get_args(self.tp)] if self.is_union else []

    def tags(self) -> list[str]:
        """The values that pick each member of a discriminated union, in order."""
        out = []
        for m in self.members():
            if m.tag is not None:
                out.append(m.tag)
            elif self.discriminator and m.is_model:
                field = m.tp.model_fields.get(self.discriminator)
                if field is not None and get_origin(field.annotation) is Literal:
                    out.extend(str(v) for v in get_args(field.annotation))
        return out

    def member_by_label(self, label: Any) -> Optional[_Type]:
        """The member pydantic means by a location label (a tag or a member's schema name)."""
        if not isinstance(label, str):
            return None
        members = self.members()
        for m in members:
            if m.tag == label:
                return m
            if self.discriminator and m.is_model:
                field = m.tp.model_fields.get(self.discriminator)
                if field is not None and label in map(str, get_args(field.annotation)):
                    return m
        for m in members:
            if m.is_model and label == m.tp.__name__:
                return m
            if m.is_union and label.startswith("tagged-union"):
                return m
            if isinstance(m.tp, type) and not m.is_model and (
                label == m.tp.__name__ or label == f"constrained-{m.tp.__name__}"
            ):
                return m
        return None

    def member_for(self, value: Any) -> Optional[_Type]:
        """The member a YAML value was meant to be (by its tag, its keys or its type)."""
        members = self.members()
        if isinstance(value, dict):
            candidates = [m for m in members if m.is_model or m.is_union]
            if self.discriminator:
                tag = value.get(self.discriminator)
                m = self.member_by_label(str(tag)) if tag is not None else None
                if m is not None:
                    return m
            keyed = [m for m in candidates if m.tag is not None and m.tag in value]
            if len(keyed) == 1:
                return keyed[0]
            if len(candidates) == 1:
                return candidates[0]
            for m in candidates:
                if m.is_union:
                    inner = m.member_for(value)
                    if inner is not None:
                        return inner
            return None
        for m in members:
            if isinstance(m.tp, type) and not m.is_model and isinstance(value, m.tp):
                return m
        return None

    def child(self, key: Any) -> Optional[_Type]:
        """The type of ``self[key]`` (a field, list item, tuple element or mapping value)."""
        origin = get_origin(self.tp)
        if self.is_model:
            field = self.tp.model_fields.get(key) if isinstance(key, str) else None
            return _Type(field.annotation, (field,)) if field is not None else None
        if origin is list and isinstance(key, int):
            return _Type(get_args(self.tp)[0])
        if origin is tuple and isinstance(key, int):
            args = get_args(self.tp)
            return _Type(args[key]) if 0 <= key < len(args) else None
        if origin is dict:
            return _Type(get_args(self.tp)[1])
        return None

    def fields(self) -> list[str]:
        return list(self.tp.model_fields) if self.is_model else []

    # ------------------------------------------------------------------ words

    def describe(self, depth: int = 0) -> str:
        """What a value of this type may be, in words."""
        text = self._describe(depth)
        return f"{text}, or null" if self.nullable else text

    def _range(self) -> str:
        c = self.cons
        lo = ("from", c["ge"]) if "ge" in c else ("above", c["gt"]) if "gt" in c else None
        hi = ("to", c["le"]) if "le" in c else ("below", c["lt"]) if "lt" in c else None
        if lo and hi:
            if lo[0] == "from" and hi[0] == "to":
                return f" from {_num(lo[1])} to {_num(hi[1])}"
            if lo[0] == "from" and hi[0] == "below":
                return f" from {_num(lo[1])} up to (not including) {_num(hi[1])}"
            return f" {'>=' if lo[0] == 'from' else '>'} {_num(lo[1])} and {'<=' if hi[0] == 'to' else '<'} {_num(hi[1])}"
        if lo:
            return f" {'>=' if lo[0] == 'from' else '>'} {_num(lo[1])}"
        if hi:
            return f" {'<=' if hi[0] == 'to' else '<'} {_num(hi[1])}"
        return ""

    def _describe(self, depth: int) -> str:
        tp, c = self.tp, self.cons
        origin = get_origin(tp)
        if self.is_union:
            members = self.members()
            tags = self.tags()
            if self.discriminator and tags:
                what = {"dist": "a distribution", "kind": "an arrival process"}.get(self.discriminator, "a mapping")
                if "uniform_int" in tags:
                    what = "a count distribution"
                return f"{what}: a mapping with {self.discriminator}: {' | '.join(tags)} and its parameters"
            if tags and len(tags) == len(members):
                return f"a call-tree node: a mapping with exactly one of the keys {', '.join(tags)}"
            return ", or ".join(m.describe(depth + 1) for m in members)
        if origin is Literal:
            values = [_show(v) for v in get_args(tp)]
            return f"exactly {values[0]}" if len(values) == 1 else f"one of {', '.join(values)}"
        if tp is bool:
            return "true or false"
        if tp is int:
            return "a whole number" + self._range()
        if tp is float:
            return "a number" + self._range()
        if tp is str:
            pattern = c.get("pattern")
            if pattern is not None:
                text = _PATTERNS.get(pattern) or self.description or f"text matching {pattern}"
            else:
                text = "text"
            if "max_length" in c:
                text += f", at most {c['max_length']} characters"
            return text
        if origin is list:
            item = _Type(get_args(tp)[0])
            text = f"a list of {item._plural(depth)}"
            if c.get("min_length"):
                text += f" (at least {c['min_length']})"
            return text
        if origin is tuple:
            return "a pair [" + ", ".join(_Type(a).describe(depth + 1) for a in get_args(tp)) + "]"
        if origin is dict:
            key, value = (_Type(a) for a in get_args(tp))
            text = f"a mapping from {key.describe(depth + 1)} to {value._plural(depth)}"
            if c.get("min_length"):
                text += f" (at least {c['min_length']} entry)"
            return text
        if self.is_model:
            if depth > 0:
                return f"a mapping ({self.tp.__name__})"
            fields = self.tp.model_fields
            required = [n for n, f in fields.items() if f.is_required()]
            optional = [n for n in fields if n not in required]
            parts = []
            if required:
                parts.append("required: " + ", ".join(required))
            if optional:
                parts.append("optional: " + ", ".join(optional))
            return "a mapping (" + "; ".join(parts) + ")"
        return getattr(tp, "__name__", str(tp))

    def _plural(self, depth: int) -> str:
        if get_origin(self.tp) is tuple:
            return "pairs [" + ", ".join(_Type(a).describe(depth + 1) for a in get_args(self.tp)) + "]"
        if self.is_model:
            return f"mappings ({self.tp.__name__})"
        if self.is_union and self.tags():
            return {"dist": "distributions", "kind": "arrival processes"}.get(
                self.discriminator or "", "call-tree nodes"
            )
        return self.describe(depth + 1)


# --------------------------------------------------------------------------- YAML


def _compose(text: str, source: str) -> tuple[Optional[yaml.Node], Any]:
    """The YAML node tree (for line numbers) and the data it constructs, read as YAML 1.2
    reads it (:mod:`hailan_sim.models.yaml12`: no base-60 numbers, no yes/no/on/off
    booleans), parsed by libyaml."""
    try:
        root = yaml12.compose(text)
        data = None
        if root is not None:
            _check_nodes(root, source)
            data = yaml12.construct(root)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        problem = exc.problem or "not valid YAML"
        if exc.context and exc.context_mark and exc.problem_mark and exc.context_mark.line != exc.problem_mark.line:
            problem += f" ({exc.context} at line {exc.context_mark.line + 1})"
        elif exc.context:
            problem += f" ({exc.context})"
        hint = "check the indentation, quotes and brackets near this line"
        if "'\\t'" in problem:
            hint = "YAML indents with spaces, never tabs"
        elif "another document" in problem:
            hint = "a scenario file holds one YAML document; remove the '---' separator"
        elif "unhashable" in problem:
            hint = "a key must be a plain name, not a list or mapping"
        elif isinstance(exc, yaml.constructor.ConstructorError):
            hint = "only plain YAML values are allowed; remove the !!tag or fix the tagged value"
        raise ScenarioError(source, f"YAML syntax error: {problem} ({hint})", line) from None
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, exc.position) + 1 if isinstance(exc.position, int) else None
        what = f"#x{exc.character:04x}" if isinstance(exc.character, int) else repr(exc.character)
        raise ScenarioError(
            source, f"YAML syntax error: character {what} is not allowed in YAML (remove it, or write it as an escape inside double quotes)", line
        ) from None
    except yaml.YAMLError as exc:
        raise ScenarioError(source, f"YAML error: {exc}") from None
    return root, data


def _check_nodes(root: yaml.Node, source: str) -> None:
    """Refuse duplicate keys (YAML would silently keep the last), recursive aliases and
    alias bombs."""
    expanded: dict[int, int] = {}
    on_path: set[int] = set()

    def walk(node: yaml.Node, keys: list) -> int:
        ident = id(node)
        if ident in on_path:
            path = _text_path(keys)
            raise ScenarioError(
                source,
                f"{path or 'the document'}: an alias refers to the anchor it is inside "
                "(a recursive structure); a scenario must be a tree",
                node.start_mark.line + 1, path,
            )
        if ident in expanded:
            return expanded[ident]
        on_path.add(ident)
        size = 1
        if isinstance(node, yaml.MappingNode):
            seen: dict[tuple, int] = {}
            for k, v in node.value:
                scalar = isinstance(k, yaml.ScalarNode)
                if scalar and k.value != "<<":
                    line = k.start_mark.line + 1
                    if (k.tag, k.value) in seen:
                        first = seen[(k.tag, k.value)]
                        path = _text_path([*keys, k.value])
                        lines = f"lines {first} and {line}" if first != line else f"line {line}"
                        raise ScenarioError(
                            source,
                            f"{path}: key {_show(k.value)} appears twice in one mapping ({lines}); keep only one",
                            line, path,
                        )
                    seen[(k.tag, k.value)] = line
                size += walk(k, keys) + walk(v, [*keys, k.value if scalar else "?"])
        elif isinstance(node, yaml.SequenceNode):
            if keys and keys[-1] == "times_s" and len(node.value) > MAX_INLINE_TIMES:
                path = _text_path(keys)
                raise ScenarioError(
                    source,
                    f"{path}: {len(node.value)} times written inline; at most {MAX_INLINE_TIMES} are allowed "
                    "in the YAML: put them in a CSV or Parquet file with a column t_s and give 'file: NAME' instead",
                    node.start_mark.line + 1, path,
                )
            for i, v in enumerate(node.value):
                size += walk(v, [*keys, i])
        on_path.discard(ident)
        expanded[ident] = size
        return size

    total = walk(root, [])
    if total > _MAX_EXPANDED and total > 10 * len(expanded):
        raise ScenarioError(
            source,
            f"the document expands to {total} values through aliases (*name); "
            f"at most {_MAX_EXPANDED} are allowed: use fewer aliases",
            root.start_mark.line + 1,
        )


def _key_is(node: yaml.Node, key: Any) -> bool:
    if not isinstance(node, yaml.ScalarNode):
        return False
    if node.tag == "tag:yaml.org,2002:null":
        return key is None or key == "None"
    if node.tag == "tag:yaml.org,2002:bool" and isinstance(key, bool):
        return node.value.lower() == str(key).lower()
    return node.value == str(key)


def _line_of(root: Optional[yaml.Node], loc: list) -> Optional[int]:
    """The line of the deepest node of ``loc`` that exists (its key's line for mappings)."""
    node, line = root, (root.start_mark.line + 1 if root is not None else None)
    for key in loc:
        if isinstance(node, yaml.MappingNode):
            nxt = None
            for k, v in node.value:
                if _key_is(k, key):
                    nxt, line = v, k.start_mark.line + 1
            node = nxt
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and 0 <= key < len(node.value):
            node = node.value[key]
            line = node.start_mark.line + 1
        else:
            break
        if node is None:
            break
    return line


# --------------------------------------------------------------------------- paths


_PLAIN_KEY = re.compile(r"^[A-Za-z_][\w-]*$")


def _text_path(keys: list) -> str:
    """``['services', 0, 'port']`` -> ``services[0].port``; odd keys are quoted: ``["a b"]``."""
    out = ""
    for k in keys:
        if isinstance(k, int) and not isinstance(k, bool):
            out += f"[{k}]"
        elif isinstance(k, str) and _PLAIN_KEY.match(k):
            out += ("." if out else "") + k
        else:
            out += f"[{_show(k, 40)}]"
    return out


def _parse_path(text: str) -> list:
    return [int(i) if i else name for name, i in _PATH_PART.findall(text)]


def _get(data: Any, key: Any) -> tuple[bool, Any]:
    if isinstance(data, dict):
        if key in data:
            return True, data[key]
        for k in data:  # pydantic reports non-text keys as text
            if str(k) == str(key):
                return True, data[k]
        return False, None
    if isinstance(data, list) and isinstance(key, int) and 0 <= key < len(data):
        return True, data[key]
    return False, None


def _walk(data: Any, keys: list) -> tuple[bool, Any]:
    """``(found, value)`` at the end of the data path ``keys``."""
    for k in keys:
        ok, data = _get(data, k)
        if not ok:
            return False, None
    return True, data


def _exists(data: Any, keys: list) -> bool:
    return _walk(data, keys)[0]


def _value_at(data: Any, keys: list) -> Any:
    return _walk(data, keys)[1]


def _type_at(keys: list, data: Any, resolve: bool = True) -> Optional[_Type]:
    """The type the scenario expects at a data path (unions resolved by the data; the one
    at the end of the path only if ``resolve``)."""
    ty: Optional[_Type] = _Type(Scenario)
    for k in keys:
        while ty is not None and ty.is_union:
            ty = ty.member_for(data)
        if ty is None:
            return None
        ty = ty.child(k)
        _, data = _get(data, k)
    while resolve and ty is not None and ty.is_union and data is not None:
        member = ty.member_for(data)
        if member is None:
            break
        ty = member
    return ty


class _Loc:
    """A pydantic error location, resolved against the scenario's types: the path in the
    YAML data (without union tags and member names), and the types at its end."""

    def __init__(self, loc: tuple) -> None:
        self.keys: list = []  # the path in the YAML data
        self.key_error = False  # the error is about a mapping key, not its value
        self.ty: Optional[_Type] = _Type(Scenario)  # the type at the end of the path
        self.parent: Optional[_Type] = None  # the type that holds the last key
        self.union: Optional[_Type] = None  # a union whose member the error is in, at this depth
        self.union_depth = -1
        self.branches: list[tuple[tuple, Any]] = []  # (data path, member type) per union
        ty = self.ty
        for item in loc:
            if item == "[key]":
                self.key_error = True
                continue
            if ty is not None and ty.is_union:
                member = ty.member_by_label(item)
                if member is not None:
                    if len(self.keys) != self.union_depth:  # the outermost union here
                        self.union, self.union_depth = ty, len(self.keys)
                        self.branches.append((tuple(self.keys), member.tp))
                    ty = member
                    continue
                # pydantic always names the member it tried; unknown label: keep the key
            self.parent = ty
            self.keys.append(item)
            ty = ty.child(item) if ty is not None else None
        self.ty = ty
        if self.union is not None and self.union_depth != len(self.keys):
            self.union = None


# --------------------------------------------------------------------------- errors


def _describe_error(err: dict, data: Any) -> tuple[str, list, str]:
    """(path, data keys for the line, message) for one pydantic error."""
    kind = err["type"]
    loc = _Loc(err["loc"])
    keys = list(loc.keys)
    value = err.get("input")
    ty = loc.union or loc.ty
    ctx = err.get("ctx") or {}

    if kind == "extra_forbidden" or kind == "invalid_key":
        name = keys[-1] if keys else value
        allowed = loc.parent.fields() if loc.parent is not None else []
        if kind == "invalid_key":
            # pydantic reports a key that is not text (null, a number) as text; show the key
            # as written, at the mapping that holds it.
            keys = keys[:-1]
            holder = _value_at(data, keys)
            if isinstance(holder, dict):
                name = next((k for k in holder if not isinstance(k, str) and str(k) == str(name)), name)
            what = f"key {_show(name)} is not a field name"
        else:
            what = f"unknown field {_show(name)}"
        line_keys = keys if kind == "extra_forbidden" else [*keys, name]
        if not allowed:
            return _text_path(keys), line_keys, f"{what} (`hailan-sim schema` lists every field)"
        close = difflib.get_close_matches(str(name), allowed, n=1, cutoff=0.6)
        hint = f"did you mean {close[0]!r}? " if close else ""
        return _text_path(keys), line_keys, f"{what} ({hint}allowed here: {', '.join(allowed)})"

    if kind == "missing":
        if loc.parent is not None and get_origin(loc.parent.tp) is tuple:
            keys = keys[:-1]
            got = _value_at(data, keys)
            return _text_path(keys), keys, f"got {_show(got)}, expected {loc.parent.describe()}"
        allowed = f" (add it: {ty.describe()})" if ty is not None else ""
        return _text_path(keys), keys, f"required field is missing{allowed}"

    if kind in ("union_tag_invalid", "union_tag_not_found") and ty is not None:
        if loc.ty is not None and loc.ty.is_union:
            ty = loc.ty  # the tagged union itself, even inside another union
        disc = ty.discriminator or str(ctx.get("discriminator", "")).strip("'")
        options = " | ".join(ty.tags())
        if isinstance(value, dict) and disc and disc.isidentifier():
            keys = [*keys, disc]
            if kind == "union_tag_not_found":
                return _text_path(keys), keys[:-1], f"required field is missing (add it: one of {options})"
            return _text_path(keys), keys, f"got {_show(value.get(disc))}, expected one of {options}"
        return _text_path(keys), keys, f"got {_show(value)}, expected {ty.describe()}"

    if kind in ("value_error", "assertion_error"):
        error = ctx.get("error")
        if isinstance(error, UnicodeDecodeError):
            msg = "the file is not UTF-8 text (save it as UTF-8)"
        else:
            msg = err["msg"]
            for prefix in ("Value error, ", "Assertion failed, "):
                msg = msg.removeprefix(prefix)
        return _validator_message(msg, keys, data)

    if kind == "recursion_loop":
        return _text_path(keys), keys, "refers to itself through a YAML alias; a scenario must be a tree"

    table = _from_table(keys, data)
    if table is not None:
        keys, prefix = table
        if value == [] and kind == "too_short":
            return _text_path(keys), keys, f"{prefix}: has no rows (expected a CSV file with header t_s,rate and at least one row)"
        return _text_path(keys), keys, f"{prefix}: got {_show(value)}, expected {ty.describe() if ty else 'a number'}"

    # Wrong type or value out of range: say what was given and what is allowed.
    if loc.key_error:
        allowed = loc.ty.describe() if loc.ty is not None and loc.ty.tp is str else "a name"
        parent_ty = _type_at(keys[:-1], data)
        if parent_ty is not None and get_origin(parent_ty.tp) is dict:
            allowed = _Type(get_args(parent_ty.tp)[0]).describe()
        return _text_path(keys), keys, f"key {_show(keys[-1] if keys else value)} is not allowed (expected {allowed})"
    if ty is None:
        msg = err["msg"].replace("Input should be", "must be")
        return _text_path(keys), keys, f"{msg} (got {_show(value)})"
    hint = ""
    if ty.tp is str and isinstance(value, (bool, int, float, _dt.date)):
        hint = "; YAML read this as a " + (
            "date" if isinstance(value, _dt.date) else "boolean" if isinstance(value, bool) else "number"
        ) + ", put it in quotes"
    if isinstance(value, str) and ty.tp in (int, float) and _BASE_60.match(value.strip()):
        hint = "; YAML 1.2 reads this as text, not as a base-60 number (YAML 1.1 read 1:30 as 90): write the number itself"
    if kind == "finite_number":
        hint = "; .nan and .inf are not allowed"
    return _text_path(keys), keys, f"got {_show(value)}, expected {ty.describe()}{hint}"


def _one_branch(errors: list[dict], data: Any) -> list[dict]:
    """pydantic reports a value that fits no member of a union once per member; keep the
    errors of the member the value was meant to be (a mapping: the mapping one), if known."""
    located = [_Loc(e["loc"]).branches for e in errors]
    members: dict[tuple, set] = {}
    for branches in located:
        for prefix, tp in branches:
            members.setdefault(prefix, set()).add(tp)
    keep: dict[tuple, Any] = {}
    for prefix, tps in members.items():
        if len(tps) < 2:
            continue
        union = _type_at(list(prefix), data, resolve=False)
        meant = union.member_for(_value_at(data, list(prefix))) if union is not None and union.is_union else None
        if meant is not None and meant.tp in tps:
            keep[prefix] = meant.tp
    kept = [
        e for e, branches in zip(errors, located)
        if all(prefix not in keep or tp == keep[prefix] for prefix, tp in branches)
    ]
    return kept or errors


def _typos_first(errors: list[dict], data: Any) -> list[dict]:
    """A misspelt field is both missing and unknown; pydantic lists "missing" first, but
    the unknown spelling is the mistake to show (with its "did you mean"). Each such pair
    becomes the one "unknown field" error, in the place of the "missing" one."""
    unknown: dict[tuple, list] = {}
    for i, e in enumerate(errors):
        if e["type"] == "extra_forbidden":
            keys = _Loc(e["loc"]).keys
            if keys:
                unknown.setdefault(tuple(keys[:-1]), []).append((str(keys[-1]), i))
    if not unknown:
        return errors
    instead: dict[int, int] = {}  # index of a "missing" error -> index of its misspelling
    taken: set[int] = set()
    for i, e in enumerate(errors):
        if e["type"] != "missing":
            continue
        keys = _Loc(e["loc"]).keys
        if not keys:
            continue
        spelt = [(k, j) for k, j in unknown.get(tuple(keys[:-1]), []) if j not in taken]
        close = difflib.get_close_matches(str(keys[-1]), [k for k, _ in spelt], n=1, cutoff=0.6)
        if close:
            j = next(j for k, j in spelt if k == close[0])
            instead[i] = j
            taken.add(j)
    return [errors[instead[i]] if i in instead else e for i, e in enumerate(errors) if i not in taken]


def _from_table(keys: list, data: Any) -> Optional[tuple[list, str]]:
    """For a path into the ``steps`` a piecewise arrival read from its CSV file: the path of
    ``csv`` and words for the row (the user wrote the table, not the steps)."""
    for i, k in enumerate(keys):
        if k != "steps":
            continue
        holder = _value_at(data, keys[:i])
        if isinstance(holder, dict) and "csv" in holder and holder.get("steps") is None:
            where = f"in the table {holder['csv']!r}"
            rest = keys[i + 1:]
            if rest and isinstance(rest[0], int):
                where += f", data row {rest[0] + 1}"
                if len(rest) > 1 and rest[1] in (0, 1):
                    where += f", column {('t_s', 'rate')[rest[1]]}"
            return [*keys[:i], "csv"], where
    return None


def _validator_message(msg: str, keys: list, data: Any) -> tuple[str, list, str]:
    """A validator's own message; it may begin with a path, absolute or relative to ``keys``."""
    m = _PATH_AT_START.match(msg)
    if m:
        rel = _parse_path(m.group(1))
        candidates = [
            [*keys, *rel],
            rel,
            [*keys[:-1], *rel] if keys and rel and rel[0] == keys[-1] else None,
        ]
        rest = msg[m.end():] if m.group(2) == ": " else msg
        for cand in candidates:
            if cand is not None and _exists(data, cand):
                return _text_path(cand), cand, _with_targets(cand, rest, data)
        # A field the file leaves to its default (or to a profile): still a field path.
        for cand in candidates[:2]:
            if m.group(2) == ": " and _type_at(cand, data, resolve=False) is not None:
                return _text_path(cand), cand, rest
    cycle = _CYCLE.match(msg)
    if cycle:
        found = _find_call(data, *cycle.groups())
        if found is not None:
            return _text_path(found), found, msg
    csv_keys = [*keys, "csv"]
    value = _value_at(data, keys)
    if isinstance(value, dict) and "csv" in value and value.get("steps") is None:
        table = value["csv"]
        if isinstance(table, str) and table not in msg:
            msg = f"in the table {table!r}: {msg}"
        if "t_s" not in msg and "cannot read" in msg:
            msg += " (expected a CSV file with header t_s,rate; a relative path starts at the scenario file's folder)"
        return _text_path(csv_keys), csv_keys, msg
    if isinstance(value, dict) and isinstance(value.get("file"), str) and value.get("times_s") is None:
        file_keys = [*keys, "file"]
        return _text_path(file_keys), file_keys, msg
    return _text_path(keys), keys, msg


def _with_targets(keys: list, msg: str, data: Any) -> str:
    """A reference to something that does not exist: add what does (the cross-reference
    checks name the bad reference; the person fixing it needs the good ones)."""
    if not keys or keys[-1] not in ("call", "publish", "entry") or "(it has" in msg or "(known" in msg:
        return msg
    if not any(w in msg for w in ("unknown service", "is not an operation", "must name a service operation")):
        return msg
    targets: list[str] = []
    for s in data.get("services") or []:
        if isinstance(s, dict) and isinstance(s.get("operations"), dict):
            targets += [f"{s.get('name')}.{op}" for op in s["operations"]]
    if keys[-1] == "call":
        targets += [str(c.get("name")) for c in data.get("infrastructure") or [] if isinstance(c, dict)]
    if not targets:
        return msg
    shown = ", ".join(targets[:12]) + (f", ... ({len(targets)} in all)" if len(targets) > 12 else "")
    return f"{msg} (known: {shown})"


def _find_call(data: Any, svc: str, op: str, target_svc: str, target_op: str) -> Optional[list]:
    """The data path of the call from ``svc.op`` to ``target_svc.target_op``."""
    target = f"{target_svc}.{target_op}"
    services = data.get("services") if isinstance(data, dict) else None
    if not isinstance(services, list):
        return None
    for i, s in enumerate(services):
        if not isinstance(s, dict) or s.get("name") != svc:
            continue
        ops = s.get("operations")
        if not isinstance(ops, dict) or not isinstance(ops.get(op), dict):
            continue
        stack: list = [(ops[op].get("calls"), ["services", i, "operations", op, "calls"])]
        while stack:
            node, path = stack.pop(0)
            if not isinstance(node, dict):
                continue
            if node.get("call") == target:
                return [*path, "call"]
            if node.get("publish") == target:
                return [*path, "publish"]
            for key in ("seq", "par"):
                if isinstance(node.get(key), list):
                    stack.extend((c, [*path, key, j]) for j, c in enumerate(node[key]))
            for key in ("maybe", "repeat"):
                if key in node:
                    stack.append((node[key], [*path, key]))
            if isinstance(node.get("choice"), list):
                stack.extend(
                    (o.get("do"), [*path, "choice", j, "do"])
                    for j, o in enumerate(node["choice"]) if isinstance(o, dict)
                )
    return None


def _bool_misuse(data: Any) -> Optional[tuple[list, Any, _Type]]:
    """The first true/false where a number or text is expected (pydantic takes true as 1)."""
    stack: list = [([], data)]
    while stack:
        keys, value = stack.pop()
        if isinstance(value, bool):
            ty = _type_at(keys, data)
            if ty is not None and not ty.is_union and ty.tp is not bool:
                return keys, value, ty
            if ty is not None and ty.is_union and not any(m.tp is bool for m in ty.members()):
                return keys, value, ty
        # Only what can hold or be a boolean is walked on (a long list of numbers is not).
        elif isinstance(value, dict):
            stack.extend(([*keys, k], v) for k, v in reversed(list(value.items())) if isinstance(v, _WALKED))
        elif isinstance(value, list):
            stack.extend(([*keys, i], v) for i, v in reversed(list(enumerate(value))) if isinstance(v, _WALKED))
    return None


_WALKED = (bool, dict, list)


def _in_file(keys: list, data: Any) -> list:
    """Where to point for ``keys``: a policy whose mapping the file does not spell out
    came from the file's ``profile``, so point there."""
    if keys and keys[0] == "policies" and "profile" in data and not _exists(data, keys[:-1]):
        return ["profile"]
    return keys


def _csv_failure(data: Any) -> list:
    """Where the first piecewise arrival read from a CSV file is (for errors the csv module raises)."""
    workload = data.get("workload") if isinstance(data, dict) else None
    if not isinstance(workload, dict):
        return []
    places = [(["workload", "arrival"], workload.get("arrival"))]
    endpoints = workload.get("endpoints")
    if isinstance(endpoints, list):
        places += [
            (["workload", "endpoints", i, "arrival"], ep.get("arrival"))
            for i, ep in enumerate(endpoints) if isinstance(ep, dict)
        ]
    for keys, arrival in places:
        if isinstance(arrival, dict) and "csv" in arrival:
            return [*keys, "csv"]
    return []


# --------------------------------------------------------------------------- entry points


def parse_scenario(
    text: str,
    source: str = "<scenario>",
    base_dir: Union[str, Path] = ".",
    data_root: Union[str, Path, None] = None,
) -> Scenario:
    """Validate YAML text as a scenario; raise :class:`ScenarioError` on any problem.

    Data files the scenario names (``csv:``, ``file:``) are resolved in ``base_dir`` and
    must lie inside ``data_root`` (default: ``base_dir``); see :mod:`hailan_sim.models.datafiles`.
    """
    try:
        return _parse(text, source, base_dir, data_root)
    except RecursionError:
        raise ScenarioError(source, "the scenario is nested too deeply (more than a few hundred levels)") from None


def _parse(text: str, source: str, base_dir: Union[str, Path], data_root: Union[str, Path, None]) -> Scenario:
    if not isinstance(text, str):
        raise ScenarioError(source, f"expected YAML text, got {type(text).__name__}")
    if len(text) > MAX_SCENARIO_BYTES:
        raise ScenarioError(
            source,
            f"the scenario is {len(text)} characters; at most {MAX_SCENARIO_BYTES} are allowed "
            "(put large tables and traces in data files: csv: for rates, file: for traces)",
        )
    root, data = _compose(text, source)
    if data is None:
        raise ScenarioError(
            source,
            "the file is empty (a scenario is a YAML mapping with at least name, services and workload)",
            1 if root is None else root.start_mark.line + 1,
        )
    if not isinstance(data, dict):
        kind = {list: "a list", str: "text", int: "a number", float: "a number", bool: "a boolean"}.get(
            type(data), type(data).__name__
        )
        raise ScenarioError(
            source,
            f"got {kind} at the top level, expected a mapping with at least name, services and workload",
            root.start_mark.line + 1 if root is not None else 1,
        )
    try:
        context = {"base_dir": str(base_dir), "data_root": None if data_root is None else str(data_root)}
        scenario = Scenario.model_validate(data, context=context)
    except ValidationError as exc:
        errors = _typos_first(_one_branch(exc.errors(include_url=False), data), data)
        described = [_describe_error(e, data) for e in errors]
        path, keys, msg = described[0]
        others = len({p for p, _, _ in described} - {path})
        more = f" (and {others} more problem{'s' if others > 1 else ''})" if others else ""
        where = f"{path}: " if path else ""
        raise ScenarioError(source, f"{where}{msg}{more}", _line_of(root, _in_file(keys, data)), path) from None
    except csv.Error as exc:
        keys = _csv_failure(data)
        table = _value_at(data, keys)
        raise ScenarioError(
            source,
            f"{_text_path(keys) + ': ' if keys else ''}cannot read the arrival table {table!r}: {exc} "
            "(expected a CSV file with header t_s,rate)",
            _line_of(root, keys), _text_path(keys),
        ) from None
    misuse = _bool_misuse(data)
    if misuse is not None:
        keys, value, ty = misuse
        path = _text_path(keys)
        raise ScenarioError(
            source, f"{path}: got {_show(value)}, expected {ty.describe()}", _line_of(root, keys), path
        )
    return scenario


def load_scenario(path: Union[str, Path, None] = None, data_root: Union[str, Path, None] = None) -> Scenario:
    """Load a scenario file; ``None`` gives the built-in default scenario.

    The file must be a regular file of at most ``MAX_SCENARIO_BYTES``. Data files it names
    are read from its folder, or from anywhere under ``data_root`` if that is given.
    """
    if path is None:
        return default_scenario()
    p = Path(path)
    text = read_yaml_file(p, "scenario")
    return parse_scenario(text, str(p), p.parent, data_root)


def read_yaml_file(p: Path, what: str) -> str:
    """The text of a scenario or sweep file (``what``): a regular file of at most
    ``MAX_SCENARIO_BYTES`` in UTF-8, or a one-line :class:`ScenarioError` saying what to do."""
    try:
        raw = read_bounded(p, MAX_SCENARIO_BYTES, f"the {what} file")
    except ValueError as exc:
        raise ScenarioError(str(p), f"{exc} (give a {what} .yaml file; tables and traces go in data files)") from None
    except FileNotFoundError:
        raise ScenarioError(str(p), f"no such file (give the path of a {what} .yaml file)") from None
    except IsADirectoryError:
        raise ScenarioError(str(p), f"is a directory (give the path of a {what} .yaml file in it)") from None
    except PermissionError:
        raise ScenarioError(str(p), f"permission denied (the {what} file must be readable)") from None
    except OSError as exc:
        raise ScenarioError(str(p), f"cannot read: {exc.strerror or exc} (give a readable {what} .yaml file)") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise ScenarioError(
            str(p), f"byte {raw[exc.start]:#04x} is not UTF-8 text (save the file as UTF-8)", line
        ) from None


def line_in_file(path: Union[str, Path], keys: list) -> Optional[int]:
    """The line of the field at ``keys`` (a data path such as ``["services", 0, "port"]``)
    in a scenario file, or of the nearest enclosing field it has; None if the file cannot
    be read again. For problems found after loading (the CLI's capacity check)."""
    try:
        text = read_bounded(Path(path), MAX_SCENARIO_BYTES, "the scenario file").decode("utf-8")
        root, data = _compose(text, str(path))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    return _line_of(root, _in_file(keys, data))


def default_scenario() -> Scenario:
    """The spec's twelve services under the load documented in ``models/data/default.yaml``."""
    ref = resources.files("hailan_sim.models") / "data" / "default.yaml"
    return parse_scenario(ref.read_text(encoding="utf-8"), "<built-in default>")


# The loader's message toolkit, for other YAML inputs that report errors the same way (the
# sweep files, cli/sweeps/spec.py): a document's nodes, a field path's text and line, a value
# shown briefly, a pydantic error explained, and the declared type at a path.
compose_yaml = _compose
describe_validation_error = _describe_error
line_of = _line_of
show_value = _show
text_path = _text_path
FieldType = _Type
