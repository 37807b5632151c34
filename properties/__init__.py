"""Invariants over a run's record, fault-schedule strategies and the checker.

Empty until the checker issue lands; the package exists so the layering
models <- sim <- properties <- CLI is in place from the start.
"""

__all__: list[str] = []
