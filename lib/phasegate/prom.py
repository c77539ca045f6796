"""Real traffic from Prometheus: exact request counts from the raw counters, as samples.

`increase()` extrapolates to the range's edges and so rarely returns whole requests; instead
the raw counter of every series is read with `query_range` (the step chosen from the window,
under Prometheus' 11,000-point limit) and differenced here: a drop is a counter reset (the
process restarted) and counts the new value; a series that first appears inside the window is
counted from 0 and reported, since requests before its first scrape cannot be seen.
"""

from __future__ import annotations

import json
import math
import os
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field

from .errors import DataError
from .profile import PromSource
from .window import Window, iso


@dataclass
class PullResult:
    rows: int = 0
    requests: float = 0.0
    series: int = 0
    resets: int = 0
    notes: list = field(default_factory=list)


def step_for(window: Window, scrape_s: float = 1.0) -> float:
    return max(scrape_s, math.ceil(window.duration_s / 10_000))


def query_range(src: PromSource, query: str, window: Window, step_s: float) -> list:
    params = urllib.parse.urlencode({"query": query, "start": window.start.timestamp(),
                                     "end": window.end.timestamp(), "step": f"{step_s:g}s"})
    req = urllib.request.Request(f"{src.url}/api/v1/query_range?{params}")
    token = os.environ.get(src.token_env) if src.token_env else None
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=src.timeout_s) as resp:
            doc = json.load(resp)
    except urllib.error.HTTPError as exc:
        raise DataError(f"Prometheus at {src.url} answered HTTP {exc.code} for query_range") from None
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        raise DataError(f"Prometheus at {src.url} unreachable: {getattr(exc, 'reason', exc)}") from None
    except ValueError:
        raise DataError(f"Prometheus at {src.url} returned a body that is not JSON") from None
    if doc.get("status") != "success":
        raise DataError(f"Prometheus query failed: {doc.get('error', 'unknown error')}")
    return doc["data"]["result"]


def increments(values: list) -> tuple[list, int]:
    """(t, requests since the previous point) for a counter's points; a drop is a reset."""
    out, resets, prev = [], 0, None
    for t, v in values:
        v = float(v)
        if prev is not None:
            d = v - prev if v >= prev else v
            resets += v < prev
            if d > 0:
                out.append((float(t), d))
        prev = v
    return out, resets


def pull_traffic(src: PromSource, data_dir, window: Window, name: str = "prometheus") -> PullResult:
    from .store import rows_to_table, write_tables

    step = step_for(window)
    series = query_range(src, src.metric, window, step)
    res = PullResult(series=len(series))
    if not series:
        res.notes.append(f"no series named {src.metric} between {iso(window.start)} and {iso(window.end)}")
    rows = []
    for s in series:
        labels = s.get("metric", {})
        pts = s.get("values", [])
        if pts and float(pts[0][0]) > window.start.timestamp() + step:
            res.notes.append(f"series {labels.get('route', '?')} {labels.get('status', '?')} first seen at "
                             f"{iso_ts(pts[0][0])}: counted from its first value")
        inc, resets = increments(pts)
        res.resets += resets
        for t, d in inc:
            status = int(labels["status"]) if str(labels.get("status", "")).isdigit() else None
            rows.append({"ts": t, "source": "prometheus", "target": name, "probe": labels.get("route", "?"),
                         "method": labels.get("method"), "status": status, "count": d,
                         "outcome": "http_error" if status is not None and status >= 500 else "ok",
                         "assertion_failures": [], "simulated": False, "seq": len(rows) + 1})
            res.requests += d
    # The latency histogram's buckets, the same way: one row per (route, upper bound) increment,
    # latency_ms holding the bucket's upper bound (inf for +Inf).
    for s in query_range(src, f"{src.histogram}_bucket", window, step):
        labels = s.get("metric", {})
        le = labels.get("le")
        try:
            upper_ms = float(le) * 1000.0
        except (TypeError, ValueError):
            continue
        inc, resets = increments(s.get("values", []))
        res.resets += resets
        for t, d in inc:
            rows.append({"ts": t, "source": "prometheus-histogram", "target": name, "probe": labels.get("route", "?"),
                         "method": labels.get("method"), "latency_ms": upper_ms, "count": d, "outcome": "ok",
                         "assertion_failures": [], "simulated": False, "seq": len(rows) + 1})
    if res.resets:
        res.notes.append(f"{res.resets} counter reset(s) handled (a drop counts the new value)")
    rows.sort(key=lambda r: r["ts"])
    label = f"prom-{int(window.start.timestamp())}-{int(window.end.timestamp())}"
    res.rows = write_tables(data_dir, [rows_to_table(rows)], label) if rows else 0
    return res


def iso_ts(t) -> str:
    from datetime import datetime, timezone
    return iso(datetime.fromtimestamp(float(t), timezone.utc))
