"""Real traffic from Prometheus: exact request counts from the raw counters, as samples.

`increase()` extrapolates to the range's edges and so rarely returns whole requests; instead
the raw counter of every series is read with `query_range` (the step chosen from the window,
under Prometheus' 11,000-point limit) and differenced here: a drop is a counter reset (the
process restarted) and counts the new value; a series that first appears inside the window is
counted from 0 and reported, since requests before its first scrape cannot be seen.

Pulls never overlap: each file is named by the interval its increments cover, (start, end], and
a later pull fetches only the parts of its window that no earlier pull covered. Counter
increments telescope, so windows that meet at a point count every request exactly once.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
import urllib.parse
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from .apiclient import fetch
from .errors import DataError
from .profile import PromSource
from .redact import Secret, redact_text
from .window import Window, iso

_LABEL = re.compile(r"^prom-(\d+)-(\d+)\.parquet$")


@dataclass
class PullResult:
    rows: int = 0
    requests: float = 0.0
    series: int = 0
    resets: int = 0
    notes: list = field(default_factory=list)
    already: list = field(default_factory=list)  # (start, end) parts of the window pulled before


def step_for(window: Window, scrape_s: float = 1.0) -> float:
    return max(scrape_s, math.ceil(window.duration_s / 10_000))


def query_range(src: PromSource, query: str, window: Window, step_s: float) -> list:
    params = urllib.parse.urlencode({"query": query, "start": window.start.timestamp(),
                                     "end": window.end.timestamp(), "step": f"{step_s:g}s"})
    headers = {"Accept": "application/json", "User-Agent": "phasegate", "Connection": "close"}
    token = os.environ.get(src.token_env) if src.token_env else None
    if token:
        headers["Authorization"] = Secret(f"Bearer {token}")
    # The whole answer, headers included, within src.timeout_s (requests alone bounds each read).
    ex = fetch(f"{src.url}/api/v1/query_range?{params}", "GET", headers, None, src.timeout_s, 256 * 1024 * 1024,
               route=src.route)
    if ex.outcome is not None:
        raise DataError(f"Prometheus at {src.url} unreachable: {redact_text(ex.error or ex.outcome, [token or ''])}")
    if ex.status != 200:
        raise DataError(f"Prometheus at {src.url} answered HTTP {ex.status} for query_range")
    try:
        doc = json.loads(ex.body)
        if not isinstance(doc, dict):
            raise ValueError("not an object")
    except (ValueError, RecursionError):
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


def pull_traffic(src: PromSource, data_dir, window: Window, name: str = "prometheus",
                 now: float | None = None) -> PullResult:
    """Pull the parts of `window` (whole seconds, up to now) that no earlier pull into
    `data_dir` covered."""
    a = math.floor(window.start.timestamp())
    b = min(math.floor(window.end.timestamp()), math.floor(time.time() if now is None else now))
    res = PullResult()
    if b < window.end.timestamp() - 1:
        res.notes.append(f"the window ends in the future: pulled up to {iso_ts(b)}; pull again later for the rest")
    covered = pulled_intervals(data_dir)
    parts = uncovered((a, b), covered)
    res.already = _overlaps((a, b), covered)
    for lo, hi in parts:
        part = Window(datetime.fromtimestamp(lo, timezone.utc), datetime.fromtimestamp(hi, timezone.utc))
        _pull_part(src, data_dir, part, name, res)
    if res.resets:
        res.notes.append(f"{res.resets} counter reset(s) handled (a drop counts the new value)")
    return res


def pulled_intervals(data_dir) -> list[tuple[int, int]]:
    """The (start, end] intervals earlier pulls wrote, from their file names."""
    from .store import list_files

    found = {tuple(map(int, m.groups())) for f in list_files(data_dir) if (m := _LABEL.match(os.path.basename(f)))}
    return sorted(found)


def uncovered(window: tuple[int, int], covered: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The parts of window (start, end] outside every covered interval."""
    out, lo = [], window[0]
    for c_lo, c_hi in sorted(covered):
        if c_hi <= lo or c_lo >= window[1]:
            continue
        if c_lo > lo:
            out.append((lo, c_lo))
        lo = max(lo, c_hi)
    if lo < window[1]:
        out.append((lo, window[1]))
    return out


def _overlaps(window, covered):
    return [(max(lo, window[0]), min(hi, window[1])) for lo, hi in sorted(covered) if lo < window[1] and hi > window[0]]


def _pull_part(src: PromSource, data_dir, window: Window, name: str, res: PullResult) -> None:
    from .store import rows_to_table, write_tables

    step = step_for(window)
    # Points fall at start + k*step: end the window on one, so the next pull starts where this
    # one's increments stop (a remainder shorter than a step is left for that pull).
    covered_s = math.floor(window.duration_s / step) * step
    if covered_s <= 0:
        res.notes.append(f"{iso(window.start)} .. {iso(window.end)} is shorter than one step ({step:g} s): not pulled")
        return
    window = Window(window.start, window.start + timedelta(seconds=covered_s))
    series = query_range(src, src.metric, window, step)
    res.series = max(res.series, len(series))
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
    rows.sort(key=lambda r: r["ts"])
    label = f"prom-{int(window.start.timestamp())}-{int(window.end.timestamp())}"
    res.rows += write_tables(data_dir, [rows_to_table(rows)], label) if rows else 0


_QUERY_LABEL = re.compile(r"^promql-(.+)-(\d+)-(\d+)\.parquet$")


def pull_queries(src: PromSource, data_dir, window: Window, criteria, now: float | None = None) -> list[str]:
    """The values of each PromQL criterion's query over the parts of `window` (up to now) no earlier
    pull stored, as samples (source "promql", probe = the criterion's id, tenant = the series'
    labels, count = the value): a report re-run without Prometheus judges the same values.
    Returns notes for the report's data section; a Prometheus that fails is a DataError."""
    from .store import list_files, rows_to_table, write_tables

    a = math.floor(window.start.timestamp())
    b = min(math.floor(window.end.timestamp()), math.floor(time.time() if now is None else now))
    notes = []
    for c in criteria:
        covered = sorted({(int(m.group(2)), int(m.group(3))) for f in list_files(data_dir)
                          if (m := _QUERY_LABEL.match(os.path.basename(f))) and m.group(1) == c.id})
        for lo, hi in uncovered((a, b), covered):
            part = Window(datetime.fromtimestamp(lo, timezone.utc), datetime.fromtimestamp(hi, timezone.utc))
            step = step_for(part)
            rows = []
            for series in query_range(src, c.promql, part, step):
                labels = json.dumps(series.get("metric", {}), sort_keys=True)[:256]
                for t, v in series.get("values", []):
                    value = float(v)
                    if not math.isfinite(value):
                        continue
                    rows.append({"ts": float(t), "source": "promql", "target": "prometheus", "probe": c.id,
                                 "tenant": labels, "url": c.promql[:256], "count": value, "outcome": "ok",
                                 "assertion_failures": [], "simulated": False, "seq": len(rows) + 1})
            rows.sort(key=lambda r: r["ts"])
            if rows:
                write_tables(data_dir, [rows_to_table(rows)], f"promql-{c.id}-{lo}-{hi}")
            notes.append(f"PromQL {c.id}: {len(rows)} values from {len({r['tenant'] for r in rows})} series, "
                         f"{iso_ts(lo)} .. {iso_ts(hi)}")
    return notes


def iso_ts(t) -> str:
    return iso(datetime.fromtimestamp(float(t), timezone.utc))
