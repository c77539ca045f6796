"""The hosting platform's state (Render): deploys and environment-variable flags, as samples.

Each deploy becomes two rows at the times Render recorded, started (createdAt) and finished
(finishedAt, with its final status), so a rollback or an unexpected deployment shows in the
report with its time whenever it is pulled. Each pull also reads the flag environment
variables once: one row at the pull time, like a probe's observation. A failed API call is a
row with the probe's outcome vocabulary, never an exception that loses the others.

Rows: source "platform", probe "render.deploy" / "render.env"; deployment_id the deploy id,
error_code its trigger, health_status "started" or its final status, request_id
"<deploy id>:<started|finished>" (what the analysis de-duplicates repeated pulls on).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from datetime import datetime
from urllib.parse import urlencode

from .errors import DataError
from .probe import exchange
from .profile import PlatformSource
from .redact import Secret, redact_text, redact_url
from .window import parse_time, utcnow

ON = ("true", "1", "yes", "on", "enabled")
MAX_PAGES = 10
PAGE = 100


@dataclass
class PlatformResult:
    rows: int = 0
    deploys: int = 0
    flags: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)
    failed: int = 0  # API calls that did not answer a list

    @property
    def flags_text(self) -> str:
        return ", ".join(f"{k}={'unset' if v is None else str(v).lower()}" for k, v in self.flags.items())


def _request(src: PlatformSource, method: str, url: str, key: str, body: dict | None, ok, max_bytes: int):
    """One API call under the adapter's total deadline: (the answer's bytes, or None when the call
    failed or its status is not in `ok`; the row describing the call, its outcome set on failure)."""
    headers = {"Authorization": Secret(f"Bearer {key}"), "Accept": "application/json", "User-Agent": "phasegate"}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers.update({"Content-Type": "application/json", "Content-Length": str(len(data))})
    ex = exchange(url, method, headers, data, src.timeout_s, max_bytes)
    row = {"url": redact_url(url), "method": method, "status": ex.status,
           "latency_ms": sum(v for v in ex.phases.values() if v is not None)}
    if ex.outcome is not None:
        row.update(outcome=ex.outcome, error=_scrub(ex.error, key))
        return None, row
    if ex.status not in ok:
        row.update(outcome="http_error", error=f"HTTP {ex.status}: {_scrub(ex.body[:200].decode('utf-8', 'replace'), key)}")
        return None, row
    return ex.body, row


def _get(src: PlatformSource, path: str, key: str, params: dict) -> tuple[list | None, dict]:
    """One GET against the API under a total deadline: (items, the row describing the call)."""
    raw, row = _request(src, "GET", f"{src.api_url}{path}?{urlencode(params)}", key, None, (200,), 8 * 1024 * 1024)
    if raw is None:
        return None, row
    try:
        items = json.loads(raw)
        if not isinstance(items, list):
            raise ValueError("not a list")
    except ValueError:
        row.update(outcome="invalid_body", error="the API answered something other than a JSON list")
        return None, row
    row.update(outcome="ok")
    return items, row


def call(src: PlatformSource, method: str, path: str, key: str, body: dict | None = None) -> tuple[object, dict]:
    """One write (PUT, POST) under the same total deadline: (the JSON answer or None, the row
    describing the call). Never retried here: a deploy trigger is not idempotent."""
    raw, row = _request(src, method, f"{src.api_url}{path}", key, body or {}, range(200, 300), 1024 * 1024)
    if raw is None:
        return None, row
    try:
        answer = json.loads(raw) if raw.strip() else {}
    except ValueError:
        answer = {}
    row.update(outcome="ok")
    return answer, row


def read_env(src: PlatformSource, key: str) -> tuple[dict | None, dict]:
    """The service's environment variables now ({name: value}), or None and the failed call's row."""
    env, row = _pages(src, f"/services/{src.service_id}/env-vars", key, "envVar", [])
    if row.get("outcome") != "ok":
        return None, row
    return {e.get("key"): e.get("value") for e in env}, row


def _scrub(text: str | None, key: str) -> str | None:
    return None if text is None else redact_text(text.replace(key, "<redacted>") if key else text)


def _pages(src: PlatformSource, path: str, key: str, item: str, note: list) -> tuple[list, dict]:
    out, cursor, last = [], None, {}
    for _ in range(MAX_PAGES):
        params = {"limit": PAGE, **({"cursor": cursor} if cursor else {})}
        items, last = _get(src, path, key, params)
        if items is None:
            return out, last
        out += [i[item] for i in items if isinstance(i, dict) and isinstance(i.get(item), dict)]
        if len(items) < PAGE:
            return out, last
        cursor = items[-1].get("cursor")
        if not cursor:
            return out, last
    note.append(f"{path}: stopped after {MAX_PAGES} pages of {PAGE}")
    return out, last


def _flag(value) -> bool:
    return str(value).strip().lower() in ON


def pull_platform(src: PlatformSource, data_dir, target: str, now: datetime | None = None) -> PlatformResult:
    """Read deploys and flag env vars now; store them as samples in data_dir."""
    from .store import rows_to_table, write_tables

    key = os.environ.get(src.api_key_env, "")
    if not key:
        raise DataError(f"${src.api_key_env} is not set: the platform API needs its key")
    now = now or utcnow()
    res = PlatformResult()
    base = {"source": "platform", "target": target, "assertion_failures": [], "simulated": False}
    rows = []
    deploys, call = _pages(src, f"/services/{src.service_id}/deploys", key, "deploy", res.notes)
    if call.get("outcome") != "ok":
        rows.append({**base, **call, "ts": now, "probe": "render.deploy"})
        res.failed += 1
        res.notes.append(f"deploys not read: {call['error']}")
    for d in deploys:
        res.deploys += 1
        for phase, when, state in (("started", d.get("createdAt"), "started"),
                                   ("finished", d.get("finishedAt"), d.get("status"))):
            if not when:
                continue
            try:
                ts = parse_time(when, name="createdAt")
            except ValueError:
                res.notes.append(f"deploy {d.get('id')}: unreadable time {when!r}")
                continue
            rows.append({**base, "ts": ts, "probe": "render.deploy", "outcome": "ok", "status": 200,
                         "deployment_id": str(d.get("id")), "error_code": d.get("trigger"),
                         "health_status": state, "request_id": f"{d.get('id')}:{phase}"})
    env, call = _pages(src, f"/services/{src.service_id}/env-vars", key, "envVar", res.notes)
    if call.get("outcome") != "ok":
        rows.append({**base, **call, "ts": now, "probe": "render.env"})
        res.failed += 1
        res.notes.append(f"environment variables not read: {call['error']}")
    else:
        values = {e.get("key"): e.get("value") for e in env}
        # A flag that is not set on the service is reported as such, not as off.
        res.flags = {name: (_flag(values[name]) if name in values else None) for name in src.flags}
        rows.append({**base, **call, "ts": now, "probe": "render.env", "flags": json.dumps(res.flags)})
    for i, r in enumerate(sorted(rows, key=lambda r: r["ts"])):
        r["seq"] = i + 1
        r["ts"] = r["ts"].timestamp()
    res.rows = write_tables(data_dir, [rows_to_table(rows)], f"platform-{int(now.timestamp() * 1000)}") if rows else 0
    return res
