"""The hosting platform (Render): its deploys and flag variables as samples, and the calls `act` makes.

Each deploy becomes two rows at the times Render recorded, started (createdAt) and finished
(finishedAt, with its final status), so a rollback or an unexpected deployment shows in the
report with its time whenever it is pulled. Each pull also reads the flag environment
variables once (the service's own and those of the environment groups linked to it): one row
at the pull time, like a probe's observation. A failed API call is a row with the probe's
outcome vocabulary, never an exception that loses the others.

Reads are retried on 429 and 5xx with exponential backoff and jitter, honouring Retry-After
within the source's retry budget; writes never are (a deploy trigger is not idempotent: after a
timeout the deploy is looked up by time and trigger instead). Every call runs under the
adapter's total deadline.

Rows: source "platform", probe "render.deploy" / "render.env"; deployment_id the deploy id,
error_code its trigger, health_status "started" or its final status, request_id
"<deploy id>:<started|finished>" (what the analysis de-duplicates repeated pulls on).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from urllib.parse import urlencode, urlsplit

from .errors import DataError
from .apiclient import fetch, reads
from .profile import PlatformSource
from .redact import Secret, redact_text, redact_url, scrub_row
from .window import parse_time, utcnow

ON = ("true", "1", "yes", "on", "enabled")
MAX_PAGES = 10
PAGE = 100
RETRIED = (429, 500, 502, 503, 504)
MAX_TRIES = 6
# Render's deploy statuses: the one a deploy ends well in, and those it ends badly in.
LIVE = "live"
FAILED = ("build_failed", "update_failed", "pre_deploy_failed", "canceled", "deactivated")


@dataclass
class PlatformResult:
    rows: int = 0
    deploys: int = 0
    flags: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)
    failed: int = 0  # API calls that did not answer a list
    groups: dict = field(default_factory=dict)  # flag name -> the environment group it comes from

    @property
    def flags_text(self) -> str:
        return ", ".join(f"{k}={'unset' if v is None else str(v).lower()}"
                         + (f" (env group {self.groups[k]})" if k in self.groups else "") for k, v in self.flags.items())


def _retrying(src: PlatformSource, method: str, url: str, key: str, body, ok, max_bytes: int, retry_on,
              auth: bool = True):
    """One API call through requests, each attempt under the adapter's total deadline, sent again
    by urllib3's Retry while its answer's status is in `retry_on` (a 429 after its Retry-After, the
    others after a backoff with jitter), within src.retry_s of waiting: (the answer's bytes, or
    None when the call failed or its status is not in `ok`; the row describing the call). A wait
    past the budget is not waited on: the call fails now, saying so. A timeout is never retried:
    the deadline is the caller's, and a hung API would eat it whole."""
    headers = {"Accept": "application/json", "User-Agent": "phasegate"}
    if auth:
        headers["Authorization"] = Secret(f"Bearer {key}")
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers.update({"Content-Type": "application/json", "Content-Length": str(len(data))})
    retries = reads(MAX_TRIES, retry_on, src.retry_s, methods=(method,)) if retry_on else None
    ex = fetch(url, method, headers, data, src.timeout_s, max_bytes, retries, src.route)
    row = {"url": redact_url(_scrub(url, key)), "method": method, "status": ex.status,
           "latency_ms": ex.phases["latency_ms"]}
    raw = None
    if ex.outcome is not None:
        row.update(outcome=ex.outcome, error=_scrub(ex.error, key))
    elif ex.status not in ok:
        row.update(outcome="http_error", error=f"HTTP {ex.status}: {_scrub(ex.body[:200].decode('utf-8', 'replace'), key)}")
    else:
        raw = ex.body
    waited = [w for w in (retries.waited if retries is not None else []) if w["waited"]]
    refused = [w for w in (retries.waited if retries is not None else []) if not w["waited"]]
    if refused and "error" in row:
        row["error"] += (f" (waiting {refused[-1]['wait_s']:g} s is past the {src.retry_s:g} s retry budget: "
                         "not waited on)")
    if waited:
        row["retried"] = [f"{w['status']}: waited {w['wait_s']:.1f} s" + (" (Retry-After)" if w["retry_after"] else "")
                          for w in waited]
    return raw, row


def _get(src: PlatformSource, path: str, key: str, params: dict, want=list) -> tuple[object, dict]:
    """One GET against the API: (the JSON answer, of type `want`, or None; the row describing the call)."""
    raw, row = _retrying(src, "GET", f"{src.api_url}{path}" + (f"?{urlencode(params)}" if params else ""), key, None,
                         (200,), 8 * 1024 * 1024, RETRIED)
    if raw is None:
        return None, row
    try:
        items = json.loads(raw)
        if not isinstance(items, want):
            raise ValueError("unexpected shape")
    except (ValueError, RecursionError):
        row.update(outcome="invalid_body", error=f"the API answered something other than a JSON {want.__name__}")
        return None, row
    row.update(outcome="ok")
    return items, row


def call(src: PlatformSource, method: str, path: str, key: str, body: dict | None = None) -> tuple[object, dict]:
    """One write (PUT, POST) under the same total deadline: (the JSON answer or None, the row
    describing the call). Never retried here: a deploy trigger is not idempotent."""
    return _write(src, method, f"{src.api_url}{path}", key, body or {})


def _write(src, method, url, key, body, auth=True, wait_429=False):
    """A write, sent once; with `wait_429`, sent again after a 429's Retry-After (within the retry
    budget): a 429 means the platform refused it whole, so nothing was done twice."""
    raw, row = _retrying(src, method, url, key, body, range(200, 300), 1024 * 1024, (429,) if wait_429 else (),
                         auth=auth)
    if raw is None:
        return None, row
    try:
        answer = json.loads(raw) if raw.strip() else {}
    except (ValueError, RecursionError):
        answer = {}
    row.update(outcome="ok")
    return answer, row


@dataclass
class Env:
    """The variables a service runs with: its own, and those of its linked environment groups
    (a service-level variable shadows a group's, as on Render)."""

    values: dict
    groups: dict  # variable name -> (group id, group name), for variables that come from a group
    own: frozenset  # the names set on the service itself

    def source(self, name: str) -> str:
        if name in self.own:
            return "service"
        return f"env group {self.groups[name][1]}" if name in self.groups else "unset"


def read_env(src: PlatformSource, key: str) -> tuple[Env | None, dict]:
    """The service's environment now, or None and the failed call's row."""
    own, row = _pages(src, f"/services/{src.service_id}/env-vars", key, "envVar", [])
    if row.get("outcome") != "ok":
        return None, row
    values, groups = {}, {}
    linked, grow = _pages(src, "/env-groups", key, "envGroup", [])
    if grow.get("outcome") != "ok":
        return None, grow
    for g in linked:
        if not any(isinstance(s, dict) and s.get("id") == src.service_id for s in g.get("serviceLinks") or ()):
            continue
        full, grow = _get(src, f"/env-groups/{g.get('id')}", key, {}, want=dict)
        if full is None:
            return None, grow
        for e in full.get("envVars") or ():
            if isinstance(e, dict) and e.get("key"):
                values[e["key"]] = e.get("value")
                groups[e["key"]] = (str(g.get("id")), str(g.get("name") or g.get("id")))
    mine = {e.get("key"): e.get("value") for e in own}
    values.update(mine)
    waited = row.get("retried", []) + grow.get("retried", [])
    if waited:
        row["retried"] = waited
    return Env(values, groups, frozenset(mine)), row


def _scrub(text: str | None, key: str) -> str | None:
    return None if text is None else redact_text(text.replace(key, "<redacted>") if key else text)


def _pages(src: PlatformSource, path: str, key: str, item: str, note: list) -> tuple[list, dict]:
    out, cursor, last, waited = [], None, {}, []
    for _ in range(MAX_PAGES):
        params = {"limit": PAGE, **({"cursor": cursor} if cursor else {})}
        items, last = _get(src, path, key, params)
        waited += last.get("retried", [])
        if waited:
            last["retried"] = waited
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


# -- deploys: trigger, find, follow ---------------------------------------------------------


def get_deploy(src: PlatformSource, key: str, deploy_id: str) -> tuple[dict | None, dict]:
    return _get(src, f"/services/{src.service_id}/deploys/{deploy_id}", key, {}, want=dict)


def recent_deploys(src: PlatformSource, key: str, limit: int = 20) -> tuple[list | None, dict]:
    items, row = _get(src, f"/services/{src.service_id}/deploys", key, {"limit": limit})
    if items is None:
        return None, row
    return [i["deploy"] for i in items if isinstance(i, dict) and isinstance(i.get("deploy"), dict)], row


def find_deploy(src: PlatformSource, key: str, since: datetime, triggers: tuple) -> tuple[dict | None, dict]:
    """The newest deploy created since `since` (less a little clock skew) with one of `triggers`:
    how a trigger whose answer was lost (timeout, 202 without a body) is identified."""
    deploys, row = recent_deploys(src, key)
    if deploys is None:
        return None, row
    floor = since - timedelta(seconds=5)
    for d in deploys:  # newest first, as Render lists them
        try:
            created = parse_time(d.get("createdAt") or "", name="createdAt")
        except ValueError:
            continue
        if created >= floor and d.get("trigger") in triggers:
            return d, row
    return None, row


def trigger_deploy(src: PlatformSource, key: str, hook_url: str | None = None) -> tuple[dict | None, dict]:
    """POST one deploy (the API, or the service's deploy hook: a secret URL) and identify it.
    Render answers 201 with the Deploy, or 202 with none; the hook answers {"deploy": {"id"}}.
    A trigger is sent once: when its answer is lost, the deploy is looked up, never re-sent."""
    since = utcnow()
    if hook_url:
        answer, row = _write(src, "POST", hook_url, hook_url, None, auth=False, wait_429=True)
        row["url"] = f"{urlsplit(hook_url).scheme}://{urlsplit(hook_url).netloc}/deploy/<deploy hook>"
        triggers = ("deploy_hook", "api")
    else:
        answer, row = _write(src, "POST", f"{src.api_url}/services/{src.service_id}/deploys", key,
                             {"clearCache": "do_not_clear"}, wait_429=True)
        triggers = ("api",)
    if isinstance(answer, dict):
        d = answer.get("deploy") if isinstance(answer.get("deploy"), dict) else answer
        if d.get("id"):
            return d, row
    if row["outcome"] != "ok" and row["outcome"] not in ("timeout", "connection_error"):
        return None, row  # refused (4xx/5xx): nothing was started
    found, look = find_deploy(src, key, since, triggers)
    how = "answered without a deploy" if row["outcome"] == "ok" else f"{row['outcome']} ({row.get('error')})"
    if found is not None:
        row.update(outcome="ok", error=None, status=row.get("status"),
                   note=f"the trigger {how}; found deploy {found.get('id')} by its time and trigger")
        return found, row
    if look.get("outcome") != "ok":
        row["error"] = f"the trigger {how}, and the deploys could not be read to find it: {look.get('error')}"
    elif row["outcome"] == "ok":
        row.update(outcome="invalid_body", error=f"the trigger {how}, and no new deploy is listed")
    else:
        row["error"] = f"the trigger {how}, and no new deploy is listed: not re-sent (check the platform)"
    return None, row


def follow(src: PlatformSource, key: str, deploy: dict, within_s: float, seen=None, poll_s: float = 1.0):
    """Poll the deploy until it is live, ends in a failed status, or `within_s` passes.
    `seen(status, at)` hears each status change. Returns (final status or None, the last read's row)."""
    status = deploy.get("status")
    if seen is not None and status:
        seen(status, utcnow())
    end = time.monotonic() + within_s
    row = {"outcome": "ok"}
    while status != LIVE and status not in FAILED:
        if time.monotonic() + poll_s > end:
            return None, {**row, "outcome": "timeout",
                          "error": f"deploy {deploy.get('id')} still {status} after {within_s:g} s"}
        time.sleep(poll_s)
        got, row = get_deploy(src, key, deploy["id"])
        if got is None:
            continue  # a read that failed after its retries: the next poll may answer
        if got.get("status") != status:
            status = got.get("status")
            if seen is not None:
                seen(status, utcnow())
    return status, row


# -- pulls ------------------------------------------------------------------------------------


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
    deploys, call_row = _pages(src, f"/services/{src.service_id}/deploys", key, "deploy", res.notes)
    if call_row.get("outcome") != "ok":
        rows.append({**base, **_stored(call_row), "ts": now, "probe": "render.deploy"})
        res.failed += 1
        res.notes.append(f"deploys not read: {call_row['error']}")
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
    env, call_row = read_env(src, key)
    if env is None:
        rows.append({**base, **_stored(call_row), "ts": now, "probe": "render.env"})
        res.failed += 1
        res.notes.append(f"environment variables not read: {call_row['error']}")
    else:
        # A flag that is not set on the service (nor in a linked group) is reported as such, not as off.
        res.flags = {name: (_flag(env.values[name]) if name in env.values else None) for name in src.flags}
        res.groups = {n: env.groups[n][1] for n in src.flags if n in env.groups and n not in env.own}
        row = {**base, **_stored(call_row), "ts": now, "probe": "render.env", "flags": json.dumps(res.flags)}
        if res.groups:
            row["evidence"] = json.dumps({"from_env_groups": res.groups})
        rows.append(row)
    for i, r in enumerate(sorted(rows, key=lambda r: r["ts"])):
        r["seq"] = i + 1
        r["ts"] = r["ts"].timestamp()
        scrub_row(r, [key])  # a deploy id or trigger that echoes the key is stored masked
    res.rows = write_tables(data_dir, [rows_to_table(rows)], f"platform-{int(now.timestamp() * 1000)}") if rows else 0
    return res


def _stored(row: dict) -> dict:
    """A call's row as a sample: the retries it took folded into its error text."""
    out = {k: v for k, v in row.items() if k not in ("retried", "note")}
    if row.get("retried") and out.get("error"):
        out["error"] += f" [after retries: {'; '.join(row['retried'])}]"
    return out

