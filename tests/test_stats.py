"""Issue 7: bounds and intervals against scipy and published values; verdicts that never claim
more than the data supports; canary vs baseline on histories with known ground truth."""

import json
from datetime import timedelta

import numpy as np
import pytest
from scipy import stats as sps

from phasegate import signoff
from phasegate.probe import ERROR_OUTCOMES
from phasegate.profile import load_profile
from phasegate.history import history
from phasegate.simulator import Fault
from phasegate.stats import (fisher_greater, hodges_lehmann, mann_whitney_greater, n_for_quantile, n_for_rate,
                             quantile_interval, quantile_upper_rank, rate_upper)

from conftest import SIM_PROFILE, write_profile
from test_report import AFTER, END, H, PHASE, START, crit, failed, make, run


def test_rule_of_three_and_299():
    assert rate_upper(0, 299) < 0.01 <= rate_upper(0, 298)
    assert rate_upper(0, 299) == pytest.approx(1 - 0.05 ** (1 / 299))
    assert n_for_rate(0, 0.01) == 299
    assert rate_upper(0, 100) == pytest.approx(0.0295, abs=1e-4)  # ~3/n


@pytest.mark.parametrize("k,n", [(1, 10), (3, 100), (10, 1000), (50, 60), (0, 7)])
def test_clopper_pearson_matches_scipy_beta(k, n):
    expected = 1 - 0.05 ** (1 / n) if k == 0 else sps.beta.ppf(0.95, k + 1, n - k)
    assert rate_upper(k, n) == pytest.approx(expected, rel=1e-9)
    assert rate_upper(k, n) == pytest.approx(sps.binomtest(k, n, alternative="less").proportion_ci(0.95).high, rel=1e-9)


def test_quantile_intervals_from_order_statistics():
    rng = np.random.default_rng(1)
    x = np.sort(rng.lognormal(5, 0.5, 2000))
    lo, hi = quantile_interval(x, 0.99)
    assert lo <= np.percentile(x, 99) <= hi
    # The ranks are binomial quantiles: the same as computing them from scipy directly.
    assert lo == x[int(sps.binom.ppf(0.025, 2000, 0.99)) - 1]
    assert hi == x[int(sps.binom.ppf(0.975, 2000, 0.99))]
    assert quantile_interval(x[:40], 0.99) is None  # never an interval from the maximum of 40
    assert quantile_upper_rank(298, 0.99) is None and quantile_upper_rank(299, 0.99) == 299
    assert n_for_quantile(0.99) == 299
    # Coverage: over many samples the interval holds the true quantile about 95 % of the time.
    true_q = np.exp(5 + 0.5 * sps.norm.ppf(0.99))
    hits = sum(lo <= true_q <= hi for lo, hi in
               (quantile_interval(np.sort(rng.lognormal(5, 0.5, 1000)), 0.99) for _ in range(300)))
    assert 0.90 <= hits / 300 <= 0.995


@pytest.mark.parametrize("shift,ties", [(0.0, False), (0.3, False), (-0.2, False), (0.1, True)])
def test_mann_whitney_matches_scipy(shift, ties):
    rng = np.random.default_rng(2)
    x = rng.lognormal(5 + shift, 0.5, 400)
    y = rng.lognormal(5, 0.5, 500)
    if ties:
        x, y = np.round(x, -1), np.round(y, -1)
    u, p = mann_whitney_greater(x, y)
    ref = sps.mannwhitneyu(x, y, alternative="greater", method="asymptotic", use_continuity=True)
    assert u == pytest.approx(ref.statistic) and p == pytest.approx(ref.pvalue, rel=1e-9)


def test_hodges_lehmann_and_fisher():
    x = np.array([1.0, 2.0, 3.0])
    y = np.array([0.0, 1.0])
    assert hodges_lehmann(x, y) == np.median([1, 0, 2, 1, 3, 2])
    assert fisher_greater(10, 100, 1, 100) == pytest.approx(
        sps.fisher_exact([[10, 90], [1, 99]], alternative="greater")[1])


def _baseline_pair(tmp_path, factor):
    base = tmp_path / "baseline"
    canary = tmp_path / "canary"
    prof = load_profile(SIM_PROFILE)
    history(prof, [], START.timestamp(), END.timestamp(), base, seed=21)
    faults = [Fault("latency_scale", probes=("execute",), params={"factor": factor})] if factor != 1.0 else []
    history(prof, faults, START.timestamp(), END.timestamp(), canary, seed=22)
    return canary, base


def test_canary_30_percent_slower_is_review_on_no_regression(tmp_path):
    canary, base = _baseline_pair(tmp_path, 1.3)
    doc = run(canary, baseline_data=str(base)).doc
    assert doc["verdict"] == "REVIEW", doc["reason"]
    assert failed(doc) == ["no_regression"]
    c = doc["baseline"]["probes"]["execute"]
    assert 0.2 < c["rel_shift"] < 0.4 and c["p_latency"] < 1e-6
    assert "regressed: execute" in crit(doc, "no_regression")["detail"]


def test_identical_distributions_pass_no_regression(tmp_path):
    canary, base = _baseline_pair(tmp_path, 1.0)
    doc = run(canary, baseline_data=str(base)).doc
    assert crit(doc, "no_regression")["passed"] is True
    assert doc["verdict"] == "GO"


def test_faster_canary_is_not_punished(tmp_path):
    canary, base = _baseline_pair(tmp_path, 0.7)
    doc = run(canary, baseline_data=str(base)).doc
    assert crit(doc, "no_regression")["passed"] is True
    assert doc["baseline"]["probes"]["execute"]["rel_shift"] < -0.2


def test_two_hours_240_clean_samples_error_rate_inconclusive(tmp_path):
    prof = write_profile(tmp_path, '''
[target]
name = "thin"
base_url = "http://127.0.0.1:8765"
interval = "30s"
timeout = "10s"

[[probes]]
name = "health"
path = "/v1/actions/health"
  [probes.extract]
  handlers_loaded = "handlers_loaded"
  handlers_total = "handlers_total"
  deployment_id = "header:X-Deployment-Id"
  [probes.extract.flags]
  FAULT_LENS_V1_ENABLED = "feature_flags.FAULT_LENS_V1_ENABLED"

[criteria]
duration = "2h"
[criteria.execute_p99]
enabled = false
''')
    data = tmp_path / "data"
    history(load_profile(prof), [], START.timestamp(), START.timestamp() + 2 * H, data, seed=3)
    doc = signoff.run(prof, data, PHASE, start=START.isoformat(), hours=2,
                      as_of=(START + timedelta(hours=2, minutes=1)).isoformat()).doc
    c = crit(doc, "error_rate")
    assert c["n"] == 240 and c["measured"] == 0
    assert c["passed"] is None
    assert "n ≥ 299 needed (59 more clean samples)" in c["detail"]
    assert c["bound"] == pytest.approx(1 - 0.05 ** (1 / 240))
    assert doc["coverage"]["sufficient"] is True
    assert doc["verdict"] == "INCONCLUSIVE"
    assert doc["reason"] == "too little evidence to decide: error_rate"


def test_dry_run_criterion_failing_leaves_verdict_unchanged(tmp_path):
    prof = write_profile(tmp_path, f'''
extends = "{SIM_PROFILE}"
[criteria.execute_p99]
threshold = 50   # ms: a new, much tighter gate being tried out
dry_run = true
''')
    data = make(tmp_path, [])
    doc = signoff.run(prof, data, PHASE, start=START.isoformat(), end=END.isoformat(), as_of=AFTER.isoformat()).doc
    c = crit(doc, "execute_p99")
    assert c["dry_run"] is True and c["passed"] is False
    assert doc["verdict"] == "GO"
    for c in doc["criteria"]:
        assert {"n", "measured", "bound", "threshold", "passed", "dry_run"} <= set(c)


def test_flapping_probe_is_flagged(tmp_path):
    data = make(tmp_path, [Fault("server_error", rate=0.3, probes=("list",), start_s=H, end_s=2 * H)])
    doc = run(data).doc
    assert doc["quality"]["list"]["flapping"] is True
    assert doc["quality"]["health"]["flapping"] is False
    assert "flapping: list" in crit(doc, "error_rate")["detail"]


@pytest.mark.slow
def test_report_with_baseline_shows_both_distributions(tmp_path):
    from conftest import phasegate
    canary, base = _baseline_pair(tmp_path, 1.3)
    res = phasegate("report", "--profile", SIM_PROFILE, "--data", canary, "--phase", PHASE, "--start", START.isoformat(),
                    "--end", END.isoformat(), "--baseline-data", base, "--out", tmp_path / "r", "--formats", "html",
                    timeout=300)
    assert res.returncode == 11, res.stdout + res.stderr  # REVIEW
    assert "[FAIL] soft no_regression" in res.stdout
    html = next((tmp_path / "r").rglob("signoff.html")).read_text()
    assert 'alt="Latency of execute: canary vs baseline (ECDF)"' in html
    assert "Mann-Whitney p (canary slower)" in html
    assert "--baseline-data" in json.loads(next((tmp_path / "r").rglob("signoff.json")).read_text())["rerun"]


def test_binom_ppf_from_scipy_special_matches_scipy_stats():
    """The order-statistic ranks come from scipy.special (scipy.stats is not imported by reports)."""
    import random

    from scipy.stats import binom

    from phasegate.stats import binom_ppf

    rng = random.Random(7)
    cases = [(n, p, q) for n in (1, 2, 5, 299, 300, 1440, 10_000, 2_000_000) for p in (0.01, 0.5, 0.95, 0.99)
             for q in (0.025, 0.05, 0.5, 0.95, 0.975)]
    cases += [(rng.randint(1, 50_000), rng.random(), rng.random()) for _ in range(2000)]
    assert [binom_ppf(q, n, p) for n, p, q in cases] == [int(binom.ppf(q, n, p)) for n, p, q in cases]


def _frame(seed: int, n: int = 6000):
    """Samples with every awkward case: unanswered rows, NaN latency, FEATURE_DISABLED, missing
    tenants, an unused probe category, and rows out of group order."""
    import pandas as pd
    rng = np.random.default_rng(seed)
    outcome = rng.choice(["ok", "http_error", "timeout", "assertion_failed", "connect_error"], n,
                         p=[0.8, 0.08, 0.05, 0.04, 0.03])
    status = np.where(outcome == "ok", 200, rng.choice([500, 502, 503, 404], n)).astype(float)
    status[np.isin(outcome, ["timeout", "connect_error"])] = np.nan
    status[outcome == "assertion_failed"] = 200
    code = np.where(status == 503, rng.choice(["FEATURE_DISABLED", "OTHER"], n), None)
    lat = rng.lognormal(4, 1, n)
    lat[rng.random(n) < 0.02] = np.nan
    probe = pd.Categorical(rng.choice(["health", "list", "execute"], n), categories=["execute", "health", "list", "unused"])
    tenant = pd.Categorical(np.where(rng.random(n) < 0.1, None, rng.choice([f"y{i:02d}" for i in range(40)], n)))
    ts = pd.Timestamp("2026-01-01", tz="UTC") + pd.to_timedelta(np.sort(rng.integers(0, 6 * 3600 * 10**6, n)), unit="us")
    return pd.DataFrame({"ts": ts, "probe": probe, "tenant": tenant, "status": pd.array(status, dtype="Int32"),
                         "outcome": pd.Categorical(outcome), "error_code": pd.Categorical(code), "latency_ms": lat})


def _reference_stats(g, conf):
    """probe_stats the slow, obvious way: per group, pandas counts and numpy's percentile."""
    from phasegate.probe import ERROR_OUTCOMES
    from phasegate.stats import quantile_interval, quantile_upper_rank
    lat = np.sort(g.loc[g["status"].notna() & ~g["outcome"].isin(ERROR_OUTCOMES), "latency_ms"].dropna().to_numpy(float))
    errors = int(g["outcome"].isin(ERROR_OUTCOMES).sum())
    up = quantile_upper_rank(len(lat), 0.99, conf)
    r = lambda x: None if x is None else round(float(x), 3)  # noqa: E731
    pct = np.percentile(lat, [50, 95, 99]) if len(lat) else [None] * 3
    return {
        "samples": len(g),
        "status_counts": {str(k): int(v) for k, v in sorted(g["status"].dropna().astype(int).value_counts().items())},
        "outcome_counts": {k: int(v) for k, v in sorted(g["outcome"].astype(str).value_counts().items())},
        "errors": errors, "error_rate": errors / len(g),
        "http_5xx": int((g["status"].between(500, 599).fillna(False).astype(bool)
                         & (g["error_code"].astype(object) != "FEATURE_DISABLED")).sum()),
        "feature_disabled": int((g["error_code"] == "FEATURE_DISABLED").sum()),
        "assertion_failed": int((g["outcome"] == "assertion_failed").sum()),
        "latency_n": len(lat), "p50_ms": r(pct[0]), "p95_ms": r(pct[1]), "p99_ms": r(pct[2]),
        "max_ms": r(lat.max()) if len(lat) else None,
        **{f"p{q}_ci_ms": (lambda ci: None if ci is None else [r(ci[0]), r(ci[1])])(quantile_interval(lat, q / 100, conf))
           for q in (50, 95, 99)},
        "p99_upper_ms": None if up is None else r(lat[up - 1]),
    }


def _engine(df):
    """The engine's table `s` loaded from a frame (columns the frame lacks are empty), as
    `analysis.scan` loads it from a window's parquet files."""
    import pandas as pd
    from phasegate import analysis
    full = df.copy()
    for col in ("health_status", "deployment_id", "flags", "source", "shard", "tls_version", "evidence"):
        if col not in full:
            full[col] = pd.Series([None] * len(full), dtype="string")
    if "cert_expiry" not in full:
        full["cert_expiry"] = pd.Series([None] * len(full), dtype="datetime64[us, UTC]")
    for col in ("handlers_loaded", "handlers_total"):
        if col not in full:
            full[col] = pd.array([None] * len(full), dtype="Int32")
    if "assertion_failures" not in full:
        full["assertion_failures"] = pd.Series([["x"] if o == "assertion_failed" else None for o in full["outcome"]],
                                               dtype=object)
    full["simulated"] = False
    con = analysis.connect()
    con.register("frame", full)
    analysis.scan(con, "frame")
    return con


# The engine's figures against the slow, obvious computation with pandas and numpy: the
# independent cross-check of every aggregate the report shows.
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_grouped_statistics_equal_the_per_group_computation(seed):
    from phasegate import analysis
    df = _frame(seed)
    con = _engine(df)
    probes = analysis.group_stats(con, "s", "probe", 0.95)
    assert sorted(probes) == ["execute", "health", "list"]  # the unused category is not a probe
    for name, g in df.groupby("probe", observed=True):
        assert probes[name] == _reference_stats(g, 0.95), name
    assert analysis.group_stats(con, "s", None, 0.95)[None] == _reference_stats(df, 0.95)
    tenants = analysis.tenant_stats(con, 0.95)
    assert tenants["untagged_samples"] == int(df["tenant"].isna().sum())
    assert tenants["count"] == df["tenant"].nunique()
    for row in tenants["rows"]:
        want = _reference_stats(df[df["tenant"] == row["tenant"]], 0.95)
        assert (row["samples"], row["errors"], row["http_5xx"], row["feature_disabled"]) == \
            (want["samples"], want["errors"], want["http_5xx"], want["feature_disabled"])
        assert (row["p50_ms"], row["p95_ms"], row["p99_ms"]) == (want["p50_ms"], want["p95_ms"], want["p99_ms"])
        g = df[(df["tenant"] == row["tenant"]) & df["outcome"].isin(ERROR_OUTCOMES)]
        per_probe = g.groupby("probe", observed=False).size()  # in category order: ties go to the first
        assert (row["worst_probe"], row["worst_probe_errors"]) == \
            ((per_probe.idxmax(), int(per_probe.max())) if len(g) else (None, None))
    tl = analysis.timeline(con, 1800.0)
    for (bucket, probe), g in df.groupby([df["ts"].dt.floor("30min"), "probe"], observed=True):
        got = tl[(tl["bucket"] == bucket) & (tl["probe"] == probe)].iloc[0]
        want = _reference_stats(g, 0.95)
        assert (got["samples"], got["errors"], got["http_5xx"]) == (want["samples"], want["errors"], want["http_5xx"])
        assert round(float(got["p99_ms"]), 3) == want["p99_ms"]
    assert len(tl) == df.groupby([df["ts"].dt.floor("30min"), "probe"], observed=True).ngroups


def test_status_counts_keep_odd_statuses_from_imported_logs():
    # A JSON access log may carry any integer as its status: counted as it is, never wrapped.
    from phasegate import analysis
    df = _frame(4, 3000)
    df.loc[:9, "status"] = 99_999
    df.loc[10:14, "status"] = -5
    got = analysis.group_stats(_engine(df), "s", None, 0.95)[None]
    assert got == _reference_stats(df, 0.95)
    assert got["status_counts"]["99999"] == 10 and got["status_counts"]["-5"] == 5


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_coverage_gaps_equal_the_obvious_computation(seed):
    # Each figure must equal the plain float computation over [start, every sample, end].
    import pandas as pd
    from datetime import datetime, timezone
    from phasegate import analysis, coverage
    df = _frame(seed)
    rng = np.random.default_rng(seed)
    hole = rng.integers(100, len(df) - 100)
    df = df.drop(index=range(hole, hole + 80)).reset_index(drop=True)  # a real outage inside
    df.loc[10:60, "outcome"] = "timeout"  # a failing stretch
    profile = load_profile(SIM_PROFILE)
    start = datetime(2025, 12, 31, 23, 50, tzinfo=timezone.utc)  # the head gap is ten minutes and more
    end = datetime(2026, 1, 1, 6, 7, tzinfo=timezone.utc) + timedelta(minutes=30 * (seed == 3))  # the tail's turn
    con = _engine(df)
    got = coverage.coverage(con, profile, start, end, analysis.group_stats(con, "s", "probe"))
    ts = df["ts"].dt.as_unit("us").astype("int64").to_numpy() / 1e6
    edges = np.concatenate([[start.timestamp()], ts, [end.timestamp()]])
    gaps = np.diff(edges)
    i = int(np.argmax(gaps))
    slack = 2.0 * max(p.interval_s or profile.target.interval_s for p in profile.probes)  # two of the longest interval
    assert got["longest_gap_s"] == round(float(gaps[i]), 3)
    assert got["longest_gap_start"] == pd.Timestamp(edges[i], unit="s", tz="UTC").strftime("%Y-%m-%dT%H:%M:%SZ")
    assert got["longest_gap_end"] == pd.Timestamp(edges[i + 1], unit="s", tz="UTC").strftime("%Y-%m-%dT%H:%M:%SZ")
    assert got["collector_down_s"] == pytest.approx(round(float(np.clip(gaps - slack, 0, None).sum()), 3), abs=0.0011)
    bad = df["outcome"].isin(ERROR_OUTCOMES).to_numpy()
    best, run_start = 0.0, None
    for t, b in zip(ts, bad):
        if b and run_start is None:
            run_start = t
        if b:
            best = max(best, t - run_start)
        else:
            run_start = None
    assert got["longest_failing_s"] == pytest.approx(round(best, 3), abs=0.0011)
    assert best > 0
    for name, p in got["per_probe"].items():
        assert p["actual"] == int((df["probe"] == name).sum())
    assert got["actual"] == len(df[df["probe"] != "unused"])


@pytest.mark.parametrize("seed,span_s,bad_share,listed", [
    (1, 6 * 3600, 0.2, 5000),   # sparse: about one sample a bucket, every failed run crosses buckets
    (5, 6 * 3600, 0.2, 3),      # the same, the buckets holding a failure found by a join, not named
    (2, 60, 0.2, 1000),         # dense: the longest gap inside a one-second bucket (finer buckets);
                                # a failure in every bucket (the window sorted whole)
    (3, 60, 0.0, 1000),         # dense, one long stretch failed: buckets that failed whole, carried over
    (4, 6 * 3600, 0.6, 1000)])  # mostly failing: long runs of many kinds
def test_gaps_and_failed_stretches_equal_a_loop_in_time_order(seed, span_s, bad_share, listed, monkeypatch):
    # The gaps come from per-bucket first/last times, the failed stretches from the buckets holding
    # a failure: each must equal a loop over every sample in time order (ties by probe, tenant).
    import pandas as pd
    from phasegate import analysis, coverage
    monkeypatch.setattr(coverage, "LISTED", listed)
    rng = np.random.default_rng(seed)
    n = 6000
    df = _frame(seed, n)
    us = np.sort(rng.integers(0, span_s * 10**6, n))
    us[100:110] = us[100]  # samples of several series at one instant: ordered by probe, then tenant
    us[2000] = us[1999] + (us[2001] - us[1999]) // 2  # no accidental tie-breaking from the frame
    df["ts"] = pd.Timestamp("2026-01-01", tz="UTC") + pd.to_timedelta(us, unit="us")
    outcome = np.where(rng.random(n) < bad_share, "timeout", "ok").astype(object)
    if not bad_share:
        outcome[3000:3500] = "http_error"
    df["outcome"] = pd.Categorical(outcome)
    df["status"] = pd.array(np.where(df["outcome"] == "ok", 200, 500), dtype="Int32")
    shard = rng.choice(["1/4", "2/4", "3/4"], n).astype(object)
    shard[100:110] = "4/4"  # a shard whose samples are all at one instant
    df["shard"] = pd.Series(shard, dtype="string")
    df = df.sample(frac=1, random_state=seed).reset_index(drop=True)  # the engine must order them itself
    profile = load_profile(SIM_PROFILE)
    start, end = pd.Timestamp("2026-01-01", tz="UTC"), pd.Timestamp("2026-01-01", tz="UTC") + pd.Timedelta(seconds=span_s)
    con = _engine(df)
    got = coverage.coverage(con, profile, start.to_pydatetime(), end.to_pydatetime(), analysis.group_stats(con, "s", "probe"))
    o = df.assign(us=df["ts"].dt.as_unit("us").astype("int64"), p=df["probe"].astype(str),
                  t=df["tenant"].astype(object)).sort_values(["us", "p", "t"], na_position="last", kind="stable")
    t_us = o["us"].to_numpy()
    edges = np.concatenate([[start.value // 1000], t_us, [end.value // 1000]])
    gaps = np.diff(edges)
    i = int(np.argmax(gaps))  # the first of equal ones
    slack_us = int(2.0 * max(p.interval_s or profile.target.interval_s for p in profile.probes) * 1e6)
    assert got["longest_gap_s"] == round(gaps[i] / 1e6, 3)
    assert got["longest_gap_end"] == pd.Timestamp(edges[i + 1], unit="us", tz="UTC").strftime("%Y-%m-%dT%H:%M:%SZ")
    assert got["collector_down_s"] == round(int(np.clip(gaps - slack_us, 0, None).sum()) / 1e6, 3)
    best, run_from = 0, None
    for t, b in zip(t_us, o["outcome"].isin(ERROR_OUTCOMES)):
        run_from = (t if run_from is None else run_from) if b else None
        best = max(best, t - run_from) if b else best
    assert got["longest_failing_s"] == round(best / 1e6, 3)
    assert best > 0
    # Each collector shard: its samples, first and last, and the longest gap between two of them,
    # as the same loop finds them shard by shard (dense shards need finer buckets).
    _whole, shard_rows = coverage.gaps(con, profile)
    want = {}
    for sh, part in o.groupby(o["shard"].astype(str)):
        u = part["us"].to_numpy()
        want[sh] = (sh, len(u), int(u[0]), int(u[-1]), int(np.diff(u).max()))
    assert sorted((sh, int(k), int(a), int(b), int(g)) for sh, k, a, b, g in shard_rows) == sorted(want.values())
    assert want["4/4"][4] == 0 and want["1/4"][4] > 0


@pytest.mark.parametrize("seed,listed", [(1, 1000), (2, 1000), (1, 3)])
def test_transitions_per_probe_equal_a_loop_over_each_series(seed, listed, monkeypatch):
    # Flapping counts ok/failed changes within each (probe, tenant) series in time order; the
    # failing series named in the query, or (more than `listed` of them) found by a join.
    from phasegate import analysis
    monkeypatch.setattr(analysis, "LISTED", listed)
    df = _frame(seed)
    got = analysis.transitions(_engine(df))
    want = {}
    bad = df["outcome"].isin(ERROR_OUTCOMES).to_numpy()
    for (probe, _tenant), idx in df.groupby(["probe", df["tenant"].astype(object).fillna("")], observed=True).indices.items():
        seq = bad[np.sort(idx)]
        want[probe] = want.get(probe, 0) + int((seq[1:] != seq[:-1]).sum())
    assert sum(want.values()) > 50 and got == want


@pytest.mark.parametrize("seed", [1, 2])
def test_health_equals_the_pandas_computation(seed):
    # Every health probe without a healthy answer is unhealthy: a failed outcome, handlers below
    # total (a missing count is no mismatch), any status but "healthy".
    import pandas as pd
    from phasegate import analysis
    df = _frame(seed)
    rng = np.random.default_rng(seed)
    n = len(df)
    total = np.where(rng.random(n) < 0.2, np.nan, 6.0)
    loaded = np.where(rng.random(n) < 0.1, np.nan, np.where(rng.random(n) < 0.05, rng.integers(0, 6, n), 6.0))
    df["handlers_total"] = pd.array(total, dtype="Int32")
    df["handlers_loaded"] = pd.array(loaded, dtype="Int32")
    df["health_status"] = pd.Series(rng.choice(["healthy", "degraded", None], n, p=[0.9, 0.04, 0.06]), dtype="string")
    got = analysis._health(_engine(df), load_profile(SIM_PROFILE))
    h = df.loc[df["probe"] == "health"]
    failed = h["outcome"].isin(list(ERROR_OUTCOMES))
    answered = h[~failed & (h["handlers_total"].notna() | h["health_status"].notna())]
    degraded = (h["handlers_loaded"] != h["handlers_total"]).fillna(False) \
        | (h["health_status"].notna() & (h["health_status"] != "healthy")).fillna(False)
    bad = h[failed | degraded]
    iso = lambda t: t.strftime("%Y-%m-%dT%H:%M:%SZ")  # noqa: E731
    assert got == {
        "probes": ["health"], "samples": len(h), "answered": len(answered), "unanswered": int(failed.sum()),
        "degraded": int((degraded & ~failed).sum()), "unhealthy": len(bad),
        "failed_by_outcome": {k: int(v) for k, v in sorted(h.loc[failed, "outcome"].value_counts().items()) if v},
        "min_loaded": int(answered["handlers_loaded"].min()),
        "handlers_total": int(answered["handlers_total"].max()),
        "first_unhealthy": iso(bad["ts"].iloc[0]), "last_unhealthy": iso(bad["ts"].iloc[-1])}
    assert int(failed.sum()) > 0 and int((degraded & ~failed).sum()) > 0


def test_evidence_is_each_kinds_first_raw_response(tmp_path):
    # Raw responses: the first failure of each kind and a baseline per probe, in time order, as a
    # plain walk over the rows that carry evidence gives them.
    from phasegate.analysis import analyze
    from phasegate.store import read_samples
    from phasegate.window import Window
    data = make(tmp_path, [Fault("server_error", start_s=3 * H, count=2, probes=("list",)),
                           Fault("flags_off", start_s=5 * H, end_s=5.2 * H, probes=("execute",))], hours=6)
    window = Window(START, START + timedelta(hours=6))
    got = analyze(load_profile(SIM_PROFILE), data, window, now=AFTER).evidence
    rows = read_samples(data, window.start, window.end, nonnull="evidence", categorical=True,
                        columns=["probe", "status", "outcome", "error_code", "evidence"]).sort_values("ts", kind="stable")
    want, seen = [], set()
    for r in rows.itertuples():
        status = None if r.status is None or r.status != r.status else int(r.status)
        code = None if r.error_code != r.error_code else r.error_code
        kind = ("baseline", r.probe) if r.outcome == "ok" else ("failure", r.probe, r.outcome, status, code)
        if kind not in seen:
            seen.add(kind)
            want.append({"kind": kind[0], "probe": r.probe, "ts": r.ts.strftime("%Y-%m-%dT%H:%M:%SZ"),
                         "outcome": r.outcome, "status": status, "error_code": code, "response": json.loads(r.evidence)})
    assert got == sorted(want, key=lambda e: (e["kind"] != "failure", e["ts"], e["probe"]))
    failures = [(e["probe"], e["status"], e["error_code"]) for e in got if e["kind"] == "failure"]
    assert failures == [("list", 500, "INTERNAL_ERROR"), ("execute", 503, "FEATURE_DISABLED")]
    assert sorted(e["probe"] for e in got if e["kind"] == "baseline") == ["execute", "health", "list", "suggestions"]
    assert all(e["response"]["status"] == e["status"] for e in got if e["kind"] == "failure")


@pytest.mark.parametrize("groups", [1, 40, 600])
def test_order_statistics_are_each_groups_sorted_values(groups):
    """The histogram is coarser the more groups there are (256 buckets per doubling for one group,
    16 for 600); every rank asked is still exactly the sorted value, ties and extremes included."""
    import duckdb
    import pandas as pd
    from phasegate.ranks import order_statistics
    rng = np.random.default_rng(groups)
    n = 60_000
    g = rng.integers(0, groups, n)
    lat = np.round(rng.lognormal(4, 1.2, n), 1)  # rounded: many ties, several per bucket
    lat[rng.random(n) < 0.01] = None
    con = duckdb.connect()
    con.register("f", pd.DataFrame({"g": g, "lat": lat}))
    con.execute("CREATE TABLE t AS SELECT g, lat FROM f")
    want, ranks = {}, {}
    for k in range(groups):
        vals = np.sort(lat[(g == k) & ~np.isnan(lat)])
        ranks[k] = sorted({1, len(vals), *rng.integers(1, len(vals) + 1, 5).tolist()})
        want[k] = {r: vals[r - 1] for r in ranks[k]}
    assert order_statistics(con, "t", "g", "true", ranks) == want


def test_order_statistics_of_several_groupings_asked_in_one_round():
    """Groupings asked in the same round share the table's two passes (one histogram of grouping
    sets, one pick of values): each still gets exactly its own groups' sorted values, under its
    own condition, with the engine asked two rounds in all."""
    import duckdb
    import pandas as pd
    from phasegate import batch
    from phasegate.ranks import order_statistics
    rng = np.random.default_rng(7)
    n = 50_000
    probe = rng.choice(["a", "b", "c"], n)
    tenant = rng.integers(0, 300, n).astype(str)
    tenant[rng.random(n) < 0.1] = None
    lat = np.round(rng.lognormal(3, 1.5, n), 2)
    lat[rng.random(n) < 0.02] = None
    con = duckdb.connect()
    con.register("f", pd.DataFrame({"probe": probe, "tenant": pd.Series(tenant, dtype=object), "lat": lat}))
    con.execute("CREATE TABLE t AS SELECT probe, tenant, lat FROM f")
    ok = ~np.isnan(lat)

    def ask(mask):
        vals = np.sort(lat[mask & ok])
        ranks = sorted({1, len(vals), *rng.integers(1, len(vals) + 1, 4).tolist()})
        return ranks, {r: vals[r - 1] for r in ranks}

    probes = {p: ask(probe == p) for p in "abc"}
    tenants = {str(k): ask(tenant == str(k)) for k in range(300) if (ok & (tenant == str(k))).any()}
    total = ask(probe != "c")
    rounds = []

    def counted(con, queries):
        rounds.append(len(queries))
        return ask_(con, queries)

    def all_three(con):
        return (yield [order_statistics.steps(con, "t", "probe", "TRUE", {p: r for p, (r, _w) in probes.items()}),
                       order_statistics.steps(con, "t", "tenant", "tenant IS NOT NULL", {k: r for k, (r, _w) in tenants.items()}),
                       order_statistics.steps(con, "t", None, "probe <> 'c'", {None: total[0]})])

    ask_, batch.ask = batch.ask, counted
    try:
        by_probe, by_tenant, in_total = batch.drive(con, all_three(con))
    finally:
        batch.ask = ask_
    assert by_probe == {p: w for p, (_r, w) in probes.items()}
    assert by_tenant == {k: w for k, (_r, w) in tenants.items()}
    assert in_total == {None: total[1]}
    assert rounds == [1, 3]  # one histogram query; then one fetch per grouping, in one round


@pytest.mark.parametrize("values", [1, 3])
def test_flag_and_deployment_walks_equal_a_loop_in_time_order(values):
    """One value all along (answered without a sort) and several (walked in the engine) give
    what a loop over the rows in (ts, probe, tenant) order gives."""
    import pandas as pd
    from phasegate import analysis
    from phasegate.aggregates import _ts
    df = _frame(7, 3000).sample(frac=1, random_state=1)  # rows out of time order
    rng = np.random.default_rng(values)
    pick = rng.integers(0, values, len(df))
    kinds = [json.dumps({"A": True, "B": i % 2 == 0}) for i in range(values)]
    df["flags"] = pd.Series([kinds[i] if rng.random() > 0.05 else None for i in pick], dtype="string")
    df["deployment_id"] = pd.Series([f"dep-{i}" for i in pick], dtype="string")
    con = _engine(df)
    got_flags = analysis.flags(con, "s")
    got_deploys = analysis._deployments(con)
    ordered = df.sort_values(["ts", "probe", "tenant"], kind="stable")
    states, changes, prev = {}, [], None
    for ts, raw in zip(ordered["ts"], ordered["flags"]):
        if pd.isna(raw) or raw == prev:
            continue
        prev = raw
        for name, value in json.loads(raw).items():
            if states.get(name) != value:
                changes.append({"ts": _ts(ts), "flag": name, "value": value})
            states[name] = value
    assert got_flags["changes"] == changes and got_flags["last"] == states
    runs, prev = [], None
    for ts, d in zip(ordered["ts"], ordered["deployment_id"]):
        if d != prev:
            runs.append({"id": d, "from": _ts(ts)})
        prev = d
    assert got_deploys["sequence"] == runs
    assert len(runs) == 1 if values == 1 else len(runs) > 100
