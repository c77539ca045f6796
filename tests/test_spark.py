"""Issue 17: one definition, two engines. A real Spark standalone cluster on 127.0.0.1 (a master
and two workers, each its own JVM) computes the sign-off of a faulty fleet; every figure in
signoff.json must equal DuckDB's."""

from datetime import datetime, timedelta, timezone

import pytest

from phasegate.history import history
from phasegate.profile import load_profile
from phasegate.simulator import load_schedule

import services
from conftest import PROFILES, write_profile

pytestmark = pytest.mark.slow
FLEET = PROFILES / "fault-lens-staging-fleet.toml"
PHASE = "phase2-staging-full"
START = datetime(2026, 1, 29, 15, 0, tzinfo=timezone.utc)
# 5xx bursts on one probe, a hang (timeouts), one yacht flapping, an outage (the collector sees
# nothing), a deploy and the rollback to the first deployment.
FAULTS = """
[[fault]]
kind = "server_error"
at = "10m"
for = "5m"
rate = 0.5
probes = ["list"]
[[fault]]
kind = "hang"
at = "30m"
for = "3m"
probes = ["execute"]
[[fault]]
kind = "server_error"
at = "40m"
for = "30m"
every = "2m"
tenants = ["yacht-07"]
[[fault]]
kind = "outage"
at = "75m"
for = "8m"
[[fault]]
kind = "deploy"
at = "90m"
deployment = "dep-new"
[[fault]]
kind = "deploy"
at = "100m"
deployment = "dep-d5t1t6ngi27c73cllsr0"  # the first deployment again
"""


@pytest.fixture(scope="module")
def spark_cluster(tmp_path_factory):
    """A standalone master and two workers (one core each) as separate processes."""
    try:
        with services.spark_cluster(tmp_path_factory.mktemp("spark")) as cluster:
            yield cluster
    except services.Unavailable as exc:
        pytest.skip(str(exc))


# What may differ between the two documents: when and how each was made.
_NOT_FIGURES = ("generated_at", "provenance", "rerun")


def test_spark_cluster_computes_the_same_signoff_as_duckdb_on_a_faulty_fleet(spark_cluster, tmp_path):
    from phasegate import signoff
    from phasegate.analysis import analyze
    from phasegate.window import Window

    master, state = spark_cluster
    data = tmp_path / "fleet"
    sched = write_profile(tmp_path, FAULTS, "faults.toml")
    history(load_profile(FLEET), load_schedule(sched), START.timestamp(), START.timestamp() + 2 * 3600, data, seed=5)
    docs = {}
    for name in ("duckdb", master):  # the notebook's own call, in this process: one Spark session for all below
        so = signoff.run(FLEET, data, PHASE, start=START.isoformat(), hours=2,
                         as_of=(START + timedelta(hours=2)).isoformat(), out_dir=tmp_path / "out", engine=name)
        assert so.doc["verdict"] == "NO-GO", so.doc["reason"]
        docs[name] = so.doc
    duck, spark = docs["duckdb"], docs[master]
    assert duck["provenance"]["engine"] == "duckdb" and spark["provenance"]["engine"] == master
    # The faults are all in the figures compared (else equal figures would prove little).
    assert duck["overall"]["http_5xx"] > 0 and duck["overall"]["outcome_counts"].get("timeout", 0) > 0
    assert duck["coverage"]["longest_gap_s"] >= 480 and duck["deployments"]["rollbacks"]
    assert duck["tenants"]["rows"][0]["tenant"] == "yacht-07"
    assert any(q["transitions"] >= 10 for q in duck["quality"].values())
    assert duck["probes"]["execute"]["p99_ci_ms"] is not None
    for key in duck:
        if key not in _NOT_FIGURES:
            assert spark[key] == duck[key], key
    # It ran on the cluster: an application of the master's, on both workers' cores.
    apps = [a for a in state()["completedapps"] + state()["activeapps"] if a["name"] == "phasegate"]
    assert apps and max(a["cores"] for a in apps) == 2, apps
    # A second analysis on the same session (the notebook's cell run again, a loop over windows):
    # every temporary view is replaced, never "already exists"; its own figures, DuckDB's.
    win = Window(START + timedelta(minutes=10), START + timedelta(minutes=20))  # inside the 5xx burst
    again = analyze(load_profile(FLEET), data, win, now=win.end, engine=master)
    local = analyze(load_profile(FLEET), data, win, now=win.end, engine="duckdb")
    assert again.overall == local.overall and again.probes == local.probes and again.tenants == local.tenants
    assert again.overall["samples"] < duck["overall"]["samples"] and again.overall["http_5xx"] > 0
    # And a third window, on the same session still: each analysis counts its own Spark jobs.
    win = Window(START + timedelta(minutes=40), START + timedelta(minutes=70))
    third = analyze(load_profile(FLEET), data, win, now=win.end, engine=master)
    assert third.probes == analyze(load_profile(FLEET), data, win, now=win.end, engine="duckdb").probes
    assert third.con.spark is again.con.spark and third.con.group != again.con.group
    # A round of queries is one Spark job (`phasegate.batch`): a handful per analysis, not one a query
    # (95 before, on this window).
    assert 0 < third.con.jobs() <= 8 and 0 < again.con.jobs() <= 8, (third.con.jobs(), again.con.jobs())
    again.con.close()
