"""The installed distribution's version (one place; no other imports, so any layer may use it)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("hailan-sim")
except PackageNotFoundError:  # pragma: no cover - running from a tree that was never installed
    __version__ = "0+unknown"
