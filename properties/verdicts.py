"""Verdicts and the registry of named invariants."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Optional

if TYPE_CHECKING:  # pragma: no cover
    from hailan_sim.properties.record import Record


# --------------------------------------------------------------------------- verdicts


@dataclass(frozen=True)
class Verdict:
    """What one invariant says about one record.

    Attributes:
        name: the invariant's registered name.
        holds: True if no violation was found.
        explanation: one sentence a person can act on (which endpoint or instance, how far
            off, when); for a pass, what was checked.
        window: ``(start_s, end_s)`` of the (first) violation, or None.
        details: numbers: what was compared, every violation found, and the anti-vacuity
            report (``fault_kinds_fired``, ``mechanisms``, ``checked``, ``vacuous``).
    """

    name: str
    holds: bool
    explanation: str
    window: Optional[tuple[float, float]] = None
    details: dict = field(default_factory=dict)

    def __str__(self) -> str:
        mark = "holds" if self.holds else "VIOLATED"
        where = "" if self.window is None else f" [{self.window[0]:g}, {self.window[1]:g}) s"
        return f"{self.name}: {mark}{where}: {self.explanation}"



# --------------------------------------------------------------------------- the registry


class Invariant:
    """A named invariant: ``invariant(record, **options) -> Verdict``.

    Wraps a function of the record; the verdict it returns gets the invariant's name and
    the anti-vacuity report (``fault_kinds_fired``, ``mechanisms``) in its details.
    """

    def __init__(self, name: str, fn: Callable[..., Verdict]) -> None:
        self.name = name
        self.fn = fn
        self.__doc__ = fn.__doc__
        self.__name__ = name
        self.__wrapped__ = fn

    def __call__(self, record: Record, **options: Any) -> Verdict:
        v = self.fn(record, **options)
        if not isinstance(v, Verdict):
            raise TypeError(f"invariant {self.name!r} returned {type(v).__name__}, not a Verdict")
        details = dict(v.details)
        details.setdefault("fault_kinds_fired", record.fault_kinds_fired)
        details.setdefault("mechanisms", dict(record.mechanisms_witnessed))
        return replace(v, name=self.name, holds=bool(v.holds), details=details)

    def __repr__(self) -> str:
        return f"Invariant({self.name!r})"


INVARIANTS: "OrderedDict[str, Invariant]" = OrderedDict()


def register(name: str, *, replace: bool = False) -> Callable[[Callable[..., Verdict]], Invariant]:
    """Decorator: register ``fn(record, **options) -> Verdict`` as invariant ``name``.

    Its docstring is its definition. Registering a taken name is an error unless
    ``replace=True`` (then it keeps its place in the order)."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"{name=} must be a non-empty string")

    def deco(fn: Callable[..., Verdict]) -> Invariant:
        if name in INVARIANTS and not replace:
            raise ValueError(
                f"an invariant named {name!r} is already registered; pick another name, "
                "pass replace=True, or unregister it first"
            )
        inv = Invariant(name, fn)
        INVARIANTS[name] = inv
        return inv

    return deco


def unregister(name: str) -> Invariant:
    """Remove invariant ``name`` (and return it)."""
    try:
        return INVARIANTS.pop(name)
    except KeyError:
        raise KeyError(f"no invariant {name!r}; registered: {', '.join(INVARIANTS)}") from None


def get(name: str) -> Invariant:
    try:
        return INVARIANTS[name]
    except KeyError:
        raise KeyError(f"no invariant {name!r}; registered: {', '.join(INVARIANTS)}") from None


def evaluate(record: Record, names: Optional[Iterable[str]] = None,
             options: Optional[Mapping[str, Mapping[str, Any]]] = None) -> list[Verdict]:
    """Every registered invariant (or those named), in registration order.

    ``options`` maps an invariant's name to keyword arguments for it, e.g.
    ``{"bounded_recovery": {"recovery_s": 60}}``.
    """
    wanted = None if names is None else list(names)
    if wanted is not None:
        unknown = [n for n in wanted if n not in INVARIANTS]
        if unknown:
            raise KeyError(f"no invariant {unknown[0]!r}; registered: {', '.join(INVARIANTS)}")
    options = dict(options or {})
    for n in options:
        if n not in INVARIANTS:
            raise KeyError(f"options for unknown invariant {n!r}; registered: {', '.join(INVARIANTS)}")
    return [inv(record, **options.get(n, {}))
            for n, inv in INVARIANTS.items() if wanted is None or n in wanted]
