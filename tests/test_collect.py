"""Collector and check end to end, as subprocesses against a real simulator."""

import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone

import pytest

from phasegate.store import read_samples

from conftest import ROOT, SIM_PROFILE, fast_profile, phasegate, url, write_profile
from conftest import phasegate as phasegate_cli

EPOCH = datetime(2000, 1, 1, tzinfo=timezone.utc)
FAR = datetime(2100, 1, 1, tzinfo=timezone.utc)


def _collector(profile, data, *extra, env=None):
    return subprocess.Popen([sys.executable, "-m", "phasegate.cli", "collect", "--profile", str(profile),
                             "--data", str(data), "--compact-every", "2s", *extra],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})


def kill_and_restart(profile, data, log, kill_after_s):
    """SIGKILL a collector at `kill_after_s`, restart it briefly; (lost, duplicated, rows, recorded).
    `recorded`: the samples the collector had recorded when it was killed, read while it is frozen
    (SIGSTOP), so the promise is tested in terms the code controls, not wall-clock luck on a busy
    machine."""
    proc = _collector(profile, data, "--quiet")
    # Kill once probing is under way (interpreter start-up varies with load), then after a further
    # stretch that puts the kill at different points of the 2 s compaction cycle.
    end = time.monotonic() + 60
    while time.monotonic() < end and (not log.exists() or len(log.read_text().splitlines()) < 12):
        time.sleep(0.05)
    time.sleep(kill_after_s / 2)
    proc.send_signal(signal.SIGSTOP)
    try:
        recorded = set(read_samples(data, EPOCH, FAR)["request_id"]) if data.exists() else set()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    again = phasegate("collect", "--profile", profile, "--data", data, "--for", "1s", "--quiet")
    assert again.returncode == 0, again.stderr
    assert "recovered" in again.stderr
    time.sleep(0.3)
    df = read_samples(data, EPOCH, FAR)
    assert df.attrs["excluded"] == []
    stored = set(df["request_id"])
    lost = sorted(recorded - stored)
    answered = {json.loads(x)["request_id"] for x in log.read_text().splitlines()}
    invented = [r for r in stored if r not in answered and not df.loc[df["request_id"] == r, "status"].isna().all()]
    assert invented == []  # every stored answer was one the server gave
    return lost, int(df.duplicated(["run_id", "seq"]).sum()), len(df), len(recorded)


@pytest.mark.parametrize("kill_after_s", [3.0, 5.5])
def test_sigkill_loses_no_recorded_sample(sim, tmp_path, kill_after_s):
    log = tmp_path / "requests.jsonl"
    srv = sim(request_log=log)
    profile = fast_profile(tmp_path, url(srv), interval="0.25s", timeout="0.2s")
    data = tmp_path / "data"
    lost, dups, rows, recorded = kill_and_restart(profile, data, log, kill_after_s)
    assert recorded >= 10
    assert lost == [] and dups == 0
    assert rows >= recorded
    assert not list(data.glob("samples/*/.*.tmp-*"))


def test_sigterm_flushes_everything(sim, tmp_path):
    log = tmp_path / "requests.jsonl"
    srv = sim(request_log=log)
    profile = fast_profile(tmp_path, url(srv), interval="0.3s", timeout="0.25s")
    data = tmp_path / "data"
    proc = _collector(profile, data)
    time.sleep(3)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "collected" in out
    time.sleep(0.3)
    df = read_samples(data, EPOCH, FAR)
    assert len(df) == len(log.read_text().splitlines())
    assert not list((data / "journal").glob("*.jnl"))
    assert "samples" in err  # live progress went to the terminal


def test_check_healthy_prints_the_seed_block(sim):
    res = phasegate("check", "--profile", SIM_PROFILE, "--base-url", url(sim()))
    assert res.returncode == 0, res.stdout + res.stderr
    out = res.stdout
    for needle in ("CANARY HEALTH CHECK", "1. Service Health", "✅ HEALTHY", "Handlers Loaded: 4/4",
                   "2. Feature Flags", "✅ FLAGS ON", "- FAULT_LENS_V1_ENABLED: true",
                   "/list: ✅ 200 OK (12 actions)", "/suggestions: ✅ 200 OK (11 actions)",
                   "OVERALL: ✅ CANARY HEALTHY"):
        assert needle in out


def test_check_flags_off_exits_1_naming_feature_disabled(sim, tmp_path):
    data = tmp_path / "data"
    res = phasegate("check", "--profile", SIM_PROFILE, "--base-url", url(sim("flags-off")), "--data", data)
    assert res.returncode == 1
    assert "❌ FLAGS OFF" in res.stdout
    assert "/list: ❌ 503 FEATURE_DISABLED" in res.stdout
    assert "OVERALL: ❌ CANARY UNHEALTHY" in res.stdout
    df = read_samples(data, EPOCH, FAR)
    assert sorted(df["probe"]) == ["execute", "health", "list", "suggestions"]
    assert (df[df["probe"] == "list"]["error_code"] == "FEATURE_DISABLED").all()


@pytest.mark.parametrize("verb", [[], ["collect"], ["check"], ["report"], ["simulate"],
                                  ["simulate", "serve"], ["simulate", "history"]])
def test_every_verb_has_help(verb):
    res = phasegate(*verb, "--help")
    assert res.returncode == 0 and "Usage:" in res.stdout


def test_simulate_history_writes_marked_samples(tmp_path):
    data = tmp_path / "data"
    res = phasegate("simulate", "history", "--hours", "2", "--end", "2026-01-29T14:45:01Z", "--data", data)
    assert res.returncode == 0, res.stderr
    df = read_samples(data, EPOCH, FAR)
    # 3 probes every 5 s and execute every 60 s over 2 h
    assert len(df) == 3 * 1440 + 120
    assert df["simulated"].all()
    assert df["ts"].min() >= datetime(2026, 1, 29, 12, 45, 1, tzinfo=timezone.utc)
    assert df["ts"].max() < datetime(2026, 1, 29, 14, 45, 1, tzinfo=timezone.utc)
    assert set(df["outcome"]) == {"ok"}
    bad = phasegate("simulate", "history", "--scenario", "nope", "--data", data)
    assert bad.returncode == 2 and "'nope' is not one of 'healthy', 'server-errors'" in bad.stderr
    from phasegate.cli import SCENARIO_NAMES
    from phasegate.simulator import SCENARIOS
    assert SCENARIO_NAMES == SCENARIOS  # --help lists every scenario the simulator has
    helped = phasegate("simulate", "history", "--help").stdout
    assert all(name in helped for name in SCENARIOS)


def test_server_errors_are_drawn_column_wise_as_the_exact_path_answers_them(tmp_path, monkeypatch):
    # Uncounted server errors (a rate, tenants, an endpoint, periodic bursts) take the vectorised
    # path, which must store what replaying each request through Model.respond stores.
    from phasegate import history as hist
    from phasegate.profile import load_profile
    from phasegate.simulator import Fault

    prof = load_profile(ROOT / "profiles" / "fault-lens-staging-fleet.toml")
    t0, h = 1_790_000_000.0, 3600
    faults = [Fault("server_error", start_s=h / 2, end_s=2 * h, rate=0.3, tenants=("yacht-07", "yacht-31"),
                    probes=("list",)),
              Fault("server_error", start_s=2 * h, rate=1.0, every_s=600, params={"burst_s": 60})]
    # Where a fault is active, asked for a column at once, is what it says for each request alone.
    import numpy as np
    at = np.arange(0, 3 * h, 7.3)
    who = np.array(["yacht-07", "yacht-31", "yacht-01", None] * (len(at) // 4 + 1), dtype=object)[:len(at)]
    for f in faults:
        for ep in ("list", "health"):
            assert f.active_in(at, ep, who).tolist() == [f.active(t, ep, x) for t, x in zip(at, who)]
    exact = hist._slow_chunk
    monkeypatch.setattr(hist, "_slow_chunk", None)  # drawn column-wise, or this run fails
    hist.history(prof, faults, t0, t0 + 3 * h, tmp_path / "drawn", seed=3)
    monkeypatch.setattr(hist, "_slow_chunk", exact)
    monkeypatch.setattr(hist, "_columnar", lambda faults, lo, hi: None if lo < 3 * h else [])
    hist.history(prof, faults, t0, t0 + 3 * h, tmp_path / "exact", seed=3)

    def rows(name):
        df = read_samples(tmp_path / name, EPOCH, FAR)
        df["rel"] = df["ts"].map(lambda t: t.timestamp()) - t0
        return df

    drawn, replayed = rows("drawn"), rows("exact")
    assert len(drawn) == len(replayed)
    kinds = ["probe", "status", "outcome", "error_code", "error", "bytes", "health_status", "item_count", "url"]
    for df in (drawn, replayed):
        df["has_evidence"] = df["evidence"].notna()
        df["kind"] = list(zip(*(df[k].map(repr) for k in kinds)))
    # The same responses, classified alike; every failed request carries its evidence.
    assert set(drawn["kind"]) == set(replayed["kind"])
    for df in (drawn, replayed):
        failed = df[df["status"] == 500]
        assert failed["has_evidence"].all() and (failed["outcome"] == "http_error").all()
        assert set(failed["error_code"]) == {"INTERNAL_ERROR"}
    # The bursts answer every request with a 500, so both paths count exactly the same.
    burst = lambda df: ((df["status"] == 500) & (df["rel"] >= 2 * h)).sum()
    assert burst(drawn) == burst(replayed) > 0
    # The rate: only the named tenants' list requests in the fault's hours, about 30 % of them.
    for df in (drawn, replayed):
        early = df[(df["status"] == 500) & (df["rel"] < 2 * h)]
        assert set(early["tenant"]) == {"yacht-07", "yacht-31"} and set(early["probe"]) == {"list"}
        assert (early["rel"] >= h / 2).all()
        exposed = ((df["rel"] >= h / 2) & (df["rel"] < 2 * h) & (df["probe"] == "list")
                   & df["tenant"].isin(["yacht-07", "yacht-31"])).sum()
        assert abs(len(early) - 0.3 * exposed) < 5 * (exposed * 0.3 * 0.7) ** 0.5, (len(early), exposed)


@pytest.mark.slow
def test_make_notebook_serves_on_loopback_as_root(tmp_path):
    # `make notebook` as CI and containers run it (root: --allow-root), on 127.0.0.1.
    import socket
    import urllib.request
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen(["make", "notebook", f"NB_PORT={port}"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 540  # the first run installs .venv-notebook
        answer = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                answer = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/api", timeout=2))
                break
            except OSError:
                time.sleep(0.5)
        assert answer is not None and "version" in answer, proc.stdout.read() if proc.poll() is not None else ""
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    assert f"http://127.0.0.1:{port}/" in out


def test_two_collectors_on_one_data_dir_keep_every_row(sim, tmp_path):
    log = tmp_path / "requests.jsonl"
    srv = sim(request_log=log)
    profile = fast_profile(tmp_path, url(srv), interval="0.3s", timeout="0.25s")
    data = tmp_path / "data"
    procs = [_collector(profile, data, "--for", "4s", "--quiet") for _ in range(2)]
    for p in procs:
        assert p.wait(timeout=60) == 0
    time.sleep(0.3)
    df = read_samples(data, EPOCH, FAR)
    assert df["run_id"].nunique() == 2
    assert len(df) == len(log.read_text().splitlines())
    assert not df.duplicated(["run_id", "seq"]).any()


def test_tenant_templated_probe_runs_once_per_tenant(sim, tmp_path):
    log = tmp_path / "requests.jsonl"
    srv = sim(request_log=log)
    profile = write_profile(tmp_path, f'''
[target]
name = "fleet"
base_url = "{url(srv)}"
interval = "2s"
timeout = "1s"
tenants = ["yacht-a", "yacht-b", "yacht-c"]
headers = {{ "X-Yacht-Id" = "{{tenant}}" }}

[[probes]]
name = "list"
path = "/v1/actions/list?domain=faults&yacht={{tenant}}"
''')
    data = tmp_path / "data"
    res = phasegate("check", "--profile", profile, "--data", data)
    assert res.returncode == 0, res.stdout
    df = read_samples(data, EPOCH, FAR)
    assert sorted(df["tenant"]) == ["yacht-a", "yacht-b", "yacht-c"]
    assert sorted(json.loads(x)["path"].rsplit("=", 1)[1] for x in log.read_text().splitlines()) == \
        ["yacht-a", "yacht-b", "yacht-c"]


@pytest.mark.parametrize("scenario,expect", [
    ("deploy-change", ["dep-d5t1t6ngi27c73cllsr0", "dep-d6a2k8pqr31c73abcd10"]),
    ("rollback", ["dep-d5t1t6ngi27c73cllsr0", "dep-d6a2k8pqr31c73abcd10", "dep-d5t1t6ngi27c73cllsr0"]),
])
def test_live_deployment_scenarios(tmp_path, scenario, expect):
    from phasegate.collector import Collector
    from phasegate.profile import load_profile
    from phasegate.simulator import start_server
    profile = load_profile(fast_profile(tmp_path, "http://127.0.0.1:9", interval="0.2s", timeout="0.15s"))
    data = tmp_path / "data"
    srv = start_server(0, scenario, span_s=3.0)  # new deployment at 0.9 s (and back at 1.8 s)
    try:
        profile = load_profile(profile.path, base_url=url(srv))
        Collector(profile, data, until_ts=time.time() + 3.5).run()
    finally:
        srv.shutdown()
        srv.server_close()
    df = read_samples(data, EPOCH, FAR).sort_values("ts")
    seq = [d for i, d in enumerate(df["deployment_id"].dropna()) if i == 0 or d != df["deployment_id"].dropna().iloc[i - 1]]
    assert seq == expect


def test_version_and_formats_and_the_last_hours_ending_now(tmp_path):
    import phasegate
    res = phasegate_cli("--version")
    assert res.returncode == 0 and res.stdout.strip() == f"phasegate {phasegate.__version__}"
    data = tmp_path / "data"
    assert phasegate_cli("simulate", "history", "--hours", "2", "--end", "now", "--data", data).returncode == 0
    res = phasegate_cli("report", "--profile", SIM_PROFILE, "--data", data, "--phase", "phase1-staging-canary",
                        "--end", "now", "--hours", "1", "--formats", "json", "--out", tmp_path / "r", timeout=300)
    assert res.returncode in (12, 13), res.stdout + res.stderr  # an hour of a 24 h window: not decided
    (folder,) = (p for p in (tmp_path / "r" / "phase1-staging-canary").iterdir() if p.is_dir())
    assert sorted(p.name for p in folder.iterdir()) == ["signoff.ipynb", "signoff.json"]
    doc = json.loads((folder / "signoff.json").read_text())
    assert doc["window"]["elapsed_s"] == 3600
