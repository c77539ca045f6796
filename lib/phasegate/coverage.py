"""Coverage: samples against what the profile schedules, the gaps between samples, and the
stretches in which every attempt failed, over `s` (the window's probe samples, `phasegate.analysis`).

The gaps need the samples in time order, but not sorted: a gap longer than a time bucket lies
between two buckets, so per-bucket first and last times give every gap beyond the slack and the
longest gap whenever it is at least the bucket's width (buckets are made finer until it is). The
failed stretches need order only inside the buckets that hold a failure; when those are most of
the buckets, the window is sorted whole once, as before. A window of 100 M samples without
failures took 18.3 s sorted whole (the sort spilled past the memory limit) and 1.7 s bucketed.
"""

from __future__ import annotations

from datetime import datetime

import numpy as np
import pandas as pd

from .aggregates import LISTED, _ts, sql_literal
from .batch import Q, steps
from .profile import Profile

BUCKET_US = 1_000_000  # the first bucket width: 1 s (a day is at most 86,400 buckets)


def expected_rates(profile: Profile) -> dict:
    """Samples per second per probe, as the profile schedules them."""
    from .collector import probe_jobs

    out: dict[str, float] = {}
    for probe, _tenant in probe_jobs(profile):
        out[probe.name] = out.get(probe.name, 0.0) + 1.0 / (probe.interval_s or profile.target.interval_s)
    return out


def gap_slack_s(profile: Profile) -> float:
    """The gap between samples (s) that counts as the collector down: no attempts at all. Two of
    the longest interval of any one job (a probe, for one tenant): a fleet's jobs may all fire
    together, so the time between two bursts is the schedule, not a stop; jitter is tolerated."""
    from .collector import probe_jobs

    return 2.0 * max((probe.interval_s or profile.target.interval_s for probe, _t in probe_jobs(profile)), default=0.0)


@steps
def coverage_hourly(con, profile: Profile, start: datetime, end: datetime):
    """Per hour and probe: actual samples, expected samples, availability (share not failed)."""
    rate = expected_rates(profile)
    rows = yield Q("SELECT us // 3600000000, probe, count(*), count(*) FILTER (WHERE NOT bad) FROM s GROUP BY ALL")
    got = {(pd.Timestamp(h * 3_600_000_000, unit="us", tz="UTC"), p): (int(n), int(good)) for h, p, n, good in rows}
    hours = pd.date_range(pd.Timestamp(start).floor("h"), pd.Timestamp(end), freq="h")
    out = []
    for h in hours[hours < pd.Timestamp(end)]:
        lo, hi = max(h, pd.Timestamp(start)), min(h + pd.Timedelta(hours=1), pd.Timestamp(end))
        span = max(0.0, (hi - lo).total_seconds())
        for p, r in rate.items():
            n, good = got.get((h, p), (0, 0))
            out.append({"hour": h, "probe": p, "expected": r * span, "actual": n,
                        "availability": (good / n) if n else np.nan})
    return pd.DataFrame(out)


def _buckets(width: int, slack_us: int, with_failures: bool) -> Q:
    """One pass over `s` in buckets of `width` µs: the first and last sample, the longest gap
    between buckets (the first of equal ones: its end), the time beyond the slack in gaps between
    buckets (exact when width ≤ slack: a gap inside a bucket is shorter), how many buckets, samples
    and buckets spanning some time; and, if asked, how many buckets hold a failure and, unless that
    is most of them (the window is then sorted whole), each of them with the non-empty bucket before it."""
    failing = f""", count(*) FILTER (WHERE nbad > 0),
               CASE WHEN count(*) FILTER (WHERE nbad > 0) * 2 <= count(*)
                    THEN list({{'k': k, 'pk': pk, 'lo': lo, 'hi': hi}}) FILTER (WHERE nbad > 0) END""" if with_failures else ""
    return Q(f"""
        WITH b AS (SELECT us // {width} AS k, min(us) AS lo, max(us) AS hi, count(*) AS n,
                          count(*) FILTER (WHERE bad) AS nbad FROM s GROUP BY 1),
             g AS (SELECT k, lo, hi, n, nbad, lo - lag(hi) OVER (ORDER BY k) AS gap, lag(k) OVER (ORDER BY k) AS pk FROM b)
        SELECT min(lo), max(hi), max(gap), arg_max(lo, {{'g': gap, 'u': -lo}}) FILTER (WHERE gap IS NOT NULL),
               coalesce(sum(gap - {slack_us}) FILTER (WHERE gap > {slack_us}), 0), count(*), sum(n), count(*) FILTER (WHERE lo < hi)
               {failing}
        FROM g""")


def _failed_runs(width: int, buckets: list) -> Q:
    """Within each bucket holding a failure, its samples in time order (ties by probe and tenant):
    the end of the failed run that starts the bucket, the start of the one that ends it, the
    longest run touching neither edge, and whether the whole bucket failed. The buckets are named
    when few (no join: on Spark a join shuffles the whole window)."""
    k = f"us // {width}"
    named = ", ".join(map(str, buckets)) if len(buckets) <= LISTED else f"SELECT DISTINCT {k} FROM s WHERE bad"
    return Q(f"""
        WITH r AS (SELECT {k} AS k, us, bad, row_number() OVER w AS rn, count(*) OVER (PARTITION BY {k}) AS n
                   FROM s WHERE {k} IN ({named})
                   WINDOW w AS (PARTITION BY {k} ORDER BY us, probe, tenant)),
             i AS (SELECT k, min(us) AS a, max(us) AS z, min(rn) = 1 AS head, max(rn) = max(n) AS tail
                   FROM (SELECT k, us, rn, n, rn - row_number() OVER (PARTITION BY k ORDER BY rn) AS run FROM r WHERE bad)
                   GROUP BY k, run)
        SELECT k, max(z) FILTER (WHERE head), min(a) FILTER (WHERE tail),
               max(z - a) FILTER (WHERE NOT head AND NOT tail), bool_or(head AND tail)
        FROM i GROUP BY k""")


def _failed_runs_in_order() -> Q:
    """The longest failed run of the whole window in time order (ties by probe and tenant), for a
    window whose failures fall in most buckets: there one sort of the window costs less than a
    sort per bucket (10 M samples failing in every bucket: 0.55 s against 1.1 s)."""
    return Q("""
        WITH r AS (SELECT us, bad, row_number() OVER (ORDER BY us, probe, tenant) AS rn FROM s)
        SELECT max(z - a) FROM (SELECT min(us) AS a, max(us) AS z FROM (
            SELECT us, rn - row_number() OVER (ORDER BY rn) AS run FROM r WHERE bad) GROUP BY run)""")


def _longest_failing(buckets: list, runs: list) -> int:
    """The longest stretch (µs, first to last failed sample) with no successful attempt between,
    from the buckets holding failures (each with the non-empty bucket before it) and their runs."""
    within = {k: (lead_end, tail_start, inner, whole) for k, lead_end, tail_start, inner, whole in runs}
    best, open_from, open_in = 0, None, None  # a run reaching the end of bucket `open_in`, from `open_from`
    for b in sorted(buckets, key=lambda b: b["k"]):
        k, lo, hi = b["k"], b["lo"], b["hi"]
        lead_end, tail_start, inner, whole = within[k]
        carried = open_from if open_from is not None and b.get("pk") == open_in else lo
        if whole:
            best, open_from, open_in = max(best, hi - carried), carried, k
            continue
        if lead_end is not None:
            best = max(best, lead_end - carried)
        best = max(best, inner or 0)
        open_from, open_in = (tail_start, k) if tail_start is not None else (None, None)
        if tail_start is not None:
            best = max(best, hi - tail_start)
    return int(best)


@steps
def gaps(con, profile: Profile):
    """What coverage needs in time order: the first and last sample, the longest gap between
    consecutive samples (its length and end, the first of equal ones), the time without any
    attempt beyond the slack, and the longest stretch in which all failed; and per collector shard."""
    slack_us = int(gap_slack_s(profile) * 1e6)
    width = max(1, min(slack_us, BUCKET_US))
    (row,), shards = yield [_buckets(width, slack_us, True), _shard_gaps(width)]
    first, last, inner, inner_end, over_us, n_buckets, n, spread, n_failing, failing = row
    whole = bool(n_failing) and failing is None  # failures in most buckets: sorted whole
    failing = failing or []
    asked = [_failed_runs_in_order()] if whole else [_failed_runs(width, sorted(b["k"] for b in failing))] if failing else []
    runs = []
    while (finer := _finer(width, inner, first, last, n_buckets, spread)) is not None:
        ((_f, _l, inner, inner_end, _o, n_buckets, _n, spread), ), *got = yield [_buckets(finer, slack_us, False), *asked]
        runs, asked, width = (got[0] if got else runs), [], finer
    if asked:
        runs = yield asked[0]
    if n_buckets == 1 and not spread and n > 1:  # every sample at one instant
        inner, inner_end = 0, first
    failing_us = int(runs[0][0] or 0) if whole and runs else _longest_failing(failing, runs)
    return (first, last, inner, inner_end, over_us, failing_us), shards


def _finer(width: int, gap, first, last, n_buckets: int, spread: bool) -> int | None:
    """The bucket width for another pass, or None when the longest gap is exact: one at least a
    bucket wide lies between two buckets. A shorter one may lie inside a bucket: finer buckets, no
    wider than the longest gap seen (or than the one bucket's span), put it between two (at most
    two more passes). Samples all at one instant have no gap to seek."""
    if not n_buckets or (gap is not None and gap >= width) or (n_buckets == 1 and not spread):
        return None
    return int(gap) if gap is not None else last - first


def _shard_gaps(width: int):
    """Per collector shard: its samples, first and last sample, and the longest gap between two of
    them, from buckets as for the whole window (a gap shorter than a bucket is sought with finer
    buckets), so a shard's samples are never sorted (100 M samples in 4 shards: 22.8 s sorted, 2.4 s
    in buckets)."""
    rows = {r[0]: r for r in (yield _shard_buckets(width))}
    widths = dict.fromkeys(rows, width)
    while finer := {sh: w for sh, (_s, _n, lo, hi, g, nb, spread) in rows.items()
                    if (w := _finer(widths[sh], g, lo, hi, nb, spread)) is not None}:
        rows.update({r[0]: r for r in (yield _shard_buckets(width, finer))})
        widths.update(finer)
    return [(sh, n, lo, hi, 0 if nb == 1 and not spread and n > 1 else g)  # n > 1 at one instant: no gap
            for sh, (_s, n, lo, hi, g, nb, spread) in rows.items()]


def _shard_buckets(width: int, finer: dict | None = None) -> Q:
    """Per shard (those `finer` names, each in buckets of its own width, else all in `width` µs):
    samples, first and last, the longest gap between buckets, buckets, and buckets spanning some time."""
    name = "CAST(shard AS VARCHAR)"
    k = f"us // {width}" if finer is None else \
        f"us // CASE {name} {' '.join(f'WHEN {sql_literal(sh)} THEN {int(w)}' for sh, w in finer.items())} END"
    where = "shard IS NOT NULL" if finer is None else f"{name} IN ({', '.join(map(sql_literal, finer))})"
    return Q(f"""
        WITH b AS (SELECT {name} AS shard, {k} AS k, min(us) AS lo, max(us) AS hi, count(*) AS n FROM s WHERE {where} GROUP BY 1, 2),
             g AS (SELECT shard, lo, hi, n, lo - lag(hi) OVER (PARTITION BY shard ORDER BY k) AS gap FROM b)
        SELECT shard, sum(n), min(lo), max(hi), max(gap), count(*), count(*) FILTER (WHERE lo < hi) FROM g GROUP BY shard""")


def coverage_of(profile: Profile, start: datetime, end: datetime, probes: dict, gaps: tuple, shard_rows: list) -> dict:
    """Samples against expected, per probe and in all, the gaps (window edges included) and the shards."""
    span = (end - start).total_seconds()
    rate = expected_rates(profile)
    expected = {p: r * span for p, r in rate.items()}
    actual = {p: s["samples"] for p, s in probes.items()}
    per_probe = {p: {"expected": round(e, 1), "actual": int(actual.get(p, 0)),
                     "ratio": round(min(1.0, actual.get(p, 0) / e), 4) if e else None} for p, e in expected.items()}
    n = sum(actual.values())
    total_e = sum(expected.values())
    ratio = min(1.0, n / total_e) if total_e else None
    slack_us = int(gap_slack_s(profile) * 1e6)
    s_us, e_us = int(pd.Timestamp(start).value // 1000), int(pd.Timestamp(end).value // 1000)
    first_us, last_us, inner, inner_end, over_us, failing_us = gaps
    edge = [first_us - s_us, e_us - last_us]
    candidates = [(edge[0], s_us, first_us)]
    if inner is not None:
        candidates.append((int(inner), int(inner_end) - int(inner), int(inner_end)))
    candidates.append((edge[1], last_us, e_us))
    longest_us, gap_from, gap_to = max(candidates, key=lambda c: c[0])  # the first of equal gaps wins
    down_us = int(over_us) + sum(max(0, g - slack_us) for g in edge)
    longest = longest_us / 1e6
    shards = _shards(profile, s_us, e_us, shard_rows)
    return {
        "expected": round(total_e, 1), "actual": int(n), "ratio": None if ratio is None else round(ratio, 4),
        "per_probe": per_probe,
        "longest_gap_s": round(longest, 3),
        "longest_gap_start": _us(gap_from), "longest_gap_end": _us(gap_to),
        "longest_gap_cause": "collector down (no attempts)" if longest_us > slack_us else "none",
        "collector_down_s": round(down_us / 1e6, 3),
        "longest_failing_s": round(int(failing_us) / 1e6, 3),
        "min_coverage": profile.criteria.min_coverage, "max_gap_s": profile.criteria.max_gap_s,
        "shards": shards,
        "sufficient": bool(ratio is not None and ratio >= profile.criteria.min_coverage
                           and longest <= profile.criteria.max_gap_s
                           and not any(sh["stopped"] for sh in shards or ())),
    }


def coverage(con, profile: Profile, start: datetime, end: datetime, probes: dict) -> dict:
    """Samples against expected, per probe and in all, the gaps and the shards."""
    return coverage_of(profile, start, end, probes, *gaps(con, profile))


def _shards(profile: Profile, s_us: int, e_us: int, rows: list) -> list | None:
    """Per collector shard (`collect --shard K/N`): samples against expected, and its longest gap
    (window edges included). A shard that stopped is a gap with its name, not silence: one with
    no sample at all in the window is listed too, since the others say how many there are."""
    from .collector import probe_jobs

    seen = {name: (int(n), int(a), int(b), gap) for name, n, a, b, gap in rows}
    if not seen:
        return None
    n = max(int(name.partition("/")[2]) for name in seen)
    span = (e_us - s_us) / 1e6
    out = []
    for k in range(1, n + 1):
        name = f"{k}/{n}"
        expected = sum(1.0 / (p.interval_s or profile.target.interval_s) for p, _t in probe_jobs(profile, (k, n))) * span
        got, first, last, inner = seen.get(name, (0, None, None, None))
        gaps = [e_us - s_us] if first is None else [first - s_us, int(inner or 0), e_us - last]
        longest = max(gaps) / 1e6
        out.append({"shard": name, "expected": round(expected, 1), "actual": got,
                    "ratio": round(min(1.0, got / expected), 4) if expected else None,
                    "longest_gap_s": round(longest, 3), "last_sample": None if last is None else _us(last),
                    "stopped": longest > profile.criteria.max_gap_s})
    return out


def _us(t) -> str:
    return _ts(pd.Timestamp(int(t), unit="us", tz="UTC"))
