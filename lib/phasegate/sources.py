"""What the window holds beside the endpoints' probes, and the criteria written as data: the
baseline compared, real traffic, Prometheus counts, the platform's deploys and flags, the actions
`phasegate act` took, and each custom criterion's metric. Queries over the same connection as
`analysis` (its tables `s` and `rest`), built on `phasegate.aggregates`' per-row facts and grouped
statistics; `analysis` imports this module, never the other way round."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd

from .aggregates import _NOT_PROBES, DERIVED, _ts, flags, group_stats, round_ms, sql_literal
from .batch import Q, steps
from .profile import Profile
from .ranks import linear_percentile, order_statistics, percentile_ranks
from .stats import fisher_greater, hodges_lehmann, mann_whitney_greater, quantile_upper_rank
from .store import open_window


def compare(con, baseline: tuple) -> tuple[dict, dict]:
    """Per probe: Mann-Whitney U on latency, Hodges-Lehmann shift, p99 ratio, Fisher on errors;
    and the latencies compared (for the ECDF plot)."""
    data_dir, win = baseline
    open_window(con, data_dir, win.start, win.end, "baseline_samples")
    con.execute(f"""CREATE OR REPLACE TEMP TABLE b AS SELECT probe, {DERIVED} FROM baseline_samples
                    WHERE coalesce(source, 'probe') NOT IN {_NOT_PROBES!r}""")

    def counts(table):
        return {p: (int(n), int(k)) for p, n, k in con.execute(
            f"SELECT probe, count(*), count(*) FILTER (WHERE bad) FROM {table} GROUP BY 1").fetchall()}

    def lat(table, probe):
        return con.execute(f"SELECT lat FROM {table} WHERE probe = ? AND lat IS NOT NULL ORDER BY lat",
                           [probe]).fetchnumpy()["lat"].astype(float)

    cn, bn = counts("s"), counts("b")
    out, ecdf = {}, {}
    for probe in sorted(set(cn) & set(bn)):
        x, y = lat("s", probe), lat("b", probe)
        (nc, kc), (nb, kb) = cn[probe], bn[probe]
        if len(x) < 2 or len(y) < 2:
            continue
        ecdf[probe] = (x, y)
        _u, p_lat = mann_whitney_greater(x, y)
        shift = hodges_lehmann(x, y)
        out[probe] = {
            "n_canary": nc, "n_base": nb,
            "median_canary_ms": round_ms(np.median(x)), "median_base_ms": round_ms(np.median(y)),
            "hl_shift_ms": round_ms(shift), "rel_shift": round(shift / float(np.median(y)), 4) if np.median(y) else 0.0,
            "p_latency": p_lat, "p99_ratio": round(float(np.percentile(x, 99) / np.percentile(y, 99)), 4),
            "err_canary": kc / nc, "err_base": kb / nb, "p_errors": fisher_greater(kc, nc, kb, nb),
        }
    return out, ecdf


@steps
def _traffic(con, conf: float):
    """Real traffic (imported request logs), reported beside the probes, never mixed into them;
    and requests and 5xx per source and 5 minutes, logs and Prometheus alike, for the plot."""
    con.execute(f"CREATE OR REPLACE TEMP VIEW tr AS SELECT probe, status, outcome, error_code, {DERIVED} FROM rest "
                "WHERE source = 'traffic'")
    tl, routes = yield [Q("""SELECT source, make_timestamptz((epoch_us(ts) // 300000000) * 300000000) AS bucket,
        sum(coalesce(count, 1)) AS requests, sum(CASE WHEN status BETWEEN 500 AND 599 THEN coalesce(count, 1) ELSE 0 END)
        AS http_5xx FROM rest WHERE source IN ('traffic', 'prometheus') GROUP BY ALL ORDER BY 1, 2""", as_="df"),
        group_stats.steps(con, "tr", "probe", conf, total=True)]
    if not routes:
        return None, tl if len(tl) else None
    return {"overall": routes.pop(None), "routes": routes}, tl


@steps
def _prometheus(con):
    """Requests and 5xx per route from Prometheus counter increments (each row stands for `count`),
    and the P99 per route from the histogram's cumulative buckets."""
    df, hist = yield [Q("SELECT probe, status, count FROM rest WHERE source = 'prometheus'", as_="df"),
                      Q("SELECT probe, latency_ms, count FROM rest WHERE source = 'prometheus-histogram'", as_="df")]
    if df.empty:
        return None
    return {**_prom_stats(df), "p99_from_histogram": _hist_p99(hist)}


def _prom_stats(df: pd.DataFrame) -> dict:
    def block(g):
        five = g["status"].between(500, 599).fillna(False).astype(bool)
        by_status = g.groupby(g["status"].astype("Int64").astype(str), observed=True)["count"].sum()
        n, k = float(g["count"].sum()), float(g.loc[five, "count"].sum())
        return {"samples": int(round(n)), "http_5xx": int(round(k)), "errors": int(round(k)),
                "error_rate": k / n if n else None,
                "status_counts": {s: int(round(v)) for s, v in sorted(by_status.items()) if v}}
    return {"overall": block(df), "routes": {r: block(g) for r, g in df.groupby("probe", sort=True)}}


def _hist_p99(h: pd.DataFrame, q: float = 0.99) -> dict:
    """P99 per route from cumulative histogram buckets, interpolated as Prometheus'
    histogram_quantile does; the true value lies somewhere in the bucket [lower, upper]."""
    out = {}
    for route, g in h.groupby("probe", sort=True):
        cum = g.groupby("latency_ms")["count"].sum().sort_index()  # bucket upper bound (ms) -> cumulative count
        total = float(cum.iloc[-1]) if len(cum) else 0.0
        if total <= 0:
            continue
        rank = q * total
        uppers, counts = cum.index.to_numpy(), cum.to_numpy()
        i = int(np.searchsorted(counts, rank))
        lower = 0.0 if i == 0 else float(uppers[i - 1])
        upper = float(uppers[i])
        below = 0.0 if i == 0 else float(counts[i - 1])
        est = upper if math.isinf(upper) else lower + (upper - lower) * (rank - below) / max(counts[i] - below, 1e-12)
        out[route] = {"p99_ms": None if math.isinf(est) else round(est, 3), "bucket_ms": [lower, upper],
                      "requests": round(total)}
    return out


_ACT_WORDS = {"promote": "promotion", "restart": "restart", "rollback": "rollback"}


@steps
def _platform(con):
    """The hosting platform's deploys and flags inside the window. Every deploy that started or
    finished in it is unexpected (a phase runs on one deployment); a rollback trigger is a rollback."""
    con.execute("""CREATE OR REPLACE TEMP TABLE pf AS SELECT ts, probe, tenant, outcome, error, request_id, deployment_id, error_code,
        health_status, flags FROM rest WHERE source = 'platform'""")
    con.execute("CREATE OR REPLACE TEMP TABLE pf_env AS SELECT * FROM pf WHERE outcome = 'ok' AND probe = 'render.env'")
    # One row per deploy event (request id: deploy and phase; read again by every later poll), the
    # first read of it, in time order; and the deploys phasegate act triggered itself (its action
    # rows name them): expected, never anomalies.
    ((n,),), events, own, ((reads,),), env_flags, failed = yield [
        Q("SELECT count(*) FROM pf"),
        Q("""SELECT ts, deployment_id, error_code, health_status FROM (
            SELECT *, row_number() OVER (PARTITION BY request_id ORDER BY ts) AS rn FROM pf
            WHERE outcome = 'ok' AND probe = 'render.deploy') WHERE rn = 1 ORDER BY ts, request_id"""),
        Q("""SELECT deployment_id, error_code, evidence FROM rest
            WHERE source = 'action' AND probe = 'act.deploy' AND deployment_id IS NOT NULL"""),
        Q("SELECT count(*) FROM pf_env"), flags.steps(con, "pf_env"),
        Q("SELECT ts, probe, outcome, error FROM pf WHERE outcome <> 'ok' ORDER BY ts")]
    if not n:
        return None
    deploys: dict[str, dict] = {}
    for ts, did, trigger, state in events:
        d = deploys.setdefault(did, {"id": did, "trigger": trigger, "started": None, "finished": None, "status": None})
        if state == "started":
            d["started"] = _ts(ts)
        else:
            d["finished"], d["status"] = _ts(ts), state
    for did, kind, ev in own:  # a deploy named twice: the last row says who
        if did in deploys:
            by = (json.loads(ev) if ev else {}).get("by")
            deploys[did]["by_act"] = {"kind": kind, "by": by,
                                      "text": f"{_ACT_WORDS.get(kind, kind)} by phasegate act (by {by})"}
    listed = sorted(deploys.values(), key=lambda d: d["started"] or d["finished"])
    return {
        "deploys": listed,
        "rollbacks": [d for d in listed if d["trigger"] in ("rollback", "auto_rollback")],
        "flags": env_flags if reads else None,
        "reads": int(reads),
        "failed_reads": [{"ts": _ts(ts), "probe": pr, "outcome": o, "error": e} for ts, pr, o, e in failed],
    }


# -- actions and criteria written as data ------------------------------------------------------


@steps
def _actions(con):
    """The actions `phasegate act` carried out (source "action"): when, what, by whom, the outcome."""
    out = []
    for ts, probe, outcome, status, did, values, ev in (yield Q("""SELECT ts, probe, outcome, status, deployment_id,
            flags, evidence FROM rest WHERE source = 'action' ORDER BY ts, request_id""")):
        e = json.loads(ev) if ev else {}
        out.append({"ts": _ts(ts), "step": probe, "action": e.get("action"), "kind": e.get("kind"), "by": e.get("by"),
                    "outcome": outcome, "status": None if status is None else int(status), "deployment_id": did,
                    "set": json.loads(values) if values else None, "detail": e.get("detail"), "report": e.get("report")})
    return out


_COUNTS = {"samples": "sum(w)", "status_count": "sum(w)", "errors": "sum(w) FILTER (WHERE bad)",
           "error_rate": "sum(w) FILTER (WHERE bad)", "availability": "sum(w) FILTER (WHERE bad)",
           "http_5xx": "sum(w) FILTER (WHERE five)", "feature_disabled": "sum(w) FILTER (WHERE disabled)",
           "timeouts": "sum(w) FILTER (WHERE timeout)", "assertion_failures": "sum(w) FILTER (WHERE assertion)"}


@steps
def custom_metrics(con, profile: Profile):
    """Each criterion written as data, measured: its metric per group (`per`) over the samples its
    `where` selects; for a PromQL criterion, the stored values of its query. Criteria judge these
    numbers; nothing is computed again when the report is drawn."""
    items = [c for c in profile.criteria.items if c.custom and c.enabled]
    if not items:
        return {}
    # Probes with acceptance commands, real traffic, and Prometheus counts (each row `count` requests).
    con.execute(f"""CREATE OR REPLACE TEMP VIEW src_probes AS SELECT probe, tenant, probe AS route, status, outcome,
        1.0 AS w, bad, five, disabled, assertion, timeout, lat FROM s UNION ALL SELECT probe, tenant,
        probe AS route, status, outcome, 1.0 AS w, {DERIVED} FROM rest WHERE source = 'check'""")
    con.execute(f"""CREATE OR REPLACE TEMP VIEW src_traffic AS SELECT probe, tenant, probe AS route, status, outcome,
        1.0 AS w, {DERIVED} FROM rest WHERE source = 'traffic'""")
    con.execute(f"""CREATE OR REPLACE TEMP VIEW src_prometheus AS SELECT probe, tenant, probe AS route, status, outcome,
        coalesce(count, 1.0) AS w, {DERIVED.replace("status IS NOT NULL AND", "FALSE AND")} FROM rest
        WHERE source = 'prometheus'""")
    # Render's request logs: real users' requests, each log line once however often it was pulled.
    con.execute(f"""CREATE OR REPLACE TEMP VIEW src_render AS SELECT probe, tenant, probe AS route, status, outcome,
        1.0 AS w, {DERIVED} FROM (SELECT *, row_number() OVER (PARTITION BY request_id ORDER BY ts) AS rn FROM rest
        WHERE source = 'render-traffic') WHERE rn = 1""")
    values = yield [_promql_values(con, c) if c.promql else _metric_groups(con, c, profile.criteria.confidence)
                    for c in items]
    return {c.id: v for c, v in zip(items, values)}


def _sql_in(column: str, values) -> str:
    return f"{column} IN (" + ", ".join(str(int(v)) if isinstance(v, int) else sql_literal(v) for v in values) + ")"


def _metric_groups(con, c, confidence: float):
    f = c.filters()
    sources = f.get("source", ("probes",))
    cond = " AND ".join([_sql_in(k, v) for k, v in c.where if k != "source"] or ["TRUE"])
    table = "(" + " UNION ALL ".join(f"SELECT * FROM src_{x}" for x in sources) + ")"
    key = c.per
    k = key or "NULL"
    metric = c.metric
    rows = yield Q(f"""SELECT {k} AS g, sum(w), {_COUNTS.get(metric, 'sum(w)')}, count(lat), max(lat)
        FROM {table} WHERE {cond} {'AND ' + key + ' IS NOT NULL' if key else ''} GROUP BY ALL ORDER BY g""")
    groups = {}
    for g, n, k_, n_lat, mx in rows:
        groups["" if g is None else g] = {"n": int(round(n or 0)), "k": int(round(k_ or 0)), "latency_n": int(n_lat),
                                          "max_ms": round_ms(mx)}
    if metric in ("p50_ms", "p95_ms", "p99_ms"):
        q = int(metric[1:3]) / 100
        wanted, bounds = {}, {}
        for g, st in groups.items():
            n = st["latency_n"]
            if not n:
                continue
            # max: the upper bound's rank; min: the lower bound's, by symmetry from the (1 - q) upper one.
            r = quantile_upper_rank(n, q if c.op == "max" else 1 - q, confidence)
            bounds[g] = None if r is None else (r if c.op == "max" else n + 1 - r)
            wanted[g if key else None] = percentile_ranks(n, (q,)) + ([bounds[g]] if bounds[g] else [])
        got = yield order_statistics.steps(con, table, key, cond + (f" AND {key} IS NOT NULL" if key else ""), wanted)
        for g, st in groups.items():
            at = got.get(g if key else None)
            if at:
                st["value"] = round_ms(linear_percentile(at, st["latency_n"], q))
                st["bound"] = round_ms(at[bounds[g]]) if bounds.get(g) else None
    return {"groups": groups, "sources": list(sources)}


def _promql_values(con, c):
    """The values a PromQL criterion's query returned over the window, as stored by the pull:
    per series (its labels), in time order."""
    series: dict = {}
    for labels, ts, v in (yield Q("""SELECT tenant, ts, count FROM rest WHERE source = 'promql' AND probe = ?
            ORDER BY tenant, ts""", [c.id])):
        series.setdefault(labels or "{}", []).append((_ts(ts), v))
    return {"query": c.promql, "aggregate": c.aggregate, "series": series}


# -- Render's own evidence ----------------------------------------------------------------------

STARTUP_SLACK_S = 60.0  # a start event and its instance's startup line are this close, or not the same start
_RENDER_SOURCES = ("render", "render-traffic", "render-probe")


@steps
def _render(con, profile: Profile, data_dir, start, end, conf: float):
    """What Render's logs, metrics and events say of the window (pulled by `phasegate.evidence`):
    real users' requests as Render logged them (each log line once, however often pulled), the
    instance starts and their startup lines, error log lines, events, and the per-step metrics.
    None when the window holds none of it."""
    con.execute(f"""CREATE OR REPLACE TEMP TABLE rr AS SELECT ts, source, probe, url, status, outcome, error_code, error,
        latency_ms, health_status, flags, evidence, count FROM (
            SELECT *, row_number() OVER (PARTITION BY request_id ORDER BY ts) AS rn FROM rest
            WHERE source IN {_RENDER_SOURCES!r}) WHERE rn = 1""")
    con.execute(f"""CREATE OR REPLACE TEMP TABLE rq AS SELECT source, probe, status, outcome, error_code, {DERIVED} FROM rr
        WHERE source IN ('render-traffic', 'render-probe')""")
    ((n,),), failed, users, (own,), startup_rows, event_rows, lines, metric = yield [
        Q("SELECT count(*) FROM rr"),
        Q("SELECT ts, probe, outcome, error FROM rr WHERE source = 'render' AND outcome <> 'ok' ORDER BY ts"),
        group_stats.steps(con, "rq", "probe", conf, where="source = 'render-traffic'", total=True),
        Q("""SELECT count(*), count(*) FILTER (WHERE five), count(*) FILTER (WHERE disabled) FROM rq
            WHERE source = 'render-probe'"""),
        Q("SELECT ts, error_code, error, flags FROM rr WHERE probe = 'render.log' AND url = 'startup' ORDER BY ts"),
        Q("SELECT ts, error_code, evidence FROM rr WHERE probe = 'render.event' ORDER BY ts"),
        Q("""SELECT ts, health_status, error_code, error FROM rr WHERE probe = 'render.log'
            AND coalesce(url, '') <> 'startup' ORDER BY ts"""),
        Q("""SELECT ts, url, status, count, latency_ms, error_code FROM rr WHERE probe = 'render.metric'
            ORDER BY ts, status""")]
    if not n:
        return None
    from datetime import datetime, timezone

    from .evidence import pulled_intervals, startup_flags  # with the HTTP client: ~0.14 s, for Render rows only

    src = profile.platform
    s0, s1 = start.timestamp(), end.timestamp()
    covered = _merge([(max(a, s0), min(b, s1)) for a, b in pulled_intervals(data_dir) if b > s0 and a < s1])
    covered_s = sum(b - a for a, b in covered)
    until = covered[-1][1] if covered else None
    failed = [{"ts": _ts(ts), "call": probe, "outcome": o, "error": e} for ts, probe, o, e in failed]
    overall = users.pop(None, None)

    startups = []
    for ts, inst, msg, fl in startup_rows:
        values = json.loads(fl) if fl else startup_flags(msg or "", src.flags if src else ())
        startups.append({"ts": _ts(ts), "t": ts.timestamp(), "instance": inst, "line": msg, "flags": values,
                         "off": [k for k, v in values.items() if v is not True]})
    events = []
    for ts, kind, ev in event_rows:
        details = json.loads(ev) if ev else {}
        events.append({"ts": _ts(ts), "t": ts.timestamp(), "type": kind, "details": details})
    starts = []
    for e in events:
        d = e["details"]
        if e["type"] == "server_restarted" or (e["type"] == "deploy_ended" and d.get("deployStatus") == "succeeded"):
            inst = d.get("instanceId")
            line = next((s for s in startups if (inst and s["instance"] == inst)
                         or (not inst and abs(s["t"] - e["t"]) <= STARTUP_SLACK_S)), None)
            settled = line is not None or (until is not None and until >= e["t"] + STARTUP_SLACK_S)
            starts.append({"ts": e["ts"], "event": e["type"], "instance": inst or (line or {}).get("instance"),
                           "deploy": d.get("deployId"), "line": None if line is None else line["ts"],
                           "settled": settled})
    by_level: dict = {}
    for _ts_, level, _i, _m in lines:
        by_level[level or "info"] = by_level.get(level or "info", 0) + 1
    errors = [r for r in lines if (r[1] or "") in ("error", "critical", "fatal")]
    by_status: dict = {}
    for _t, name, status, n, _l, _q in metric:
        if name == "http-requests" and n:
            by_status[str(status)] = by_status.get(str(status), 0) + n
    latency = [{"ts": _ts(t), "ms": round_ms(v), "quantile": q} for t, name, _s, _n, v, q in metric if name == "http-latency"]
    count = {k: sum(1 for e in events if e["type"] == k) for k in ("server_failed", "server_restarted")}
    for s in startups:
        s.pop("t")
    for e in events:
        e.pop("t")
    return {
        "coverage": {"from": _ts(datetime.fromtimestamp(covered[0][0], timezone.utc)) if covered else None,
                     "until": _ts(datetime.fromtimestamp(until, timezone.utc)) if until else None,
                     "covered_s": round(covered_s, 3), "window_s": round(s1 - s0, 3),
                     "parts": len(covered)},
        "failed_reads": failed,
        "available": bool(covered),
        "traffic": None if overall is None else {"overall": overall, "routes": users},
        "probes_logged": {"requests": int(own[0]), "http_5xx": int(own[1]), "feature_disabled": int(own[2])},
        "startups": startups,
        "starts": starts,
        "events": events,
        "events_count": count,
        "log_levels": dict(sorted(by_level.items())),
        "error_lines": len(errors),
        "first_errors": [{"ts": _ts(t), "level": lv, "instance": i, "message": m} for t, lv, i, m in errors[:10]],
        "metrics": {"resolution_s": src.metrics_resolution_s if src else None,
                    "requests_by_status": {k: int(round(v)) for k, v in sorted(by_status.items())},
                    "requests_series": [{"ts": _ts(t), "status": s, "requests": int(round(n))}
                                        for t, name, s, n, _l, _q in metric if name == "http-requests" and n],
                    "latency_quantile": src.latency_quantile if src else None,
                    "latency_path": src.latency_path if src else None, "latency": latency,
                    "latency_max_ms": max((p["ms"] for p in latency if p["ms"] is not None), default=None)},
    }


def _merge(parts: list) -> list:
    out: list = []
    for a, b in sorted(parts):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out
