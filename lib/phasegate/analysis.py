"""Statistics of a window: samples in (through `store.read_samples`), numbers out.

Everything the criteria and the notebook need is computed here, once. Counts are
exact; percentiles are numpy's (linear interpolation) over samples that got an HTTP
response (a timeout has no latency to rank: it is counted as an error instead).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
import pandas as pd

from .errors import DataError
from .groups import (MergedRuns, NumpyThreads, epoch_us, group_codes, group_extreme, group_names, grouped_percentiles,
                     series_order, sorted_groups)
from .probe import ERROR_OUTCOMES
from .profile import Profile
from .stats import fisher_greater, hodges_lehmann, mann_whitney_greater, rate_upper
from .store import read_samples, reused_memory, sha256
from .tally import Rows, grouped_probe_stats, latencies, probe_stats, round_ms
from .window import Window, iso, utcnow

QS = (0.5, 0.95, 0.99)  # the percentiles of the timeline and the tenant table
COLUMNS = ["source", "probe", "tenant", "status", "outcome", "error_code", "latency_ms", "health_status",
           "handlers_loaded", "handlers_total", "deployment_id", "flags", "simulated"]


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
    samples: pd.DataFrame = field(repr=False)
    baseline_samples: pd.DataFrame | None = field(default=None, repr=False)
    traffic_samples: pd.DataFrame | None = field(default=None, repr=False)  # logs and Prometheus rows
    # First and last time of each kind of failure (Rows.KINDS): when it happened, for page 1.
    occurrences: dict = field(default_factory=dict)

    @property
    def elapsed_s(self) -> float:
        return max(0.0, (self.observed_end - self.window.start).total_seconds())


def _by_probe(df: pd.DataFrame, rows: Rows, confidence: float, grouped=None) -> dict:
    codes, names = rows.probe, rows.probe_names
    stats = grouped_probe_stats(rows, codes, len(names), confidence, grouped)
    return {name: st for name, st in sorted(zip(names, stats)) if st["samples"]}


def _ts(x) -> str | None:
    return None if x is None or pd.isna(x) else iso(x.to_pydatetime())


def analyze(profile: Profile, data_dir, window: Window, now: datetime | None = None,
            bucket_s: float = 300.0, baseline: tuple | None = None) -> Analysis:
    """`baseline`: (data_dir, Window) of the control (yachts without the flags, or the previous
    phase's window) to compare the canary against."""
    with reused_memory():  # every pass below allocates 40-80 MB arrays on a fleet window
        return _analyze(profile, data_dir, window, now, bucket_s, baseline)


def _analyze(profile: Profile, data_dir, window: Window, now: datetime | None, bucket_s: float,
             baseline: tuple | None) -> Analysis:
    now = now or utcnow()
    observed_end = window.observed_end(now)
    if observed_end <= window.start:
        raise DataError(f"window starts in the future ({iso(window.start)}): nothing to analyse yet")
    df = read_samples(data_dir, window.start, observed_end, columns=[*COLUMNS, "evidence"], categorical=True)
    # Files are read in time order and each is sorted: usually no sort (nor its copy of every column).
    if not df["ts"].is_monotonic_increasing:
        df = df.sort_values("ts", kind="stable")
    df = df.reset_index(drop=True)
    # Raw responses are kept on few rows (failures, a baseline now and then): read with the rest, since
    # a scan for just those rows decodes every column anyway (10 M samples: 0.4 s), then dropped.
    evid = df.loc[df["evidence"].notna().to_numpy(), ["ts", "probe", "status", "outcome", "error_code", "evidence"]]
    df = df.drop(columns="evidence")
    # Real traffic (imported request logs) is reported beside the probes, never mixed into them.
    is_traffic = (df["source"] == "traffic").to_numpy()
    is_prom = df["source"].isin(["prometheus", "prometheus-histogram"]).to_numpy()
    traffic_df, prom_df, hist_df = df[is_traffic], df.iloc[:0].assign(count=[]), df.iloc[:0].assign(count=[])
    if is_prom.any():
        # Only Prometheus rows stand for more than one request (`count`): read that column for them alone.
        p = read_samples(data_dir, window.start, observed_end, columns=[*COLUMNS, "count"], categorical=True,
                         sources=["prometheus", "prometheus-histogram"])
        prom_df, hist_df = p[(p["source"] == "prometheus").to_numpy()], p[(p["source"] == "prometheus-histogram").to_numpy()]
    is_platform = (df["source"] == "platform").to_numpy()
    other = is_traffic | is_prom | is_platform
    if other.any():  # a boolean filter copies every column: only when there is something to drop
        df = df[~other].reset_index(drop=True)
    platform = None
    if is_platform.any():
        platform = _platform(read_samples(data_dir, window.start, observed_end, sources=["platform"], columns=[
            "probe", "outcome", "error", "request_id", "deployment_id", "error_code", "health_status", "flags"]))
    inputs = {
        "files": [{"path": str(f), "sha256": sha256(f)} for f in df.attrs.get("input_files", [])],
        "excluded": list(df.attrs.get("excluded", [])),
    }
    if df.empty:
        raise DataError(f"no samples in {data_dir} between {iso(window.start)} and {iso(observed_end)}"
                        + (f" ({len(inputs['excluded'])} file(s) excluded as unreadable)" if inputs["excluded"] else ""))
    conf = profile.criteria.confidence
    rows = Rows.of(df)
    tl_keys = timeline_keys(df, rows, bucket_s)
    # The sorts (pure numpy) run on worker threads while this thread does the rest.
    with NumpyThreads() as bg:
        series = bg.submit(series_order, rows.probe, rows.tenant, rows.bad, rows.lat, len(rows.probe_names),
                           len(rows.tenant_names), QS)
        # Percentiles straight from the sort: the sorted copy of every latency is not kept.
        tl_pct = bg.submit(grouped_percentiles, tl_keys[0], rows.lat, tl_keys[1], QS)
        by_probe = bg.submit(sorted_groups, rows.probe, rows.lat, len(rows.probe_names))
        # Assertion failures (lists of strings) are only needed on few rows: read those rows alone.
        fails = read_samples(data_dir, window.start, observed_end, outcomes=["assertion_failed"],
                             columns=["probe", "assertion_failures"]).sort_values("ts", kind="stable")
        hourly = coverage_hourly(profile, df, window.start, observed_end, rows)
        health, flags, deployments = _health(profile, df, rows), _flags(df), _deployments(df)
        coverage = _coverage(profile, df, window.start, observed_end, rows)
        flips, tenant_pct = series.result()
        quality = _quality(hourly, rows, flips)
        base_df = None if baseline is None else read_samples(baseline[0], baseline[1].start, baseline[1].end,
                                                             columns=["probe", "status", "outcome", "latency_ms"])
        grouped = {"probe": by_probe.result()}
        grouped["overall"] = _overall_sorted(rows, grouped["probe"])
    return Analysis(
        window=window, observed_end=observed_end, now=now, probes=_by_probe(df, rows, conf, grouped["probe"]),
        overall=grouped_probe_stats(rows, None, 1, conf, grouped["overall"])[0],
        health=health, flags=flags, deployments=deployments,
        anomalies=_anomalies(fails), coverage=coverage, evidence=_evidence(evid), inputs=inputs, quality=quality,
        baseline=None if base_df is None else compare(df, base_df), tenants=tenant_stats(df, rows, conf, tenant_pct),
        platform=platform,
        prometheus=None if prom_df.empty else {**_prom_stats(prom_df), "p99_from_histogram": _hist_p99(hist_df)},
        traffic=None if traffic_df.empty else {
            "overall": probe_stats(traffic_df, conf),
            "routes": {r: probe_stats(g, conf) for r, g in traffic_df.groupby("probe", sort=True, observed=True)},
        },
        timeline=timeline(df, rows, bucket_s, tl_pct.result(), tl_keys), coverage_hourly=hourly, samples=df, baseline_samples=base_df,
        traffic_samples=_traffic_samples(traffic_df, prom_df), occurrences=_occurrences(df, rows),
    )


def _occurrences(df: pd.DataFrame, rows: Rows) -> dict:
    """{kind: [first, last]} of the rows of each kind (errors, 5xx, FEATURE_DISABLED, ...), None when none."""
    us = epoch_us(df["ts"])
    out = {}
    for bit, name in enumerate(Rows.KINDS):
        at = np.flatnonzero(rows.kinds & np.uint8(1 << bit))
        out[name] = [_us(us[at[0]]), _us(us[at[-1]])] if len(at) else None
    return out


def _overall_sorted(rows: Rows, by_probe):
    """sorted_groups' result for all rows, read from the probes' sorted groups (no sort of its own:
    10 M samples, 0.3-0.5 s of a worker and an 80 MB copy), unless a latency has no probe."""
    no_probe = rows.probe < 0
    if no_probe.any() and not np.isnan(rows.lat[no_probe]).all():
        return sorted_groups(None, rows.lat, 1)
    v, starts, counts = by_probe
    merged = MergedRuns([v[s:s + n] for s, n in zip(starts, counts)])
    return merged, np.zeros(1, np.int64), np.array([len(merged)])


def _traffic_samples(traffic_df: pd.DataFrame, prom_df: pd.DataFrame) -> pd.DataFrame | None:
    """Log rows (one request each: count 1) and Prometheus increments (`count` requests each)."""
    parts = [f for f in (traffic_df.assign(count=1.0), prom_df) if len(f)]
    return pd.concat(parts) if parts else None


def tenant_stats(df: pd.DataFrame, rows: Rows, confidence: float = 0.95, pct=None) -> dict | None:
    """Every probe statistic per tenant, worst first (error rate, then 5xx, then p99), or None
    when no sample carries a tenant. Grouped on integer codes: a 500-yacht fleet is one pass."""
    if not (rows.tenant >= 0).any():
        return None
    codes, names = rows.tenant, rows.tenant_names
    m = len(names)
    t = rows.tally(codes, m)
    n, errors, five, fdc, timeouts = t["n"], t["bad"], t["five"], t["disabled"], t["timeout"]
    if pct is None:  # (given: `series_order`'s)
        pct = grouped_percentiles(codes, rows.lat, m, QS)
    # The probe with most errors, per tenant: where to look first (counted on the error rows alone).
    n_probes = max(len(rows.probe_names), 1)
    at = np.flatnonzero(rows.bad & (codes >= 0))
    by_pair = np.bincount(codes[at] * n_probes + rows.probe[at], minlength=m * n_probes).reshape(m, n_probes)
    probe_names = rows.probe_names
    rows = []
    for i, name in enumerate(names):
        if not n[i]:
            continue
        worst = int(by_pair[i].argmax()) if errors[i] else None
        rows.append({
            "tenant": name, "samples": int(n[i]), "errors": int(errors[i]), "error_rate": float(errors[i] / n[i]),
            "rate_upper": rate_upper(int(errors[i]), int(n[i]), confidence),
            "http_5xx": int(five[i]), "feature_disabled": int(fdc[i]), "timeouts": int(timeouts[i]),
            "p50_ms": round_ms(None if np.isnan(pct[i, 0]) else pct[i, 0]),
            "p95_ms": round_ms(None if np.isnan(pct[i, 1]) else pct[i, 1]),
            "p99_ms": round_ms(None if np.isnan(pct[i, 2]) else pct[i, 2]),
            "worst_probe": None if worst is None else probe_names[worst],
            "worst_probe_errors": None if worst is None else int(by_pair[i, worst]),
        })
    rows.sort(key=lambda r: (-r["error_rate"], -r["http_5xx"], -(r["p99_ms"] or 0.0), r["tenant"]))
    untagged = int((codes < 0).sum())
    return {"count": len(rows), "untagged_samples": untagged, "rows": rows}


def _prom_stats(df: pd.DataFrame) -> dict:
    """Requests and 5xx per route from Prometheus counter increments (each row stands for `count`)."""
    def block(g):
        five = g["status"].between(500, 599).fillna(False).astype(bool)
        by_status = g.groupby(g["status"].astype("Int64").astype(str), observed=True)["count"].sum()
        n, k = float(g["count"].sum()), float(g.loc[five, "count"].sum())
        return {"samples": int(round(n)), "http_5xx": int(round(k)), "errors": int(round(k)),
                "error_rate": k / n if n else None,
                "status_counts": {s: int(round(v)) for s, v in sorted(by_status.items()) if v}}
    return {"overall": block(df),
            "routes": {r: block(g) for r, g in df.groupby("probe", sort=True, observed=True)}}


def _hist_p99(h: pd.DataFrame, q: float = 0.99) -> dict:
    """P99 per route from cumulative histogram buckets, interpolated as Prometheus'
    histogram_quantile does; the true value lies somewhere in the bucket [lower, upper]."""
    out = {}
    for route, g in h.groupby("probe", sort=True, observed=True):
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


def _quality(hourly: pd.DataFrame, rows: Rows, flips: np.ndarray) -> dict:
    """Thin hours (under half the expected samples) and flapping (ok/failed alternating) per
    probe; `flips`: transitions per probe code (`series_order`)."""
    full = hourly[hourly["expected"] >= 1]
    thin = full[full["actual"] < 0.5 * full["expected"]].groupby("probe").size()
    t = rows.tally(rows.probe, len(rows.probe_names))
    fails, present = t["bad"], t["n"]
    out = {}
    for code, name in enumerate(rows.probe_names):
        if not present[code]:
            continue
        t, f = int(flips[code]), int(fails[code])
        # Flapping: failures come and go one at a time rather than in bursts.
        out[name] = {"thin_hours": int(thin.get(name, 0)), "transitions": t, "failures": f,
                     "flapping": t >= 10 and t >= f}
    return dict(sorted(out.items()))


def compare(canary: pd.DataFrame, base: pd.DataFrame) -> dict:
    """Per probe: Mann-Whitney U on latency, Hodges-Lehmann shift, p99 ratio, Fisher on errors."""
    out = {}
    for probe in sorted(set(canary["probe"]) & set(base["probe"])):
        c, b = canary[canary["probe"] == probe], base[base["probe"] == probe]
        x, y = latencies(c), latencies(b)
        kc, kb = int(c["outcome"].isin(ERROR_OUTCOMES).sum()), int(b["outcome"].isin(ERROR_OUTCOMES).sum())
        if len(x) < 2 or len(y) < 2:
            continue
        _u, p_lat = mann_whitney_greater(x, y)
        shift = hodges_lehmann(x, y)
        out[probe] = {
            "n_canary": int(len(c)), "n_base": int(len(b)),
            "median_canary_ms": round_ms(np.median(x)), "median_base_ms": round_ms(np.median(y)),
            "hl_shift_ms": round_ms(shift), "rel_shift": round(shift / float(np.median(y)), 4) if np.median(y) else 0.0,
            "p_latency": p_lat, "p99_ratio": round(float(np.percentile(x, 99) / np.percentile(y, 99)), 4),
            "err_canary": kc / len(c), "err_base": kb / len(b), "p_errors": fisher_greater(kc, len(c), kb, len(b)),
        }
    return {"probes": out}


def _health(profile: Profile, df: pd.DataFrame, rows: Rows) -> dict:
    """Every health probe that did not get a healthy answer is unhealthy: a 5xx, a timeout, a
    refused connection or an invalid body as much as a "degraded" status or handlers below total."""
    names = [p.name for p in profile.probes if "handlers_total" in p.extract or "health_status" in p.extract]
    # Only the health probes' rows, picked by probe code: a fleet has millions of others.
    at = np.flatnonzero(np.append(np.isin(rows.probe_names, names), False)[rows.probe])  # code -1 picks the False
    loaded = df["handlers_loaded"].array[at].to_numpy(dtype=float, na_value=np.nan)
    total = df["handlers_total"].array[at].to_numpy(dtype=float, na_value=np.nan)
    status, status_names = group_codes(df["health_status"])[at], group_names(df["health_status"])
    healthy = status_names.index("healthy") if "healthy" in status_names else -2
    failed = rows.bad[at]  # no answer, or not an expected one
    answered = ~failed & (~np.isnan(total) | (status >= 0))
    # A count compared only where both are known (a missing one is not a mismatch).
    degraded = ((loaded != total) & ~np.isnan(loaded) & ~np.isnan(total)) | ((status >= 0) & (status != healthy))
    bad = failed | degraded
    seen_loaded, seen_total = loaded[answered & ~np.isnan(loaded)], total[answered & ~np.isnan(total)]
    bad_us = epoch_us(df["ts"])[at[bad]]
    outcome_names = rows.outcome_names
    why = np.bincount(rows.outcome[at[failed]], minlength=len(outcome_names)) if failed.any() else ()
    return {
        "probes": names, "samples": int(len(at)), "answered": int(answered.sum()),
        "unanswered": int(failed.sum()), "degraded": int((degraded & ~failed).sum()), "unhealthy": int(bad.sum()),
        "failed_by_outcome": {outcome_names[i]: int(k) for i, k in enumerate(why) if k},
        "min_loaded": int(seen_loaded.min()) if len(seen_loaded) else None,
        "handlers_total": int(seen_total.max()) if len(seen_total) else None,
        "first_unhealthy": _us(bad_us[0]) if len(bad_us) else None,
        "last_unhealthy": _us(bad_us[-1]) if len(bad_us) else None,
    }


def _flags(df: pd.DataFrame) -> dict:
    # Flag JSON repeats: decode each distinct value once, count on integer codes, and walk only
    # the rows where the value changes. A flag the answer did not carry (an error body) is not
    # observed: it is neither on nor off.
    names, codes, us = _set_rows(df, "flags")
    counts = np.bincount(codes, minlength=len(names))
    decoded = {i: {k: v for k, v in json.loads(names[i]).items() if v is not None} for i in np.flatnonzero(counts)}
    observed = np.array([bool(decoded.get(i)) for i in range(len(names))], dtype=bool)
    keep = observed[codes] if len(codes) else np.zeros(0, bool)
    codes, us = codes[keep], us[keep]
    off: dict[str, int] = {}
    off_obs = 0
    for i, values in decoded.items():
        n = int(counts[i]) if observed[i] else 0
        if any(v is not True for v in values.values()):
            off_obs += n
        for name, v in values.items():
            if v is not True and n:
                off[name] = off.get(name, 0) + n
    change = np.concatenate([[True], codes[1:] != codes[:-1]]) if len(codes) else np.zeros(0, bool)
    states, changes = {}, []
    for t, c in zip(us[change], codes[change]):
        for name, value in decoded[c].items():
            if states.get(name, _UNSET) != value:
                changes.append({"ts": _us(t), "flag": name, "value": value})
            states[name] = value
    return {"observations": int(len(codes)), "off_observations": off_obs, "last": states, "off_samples": off,
            "changes": changes}


_UNSET = object()


def _set_rows(df: pd.DataFrame, column: str):
    """(the column's values, the int64 code and the epoch microseconds of each row where it is set)."""
    all_codes = group_codes(df[column])
    seen = all_codes >= 0
    return group_names(df[column]), all_codes[seen].astype(np.int64), epoch_us(df["ts"])[seen]


def _deployments(df: pd.DataFrame) -> dict:
    # On integer codes and int64 microseconds: no per-id DataFrame, no string comparisons.
    names, codes, us = _set_rows(df, "deployment_id")
    n = np.bincount(codes, minlength=len(names))
    first = np.full(len(names), np.iinfo(np.int64).max)
    last = np.full(len(names), np.iinfo(np.int64).min)
    if len(codes):
        group_extreme(first, codes, us, np.minimum)
        group_extreme(last, codes, us, np.maximum)
    order = sorted((i for i in range(len(names)) if n[i]), key=lambda i: first[i])
    ids = [{"id": names[i], "first": _us(first[i]), "last": _us(last[i]), "samples": int(n[i])} for i in order]
    change = np.concatenate([[True], codes[1:] != codes[:-1]]) if len(codes) else np.zeros(0, bool)
    runs = [{"id": names[c], "from": _us(t)} for c, t in zip(codes[change], us[change])]
    rollbacks = [
        {"ts": r["from"], "to": r["id"], "from": runs[i - 1]["id"]}
        for i, r in enumerate(runs) if i >= 2 and any(p["id"] == r["id"] for p in runs[: i - 1])
    ]
    return {"ids": ids, "sequence": runs, "changes": max(0, len(runs) - 1), "rollbacks": rollbacks}


def _platform(p: pd.DataFrame) -> dict:
    """The hosting platform's deploys and flags inside the window. Every deploy that started or
    finished in it is unexpected (a phase runs on one deployment); a rollback trigger is a rollback."""
    p = p.sort_values("ts", kind="stable")
    ok = p[p["outcome"] == "ok"]
    dep = ok[ok["probe"] == "render.deploy"].drop_duplicates("request_id")
    deploys: dict[str, dict] = {}
    for ts, did, trigger, state in zip(dep["ts"], dep["deployment_id"], dep["error_code"], dep["health_status"]):
        d = deploys.setdefault(did, {"id": did, "trigger": None if pd.isna(trigger) else trigger,
                                     "started": None, "finished": None, "status": None})
        if state == "started":
            d["started"] = _ts(ts)
        else:
            d["finished"], d["status"] = _ts(ts), state
    listed = sorted(deploys.values(), key=lambda d: d["started"] or d["finished"])
    env = ok[ok["probe"] == "render.env"]
    failed = p[p["outcome"] != "ok"]
    return {
        "deploys": listed,
        "rollbacks": [d for d in listed if d["trigger"] in ("rollback", "auto_rollback")],
        "flags": _flags(env) if len(env) else None,
        "reads": int(len(env)),
        "failed_reads": [{"ts": _ts(ts), "probe": pr, "outcome": o, "error": e}
                         for ts, pr, o, e in zip(failed["ts"], failed["probe"], failed["outcome"], failed["error"])],
    }


def _epoch_us(t: datetime) -> int:
    return pd.Timestamp(t).value // 1000  # .value is nanoseconds whatever the unit


def _us(t) -> str:
    return _ts(pd.Timestamp(int(t), unit="us", tz="UTC"))


def _anomalies(fails: pd.DataFrame) -> dict:
    groups: dict[str, dict] = {}
    for ts, probe, msgs in zip(fails["ts"], fails["probe"], fails["assertion_failures"]):
        for msg in msgs if msgs is not None else ():
            g = groups.setdefault(f"{probe}: {msg}", {"probe": probe, "message": msg, "count": 0, "first": _ts(ts)})
            g["count"] += 1
            g["last"] = _ts(ts)
    return {"assertion_failures": sorted(groups.values(), key=lambda g: -g["count"])}


def _expected(profile: Profile) -> dict:
    from .collector import probe_jobs

    out: dict[str, float] = {}
    for probe, _tenant in probe_jobs(profile):
        out[probe.name] = out.get(probe.name, 0.0) + 1.0 / (probe.interval_s or profile.target.interval_s)
    return out  # samples per second per probe


def gap_slack_s(rate: dict) -> float:
    """The gap between samples (s) that counts as the collector down: no attempts at all. Two of
    the longest intervals between a probe's samples (`_expected` rates) tolerate jitter."""
    return 2.0 / min(rate.values()) if rate else 0


def _coverage(profile: Profile, df: pd.DataFrame, start: datetime, end: datetime, rows: Rows) -> dict:
    span = (end - start).total_seconds()
    rate = _expected(profile)
    expected = {p: r * span for p, r in rate.items()}
    counts = rows.tally(rows.probe, len(rows.probe_names))["n"]  # the probe statistics' count, reused
    actual = {p: int(c) for p, c in zip(rows.probe_names, counts)}
    per_probe = {p: {"expected": round(e, 1), "actual": int(actual.get(p, 0)),
                     "ratio": round(min(1.0, actual.get(p, 0) / e), 4) if e else None} for p, e in expected.items()}
    total_e = sum(expected.values())
    ratio = min(1.0, len(df) / total_e) if total_e else None
    slack = gap_slack_s(rate)
    # In integer microseconds, gaps inside the data apart from the two at the window's edges:
    # float seconds and a concatenated copy of 10 M timestamps cost more than the rest.
    us = epoch_us(df["ts"])
    s_us, e_us = _epoch_us(start), _epoch_us(end)
    inner = np.diff(us)
    edge_gaps = [us[0] - s_us, e_us - us[-1]] if len(us) else [e_us - s_us]
    j = int(np.argmax(inner)) if len(inner) else -1
    candidates = [(edge_gaps[0], s_us, us[0] if len(us) else e_us)]
    if j >= 0:
        candidates.append((int(inner[j]), int(us[j]), int(us[j + 1])))
    if len(us):
        candidates.append((edge_gaps[1], int(us[-1]), e_us))
    longest_us, gap_from, gap_to = max(candidates, key=lambda c: c[0])  # the first of equal gaps wins
    slack_us = int(slack * 1e6)
    over = inner[inner > slack_us]
    down_us = int(over.sum()) - slack_us * len(over) + sum(max(0, int(g) - slack_us) for g in edge_gaps)
    longest = longest_us / 1e6
    # Service failing: the longest stretch in which every attempt failed.
    edges_f = np.diff(rows.bad.astype(np.int8), prepend=np.int8(0), append=np.int8(0))
    starts, ends = np.flatnonzero(edges_f == 1), np.flatnonzero(edges_f == -1) - 1
    best = float((us[ends] - us[starts]).max()) / 1e6 if len(starts) else 0.0
    return {
        "expected": round(total_e, 1), "actual": int(len(df)), "ratio": None if ratio is None else round(ratio, 4),
        "per_probe": per_probe,
        "longest_gap_s": round(longest, 3),
        "longest_gap_start": _us(gap_from), "longest_gap_end": _us(gap_to),
        "longest_gap_cause": "collector down (no attempts)" if longest > slack else "none",
        "collector_down_s": round(down_us / 1e6, 3),
        "longest_failing_s": round(best, 3),
        "min_coverage": profile.criteria.min_coverage, "max_gap_s": profile.criteria.max_gap_s,
        "sufficient": bool(ratio is not None and ratio >= profile.criteria.min_coverage
                           and longest <= profile.criteria.max_gap_s),
    }


def timeline_keys(df: pd.DataFrame, rows: Rows, bucket_s: float = 300.0):
    """(key, number of keys, (first bucket, probes, step in us)): one integer per (bucket, probe)."""
    step = int(bucket_s * 1e6)
    us = epoch_us(df["ts"])
    b0 = int(us.min()) // step if len(us) else 0
    n_probes = max(len(rows.probe_names), 1)  # as every other grouping by probe: no pass over the codes
    key = _bucket_keys(us, b0 * step, step, rows.probe, n_probes)
    return key, int(key.max(initial=0)) + 1, (b0, n_probes, step)


def _bucket_keys(us: np.ndarray, origin_us: int, step_us: int, pcodes: np.ndarray, n_probes: int) -> np.ndarray:
    """One integer per row: (buckets of step_us since origin_us) * n_probes + probe code, as int32
    when the keys fit (every fresh MB costs kernel time on our VM), computed in place."""
    key = us - origin_us
    key //= step_us
    if (int(key.max(initial=0)) + 1) * n_probes <= np.iinfo(np.int32).max:
        key = key.astype(np.int32)
    key *= n_probes
    key += pcodes
    return key


def timeline(df: pd.DataFrame, rows: Rows, bucket_s: float = 300.0, pct=None, keys=None) -> pd.DataFrame:
    """Per bucket and probe: samples, errors, 5xx, latency p50/p95/p99 (ms); only pairs with samples."""
    if df.empty:
        return pd.DataFrame()
    key, n_keys, (b0, n_probes, step) = keys or timeline_keys(df, rows, bucket_s)
    t = rows.tally(key, n_keys)
    samples, errors, fives = t["n"], t["bad"], t["five"]
    if pct is None:  # (given: computed on a worker thread)
        pct = grouped_percentiles(key, rows.lat, n_keys, QS)
    k = np.flatnonzero(samples)
    names = np.asarray(rows.probe_names, dtype=object)
    return pd.DataFrame({
        "bucket": pd.to_datetime((k // n_probes + b0) * step, unit="us", utc=True),
        "probe": names[k % n_probes],
        "samples": samples[k], "errors": errors[k].astype(np.int64), "http_5xx": fives[k].astype(np.int64),
        "p50_ms": pct[k, 0], "p95_ms": pct[k, 1], "p99_ms": pct[k, 2],
    })


def coverage_hourly(profile: Profile, df: pd.DataFrame, start: datetime, end: datetime, rows: Rows) -> pd.DataFrame:
    """Per hour and probe: actual samples, expected samples, availability (share ok or answered)."""
    rate = _expected(profile)
    hours = pd.date_range(pd.Timestamp(start).floor("h"), pd.Timestamp(end), freq="h")
    # Counted on integer (hour, probe) keys: a groupby on 10 M timestamps costs more than the rest.
    pnames = rows.probe_names
    n_p = max(len(pnames), 1)
    key = _bucket_keys(epoch_us(df["ts"]), _epoch_us(hours[0]), 3_600_000_000, rows.probe, n_p)
    t = rows.tally(key, len(hours) * n_p)
    actual, good = t["n"], t["n"] - t["bad"]
    at = {p: j for j, p in enumerate(pnames)}
    out = []
    for i, h in enumerate(hours[hours < pd.Timestamp(end)]):
        lo, hi = max(h, pd.Timestamp(start)), min(h + pd.Timedelta(hours=1), pd.Timestamp(end))
        span = max(0.0, (hi - lo).total_seconds())
        for p, r in rate.items():
            k = i * n_p + at[p] if p in at else None
            n = 0 if k is None else int(actual[k])
            out.append({"hour": h, "probe": p, "expected": r * span, "actual": n,
                        "availability": (good[k] / n) if n else np.nan})
    return pd.DataFrame(out)


def _evidence(ev: pd.DataFrame) -> list:
    """Raw responses: the first failure of each kind, and one baseline per probe."""
    ok = (ev["outcome"] == "ok").to_numpy(dtype=bool)
    # Only each kind's first row can be picked: drop the rest before the loop (a fleet has 10^5 failures).
    kind = pd.DataFrame({"ok": ok, "probe": ev["probe"].to_numpy(), "outcome": ev["outcome"].to_numpy()})
    for c in ("status", "error_code"):
        kind[c] = ev[c].to_numpy(dtype=object)
    kind.loc[ok, ["outcome", "status", "error_code"]] = None
    ev = ev[~kind.duplicated().to_numpy()]
    out, seen = [], set()
    for ts, probe, outcome, status, code, raw in zip(ev["ts"], ev["probe"], ev["outcome"], ev["status"],
                                                      ev["error_code"], ev["evidence"]):
        kind = ("baseline", probe) if outcome == "ok" else ("failure", probe, outcome, None if pd.isna(status) else int(status),
                                                           None if pd.isna(code) else code)
        if kind in seen:
            continue
        seen.add(kind)
        out.append({"kind": kind[0], "probe": probe, "ts": _ts(ts), "outcome": outcome,
                    "status": None if pd.isna(status) else int(status),
                    "error_code": None if pd.isna(code) else code, "response": json.loads(raw)})
    return sorted(out, key=lambda e: (e["kind"] != "failure", e["ts"]))
