"""Statistics of a window, as queries: samples in (the window's parquet files and journal, which
`store.open_window` makes a DuckDB view of, read once into the engine by `scan`), small results out.

Everything the criteria and the notebook need is computed here, once, by the engine: grouped
aggregates and window functions over `s`, the window's probe samples with the facts every
aggregate counts (`phasegate.aggregates` defines those facts and the per-group statistics).
DuckDB runs under a memory limit and spills to a temporary directory, so a window of any size
completes in bounded memory; Python receives only per-probe, per-bucket,
per-tenant and per-series results. Counts are exact; percentiles are numpy's "linear" over
successful responses (a timeout has no latency to rank, a fast 503 must not make a latency
target look met), from order statistics selected in bounded memory (`phasegate.ranks`); the
distribution-free intervals take the ranks `phasegate.stats` gives. What the window holds beside
the probes (baseline, traffic, Prometheus, platform, actions, criteria as data) is `phasegate.sources`.
The same SQL runs on Spark through `phasegate.spark`. Each aggregate is a step that yields its
queries, and `analyze` runs them all side by side (`phasegate.batch`): an analysis is as many
engine rounds as its longest chain of dependent queries (three; on Spark four jobs in `make bench`).
Coverage (samples against the schedule, gaps, failed stretches) is `phasegate.coverage`.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from datetime import datetime

import pandas as pd

from .aggregates import _NOT_PROBES, DERIVED, LISTED, _ts, flags, group_stats, round_ms, sql_literal  # noqa: F401 - public here too
from .batch import Q, drive, steps, unique
from .config import memory_limit as check_memory_limit
from .coverage import coverage_hourly, coverage_of, gaps
from .errors import DataError
from .objstore import local_dir
from .profile import Profile
from .ranks import QS, linear_percentile, order_statistics, percentile_ranks
from .sources import _actions, _platform, _prometheus, _render, _traffic, compare, custom_metrics
from .stats import rate_upper
from .store import open_window
from .window import Window, iso, utcnow


@dataclass
class Analysis:
    window: Window
    observed_end: datetime
    now: datetime
    probes: dict
    overall: dict
    health: dict
    flags: dict
    deployments: dict
    anomalies: dict
    coverage: dict
    evidence: list
    inputs: dict
    quality: dict
    baseline: dict | None
    traffic: dict | None
    prometheus: dict | None
    tenants: dict | None
    platform: dict | None
    timeline: pd.DataFrame = field(repr=False)
    coverage_hourly: pd.DataFrame = field(repr=False)
    occurrences: dict = field(default_factory=dict)  # first/last time of each kind of failure
    samples_live: int = 0
    samples_simulated: int = 0
    traffic_timeline: pd.DataFrame | None = field(default=None, repr=False)  # per source and 5 min
    ecdf: dict = field(default_factory=dict, repr=False)  # probe -> (canary, baseline) latencies
    custom: dict = field(default_factory=dict)  # criterion id -> its metric per group, or its PromQL series
    actions: list = field(default_factory=list)  # what `phasegate act` did in the window, in time order
    tls: dict | None = None  # https samples: TLS versions seen, the earliest certificate expiry
    render: dict | None = None  # Render's logs, metrics and events over the window (`phasegate.evidence`)
    con: object = field(default=None, repr=False)  # the DuckDB connection: `samples` stays queryable

    @property
    def elapsed_s(self) -> float:
        return max(0.0, (self.observed_end - self.window.start).total_seconds())

    @property
    def relation(self):
        """The window's probe samples as a lazy DuckDB relation: SQL over them without loading them,
        e.g. `a.relation.filter("outcome <> 'ok'").aggregate("probe, count(*)")`."""
        return self.con.sql("SELECT * FROM s")


def connect(memory_limit: str | None = None, temp_dir: str | None = None):
    """One DuckDB connection with bounded memory: past the limit, operators spill to `temp_dir`."""
    import duckdb

    con = duckdb.connect()
    limit = check_memory_limit(memory_limit)
    spill = temp_dir or os.environ.get("PHASEGATE_SPILL_DIR") or os.path.join(tempfile.gettempdir(), "phasegate-spill")
    try:
        con.execute(f"SET memory_limit = {sql_literal(limit)}")
    except duckdb.Error as exc:
        raise DataError(f"memory limit {limit!r} is not a size like 1GB or 512MB ({exc})") from None
    con.execute(f"SET temp_directory = {sql_literal(spill)}")
    con.execute("SET TimeZone = 'UTC'")
    try:
        con.execute("SET enable_progress_bar = false")  # it would print into the notebook
    except duckdb.Error:
        pass  # in Jupyter without ipywidgets DuckDB refuses the setting, and shows no bar either
    return con


def analyze(profile: Profile, data_dir, window: Window, now: datetime | None = None,
            bucket_s: float = 300.0, baseline: tuple | None = None, memory_limit: str | None = None,
            engine: str | None = None) -> Analysis:
    """`baseline`: (data_dir, Window) of the control (yachts without the flags, or the previous
    phase's window) to compare the canary against. `engine`: "duckdb" (embedded, the default) or
    spark://HOST:PORT (default: the profile's [engine] url)."""
    now = now or utcnow()
    observed_end = window.observed_end(now)
    if observed_end <= window.start:
        raise DataError(f"window starts in the future ({iso(window.start)}): nothing to analyse yet")
    con, files = _open(data_dir, window.start, observed_end, memory_limit, engine or profile.engine)
    inputs = {"files": files["files"], "excluded": list(files["excluded"])}
    conf, start = profile.criteria.confidence, window.start
    # Every aggregate's queries side by side, each round asked of the engine at once (`phasegate.batch`).
    ((n, sim),), hourly, probes, flips, (traffic, traffic_tl), platform, health, flag_values, deployments, \
        anomalies, evidence, prometheus, tenants, tl, occurrences, custom, actions, tls, render, gapped = drive(con, _all(
            Q("SELECT count(*), count(*) FILTER (WHERE simulated) FROM s"),
            coverage_hourly.steps(con, profile, start, observed_end),
            group_stats.steps(con, "s", "probe", conf, total=True), transitions.steps(con), _traffic.steps(con, conf),
            _platform.steps(con), _health.steps(con, profile), flags.steps(con, "s"), _deployments.steps(con),
            _anomalies.steps(con), _evidence.steps(con), _prometheus.steps(con), tenant_stats.steps(con, conf),
            timeline.steps(con, bucket_s), _occurrences.steps(con), custom_metrics.steps(con, profile),
            _actions.steps(con), _tls.steps(con), _render.steps(con, profile, data_dir, start, observed_end, conf),
            gaps.steps(con, profile)))
    if not n:
        raise DataError(f"no samples in {data_dir} between {iso(window.start)} and {iso(observed_end)}"
                        + (f" ({len(inputs['excluded'])} file(s) excluded as unreadable)" if inputs["excluded"] else ""))
    overall = probes.pop(None)
    base = None if baseline is None else compare(con, baseline)
    return Analysis(
        window=window, observed_end=observed_end, now=now, probes=probes,
        overall=overall, health=health, flags=flag_values,
        deployments=deployments, anomalies=anomalies, coverage=coverage_of(profile, start, observed_end, probes, *gapped),
        evidence=evidence, inputs=inputs, quality=_quality(hourly, probes, flips),
        baseline=None if base is None else {"probes": base[0]}, traffic=traffic, prometheus=prometheus,
        tenants=tenants, platform=platform,
        timeline=tl, coverage_hourly=hourly, occurrences=occurrences,
        samples_live=int(n - sim), samples_simulated=int(sim), traffic_timeline=traffic_tl,
        ecdf={} if base is None else base[1], con=con, custom=custom, actions=actions, tls=tls, render=render,
    )


def _all(*parts):
    """One step that waits for all of `parts` (queries and steps) and returns their answers."""
    return (yield list(parts))


def window_relation(data_dir, window: Window, memory_limit: str | None = None):
    """The window's probe samples as a lazy DuckDB relation (nothing is loaded until asked), for
    interactive digging: `rel.filter("outcome <> 'ok'").aggregate("probe, count(*)").df()`."""
    con, _files = _open(local_dir(data_dir, None, window.start, window.end), window.start, window.end, memory_limit)
    return con.sql("SELECT * FROM s")


def _open(data_dir, start: datetime, end: datetime, memory_limit: str | None, engine: str | None = None):
    """A connection with the window's samples as `samples` and its probe samples as `s`; the files read."""
    if engine and engine != "duckdb":
        from .spark import SparkConnection
        con = SparkConnection(engine)
    else:
        con = connect(memory_limit)
    files = open_window(con, data_dir, start, end, "samples")
    scan(con, "samples")
    return con, files


# Text columns of `s` stored as ENUMs on DuckDB: a group key of a byte or two instead of a string
# per row (10 M samples: 640 MB in memory instead of 1.3 GB, and every GROUP BY on them faster).
_KEYS = ("probe", "tenant", "outcome", "error_code", "health_status", "deployment_id", "flags", "shard", "tls_version")
_MAX_ENUM = 65_536  # more distinct values than this (a tenant per request?) stay text
ROW_BYTES = 64  # what a row of `s` holds in DuckDB's memory with the ENUM keys (measured: 642 MB for 10 M)
IN_MEMORY_SHARE = 0.7  # of the memory limit: the most `s` may take, leaving the rest to the queries' own work


def scan(con, relation: str) -> bool:
    """Read the window. Its probe samples, with the facts every aggregate counts, are `s`; the few
    that carry a raw response or failed assertions `sx`; every other row (real traffic, Prometheus,
    the platform, Render, actions, acceptance commands) `rest`. Where `s` fits in its share of the
    memory limit it is read once into memory (text keys as ENUMs) and every aggregate runs on that;
    beyond it `s` stays a view of the parquet files, which each aggregate scans again (a 40 M-sample
    window took about as long either way, 29.7 s as a table and 30.4 s as the view, but the table
    spilled ~1.5 GB of uncompressed pages and raised the peak RSS from 1.19 to 1.30 GB).
    On Spark `s` is always a cached view. What needs time order says `ORDER BY us, probe, tenant`
    (no two samples of one series share a microsecond). True when `s` is in memory."""
    probes = f"coalesce(source, 'probe') NOT IN {_NOT_PROBES!r}"
    cols = {k: k for k in _KEYS}
    spark = hasattr(con, "parquet_view")
    in_memory = True
    if not spark:
        con.execute("DROP VIEW IF EXISTS s")
        con.execute("DROP TABLE IF EXISTS s_rows")
        n = con.execute(f"SELECT count(*) FROM {relation} WHERE {probes}").fetchone()[0]
        in_memory = n * ROW_BYTES <= IN_MEMORY_SHARE * _memory_limit_bytes(con)
        values = con.execute("SELECT " + ", ".join(f"list(DISTINCT {k}) FILTER (WHERE {k} IS NOT NULL)" for k in _KEYS)
                             + f" FROM {relation} WHERE {probes}").fetchone() if in_memory else [None] * len(_KEYS)
        for k, v in zip(_KEYS, values):
            con.execute(f"DROP TYPE IF EXISTS s_{k}")
            if v and len(v) <= _MAX_ENUM:
                con.execute(f"CREATE TYPE s_{k} AS ENUM ({', '.join(sql_literal(x) for x in sorted(v))})")
                cols[k] = f"CAST({k} AS s_{k}) AS {k}"
    rows = f"""SELECT ts, {cols["probe"]}, {cols["tenant"]}, status, {cols["outcome"]}, {cols["error_code"]},
        {cols["health_status"]}, handlers_loaded, handlers_total, {cols["deployment_id"]}, {cols["flags"]},
        {cols["shard"]}, {cols["tls_version"]}, cert_expiry, coalesce(simulated, false) AS simulated, {DERIVED}
        FROM {relation} WHERE {probes}"""
    if in_memory:
        con.execute(f"CREATE OR REPLACE TEMP TABLE s_rows AS {rows}")
        rows = "SELECT * FROM s_rows"
    con.execute(f"CREATE OR REPLACE TEMP VIEW s AS SELECT *, epoch_us(ts) AS us FROM ({rows})")
    # Two selections, not one with OR: each alone is skipped by a row group's statistics (10 M
    # samples: 0.08-0.12 s against 0.17-0.22 s).
    sx = f"SELECT ts, probe, outcome, status, error_code, evidence, assertion_failures FROM {relation} WHERE {probes}"
    con.execute(f"""CREATE OR REPLACE TEMP TABLE sx AS {sx} AND evidence IS NOT NULL
        UNION ALL {sx} AND evidence IS NULL AND outcome = 'assertion_failed'""")
    # (source IN ...: a row group of probe samples only is skipped by its statistics, unread.)
    con.execute(f"CREATE OR REPLACE TEMP TABLE rest AS SELECT * FROM {relation} WHERE source IN {_NOT_PROBES!r}")
    return in_memory


_UNITS = {"bytes": 1, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40, "kb": 1e3, "mb": 1e6, "gb": 1e9, "tb": 1e12}


def _memory_limit_bytes(con) -> float:
    """DuckDB's memory limit as it states it ('953.6 MiB')."""
    text = con.execute("SELECT current_setting('memory_limit')").fetchone()[0]
    num, _, unit = str(text).strip().partition(" ")
    try:
        return float(num) * _UNITS[(unit or "bytes").lower()]
    except (ValueError, KeyError):
        return 0.0  # unreadable: read the files each time, as before, rather than guess


@steps
def transitions(con):
    """ok/failed changes per probe, counted within each (tenant, probe) series in time order. Only
    series with a failure can change: the others are not sorted at all, and a window without a
    failure sorts nothing (on Spark, a join with the failing series shuffled the whole window:
    10 M samples, 9.5 s for none)."""
    failing = yield Q("SELECT DISTINCT tenant, probe FROM s WHERE bad")
    if not failing:
        return {}
    if len(failing) <= LISTED:
        rows = f"SELECT probe, bad, us, tenant FROM s WHERE {series_filter(failing)}"
    else:
        rows = """SELECT s.probe, s.bad, s.us, s.tenant FROM s SEMI JOIN (SELECT DISTINCT tenant, probe FROM s WHERE bad) f
            ON s.probe = f.probe AND s.tenant IS NOT DISTINCT FROM f.tenant"""
    return dict((yield Q(f"""SELECT probe, count(*) FILTER (WHERE bad <> prev) FROM (
        SELECT probe, bad, lag(bad) OVER (PARTITION BY tenant, probe ORDER BY us) prev FROM ({rows})) GROUP BY probe""")))


def series_filter(pairs) -> str:
    """A condition selecting the (tenant, probe) series named (a tenant may be None)."""
    tenants: dict = {}
    for tenant, probe in pairs:
        tenants.setdefault(probe, []).append(tenant)
    parts = []
    for probe, names in sorted(tenants.items()):
        named = sorted(t for t in names if t is not None)
        either = ([f"tenant IN ({', '.join(map(sql_literal, named))})"] if named else []) + \
            (["tenant IS NULL"] if len(named) < len(names) else [])
        parts.append(f"(probe = {sql_literal(probe)} AND ({' OR '.join(either)}))")
    return " OR ".join(parts)


# -- per-group statistics ------------------------------------------------------------------


@steps
def tenant_stats(con, confidence: float = 0.95):
    """Every probe statistic per tenant, worst first (error rate, then 5xx, then p99), or None when
    no sample carries a tenant."""
    rows, ((untagged,),) = yield [Q("""SELECT tenant, count(*), count(*) FILTER (WHERE bad), count(*) FILTER (WHERE five),
        count(*) FILTER (WHERE disabled), count(*) FILTER (WHERE timeout), count(lat)
        FROM s WHERE tenant IS NOT NULL GROUP BY tenant"""), Q("SELECT count(*) FROM s WHERE tenant IS NULL")]
    if not rows:
        return None
    # The probe with most errors, per tenant: where to look first (the first by name on a tie).
    at, worst = yield [order_statistics.steps(con, "s", "tenant", "tenant IS NOT NULL",
                                              {r[0]: percentile_ranks(r[6]) for r in rows if r[6]}),
                       Q("""SELECT tenant, probe, k FROM (
        SELECT tenant, probe, k, row_number() OVER (PARTITION BY tenant ORDER BY k DESC, probe) AS pos FROM (
            SELECT tenant, probe, count(*) AS k FROM s WHERE bad AND tenant IS NOT NULL GROUP BY ALL)) WHERE pos = 1""")]
    worst = {t: (p, k) for t, p, k in worst}
    out = []
    for tenant, n, bad, five, disabled, timeouts, n_lat in rows:
        p, k = worst.get(tenant, (None, None))
        pct = [linear_percentile(at[tenant], n_lat, q) for q in QS] if n_lat else [None] * 3
        out.append({"tenant": tenant, "samples": int(n), "errors": int(bad), "error_rate": float(bad / n),
                    "rate_upper": rate_upper(int(bad), int(n), confidence), "http_5xx": int(five),
                    "feature_disabled": int(disabled), "timeouts": int(timeouts),
                    "p50_ms": round_ms(pct[0]), "p95_ms": round_ms(pct[1]), "p99_ms": round_ms(pct[2]),
                    "worst_probe": p, "worst_probe_errors": None if k is None else int(k)})
    out.sort(key=lambda r: (-r["error_rate"], -r["http_5xx"], -(r["p99_ms"] or 0.0), r["tenant"]))
    return {"count": len(out), "untagged_samples": int(untagged), "rows": out}


@steps
def timeline(con, bucket_s: float = 300.0):
    """Per bucket and probe: samples, errors, 5xx, latency p50/p95/p99 (ms); only pairs with samples.
    A day of buckets at a time: a grouped quantile holds its groups' values, and a day's fit."""
    step = int(bucket_s * 1e6)
    ((lo, hi),) = yield Q("SELECT min(us), max(us) FROM s")
    if lo is None:
        return pd.DataFrame()
    chunk = max(1, 86_400_000_000 // step) * step
    asked = []
    for a in range((lo // step) * step, hi + 1, chunk):
        t0, t1 = pd.Timestamp(a, unit="us", tz="UTC"), pd.Timestamp(a + chunk, unit="us", tz="UTC")
        asked.append(Q(f"""SELECT bucket, CAST(probe AS VARCHAR) AS probe, samples, errors, http_5xx, pct[1] AS p50_ms, pct[2] AS p95_ms,
            pct[3] AS p99_ms FROM (SELECT make_timestamptz((us // {step}) * {step}) AS bucket, probe, count(*) AS samples,
            count(*) FILTER (WHERE bad) AS errors, count(*) FILTER (WHERE five) AS http_5xx,
            quantile_cont(lat, {list(QS)}) AS pct FROM s
            WHERE ts >= TIMESTAMPTZ '{t0.isoformat()}' AND ts < TIMESTAMPTZ '{t1.isoformat()}' GROUP BY ALL)
            ORDER BY bucket, probe""", as_="df"))
    parts = yield asked
    return pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]


@steps
def _occurrences(con):
    """{kind: [first, last]} of the rows of each kind (errors, 5xx, FEATURE_DISABLED, ...), None when none."""
    kinds = ("bad", "five", "disabled", "assertion", "timeout")
    (row,) = yield Q("SELECT " + ", ".join(f"min(ts) FILTER (WHERE {k}), max(ts) FILTER (WHERE {k})" for k in kinds)
                     + " FROM s")
    return {k: ([_ts(row[2 * i]), _ts(row[2 * i + 1])] if row[2 * i] is not None else None) for i, k in enumerate(kinds)}


# -- health, flags, deployments, anomalies, evidence ----------------------------------------


@steps
def _health(con, profile: Profile):
    """Every health probe that did not get a healthy answer is unhealthy: a 5xx, a timeout, a
    refused connection or an invalid body as much as a "degraded" status or handlers below total."""
    names = [p.name for p in profile.probes if "handlers_total" in p.extract or "health_status" in p.extract]
    h = """(SELECT *, NOT bad AND (handlers_total IS NOT NULL OR health_status IS NOT NULL) AS answered,
        coalesce(handlers_loaded <> handlers_total, false) OR coalesce(health_status <> 'healthy', false) AS degraded
        FROM s WHERE list_contains(?, probe))"""
    ((n, failed, degraded, answered, lo, hi, first, last),), why = yield [Q(f"""SELECT count(*),
        count(*) FILTER (WHERE bad), count(*) FILTER (WHERE degraded AND NOT bad), count(*) FILTER (WHERE answered),
        min(handlers_loaded) FILTER (WHERE answered), max(handlers_total) FILTER (WHERE answered),
        min(ts) FILTER (WHERE bad OR degraded), max(ts) FILTER (WHERE bad OR degraded) FROM {h}""", [names]),
        Q(f"SELECT outcome, count(*) FROM {h} WHERE bad GROUP BY 1 ORDER BY 1", [names])]
    return {
        "probes": names, "samples": int(n), "answered": int(answered), "unanswered": int(failed),
        "degraded": int(degraded), "unhealthy": int(failed + degraded),
        "failed_by_outcome": {o: int(c) for o, c in why},
        "min_loaded": None if lo is None else int(lo), "handlers_total": None if hi is None else int(hi),
        "first_unhealthy": _ts(first), "last_unhealthy": _ts(last),
    }


@steps
def _deployments(con):
    rows = yield Q("""SELECT deployment_id, min(ts), max(ts), count(*) FROM s WHERE deployment_id IS NOT NULL
        GROUP BY 1 ORDER BY 2, 1""")
    ids = [{"id": d, "first": _ts(a), "last": _ts(b), "samples": int(n)} for d, a, b, n in rows]
    # Walked on integer codes of the ids, as the flags are.
    names = [d["id"] for d in ids]
    walk = []
    if len(names) == 1:  # one deployment all along (most windows): no sort
        walk = [(a, 0) for _d, a, _b, _n in rows]
    elif names:
        codes = unique("deploy_codes")
        con.register(codes, pd.DataFrame({"deployment_id": names, "code": range(len(names))}))
        try:
            walk = yield Q(f"""SELECT ts, code FROM (
                SELECT ts, probe, tenant, code, lag(code) OVER (ORDER BY ts, probe, tenant) prev FROM (
                    SELECT ts, probe, tenant, deployment_id FROM s WHERE deployment_id IS NOT NULL) JOIN {codes} USING (deployment_id))
                WHERE prev IS NULL OR prev <> code ORDER BY ts, probe, tenant""")
        finally:
            con.unregister(codes)
    runs = [{"id": names[c], "from": _ts(t)} for t, c in walk]
    rollbacks = [
        {"ts": r["from"], "to": r["id"], "from": runs[i - 1]["id"]}
        for i, r in enumerate(runs) if i >= 2 and any(p["id"] == r["id"] for p in runs[: i - 1])
    ]
    return {"ids": ids, "sequence": runs, "changes": max(0, len(runs) - 1), "rollbacks": rollbacks}


@steps
def _tls(con):
    """What the https samples' handshakes said: the TLS versions negotiated and the earliest and
    latest certificate expiry seen (None when no sample spoke TLS)."""
    rows = yield Q("""SELECT tls_version, count(*), min(cert_expiry), max(cert_expiry) FROM s
        WHERE tls_version IS NOT NULL GROUP BY 1 ORDER BY 1""")
    if not rows:
        return None
    lows = [r[2] for r in rows if r[2] is not None]
    highs = [r[3] for r in rows if r[3] is not None]
    return {"versions": {v: int(n) for v, n, _lo, _hi in rows}, "samples": int(sum(r[1] for r in rows)),
            "earliest_expiry": _ts(min(lows)) if lows else None, "latest_expiry": _ts(max(highs)) if highs else None}


@steps
def _anomalies(con):
    groups = [{"probe": p, "message": m, "count": int(c), "first": _ts(a), "last": _ts(b)}
              for p, m, c, a, b in (yield Q("""SELECT probe, msg, count(*), min(ts), max(ts) FROM (
                  SELECT ts, probe, unnest(assertion_failures) AS msg FROM sx WHERE outcome = 'assertion_failed')
                  GROUP BY ALL ORDER BY 3 DESC, 4, 1, 2"""))]
    return {"assertion_failures": groups}


@steps
def _evidence(con):
    """Raw responses: the first failure of each kind, and one baseline per probe."""
    rows = yield Q("""SELECT probe, min(ts), arg_min(outcome, ts), arg_min(status, ts), arg_min(error_code, ts),
        arg_min(evidence, ts) FROM (
            SELECT ts, probe, outcome, status, error_code, evidence, outcome = 'ok' AS ok FROM sx WHERE evidence IS NOT NULL
            UNION ALL SELECT ts, probe, outcome, status, error_code, evidence, outcome = 'ok' FROM rest
            WHERE evidence IS NOT NULL AND source = 'check')
        GROUP BY probe, ok, CASE WHEN ok THEN NULL ELSE outcome END, CASE WHEN ok THEN NULL ELSE status END,
                 CASE WHEN ok THEN NULL ELSE error_code END""")
    out = [{"kind": "baseline" if outcome == "ok" else "failure", "probe": probe, "ts": _ts(ts), "outcome": outcome,
            "status": None if status is None else int(status), "error_code": code, "response": json.loads(raw)}
           for probe, ts, outcome, status, code, raw in rows]
    return sorted(out, key=lambda e: (e["kind"] != "failure", e["ts"], e["probe"]))


# -- data quality ---------------------------------------------------------------------------


def _quality(hourly: pd.DataFrame, probes: dict, flips: dict) -> dict:
    """Thin hours (under half the expected samples) and flapping (ok/failed alternating) per probe."""
    full = hourly[hourly["expected"] >= 1] if len(hourly) else hourly
    thin = full[full["actual"] < 0.5 * full["expected"]].groupby("probe").size() if len(full) else {}
    out = {}
    for name, st in probes.items():
        t, f = int(flips.get(name, 0)), st["errors"]
        # Flapping: failures come and go one at a time rather than in bursts.
        out[name] = {"thin_hours": int(thin.get(name, 0)), "transitions": t, "failures": f,
                     "flapping": t >= 10 and t >= f}
    return dict(sorted(out.items()))
