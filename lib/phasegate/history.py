"""Synthetic history: what the collector would have stored over a window, in seconds.

Hour by hour: an hour no fault touches is generated column-wise with numpy from the healthy
response (how a fleet's day takes seconds), and so is an hour only uncounted `server_error` faults
touch (each request a 500 with the fault's rate, drawn column-wise too: a whole window of errors
must not take the exact path's hours); an hour with any other fault replays every request through
`Model.respond` in time order. Either way each response is classified by the collector's own
`probe.evaluate`, so the schema is the collector's.
"""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pyarrow as pa

from .probe import evaluate, evidence_json, join_url, render
from .redact import redact_url
from .simulator import LATENCY, Fault, Model, endpoint_of
from .store import SCHEMA, rows_to_table, write_tables

def _job_times(jobs, target, start_ts, end_ts, seed):
    """Each job's first probe time (a jittered start, as the collector does) and interval."""
    rng = random.Random(seed + 1)
    out = []
    for probe, tenant in jobs:
        interval = probe.interval_s or target.interval_s
        out.append((start_ts + rng.uniform(0, min(interval, 5.0)), interval))
    return out


def _columnar(faults: list[Fault], lo: float, hi: float) -> list[Fault] | None:
    """The faults touching [lo, hi) (seconds into the scenario) if the vectorised path can draw them
    (none, or only server errors without a count, whose draws do not depend on each other), else None."""
    touching = [f for f in faults if f.kind != "command_failed" and f.start_s < hi and (f.end_s is None or f.end_s > lo)]
    return touching if all(f.kind == "server_error" and f.count is None for f in touching) else None


def _errors_drawn(errors: list[Fault], rel, endpoint: str, tenant_of_row, np_rng):
    """Which requests (at `rel` seconds into the scenario) the server errors answer with a 500:
    where each is active, with its rate."""
    hit = np.zeros(len(rel), dtype=bool)
    for f in errors:
        if f.probes and endpoint not in f.probes:
            continue  # not this probe's endpoint: nothing to draw
        on = f.active_in(rel, endpoint, tenant_of_row)
        if f.rate < 1.0:
            on &= np_rng.random(len(rel)) < f.rate
        hit |= on
    return hit


def history(profile, faults: list[Fault], start_ts: float, end_ts: float, data_dir, seed: int = 0) -> int:
    """Write what the collector would have stored over [start, end); returns rows written."""
    from .collector import probe_jobs

    model = Model(faults, seed)
    target = profile.target
    jobs = probe_jobs(profile)
    firsts = _job_times(jobs, target, start_ts, end_ts, seed)
    run_id = f"sim-{seed}-{int(start_ts)}"
    ctx = {"model": model, "profile": profile, "run_id": run_id, "cache": {}, "seq": 0}

    def chunks():
        hour = math.floor(start_ts / 3600) * 3600
        np_rng = np.random.default_rng(seed)
        while hour < end_ts:
            lo, hi = max(start_ts, hour), min(end_ts, hour + 3600)
            times = []
            for (t0, interval) in firsts:
                k0 = max(0, math.ceil((lo - t0) / interval))
                k1 = max(0, math.ceil((hi - t0) / interval))
                times.append(t0 + np.arange(k0, k1) * interval)
            errors = _columnar(faults, lo - start_ts, hi - start_ts)
            table = _fast_chunk(ctx, jobs, times, np_rng, errors, start_ts) if errors is not None else None
            if table is None:
                table = rows_to_table(_slow_chunk(ctx, jobs, times, start_ts))
            if table is not None and table.num_rows:
                yield table
            hour += 3600
        checks = _check_rows(ctx, start_ts, end_ts)
        if checks:
            yield rows_to_table(checks)

    return write_tables(data_dir, chunks(), run_id)


def _check_rows(ctx, start_ts: float, end_ts: float) -> list:
    """The profile's acceptance commands ([[checks]]) as the collector would have stored them: ok,
    or exit 1 (with its output as evidence) while a `command_failed` fault names the check."""
    profile, model = ctx["profile"], ctx["model"]
    rows = []
    for check in profile.checks:
        for t in np.arange(start_ts, end_ts, check.interval_s).tolist():
            failing = any(f.kind == "command_failed" and f.active(t - start_ts, check.name) for f in model.faults)
            ctx["seq"] += 1
            row = {"ts": t, "run_id": ctx["run_id"], "seq": ctx["seq"], "source": "check", "target": profile.target.name,
                   "probe": check.name, "method": "EXEC", "url": " ".join(check.command), "status": None,
                   "latency_ms": 850.0, "assertion_failures": [], "simulated": True,
                   "outcome": "command_failed" if failing else "ok", "error_code": "exit 1" if failing else "exit 0",
                   "error": "exit status 1" if failing else None}
            if failing:
                row["evidence"] = json.dumps({"command": list(check.command), "exit_status": 1, "output_bytes": 96,
                                              "output_tail": f"{check.name}: simulated failure\nDOES NOT HOLD\n"},
                                             sort_keys=True)
            rows.append(row)
    return rows


def _template(ctx, probe, endpoint, error: bool = False):
    """The response every request of `probe` gets while no fault (or a server error) touches it:
    the response, its classification and its evidence, built once."""
    key = ("error" if error else "healthy", probe.name)
    if key not in ctx["cache"]:
        resp = Model([Fault("server_error")] if error else [], 0).respond(endpoint, 0.0)
        headers = {k.lower(): v for k, v in resp.headers.items()}
        ctx["cache"][key] = (resp, evaluate(probe, resp.status, headers, resp.body),
                             evidence_json(resp.status, headers, resp.body, ctx["profile"].target.evidence_headers))
    return ctx["cache"][key]


def _fast_chunk(ctx, jobs, times, np_rng, errors=(), start_ts=0.0):
    """Every request of the hour, built column-wise per probe: the healthy response, or the 500
    of a server error where `errors` draw one."""
    target = ctx["profile"].target
    by_probe: dict[str, list[int]] = {}
    for i, (probe, _tenant) in enumerate(jobs):
        by_probe.setdefault(probe.name, []).append(i)
    parts = []
    for idx in by_probe.values():
        probe = jobs[idx[0]][0]
        counts = np.array([len(times[i]) for i in idx])
        n = int(counts.sum())
        if not n:
            continue
        ts = np.concatenate([times[i] for i in idx])
        endpoint = endpoint_of(probe.path)
        median, sigma = LATENCY.get(endpoint, LATENCY["other"])
        lat = median * np.exp(np_rng.normal(0.0, sigma, n))
        if (lat >= (probe.timeout_s or target.timeout_s) * 1000).any():
            return None  # a tail past the deadline is a timeout: let the exact path classify it
        tenants = [jobs[i][1] for i in idx]
        tenant = np.repeat(np.array(tenants, dtype=object), counts)
        urls = [redact_url(join_url(target.base_url, render(probe.path, t))) for t in tenants]
        url = np.repeat(np.array(urls, dtype=object), counts)
        failed = _errors_drawn(errors, ts - start_ts, endpoint, tenant, np_rng)
        # As the exact path: a failed request always carries its evidence, a healthy one only as
        # its job's first sample of the hour.
        first = np.zeros(n, dtype=bool)
        first[np.concatenate([[0], np.cumsum(counts)[:-1]])[counts > 0]] = True
        for rows, error in ((~failed, False), (failed, True)):
            if rows.any():
                resp, ev, evidence = _template(ctx, probe, endpoint, error)
                evid = np.where(rows & (first | error), evidence, None)[rows]
                parts.append(_table(ctx, probe, resp, ev, ts[rows], tenant[rows], url[rows], lat[rows], evid))
    return pa.concat_tables(parts).sort_by("ts") if parts else SCHEMA.empty_table()


def _table(ctx, probe, resp, ev, ts, tenant, url, lat, evid) -> pa.Table:
    """Rows of one probe that all got the same response: the varying columns given, the rest constant."""
    n = len(ts)
    cols = {
        "ts": pa.array((ts * 1e6).round().astype("int64"), pa.timestamp("us", tz="UTC")),
        "tenant": pa.array(tenant, pa.string()),
        "url": pa.array(url, pa.string()),
        "latency_ms": pa.array(lat),
        "evidence": pa.array(evid, pa.string()),
    }
    const = {"run_id": ctx["run_id"], "source": "probe", "target": ctx["profile"].target.name, "status": resp.status,
             "bytes": len(resp.body), "simulated": True, "probe": probe.name, "method": probe.method, **ev}
    for name in SCHEMA.names:
        if name in cols or name == "seq":
            continue
        value = const.get(name)
        if name == "assertion_failures":
            value = value or []
        cols[name] = pa.repeat(pa.scalar(value, SCHEMA.field(name).type), n) if value is not None \
            else pa.nulls(n, SCHEMA.field(name).type)
    seq0 = ctx["seq"]
    ctx["seq"] += n
    cols["seq"] = pa.array(np.arange(seq0 + 1, seq0 + n + 1))
    return pa.table({name: cols[name] for name in SCHEMA.names}, schema=SCHEMA)


def _slow_chunk(ctx, jobs, times, start_ts):
    model, target = ctx["model"], ctx["profile"].target
    events = sorted((t, i) for i, ts in enumerate(times) for t in ts.tolist())
    seen_hour, rows = set(), []
    for t, i in events:
        probe, tenant = jobs[i]
        resp = model.respond(endpoint_of(probe.path), t - start_ts, tenant=tenant)
        if resp.transport == "outage":
            continue
        timeout = probe.timeout_s or target.timeout_s
        ctx["seq"] += 1
        row = {"ts": t, "run_id": ctx["run_id"], "seq": ctx["seq"], "source": "probe", "target": target.name,
               "tenant": tenant, "probe": probe.name, "method": probe.method,
               "url": redact_url(join_url(target.base_url, render(probe.path, tenant))), "simulated": True,
               "status": resp.status, "bytes": len(resp.body), "latency_ms": resp.latency_s * 1000.0,
               "assertion_failures": []}
        if resp.transport in ("hang", "slow_drip") or resp.latency_s >= timeout:
            row.update(outcome="timeout", status=200 if resp.transport == "slow_drip" else None, bytes=0,
                       latency_ms=timeout * 1000.0, error=f"no complete response within {timeout:g}s")
        elif resp.transport == "reset":
            row.update(outcome="connection_error", status=None, error="connection reset or closed: ConnectionResetError")
        elif resp.transport == "oversized":
            row.update(outcome="body_too_large", error=f"body exceeds {target.max_body_bytes} bytes")
        else:
            key = (probe.name, resp.status, resp.body, resp.headers.get("X-Deployment-Id"))
            if key not in ctx["cache"]:
                ctx["cache"][key] = evaluate(probe, resp.status, {k.lower(): v for k, v in resp.headers.items()},
                                             resp.body)
            row.update(ctx["cache"][key])
        if row["outcome"] != "ok" or i not in seen_hour:
            seen_hour.add(i)
            row["evidence"] = evidence_json(row["status"], {k.lower(): v for k, v in resp.headers.items()},
                                            resp.body, target.evidence_headers)
        rows.append(row)
    return rows
