"""phasegate: decide from evidence whether a phased rollout may proceed."""

import logging

from importlib.metadata import PackageNotFoundError, version as _version

try:
    __version__ = _version("phasegate")
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"

from .errors import (ActionRefused, DataError, PhasegateError, ProfileError, ReportError, ScenarioError,
                     StoreError, WindowError)
from .profile import load_profile
from .window import Window

__all__ = [
    "__version__", "load_profile", "read_samples", "Window",
    "PhasegateError", "ProfileError", "WindowError", "DataError", "StoreError", "ScenarioError", "ReportError",
    "ActionRefused",
]

logging.getLogger(__name__).addHandler(logging.NullHandler())


def __getattr__(name):
    # pyarrow takes ~0.7 s to import: only code that reads samples should pay for it.
    if name == "read_samples":
        from .store import read_samples
        return read_samples
    raise AttributeError(f"module 'phasegate' has no attribute {name!r}")
