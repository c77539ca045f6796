"""The grouped aggregates every source of a window is counted by, as SQL for an engine: the
per-row facts (`DERIVED`), per-group statistics with exact percentiles and their distribution-free
intervals (`group_stats`), and flag values as observed (`flags`). `phasegate.analysis` applies them
to the probe samples, `phasegate.sources` to real traffic, Prometheus, Render and the baseline; both
import them from here, and neither imports the other's internals.
"""

from __future__ import annotations

import json
import math

import pandas as pd

from .batch import Q, steps, unique
from .probe import ERROR_OUTCOMES
from .ranks import QS, linear_percentile, order_statistics, percentile_ranks
from .stats import quantile_interval_ranks, quantile_upper_rank
from .window import iso

# Rows that are not the endpoints' probes: real traffic, Prometheus counts and query values, the
# platform's deploys and flags, and acceptance commands (judged only by the criteria that name them).
_NOT_PROBES = ("traffic", "prometheus", "prometheus-histogram", "platform", "promql", "check", "action",
               "render", "render-traffic", "render-probe")
_ERR = "(" + ", ".join(f"'{o}'" for o in sorted(ERROR_OUTCOMES)) + ")"

# Per-row facts every aggregate counts: defined once, for probes and real traffic alike.
DERIVED = f"""
    coalesce(outcome IN {_ERR}, false) AS bad,
    coalesce(status BETWEEN 500 AND 599 AND coalesce(error_code, '') <> 'FEATURE_DISABLED', false) AS five,
    coalesce(error_code = 'FEATURE_DISABLED', false) AS disabled,
    coalesce(outcome = 'assertion_failed', false) AS assertion,
    coalesce(outcome = 'timeout', false) AS timeout,
    CASE WHEN status IS NOT NULL AND NOT coalesce(outcome IN {_ERR}, false) THEN latency_ms END AS lat"""


LISTED = 1000  # series or buckets a query names in its text; beyond that many, a join finds them


def sql_literal(value) -> str:
    """A value as a SQL string literal: the one quoting helper (a quote in $TMPDIR, or a second
    statement in $PHASEGATE_MEMORY_LIMIT, stays text). DuckDB binds no parameters in SET."""
    return "'" + str(value).replace("'", "''") + "'"


def _ts(x) -> str | None:
    if x is None or (isinstance(x, float) and math.isnan(x)) or x is pd.NaT:
        return None
    return iso(pd.Timestamp(x).to_pydatetime())


def round_ms(x):
    """Milliseconds to the microsecond, as every figure in signoff.json is reported."""
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else round(float(x), 3)


# -- per-group statistics ------------------------------------------------------------------


@steps
def group_stats(con, table: str, key: str | None, confidence: float = 0.95, where: str = "TRUE",
                total: bool = False):
    """probe_stats of every group of `key` (None: all rows, one group keyed None; `total`: that one
    too, beside the groups): samples, counts by status and outcome, errors, 5xx,
    FEATURE_DISABLED, latency percentiles with distribution-free intervals (None where n is too
    small for one), the P99's upper bound and the maximum.

    Every count comes from one pass grouped by the group and each row's facts (a few hundred
    cells), summed here per group and in total; then, once the counts say which order statistics
    the intervals need, the groups' ranks and the total's are asked side by side in one round."""
    k = key or "NULL"
    cells = yield Q(f"""SELECT {k}, status, outcome, bad, five, disabled, assertion, lat IS NOT NULL, count(*), max(lat)
        FROM {table} WHERE {where} GROUP BY ALL""")
    out: dict = {}
    for g, status, outcome, bad, five, disabled, assertion, has_lat, n, mx in cells:
        for at in {g, None} if total else {g}:
            st = out.setdefault(at, {"samples": 0, "status_counts": {}, "outcome_counts": {}, "errors": 0,
                                     "error_rate": None, "http_5xx": 0, "feature_disabled": 0, "assertion_failed": 0,
                                     "latency_n": 0, "p50_ms": None, "p95_ms": None, "p99_ms": None, "max_ms": None,
                                     "p50_ci_ms": None, "p95_ci_ms": None, "p99_ci_ms": None, "p99_upper_ms": None})
            st["samples"] += n
            st["errors"] += n * bad
            st["http_5xx"] += n * five
            st["feature_disabled"] += n * disabled
            st["assertion_failed"] += n * assertion
            if has_lat:
                st["latency_n"] += n
                st["max_ms"] = mx if st["max_ms"] is None else max(st["max_ms"], mx)
            if status is not None:
                st["status_counts"][status] = st["status_counts"].get(status, 0) + n
            if outcome is not None:
                st["outcome_counts"][outcome] = st["outcome_counts"].get(outcome, 0) + n
    for st in out.values():
        st["error_rate"] = st["errors"] / st["samples"] if st["samples"] else None
        st["max_ms"] = round_ms(st["max_ms"])
        st["status_counts"] = {str(c): v for c, v in sorted(st["status_counts"].items())}
        st["outcome_counts"] = dict(sorted(st["outcome_counts"].items()))
    yield [_ranked(con, table, key, where, out, confidence)] + (
        [_ranked(con, table, None, where, out, confidence)] if total and key is not None else [])
    return dict(sorted(out.items(), key=lambda kv: (kv[0] is None, kv[0] or "")))


def _ranked(con, table, key, where, out: dict, confidence: float):
    """Percentiles (linear, as numpy's) and the order statistics of the intervals and the P99's
    bound, at the ranks `phasegate.stats` gives. `key` None: the total (out[None])."""
    want, ranks = {}, {}
    for g, st in out.items():
        if (g is None) != (key is None) or not st["latency_n"]:
            continue
        n = st["latency_n"]
        ci = {f"p{round(q * 100)}_ci_ms": quantile_interval_ranks(n, q, confidence) for q in QS}
        up = quantile_upper_rank(n, 0.99, confidence)
        want[g] = (n, ci, up)
        ranks[g] = percentile_ranks(n) + [r for rr in ci.values() if rr for r in rr] + ([up] if up else [])
    got = yield order_statistics.steps(con, table, key, where, ranks)
    for g, (n, ci, up) in want.items():
        at, st = got[g], out[g]
        st.update({f"p{round(q * 100)}_ms": round_ms(linear_percentile(at, n, q)) for q in QS})
        for name, rr in ci.items():
            if rr:
                st[name] = [round_ms(at[rr[0]]), round_ms(at[rr[1]])]
        if up:
            st["p99_upper_ms"] = round_ms(at[up])


_UNSET = object()


@steps
def flags(con, table: str):
    """Flags as observed: each distinct JSON value decoded once, counted in the engine, and only
    the rows where the observed value changes walked here. A flag the answer did not carry (an
    error body) is not observed: it is neither on nor off."""
    rows = yield Q(f"SELECT flags, count(*), min(ts) FROM {table} WHERE flags IS NOT NULL GROUP BY 1")
    counts, first = {r[0]: r[1] for r in rows}, {r[0]: r[2] for r in rows}
    decoded = {raw: {k: v for k, v in json.loads(raw).items() if v is not None} for raw in counts}
    observed = [raw for raw, values in decoded.items() if values]
    off: dict[str, int] = {}
    off_obs = 0
    for raw in observed:
        if any(v is not True for v in decoded[raw].values()):
            off_obs += counts[raw]
        for name, v in decoded[raw].items():
            if v is not True:
                off[name] = off.get(name, 0) + counts[raw]
    states, changes = {}, []
    # Walked on small integer codes of the observed values (sorting the JSON text cost 4x more).
    walk = []
    if len(observed) == 1:  # one value all along (most windows): it starts at its first sample, no sort
        walk = [(first[observed[0]], 0)]
    elif observed:
        codes = unique("flag_codes")
        con.register(codes, pd.DataFrame({"flags": observed, "code": range(len(observed))}))
        try:
            walk = yield Q(f"""SELECT ts, code FROM (SELECT ts, probe, tenant, code,
                lag(code) OVER (ORDER BY ts, probe, tenant) prev
                FROM (SELECT ts, probe, tenant, flags FROM {table} WHERE flags IS NOT NULL) JOIN {codes} USING (flags))
                WHERE prev IS NULL OR prev <> code ORDER BY ts, probe, tenant""")
        finally:
            con.unregister(codes)
    for ts, code in walk:
        for name, value in decoded[observed[code]].items():
            if states.get(name, _UNSET) != value:
                changes.append({"ts": _ts(ts), "flag": name, "value": value})
            states[name] = value
    return {"observations": int(sum(counts[r] for r in observed)), "off_observations": off_obs, "last": states,
            "off_samples": off, "changes": changes}
