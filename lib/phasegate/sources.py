"""What the window holds beside the endpoints' probes, and the criteria written as data: the
baseline compared, real traffic, Prometheus counts, the platform's deploys and flags, the actions
`phasegate act` took, and each custom criterion's metric. Queries over the same connection as
`analysis`, built on its per-row facts (`DERIVED`) and grouped statistics."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd

from .analysis import _NOT_PROBES, DERIVED, _ts, flags, group_stats, round_ms, sql_literal
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


def _traffic(con, conf: float):
    """Real traffic (imported request logs), reported beside the probes, never mixed into them;
    and requests and 5xx per source and 5 minutes, logs and Prometheus alike, for the plot."""
    con.execute(f"CREATE TEMP VIEW tr AS SELECT probe, status, outcome, error_code, {DERIVED} FROM samples "
                "WHERE source = 'traffic'")
    tl = con.execute("""SELECT source, make_timestamptz((epoch_us(ts) // 300000000) * 300000000) AS bucket,
        sum(coalesce(count, 1)) AS requests, sum(CASE WHEN status BETWEEN 500 AND 599 THEN coalesce(count, 1) ELSE 0 END)
        AS http_5xx FROM samples WHERE source IN ('traffic', 'prometheus') GROUP BY ALL ORDER BY 1, 2""").df()
    if not con.execute("SELECT count(*) FROM tr").fetchall()[0][0]:
        return None, tl if len(tl) else None
    routes = group_stats(con, "tr", "probe", conf, total=True)
    return {"overall": routes.pop(None), "routes": routes}, tl


def _prometheus(con) -> dict | None:
    """Requests and 5xx per route from Prometheus counter increments (each row stands for `count`),
    and the P99 per route from the histogram's cumulative buckets."""
    df = con.execute("SELECT probe, status, count FROM samples WHERE source = 'prometheus'").df()
    if df.empty:
        return None
    hist = con.execute("SELECT probe, latency_ms, count FROM samples WHERE source = 'prometheus-histogram'").df()
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


def _platform(con) -> dict | None:
    """The hosting platform's deploys and flags inside the window. Every deploy that started or
    finished in it is unexpected (a phase runs on one deployment); a rollback trigger is a rollback."""
    con.execute("""CREATE TEMP TABLE pf AS SELECT ts, probe, tenant, outcome, error, request_id, deployment_id, error_code,
        health_status, flags FROM samples WHERE source = 'platform'""")
    if not con.execute("SELECT count(*) FROM pf").fetchall()[0][0]:
        return None
    deploys: dict[str, dict] = {}
    # One row per deploy event (request id: deploy and phase; read again by every later poll), the
    # first read of it, in time order.
    for ts, did, trigger, state in con.execute("""SELECT ts, deployment_id, error_code, health_status FROM (
            SELECT *, row_number() OVER (PARTITION BY request_id ORDER BY ts) AS rn FROM pf
            WHERE outcome = 'ok' AND probe = 'render.deploy') WHERE rn = 1 ORDER BY ts, request_id""").fetchall():
        d = deploys.setdefault(did, {"id": did, "trigger": trigger, "started": None, "finished": None, "status": None})
        if state == "started":
            d["started"] = _ts(ts)
        else:
            d["finished"], d["status"] = _ts(ts), state
    # Deploys phasegate act triggered itself (its action rows name them): expected, never anomalies.
    own = {did: (kind, ev) for did, kind, ev in con.execute("""SELECT deployment_id, error_code, evidence FROM samples
        WHERE source = 'action' AND probe = 'act.deploy' AND deployment_id IS NOT NULL""").fetchall()}
    for did, (kind, ev) in own.items():
        if did in deploys:
            by = (json.loads(ev) if ev else {}).get("by")
            deploys[did]["by_act"] = {"kind": kind, "by": by,
                                      "text": f"{_ACT_WORDS.get(kind, kind)} by phasegate act (by {by})"}
    listed = sorted(deploys.values(), key=lambda d: d["started"] or d["finished"])
    con.execute("CREATE TEMP TABLE pf_env AS SELECT * FROM pf WHERE outcome = 'ok' AND probe = 'render.env'")
    reads = con.execute("SELECT count(*) FROM pf_env").fetchall()[0][0]
    return {
        "deploys": listed,
        "rollbacks": [d for d in listed if d["trigger"] in ("rollback", "auto_rollback")],
        "flags": flags(con, "pf_env") if reads else None,
        "reads": int(reads),
        "failed_reads": [{"ts": _ts(ts), "probe": pr, "outcome": o, "error": e} for ts, pr, o, e in con.execute(
            "SELECT ts, probe, outcome, error FROM pf WHERE outcome <> 'ok' ORDER BY ts").fetchall()],
    }


# -- actions and criteria written as data ------------------------------------------------------


def _actions(con) -> list:
    """The actions `phasegate act` carried out (source "action"): when, what, by whom, the outcome."""
    out = []
    for ts, probe, outcome, status, did, values, ev in con.execute("""SELECT ts, probe, outcome, status, deployment_id,
            flags, evidence FROM samples WHERE source = 'action' ORDER BY ts, request_id""").fetchall():
        e = json.loads(ev) if ev else {}
        out.append({"ts": _ts(ts), "step": probe, "action": e.get("action"), "kind": e.get("kind"), "by": e.get("by"),
                    "outcome": outcome, "status": None if status is None else int(status), "deployment_id": did,
                    "set": json.loads(values) if values else None, "detail": e.get("detail"), "report": e.get("report")})
    return out


_COUNTS = {"samples": "sum(w)", "status_count": "sum(w)", "errors": "sum(w) FILTER (WHERE bad)",
           "error_rate": "sum(w) FILTER (WHERE bad)", "availability": "sum(w) FILTER (WHERE bad)",
           "http_5xx": "sum(w) FILTER (WHERE five)", "feature_disabled": "sum(w) FILTER (WHERE disabled)",
           "timeouts": "sum(w) FILTER (WHERE timeout)", "assertion_failures": "sum(w) FILTER (WHERE assertion)"}


def custom_metrics(con, profile: Profile) -> dict:
    """Each criterion written as data, measured: its metric per group (`per`) over the samples its
    `where` selects; for a PromQL criterion, the stored values of its query. Criteria judge these
    numbers; nothing is computed again when the report is drawn."""
    items = [c for c in profile.criteria.items if c.custom and c.enabled]
    if not items:
        return {}
    # Probes with acceptance commands, real traffic, and Prometheus counts (each row `count` requests).
    con.execute(f"""CREATE OR REPLACE TEMP VIEW src_probes AS SELECT probe, tenant, probe AS route, status, outcome,
        1.0 AS w, {DERIVED} FROM samples WHERE coalesce(source, 'probe') IN ('probe', 'check')""")
    con.execute(f"""CREATE OR REPLACE TEMP VIEW src_traffic AS SELECT probe, tenant, probe AS route, status, outcome,
        1.0 AS w, {DERIVED} FROM samples WHERE source = 'traffic'""")
    con.execute(f"""CREATE OR REPLACE TEMP VIEW src_prometheus AS SELECT probe, tenant, probe AS route, status, outcome,
        coalesce(count, 1.0) AS w, {DERIVED.replace("status IS NOT NULL AND", "FALSE AND")} FROM samples
        WHERE source = 'prometheus'""")
    out = {}
    for c in items:
        out[c.id] = _promql_values(con, c) if c.promql else _metric_groups(con, c, profile.criteria.confidence)
    return out


def _sql_in(column: str, values) -> str:
    return f"{column} IN (" + ", ".join(str(int(v)) if isinstance(v, int) else sql_literal(v) for v in values) + ")"


def _metric_groups(con, c, confidence: float) -> dict:
    f = c.filters()
    sources = f.get("source", ("probes",))
    cond = " AND ".join([_sql_in(k, v) for k, v in c.where if k != "source"] or ["TRUE"])
    table = "(" + " UNION ALL ".join(f"SELECT * FROM src_{x}" for x in sources) + ")"
    key = c.per
    k = key or "NULL"
    metric = c.metric
    rows = con.execute(f"""SELECT {k} AS g, sum(w), {_COUNTS.get(metric, 'sum(w)')}, count(lat), max(lat)
        FROM {table} WHERE {cond} {'AND ' + key + ' IS NOT NULL' if key else ''} GROUP BY ALL ORDER BY g""").fetchall()
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
        got = order_statistics(con, table, key, cond + (f" AND {key} IS NOT NULL" if key else ""), wanted)
        for g, st in groups.items():
            at = got.get(g if key else None)
            if at:
                st["value"] = round_ms(linear_percentile(at, st["latency_n"], q))
                st["bound"] = round_ms(at[bounds[g]]) if bounds.get(g) else None
    return {"groups": groups, "sources": list(sources)}


def _promql_values(con, c) -> dict:
    """The values a PromQL criterion's query returned over the window, as stored by the pull:
    per series (its labels), in time order."""
    series: dict = {}
    for labels, ts, v in con.execute("""SELECT tenant, ts, count FROM samples WHERE source = 'promql' AND probe = ?
            ORDER BY tenant, ts""", [c.id]).fetchall():
        series.setdefault(labels or "{}", []).append((_ts(ts), v))
    return {"query": c.promql, "aggregate": c.aggregate, "series": series}
