"""YAML as YAML 1.2 reads it, fast, with line numbers.

PyYAML implements YAML 1.1, whose implicit types surprise people who write scenarios:
``timeout_s: 1:30`` is the base-60 number 90, ``on``/``off``/``yes``/``no``/``y``/``n`` are
booleans (an operation named ``on`` becomes the key ``True``), ``010`` is 8 (octal) and
``2020-01-01`` a date. YAML 1.2 (2009) dropped all of these; its core schema (YAML 1.2.2,
section 10.3.2, https://yaml.org/spec/1.2.2/#1032-tag-resolution) resolves a plain scalar
to null, a boolean, an integer or a float only when it matches these patterns:

    null   null | Null | NULL | ~ | (empty)
    bool   true | True | TRUE | false | False | FALSE
    int    [-+]? [0-9]+  |  0o [0-7]+  |  0x [0-9a-fA-F]+
    float  [-+]? ( \\. [0-9]+ | [0-9]+ ( \\. [0-9]* )? ) ( [eE] [-+]? [0-9]+ )?
           | [-+]? \\. ( inf | Inf | INF )  |  \\. ( nan | NaN | NAN )

and everything else is text. This module resolves exactly that (plus ``<<`` merge keys,
which YAML 1.1 defined and PyYAML's safe constructor understands; they are harmless and
people use them to share blocks). ``1e3`` is a float as in 1.2 (1.1 wanted ``1.0e+3``).
An explicit tag that asks for a 1.1 reading (``!!bool yes``, ``!!int 1:30``) is refused.

Speed: the document is parsed by libyaml (PyYAML's C ``CParser``), which composes the same
node tree as the pure-Python parser, with a line and column on every node; resolution and
construction stay in Python (the classes below), so both parsers give identical data.
Only when libyaml finds the text malformed is it parsed again by the pure-Python parser,
whose messages (and line numbers) the loader's error messages are built on; a valid
document never pays for that. Without libyaml the pure-Python parser does everything.
"""

from __future__ import annotations

import math
import re
from typing import Any, Optional

import yaml
from yaml.composer import Composer
from yaml.constructor import ConstructorError, SafeConstructor
from yaml.parser import Parser
from yaml.reader import Reader
from yaml.resolver import BaseResolver
from yaml.scanner import Scanner

__all__ = ["HAVE_LIBYAML", "compose", "construct", "safe_dump", "safe_load"]

HAVE_LIBYAML = bool(getattr(yaml, "__with_libyaml__", False))

_INT = re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$")
_FLOAT = re.compile(
    r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
)
_BOOL = {"true": True, "True": True, "TRUE": True, "false": False, "False": False, "FALSE": False}


_NULL_TAG, _BOOL_TAG = "tag:yaml.org,2002:null", "tag:yaml.org,2002:bool"
_INT_TAG, _FLOAT_TAG = "tag:yaml.org,2002:int", "tag:yaml.org,2002:float"
_MERGE_TAG, _STR_TAG = "tag:yaml.org,2002:merge", "tag:yaml.org,2002:str"


class Resolver12(BaseResolver):
    """Implicit tags of the YAML 1.2 core schema (and ``<<``).

    ``resolve`` is written out for plain scalars (the same answers as the implicit
    resolvers registered below, which the dumper uses): PyYAML's generic loop over
    resolver lists was a third of the time of loading a large file."""

    def resolve(self, kind: Any, value: Any, implicit: Any) -> str:
        if kind is yaml.ScalarNode and implicit[0]:
            if value == "":
                return _NULL_TAG
            c = value[0]
            if c in "-+.0123456789":
                if _INT.match(value):
                    return _INT_TAG
                if _FLOAT.match(value):
                    return _FLOAT_TAG
            elif c in "tTfF":
                if value in _BOOL:
                    return _BOOL_TAG
            elif c in "~nN":
                if value in ("~", "null", "Null", "NULL"):
                    return _NULL_TAG
            elif value == "<<":
                return _MERGE_TAG
            return _STR_TAG
        return super().resolve(kind, value, implicit)


Resolver12.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                                 list("tTfF"))
Resolver12.add_implicit_resolver("tag:yaml.org,2002:int", _INT, list("-+0123456789"))
# An int pattern matches first where both would (the resolver tries them in order).
Resolver12.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+.0123456789"))
Resolver12.add_implicit_resolver("tag:yaml.org,2002:null", re.compile(r"^(?:~|null|Null|NULL|)$"),
                                 ["~", "n", "N", ""])
Resolver12.add_implicit_resolver("tag:yaml.org,2002:merge", re.compile(r"^<<$"), ["<"])


class Constructor12(SafeConstructor):
    """PyYAML's safe constructor with YAML 1.2 readings of booleans and numbers (an
    explicit ``!!bool``/``!!int``/``!!float`` tag must hold a 1.2 value too)."""

    def _refuse(self, node: yaml.ScalarNode, what: str) -> None:
        raise ConstructorError(
            None, None,
            f"{node.value!r} is not {what} in YAML 1.2 (YAML 1.1 readings such as yes/no/on/off "
            "and base-60 numbers like 1:30 are not used)",
            node.start_mark,
        )

    def construct_yaml_bool(self, node: yaml.ScalarNode) -> bool:
        value = self.construct_scalar(node)
        if value not in _BOOL:
            self._refuse(node, "a boolean")
        return _BOOL[value]

    def construct_yaml_int(self, node: yaml.ScalarNode) -> int:
        value = self.construct_scalar(node)
        if not _INT.match(value):
            self._refuse(node, "an integer")
        if value.startswith("0o"):
            return int(value[2:], 8)
        if value.startswith("0x"):
            return int(value[2:], 16)
        return int(value, 10)  # "010" is ten, not eight

    def construct_yaml_float(self, node: yaml.ScalarNode) -> float:
        value = self.construct_scalar(node)
        if not _FLOAT.match(value):
            self._refuse(node, "a number")
        lower = value.lower()
        if lower.endswith(".inf"):
            return -math.inf if lower.startswith("-") else math.inf
        if lower == ".nan":
            return math.nan
        return float(value)


Constructor12.add_constructor("tag:yaml.org,2002:bool", Constructor12.construct_yaml_bool)
Constructor12.add_constructor("tag:yaml.org,2002:int", Constructor12.construct_yaml_int)
Constructor12.add_constructor("tag:yaml.org,2002:float", Constructor12.construct_yaml_float)


class PureLoader(Reader, Scanner, Parser, Composer, Constructor12, Resolver12):
    """The pure-Python parser with YAML 1.2 resolution (precise error messages)."""

    def __init__(self, stream: Any) -> None:
        Reader.__init__(self, stream)
        Scanner.__init__(self)
        Parser.__init__(self)
        Composer.__init__(self)
        Constructor12.__init__(self)
        Resolver12.__init__(self)


if HAVE_LIBYAML:

    from yaml._yaml import CParser

    class FastLoader(CParser, Constructor12, Resolver12):  # type: ignore[misc]
        """libyaml's parser with YAML 1.2 resolution."""

        def __init__(self, stream: Any) -> None:
            CParser.__init__(self, stream)
            Constructor12.__init__(self)
            Resolver12.__init__(self)

else:  # pragma: no cover - PyYAML built without libyaml
    FastLoader = PureLoader  # type: ignore[misc,assignment]


def _compose_with(loader_cls: type, text: str) -> Optional[yaml.Node]:
    loader = loader_cls(text)
    try:
        return loader.get_single_node()
    finally:
        loader.dispose()


def compose(text: str) -> Optional[yaml.Node]:
    """The node tree of a one-document YAML text (None when it is empty). Raises PyYAML's
    own errors, with the pure-Python parser's messages and marks."""
    try:
        return _compose_with(FastLoader, text)
    except yaml.YAMLError:
        if FastLoader is PureLoader:
            raise
    # libyaml refused it: the pure-Python parser says why, in the words (and at the
    # lines) the loader's messages expect. Should it accept what libyaml refused, use
    # its tree: the two implement the same YAML.
    return _compose_with(PureLoader, text)


class _Unusual(Exception):
    """A node the fast constructor leaves to PyYAML's (an explicit tag, a merge key, an
    unhashable key)."""


def _fast_construct(root: yaml.Node) -> Any:
    """What :class:`Constructor12` builds, for the plain trees scenarios are (core-schema
    scalars, lists, mappings, aliases), without PyYAML's generic per-node machinery."""
    memo: dict[int, Any] = {}
    c12 = Constructor12()

    def build(node: yaml.Node) -> Any:
        ident = id(node)
        if ident in memo:  # an alias: the same object, as PyYAML shares it
            return memo[ident]
        tag = node.tag
        if isinstance(node, yaml.ScalarNode):
            if tag == _STR_TAG:
                value: Any = node.value
            elif tag == _FLOAT_TAG:
                value = c12.construct_yaml_float(node)
            elif tag == _INT_TAG:
                value = c12.construct_yaml_int(node)
            elif tag == _BOOL_TAG:
                value = c12.construct_yaml_bool(node)
            elif tag == _NULL_TAG:
                value = None
            else:
                raise _Unusual
        elif isinstance(node, yaml.SequenceNode):
            if tag != "tag:yaml.org,2002:seq":
                raise _Unusual
            value = memo[ident] = []
            value.extend(build(child) for child in node.value)
        elif isinstance(node, yaml.MappingNode):
            if tag != "tag:yaml.org,2002:map":
                raise _Unusual
            value = memo[ident] = {}
            for k, v in node.value:
                if k.tag == _MERGE_TAG:
                    raise _Unusual
                key = build(k)
                try:
                    value[key] = build(v)
                except TypeError:  # an unhashable key: PyYAML says so, with its mark
                    raise _Unusual from None
        else:  # pragma: no cover - composers make only these three kinds
            raise _Unusual
        memo[ident] = value
        return value

    return build(root)


def construct(root: yaml.Node) -> Any:
    """The data a node tree stands for (YAML 1.2 readings). Plain trees are built directly;
    anything else (explicit tags, ``<<`` merges, odd keys) by PyYAML's safe constructor
    with the YAML 1.2 readings, which also raises its errors."""
    try:
        return _fast_construct(root)
    except _Unusual:
        return Constructor12().construct_document(root)


def safe_load(text: str) -> Any:
    """``yaml.safe_load`` with YAML 1.2 readings (for our own data files and tests)."""
    root = compose(text)
    return None if root is None else construct(root)


class Dumper12(yaml.SafeDumper):
    """PyYAML's safe dumper, quoting every string that YAML 1.1 *or* YAML 1.2 would read as
    something else: ``'yes'`` and ``'1:30'`` (1.1) as well as ``'1e3'`` and ``'0o10'`` (1.2),
    so what it writes reads back the same under either."""


for _first, _resolvers in Resolver12.yaml_implicit_resolvers.items():
    for _tag, _regexp in _resolvers:
        Dumper12.add_implicit_resolver(_tag, _regexp, [_first])


def safe_dump(data: Any) -> str:
    """YAML text for plain data (mappings keep their order) that :func:`safe_load` and
    YAML 1.1 readers read back to the same data."""
    return yaml.dump(data, Dumper=Dumper12, sort_keys=False, allow_unicode=True)
