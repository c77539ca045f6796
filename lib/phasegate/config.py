"""Reading TOML tables into frozen dataclasses: each key checked for its type and popped, so a
key left over is unknown, and every message names the file and the dotted key."""

from __future__ import annotations

import os
import re
from typing import Any

from .errors import DataError, ProfileError, WindowError
from .redact import redact_text
from .window import parse_duration


class _Reader:
    """Pops keys off a TOML table, checking types; leftovers are unknown keys."""

    def __init__(self, src: str, table: Any, where: str):
        self.src, self.where = src, where
        if not isinstance(table, dict):
            self.fail(where, f"must be a table, got {type(table).__name__}")
        self.table = dict(table)

    def fail(self, key: str, problem: str):
        # Values are echoed to help fix typos; a URL's password or key= must not be among them.
        raise ProfileError(redact_text(f"{self.src}: {key}: {problem}"))

    def key(self, name: str) -> str:
        return f"{self.where}.{name}" if self.where else name

    def take(self, name, kinds, default=None, required=False):
        if name not in self.table:
            if required:
                self.fail(self.key(name), "is required")
            return default
        value = self.table.pop(name)
        if isinstance(value, bool) and bool not in kinds:
            self.fail(self.key(name), f"must be {_kind_names(kinds)}, got {value!r}")
        if not isinstance(value, kinds):
            self.fail(self.key(name), f"must be {_kind_names(kinds)}, got {type(value).__name__} {value!r}")
        return value

    def duration(self, name, default=None):
        value = self.take(name, (str, int, float), None)
        if value is None:
            return default
        try:
            return parse_duration(value)
        except WindowError:
            self.fail(self.key(name), f"must be a duration like 30s, 15m or 24h, got {value!r}")

    def str_list(self, name, default=()):
        value = self.take(name, (list,), None)
        if value is None:
            return tuple(default)
        if not all(isinstance(v, str) for v in value):
            self.fail(self.key(name), "must be a list of strings")
        return tuple(value)

    def str_table(self, name):
        value = self.take(name, (dict,), {})
        for k, v in value.items():
            if not isinstance(v, str):
                self.fail(f"{self.key(name)}.{k}", f"must be a string, got {type(v).__name__}")
        return dict(value)

    def done(self):
        if self.table:
            bad = sorted(self.table)[0]
            self.fail(self.key(bad), "unknown key")


def _kind_names(kinds) -> str:
    names = {str: "a string", int: "an integer", float: "a number", bool: "true or false",
             list: "a list", dict: "a table"}
    return " or ".join(names.get(k, k.__name__) for k in kinds)


DEFAULT_MEMORY_LIMIT = "1GB"
_SIZE = re.compile(r"\s*\d+(\.\d+)?\s*([KMGT]i?B|B|%)?\s*", re.I)


def memory_limit(value: str | None = None) -> str:
    """The engine's memory limit: `value`, else $PHASEGATE_MEMORY_LIMIT, else 1GB — a size like
    1GB or 512MB, never anything that could be more SQL. Checked before a report starts a kernel."""
    limit = value or os.environ.get("PHASEGATE_MEMORY_LIMIT") or DEFAULT_MEMORY_LIMIT
    if not _SIZE.fullmatch(str(limit)):
        raise DataError(f"memory limit {limit!r} is not a size like 1GB or 512MB")
    return limit
