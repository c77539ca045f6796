"""Real traffic beside the probes: request logs (nginx, JSON lines) as samples with source=traffic.

A log line becomes one sample: route (path without query) as `probe`, status, latency from the
server's own request time, outcome `http_error` for a 5xx and `ok` otherwise (a 4xx is the
client's mistake, not the service failing). Lines that do not parse are counted and reported,
never silently skipped.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from urllib.parse import urlsplit

from .errors import DataError
from .redact import capped, printable, redact_url

# nginx "combined" extended with $request_time (seconds, millisecond resolution).
NGINX = re.compile(
    r'^(?P<addr>\S+) \S+ (?P<user>\S+) \[(?P<time>[^\]]+)\] "(?P<method>[A-Z]+) (?P<target>\S+) [^"]*" '
    r'(?P<status>\d{3}) (?P<bytes>\d+|-) "[^"]*" "[^"]*"(?: (?P<rt>\d+(?:\.\d+)?))?\s*$')
NGINX_TIME = "%d/%b/%Y:%H:%M:%S %z"
JSON_FIELDS = {"ts": "time", "method": "method", "path": "path", "status": "status", "latency_s": "request_time"}
CHUNK = 20_000


@dataclass
class ImportResult:
    rows: int = 0
    malformed: int = 0
    examples: list = field(default_factory=list)  # (line number, reason) of the first few


def route_of(target: str) -> str:
    return urlsplit(target).path or "/"


_TS_RANGE = (0.0, 7258118400.0)  # 1970 .. 2200: anything else is a corrupt line, not a request


def _text(value) -> str:
    text = str(value)
    text.encode("utf-8")  # a lone surrogate raises here (a ValueError), not at the parquet write
    return capped(text)


def _row(ts: float, method: str, target: str, status: int, latency_ms: float | None, size, name: str) -> dict:
    """A request as a sample, every value checked against its column: a bad line is counted and
    shown (ValueError), never the end of the import."""
    if isinstance(status, bool) or not 100 <= status <= 599:
        raise ValueError(f"status {status!r} is not an HTTP status (100-599)")
    if not (isinstance(ts, float) and math.isfinite(ts) and _TS_RANGE[0] <= ts < _TS_RANGE[1]):
        raise ValueError(f"time {ts!r} is not between 1970 and 2200")
    if latency_ms is not None and not (math.isfinite(latency_ms) and 0 <= latency_ms < 1e12):
        raise ValueError(f"request time {latency_ms / 1000.0!r} s is not a duration")
    nbytes = None if size in (None, "-") else int(size)
    if nbytes is not None and not 0 <= nbytes < 2**63:
        raise ValueError(f"bytes {size!r} out of range")
    target = _text(target)
    return {"ts": ts, "source": "traffic", "target": name, "probe": route_of(target), "method": _text(method),
            "url": redact_url(target), "status": status, "latency_ms": latency_ms, "bytes": nbytes,
            "outcome": "http_error" if status >= 500 else "ok", "assertion_failures": [], "simulated": False}


def parse_nginx(line: str, name: str) -> dict:
    m = NGINX.match(line)
    if not m:
        raise ValueError("not nginx combined + $request_time")
    ts = datetime.strptime(m["time"], NGINX_TIME).timestamp()
    rt = float(m["rt"]) * 1000.0 if m["rt"] else None
    return _row(ts, m["method"], m["target"], int(m["status"]), rt, m["bytes"], name)


def parse_json(line: str, name: str, fields: dict) -> dict:
    doc = json.loads(line)
    if not isinstance(doc, dict):
        raise ValueError("not a JSON object")
    raw_ts = doc[fields["ts"]]
    if isinstance(raw_ts, (int, float)) and not isinstance(raw_ts, bool):
        ts = float(raw_ts)
    else:
        ts = datetime.fromisoformat(str(raw_ts).replace("Z", "+00:00")).timestamp()
    lat = doc.get(fields["latency_s"])
    status = doc[fields["status"]]
    if not isinstance(status, (int, str)) or isinstance(status, bool):
        raise ValueError(f"status {status!r} is not an HTTP status")
    size = doc.get("bytes")
    if size is not None and (isinstance(size, bool) or not isinstance(size, (int, str))):
        raise ValueError(f"bytes {size!r} is not a count")
    return _row(ts, doc[fields["method"]], doc[fields["path"]], int(status),
                None if lat is None else float(lat) * 1000.0, size, name)


def import_logs(stream, data_dir, fmt: str = "nginx", target: str = "traffic", fields: dict | None = None,
                label: str | None = None) -> ImportResult:
    """Stream a log into the dataset; the same file imported twice replaces itself (named by content)."""
    from .store import rows_to_table, write_tables

    if fmt not in ("nginx", "json"):
        raise DataError(f"unknown log format {fmt!r}; choose nginx or json")
    fmap = {**JSON_FIELDS, **(fields or {})}
    result = ImportResult()

    def tables():
        batch = []
        for no, line in enumerate(stream, 1):
            if isinstance(line, bytes):
                line = line.decode("utf-8", "replace")
            if not line.strip():
                continue
            try:
                row = parse_nginx(line, target) if fmt == "nginx" else parse_json(line, target, fmap)
            except (ValueError, KeyError, TypeError, OverflowError, OSError, RecursionError) as exc:
                result.malformed += 1
                if len(result.examples) < 5:
                    why = str(exc) if not isinstance(exc, KeyError) else f"missing field {exc}"
                    result.examples.append((no, printable(why.encode("utf-8", "backslashreplace").decode())[:120]
                                            or type(exc).__name__))
                continue
            row["seq"] = no
            batch.append(row)
            if len(batch) >= CHUNK:
                yield rows_to_table(sorted(batch, key=lambda r: r["ts"]))
                batch = []
        if batch:
            yield rows_to_table(sorted(batch, key=lambda r: r["ts"]))

    name = label or f"logs-{int(time.time())}"
    result.rows = write_tables(data_dir, tables(), name)
    return result


def file_label(path: str) -> str:
    """A name from the file's content, so importing the same log again replaces, never doubles."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return f"logs-{h.hexdigest()[:16]}"


def open_input(path: str):
    if path == "-":
        return sys.stdin
    try:
        return open(path, encoding="utf-8", errors="replace")
    except FileNotFoundError:
        raise DataError(f"log file not found: {path}") from None
    except IsADirectoryError:
        raise DataError(f"log file is a directory: {path}") from None
