"""phasegate: decide from evidence whether a phased rollout may proceed."""

import logging

from .errors import (DataError, PhasegateError, ProfileError, ReportError, ScenarioError, StoreError,
                     WindowError)
from .profile import load_profile
from .store import read_samples
from .window import Window

__all__ = [
    "load_profile", "read_samples", "Window",
    "PhasegateError", "ProfileError", "WindowError", "DataError", "StoreError", "ScenarioError", "ReportError",
]

logging.getLogger(__name__).addHandler(logging.NullHandler())
