"""Render as evidence: the service's logs, HTTP metrics and events over a window, as samples.

What the seed's operator reads on Render's dashboard, pulled through the same bounded, redacting
client as the deploys (`platform`): every call under the adapter's deadline, 429s waited on
within the retry budget. Each pull covers the part of the window no earlier pull covered, up to
`evidence_delay` before now (Render's logs arrive late), and writes one file named by the
interval, so an hourly report adds its last hour and a repeated pull changes nothing. A call that
fails is stored as a failed read and its interval is not marked pulled: the next pull asks again,
and no part of the window is lost.

Rows (source, probe):
- `render-traffic` / route: real users' requests from Render's request logs, status and latency as
  logged; a source of real traffic like nginx logs and Prometheus. `render-probe` / route:
  phasegate's own probes as Render logged them (the probes count them already: never added twice).
- `render` / `render.log`: app log lines of the pulled levels and the startup lines (health_status
  the level, error_code the instance, error the message, flags the startup line's flags).
- `render` / `render.event`: service events (error_code the type, evidence the details).
- `render` / `render.metric`: HTTP metrics per step (url the metric; count the requests of a
  status, or latency_ms the quantile).
- `render` / `render.pull`: each interval pulled (ts its start, count its seconds); `render.<call>`
  with a failed outcome: a read that failed.
Every row has a request_id, on which the analysis counts each log line once across pulls.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from urllib.parse import urlencode

from .errors import DataError
from .platform import _get, _scrub
from .profile import PlatformSource
from .prom import uncovered
from .redact import capped, printable, redact_url, scrub_row
from .window import Window, iso, parse_time

LABEL = re.compile(r"^render-(\d+)-(\d+)\.parquet$")
LOG_PAGE = 100
MAX_LOG_PAGES = 200  # lines of one stream in one interval past LOG_PAGE * this: the interval is split
MAX_POINTS = 100  # values per series and call (the range is asked for in parts of this many steps)
OWN_AGENT = "phasegate/"  # the probes' User-Agent: their requests in Render's logs are our own
_FIELD = {name: re.compile(name + r'="?([^"\s]*)"?') for name in ("responseTimeMS", "requestID")}
_AGENT = re.compile(r'userAgent="([^"]*)"')
_REQUEST = re.compile(r"requestID=\"?([A-Za-z0-9._:-]+)")


@dataclass
class EvidenceResult:
    lines: int = 0  # log lines stored
    requests: int = 0  # of them request lines
    events: int = 0
    points: int = 0
    rows: int = 0
    intervals: list = field(default_factory=list)  # (start, end) pulled now
    failed: list = field(default_factory=list)  # one line per failed call
    notes: list = field(default_factory=list)

    @property
    def text(self) -> str:
        if not self.intervals and not self.failed:
            return "Render logs, metrics and events: nothing new to pull"
        span = ", ".join(f"{iso(_dt(a))} .. {iso(_dt(b))}" for a, b in self.intervals) or "nothing"
        return (f"Render: {self.lines} log lines ({self.requests} requests), {self.events} events, "
                f"{self.points} metric values pulled for {span}")


def _dt(t: float) -> datetime:
    return datetime.fromtimestamp(t, timezone.utc)


def _ts_param(t: float) -> str:
    return _dt(t).isoformat(timespec="microseconds").replace("+00:00", "Z")


def pulled_intervals(data_dir) -> list[tuple[int, int]]:
    from .store import list_files

    return sorted({tuple(map(int, m.groups())) for f in list_files(data_dir)
                   if (m := LABEL.match(os.path.basename(f)))})


class _Failed(Exception):
    """A call that did not answer: its row is stored, its interval is pulled again next time."""

    def __init__(self, row: dict):
        super().__init__(row.get("error"))
        self.row = row


class _Truncated(Exception):
    """More lines than one pull reads in one interval: the interval is pulled in halves."""


def pull_evidence(src: PlatformSource, data_dir, target: str, window: Window, now: float | None = None) -> EvidenceResult:
    """Pull the part of `window` (up to `evidence_delay` before now) no earlier pull covered."""
    from .store import rows_to_table, write_tables

    key = os.environ.get(src.api_key_env, "")
    if not key:
        raise DataError(f"${src.api_key_env} is not set: Render's logs, metrics and events need its key")
    now = time.time() if now is None else now
    res = EvidenceResult()
    a = math.floor(window.start.timestamp())
    b = min(math.floor(window.end.timestamp()), math.floor(now - src.evidence_delay_s))
    if b <= a:
        return res
    parts = uncovered((a, b), pulled_intervals(data_dir))
    if not parts:
        return res
    try:
        waits: list = []
        owner = src.owner_id or _owner(src, key, waits)
        res.notes += waits
        for lo, hi in parts:
            _pull_part(src, key, owner, data_dir, target, lo, hi, res, waits if lo == parts[0][0] else [])
    except _Failed as exc:
        # At the end of what it tried to read: inside the window the report that pulled is judging.
        row = {**_stored(exc.row, key), "ts": max(float(a), b - 0.001), "source": "render", "target": target, "simulated": False,
               "assertion_failures": [], "request_id": f"render-failed:{exc.row['probe']}:{int(now * 1e6)}", "seq": 1}
        scrub_row(row, [key])
        res.failed.append(f"{exc.row['probe']}: {row['error']}")
        res.rows += write_tables(data_dir, [rows_to_table([row])], f"renderfail-{int(now * 1000)}")
    return res


def _stored(row: dict, key: str) -> dict:
    out = {k: v for k, v in row.items() if k not in ("retried", "note", "method")}
    if row.get("retried"):
        out["error"] = f"{out.get('error') or ''} [after retries: {'; '.join(row['retried'])}]".strip()
    if key and out.get("error"):
        out["error"] = _scrub(out["error"], key)
    return out


def _call(src, key, what: str, path: str, params: dict, want=dict, waits=None):
    got, row = _get(src, path + "?" + urlencode(params, doseq=True), key, {}, want=want)
    if waits is not None and row.get("retried"):
        waits += [f"{what}: {w}" for w in row["retried"]]
    if got is None:
        if row.get("status") in (401, 403):
            row["error"] = (f"HTTP {row['status']}: Render refused the key in ${src.api_key_env} "
                            f"(it must be a valid API key of the workspace that owns {src.service_id})")
        raise _Failed({**row, "probe": f"render.{what}"})
    return got


def _owner(src, key, waits) -> str:
    got = _call(src, key, "service", f"/services/{src.service_id}", {}, waits=waits)
    owner = got.get("ownerId")
    if not isinstance(owner, str) or not owner:
        raise _Failed({"probe": "render.service", "outcome": "invalid_body",
                       "error": f"service {src.service_id} has no ownerId: set [platform] owner_id"})
    return owner


def _pull_part(src, key, owner, data_dir, target, lo: int, hi: int, res: EvidenceResult, before=()) -> None:
    """One interval: its log lines, events and metrics, and a marker row saying it was pulled (with
    the waits the pull made, `before` it too)."""
    from .store import rows_to_table, write_tables

    waits: list = list(before)
    base = {"target": target, "simulated": False, "assertion_failures": []}
    try:
        requests = _logs(src, key, owner, lo, hi, {"type": ["request"]}, waits)
        app = _logs(src, key, owner, lo, hi, {"type": ["app"], "level": list(src.log_levels)}, waits) \
            if src.log_levels else []
        startup = _logs(src, key, owner, lo, hi, {"type": ["app"], "text": [src.startup_line]}, waits)
    except _Truncated:
        if hi - lo < 2:
            raise _Failed({"probe": "render.logs", "outcome": "body_too_large",
                           "error": f"more than {LOG_PAGE * MAX_LOG_PAGES} log lines in one second"}) from None
        mid = (lo + hi) // 2
        _pull_part(src, key, owner, data_dir, target, lo, mid, res, before)
        _pull_part(src, key, owner, data_dir, target, mid, hi, res)
        return
    events = _events(src, key, lo, hi, waits)
    points = _metrics(src, key, lo, hi, waits)
    rows = []
    app_lines = {e["id"]: e for e in app + startup}
    disabled = {m.group(1) for e in app_lines.values() if "FEATURE_DISABLED" in (e.get("message") or "")
                for m in [_REQUEST.search(e.get("message") or "")] if m}
    for e in requests:
        rows.append({**base, **_request_row(e, disabled)})
    for e in app_lines.values():
        rows.append({**base, **_app_row(e, src)})
    for ev in events:
        rows.append({**base, **_event_row(ev)})
    rows += [{**base, **p} for p in points]
    rows.append({**base, "ts": float(lo), "source": "render", "probe": "render.pull", "outcome": "ok",
                 "count": float(hi - lo), "request_id": f"render:pull:{lo}:{hi}",
                 "evidence": json.dumps({"from": iso(_dt(lo)), "to": iso(_dt(hi)), "log_lines": len(requests) + len(app_lines),
                                         "events": len(events), "metric_values": len(points), "waits": waits})})
    for i, r in enumerate(sorted(rows, key=lambda r: r["ts"])):
        r["seq"] = i + 1
        scrub_row(r, [key])
    res.rows += write_tables(data_dir, [rows_to_table(rows)], f"render-{lo}-{hi}")
    res.lines += len(requests) + len(app_lines)
    res.requests += len(requests)
    res.events += len(events)
    res.points += len(points)
    res.intervals.append((lo, hi))
    res.notes += waits[len(before):]


def _logs(src, key, owner, lo, hi, filters: dict, waits) -> list[dict]:
    """Every log line of [lo, hi) the filters select, page after page (a page continues from
    Render's nextStartTime/nextEndTime); a line seen on two pages counts once."""
    params = {"ownerId": owner, "resource": src.service_id, "startTime": _ts_param(lo), "endTime": _ts_param(hi),
              "direction": "forward", "limit": LOG_PAGE, **filters}
    out: dict = {}
    for _ in range(MAX_LOG_PAGES):
        page = _call(src, key, "logs", "/logs", params, waits=waits)
        fresh = 0
        for e in page.get("logs") or ():
            t = _within(e, lo, hi)
            if t is not None and e["id"] not in out:
                out[e["id"]] = {**e, "_t": t}
                fresh += 1
        if not page.get("hasMore"):
            return list(out.values())
        if not fresh or not page.get("nextStartTime"):
            raise _Truncated()  # a page that brings nothing new would repeat forever
        params = {**params, "startTime": page["nextStartTime"], "endTime": page.get("nextEndTime") or params["endTime"]}
    raise _Truncated()


def _within(e, lo: float, hi: float) -> float | None:
    """The time of a log line or event that has an id and a timestamp inside [lo, hi), else None
    (an entry without either cannot be counted once, nor placed in the window)."""
    if not isinstance(e, dict) or not isinstance(e.get("id"), str) or not e["id"]:
        return None
    try:
        t = parse_time(str(e.get("timestamp")), name="timestamp").timestamp()
    except ValueError:
        return None
    return t if lo <= t < hi else None


def _labels(e: dict) -> dict:
    return {lab.get("name"): lab.get("value") for lab in e.get("labels") or () if isinstance(lab, dict)}


def _text(value, limit: int = 500) -> str | None:
    return None if value is None else capped(printable(str(value)), limit)


def _request_row(e: dict, disabled: set) -> dict:
    lab, msg = _labels(e), str(e.get("message") or "")
    try:
        status = int(lab.get("statusCode") or 0) or None
    except ValueError:
        status = None
    m = _FIELD["responseTimeMS"].search(msg)
    latency = float(m.group(1)) if m and m.group(1).replace(".", "", 1).isdigit() else None
    agent = (_AGENT.search(msg) or [None, ""])[1]
    rid = (_FIELD["requestID"].search(msg) or [None, None])[1]
    path = _text(lab.get("path") or "/", 300)
    return {"ts": e["_t"], "source": "render-probe" if agent.startswith(OWN_AGENT) else "render-traffic",
            "probe": path, "url": redact_url(path), "method": _text(lab.get("method"), 16), "status": status,
            "latency_ms": latency, "outcome": "http_error" if status and status >= 500 else "ok",
            "error_code": "FEATURE_DISABLED" if status == 503 and rid in disabled else None,
            "request_id": f"render:{e['id']}"}


def startup_flags(message: str, names) -> dict:
    """The flags a startup line names: {name: True/False, or None when the line leaves it out}."""
    out = {}
    for name in names:
        m = re.search(re.escape(name) + r"\s*[=:]\s*([A-Za-z0-9]+)", message)
        out[name] = None if not m else m.group(1).lower() in ("true", "1", "yes", "on", "enabled")
    return out


def _app_row(e: dict, src) -> dict:
    lab, msg = _labels(e), str(e.get("message") or "")
    row = {"ts": e["_t"], "source": "render", "probe": "render.log", "outcome": "ok",
           "health_status": _text(lab.get("level") or "info", 16), "error_code": _text(lab.get("instance"), 80),
           "error": _text(msg), "request_id": f"render:{e['id']}"}
    if src.startup_line in msg:
        row["flags"] = json.dumps(startup_flags(msg, src.flags))
        row["url"] = "startup"
    return row


def _events(src, key, lo, hi, waits) -> list[dict]:
    out, cursor = {}, None
    for _ in range(MAX_LOG_PAGES):
        params = {"startTime": _ts_param(lo), "endTime": _ts_param(hi), "limit": 100, **({"cursor": cursor} if cursor else {})}
        items = _call(src, key, "events", f"/services/{src.service_id}/events", params, want=list, waits=waits)
        for i in items:
            ev = i.get("event") if isinstance(i, dict) else None
            t = _within(ev, lo, hi)
            if t is not None:
                out[ev["id"]] = {**ev, "_t": t}
        cursor = items[-1].get("cursor") if items and isinstance(items[-1], dict) else None
        if len(items) < 100 or not cursor:
            return list(out.values())
    raise _Failed({"probe": "render.events", "outcome": "body_too_large",
                   "error": f"more than {100 * MAX_LOG_PAGES} events in one interval"})


def _event_row(ev: dict) -> dict:
    details = ev.get("details") if isinstance(ev.get("details"), dict) else {}
    return {"ts": ev["_t"], "source": "render", "probe": "render.event", "outcome": "ok",
            "error_code": _text(ev.get("type"), 60), "evidence": capped(json.dumps(details, default=str), 2000),
            "request_id": f"render:{ev['id']}"}


def _metrics(src, key, lo, hi, waits) -> list[dict]:
    """HTTP requests per status and the latency quantile per resolution step, asked for in parts of
    at most MAX_POINTS steps (a longer range is more than one answer)."""
    res = int(src.metrics_resolution_s)
    out = []
    t = lo
    while t < hi:
        part_end = min(hi, t + res * MAX_POINTS)
        rng = {"resource": src.service_id, "startTime": _ts_param(t), "endTime": _ts_param(part_end),
               "resolutionSeconds": res}
        for name, extra in (("http-requests", {"aggregateBy": "statusCode"}),
                            ("http-latency", {"quantile": src.latency_quantile, "path": src.latency_path})):
            for s in _call(src, key, "metrics", f"/metrics/{name}", {**rng, **extra}, want=list, waits=waits):
                if not isinstance(s, dict):
                    continue
                lab = {x.get("field"): x.get("value") for x in s.get("labels") or () if isinstance(x, dict)}
                status = int(lab["statusCode"]) if str(lab.get("statusCode", "")).isdigit() else None
                for v in s.get("values") or ():
                    try:
                        ts = parse_time(str(v.get("timestamp")), name="timestamp").timestamp()
                        value = float(v.get("value"))
                    except (ValueError, TypeError, AttributeError):
                        continue
                    if not (t <= ts < part_end) or not math.isfinite(value):
                        continue
                    row = {"ts": ts, "source": "render", "probe": "render.metric", "url": name, "outcome": "ok",
                           "request_id": f"render:{name}:{status if name == 'http-requests' else lab.get('quantile')}:{ts}"}
                    if name == "http-requests":
                        row.update(status=status, count=value)
                    else:
                        row.update(latency_ms=value, error_code=f"p{float(lab.get('quantile') or src.latency_quantile) * 100:g}")
                    out.append(row)
        t = part_end
    return out
