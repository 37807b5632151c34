"""Probability distributions a scenario can name, and the batched samplers that draw from them.

A distribution is data (a frozen pydantic model discriminated on ``dist``); it knows its
mean and how to draw a batch of values from a numpy ``Generator``. The engine draws through
:class:`Sampler`, which pulls values a block at a time from one named stream: numpy's
per-call overhead is far larger than the draw itself, and a fixed block size keeps the
sequence a stream produces independent of anything but the stream's own consumption.

Distributions are unit-free: the field that holds one names the unit (``service_time_ms``,
``latency_ms``). Count distributions (for repeated calls) are a separate, integer-valued
family so their means are exact.
"""

from __future__ import annotations

import functools
import itertools
import math
from typing import Annotated, Literal, Union

import numpy as np
from pydantic import Field, model_validator

from hailan_sim.models._base import Frozen

__all__ = [
    "MAX_COUNT",
    "MAX_POISSON_MEAN",
    "Constant",
    "CountDistribution",
    "Discrete",
    "Distribution",
    "Empirical",
    "Exponential",
    "Gamma",
    "LogNormal",
    "Poisson",
    "Sampler",
    "Uniform",
    "UniformInt",
]

PositiveFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]
NonNegativeFloat = Annotated[float, Field(ge=0, allow_inf_nan=False)]

# A repeat makes at most this many calls per execution, whether its count is fixed or
# drawn: a count is memory (a parallel repeat holds every child call at once), so an
# unbounded one could take the machine down in one draw.
MAX_COUNT = 1000
# A Poisson count's mean is capped so the cap above is a safety net, not a distortion:
# with mean 800 the standard deviation is 28.3 and 1000 lies 7.07 of them above the mean,
# so P(X > 1000) < 1e-11 (normal tail; the Poisson tail is lighter still). Draws above
# MAX_COUNT are clipped to it, never refused mid-run.
MAX_POISSON_MEAN = 800.0
Count = Annotated[int, Field(ge=0, le=MAX_COUNT)]


class Exponential(Frozen):
    """Exponential with the given mean (memoryless service: the M in M/M/c)."""

    dist: Literal["exponential"]
    mean: PositiveFloat

    def expected(self) -> float:
        return self.mean

    def draw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return rng.exponential(self.mean, n)


class Constant(Frozen):
    """Always ``value`` (the D in M/D/1)."""

    dist: Literal["constant"]
    value: NonNegativeFloat

    def expected(self) -> float:
        return self.value

    def draw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return np.full(n, self.value)


class Uniform(Frozen):
    """Uniform on ``[low, high)``."""

    dist: Literal["uniform"]
    low: NonNegativeFloat
    high: NonNegativeFloat

    @model_validator(mode="after")
    def _ordered(self) -> Uniform:
        if self.high < self.low:
            raise ValueError(f"high ({self.high}) must be >= low ({self.low})")
        return self

    def expected(self) -> float:
        return (self.low + self.high) / 2

    def draw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return rng.uniform(self.low, self.high, n)


class LogNormal(Frozen):
    """Lognormal given by its median and the sigma of the underlying normal.

    The median is what people read off a latency dashboard (p50); ``sigma`` sets the tail:
    p99 = median * exp(2.326 * sigma).
    """

    dist: Literal["lognormal"]
    median: PositiveFloat
    sigma: NonNegativeFloat

    def expected(self) -> float:
        return self.median * math.exp(self.sigma**2 / 2)

    def draw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return rng.lognormal(math.log(self.median), abs(self.sigma), n)  # abs: -0.0 is valid input


class Gamma(Frozen):
    """Gamma with numpy's ``shape`` (k) and ``scale`` (theta); mean k * theta."""

    dist: Literal["gamma"]
    shape: PositiveFloat
    scale: PositiveFloat

    def expected(self) -> float:
        return self.shape * self.scale

    def draw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return rng.gamma(self.shape, self.scale, n)


class Empirical(Frozen):
    """A distribution given by measured quantiles, e.g. from a latency dashboard.

    ``quantiles`` is a list of ``[p, value]`` pairs with p strictly increasing from 0 to 1
    and values non-decreasing; draws interpolate the inverse CDF linearly between them.
    """

    dist: Literal["empirical"]
    quantiles: list[tuple[Annotated[float, Field(ge=0, le=1)], NonNegativeFloat]] = Field(
        min_length=2
    )

    @model_validator(mode="after")
    def _monotone(self) -> Empirical:
        ps = [p for p, _ in self.quantiles]
        xs = [x for _, x in self.quantiles]
        if ps[0] != 0.0 or ps[-1] != 1.0:
            raise ValueError(
                f"quantiles: the first p must be 0 and the last 1 (got p={ps[0]:g} ... p={ps[-1]:g})"
            )
        for a, b in zip(ps, ps[1:]):
            if b <= a:
                raise ValueError(
                    f"quantiles: probabilities must be strictly increasing (p={b:g} follows p={a:g})"
                )
        for a, b in zip(xs, xs[1:]):
            if b < a:
                raise ValueError(
                    f"quantiles: values must be non-decreasing ({b:g} follows {a:g})"
                )
        return self

    def expected(self) -> float:
        # Piecewise-linear inverse CDF: the mean is the trapezoid area under it.
        return sum(
            (p1 - p0) * (x0 + x1) / 2
            for (p0, x0), (p1, x1) in zip(self.quantiles, self.quantiles[1:])
        )

    def draw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        ps = np.array([p for p, _ in self.quantiles])
        xs = np.array([x for _, x in self.quantiles])
        return np.interp(rng.random(n), ps, xs)


Distribution = Annotated[
    Union[Exponential, Constant, Uniform, LogNormal, Gamma, Empirical],
    Field(discriminator="dist"),
]


class Poisson(Frozen):
    """Poisson-distributed count with the given mean."""

    dist: Literal["poisson"]
    mean: Annotated[float, Field(ge=0, le=MAX_POISSON_MEAN, allow_inf_nan=False)] = Field(
        description=f"at most {MAX_POISSON_MEAN:g}, so a draw above the cap of {MAX_COUNT} is all but impossible"
    )

    def expected(self) -> float:
        return self.mean

    def draw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        # Clipped, not refused: the same draws (and stream consumption) as unclipped below the cap.
        return np.minimum(rng.poisson(self.mean, n), MAX_COUNT)


class UniformInt(Frozen):
    """Integer uniform on ``[low, high]`` inclusive."""

    dist: Literal["uniform_int"]
    low: Count
    high: Count

    @model_validator(mode="after")
    def _ordered(self) -> UniformInt:
        if self.high < self.low:
            raise ValueError(f"high ({self.high}) must be >= low ({self.low})")
        return self

    def expected(self) -> float:
        return (self.low + self.high) / 2

    def draw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return rng.integers(self.low, self.high, n, endpoint=True)


class Discrete(Frozen):
    """A count drawn from ``weights``: a list of ``[count, weight]`` pairs."""

    dist: Literal["discrete"]
    weights: list[tuple[Count, PositiveFloat]] = Field(min_length=1)

    def expected(self) -> float:
        total = sum(w for _, w in self.weights)
        return sum(k * w for k, w in self.weights) / total

    def draw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        ks = np.array([k for k, _ in self.weights])
        ws = np.array([w for _, w in self.weights], dtype=float)
        return rng.choice(ks, size=n, p=ws / ws.sum())


CountDistribution = Annotated[
    Union[Poisson, UniformInt, Discrete], Field(discriminator="dist")
]


class Sampler:
    """Draws one value at a time from ``dist`` on its own stream, a block at a time.

    ``scale`` multiplies every draw (1e-3 turns a ``*_ms`` distribution into seconds).
    The block size is fixed, so the k-th value a sampler returns depends only on its
    stream and k, never on when or by whom it was asked for.

    ``sampler()`` and ``sampler.next()`` return the same sequence (they share it). ``next``
    is what hot paths hold: a C-level callable (``functools.partial`` of the builtin
    ``next`` over a chain of blocks), so a draw costs no Python frame; the next block is
    drawn when the last one runs out, as ``sampler()`` always did.
    """

    __slots__ = ("_dist", "_rng", "_scale", "next")

    BLOCK = 1024

    def __init__(self, dist, rng: np.random.Generator, scale: float = 1.0) -> None:
        self._dist = dist
        self._rng = rng
        self._scale = scale
        self.next = functools.partial(next, itertools.chain.from_iterable(iter(self._blocks(), None)))

    def _blocks(self):
        """A function returning the stream's next block as a list (never None)."""
        dist, rng, scale, n = self._dist, self._rng, self._scale, self.BLOCK

        def block() -> list:
            values = dist.draw(rng, n)
            if scale != 1.0:
                values = values * scale
            return values.tolist()

        return block

    def __call__(self):
        return self.next()


class UniformSampler(Sampler):
    """Uniform draws on [0, 1) from a stream, a block at a time (choices, coin flips)."""

    __slots__ = ()

    def __init__(self, rng: np.random.Generator) -> None:
        super().__init__(None, rng)

    def _blocks(self):
        rng, n = self._rng, self.BLOCK
        return lambda: rng.random(n).tolist()
