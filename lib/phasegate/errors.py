"""The exception tree: one root, each subclass also the built-in it resembles."""


class PhasegateError(Exception):
    """Root of every error phasegate raises on purpose."""


class ProfileError(PhasegateError, ValueError):
    """A profile file is missing, unreadable, or has a bad key or value."""


class WindowError(PhasegateError, ValueError):
    """A time, duration or window is malformed or empty (end before start)."""


class DataError(PhasegateError, ValueError):
    """The data directory is missing or holds no usable samples for the window."""


class StoreError(PhasegateError, OSError):
    """The sample store could not write or recover its files."""


class ScenarioError(PhasegateError, ValueError):
    """An unknown simulator scenario or a malformed fault schedule."""


class ReportError(PhasegateError, RuntimeError):
    """The sign-off notebook or one of its exports failed."""


class ActionRefused(PhasegateError, RuntimeError):
    """`phasegate act` will not act: a stale report, a changed platform, a held lock, no approval."""
