"""Named random streams derived from one seed.

Every component draws for one purpose from its own stream (``"svc/user-service/login"``,
``"arrive/login"``, ``"net/order-service>user-service"``), so adding a consumer, turning
observation on, or changing what one component does never shifts another's draws. A
stream's identity is the SHA-256 of its name mixed with the seed through numpy's
``SeedSequence``: stable across processes and platforms, unlike ``hash()``.
"""

from __future__ import annotations

import hashlib

import numpy as np

from hailan_sim.models.distributions import Sampler, UniformSampler

__all__ = ["Streams", "stream_seed"]


def stream_seed(seed: int, name: str) -> np.random.SeedSequence:
    words = np.frombuffer(hashlib.sha256(name.encode("utf-8")).digest(), dtype="<u4")
    return np.random.SeedSequence([seed & 0xFFFFFFFF, seed >> 32, *words.tolist()])


class Streams:
    """Hands out one generator per name; asking twice for a name is a bug and raises."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self._names: dict[str, None] = {}

    def generator(self, name: str) -> np.random.Generator:
        if name in self._names:
            raise ValueError(f"random stream {name!r} requested twice; streams must not be shared")
        self._names[name] = None
        return np.random.Generator(np.random.PCG64(stream_seed(self.seed, name)))

    def sampler(self, name: str, dist, scale: float = 1.0) -> Sampler:
        return Sampler(dist, self.generator(name), scale)

    def uniform(self, name: str) -> UniformSampler:
        return UniformSampler(self.generator(name))

    @property
    def names(self) -> list[str]:
        """Every stream handed out so far, in the order first asked for."""
        return list(self._names)
