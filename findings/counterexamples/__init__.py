"""The counterexamples the checker found in the spec's design (docs/findings.md), shipped
with the package as data (``hailan_sim.counterexamples``) so that ``hailan-sim replay NAME``
works from an installed wheel. Each ``*.yaml`` is a complete scenario; its header names
the invariant it violates."""
