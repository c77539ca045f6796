"""Render as evidence: logs, metrics and events pulled from `phasegate simulate platform`'s
server, whose answers come from the simulator's own request log, so every count is checked
exactly against what the simulator served."""

import json
import shutil
import threading
import time
import urllib.request
from datetime import datetime, timedelta, timezone

import pytest
from pypdf import PdfReader

from phasegate import signoff
from phasegate.collector import Collector
from phasegate.criteria import evaluate
from phasegate.history import history
from phasegate.evidence import pull_evidence, pulled_intervals
from phasegate.platformsim import PlatformSim
from phasegate.profile import load_profile
from phasegate.store import read_samples
from phasegate.window import Window

from conftest import SIM_PROFILE, fast_profile, phasegate, stopping, write_profile

KEY = "rnd_RENDERevidenceKEY0123456789abcdef"
SERVICE = "srv-d5fr5hre5dus73d3gdn0"
PHASE = "phase1-staging-canary"
ENV_ON = {"FAULT_LENS_V1_ENABLED": "true", "FAULT_LENS_SUGGESTIONS_ENABLED": "true",
          "FAULT_LENS_SIGNED_ACTIONS_ENABLED": "true"}


@pytest.fixture
def fake():
    def build(srv, key=KEY):
        f = PlatformSim(key=key, service_id=SERVICE, env=dict(ENV_ON), models=[srv.model], deploy_s=0.3)
        f.sim = srv  # the simulator whose requests Render "saw"
        return f
    yield from stopping(build)


def _profile(tmp_path, srv, f, extra="", delay="0s"):
    return fast_profile(tmp_path, f"http://127.0.0.1:{srv.port}", extra=f'''
[platform]
enabled = true
api_url = "{f.api}"
service_id = "{SERVICE}"
api_key_env = "TEST_RENDER_KEY"
timeout = "5s"
interval = "30s"
metrics_resolution = "1s"
evidence_delay = "{delay}"
{extra}
''')


def _users(srv, n, path="/v1/actions/list", pause_s=0.0):
    """Real users' requests (not phasegate's User-Agent): what only Render's logs can count."""
    for i in range(n):
        time.sleep(pause_s)
        req = urllib.request.Request(f"http://127.0.0.1:{srv.port}{path}?ytid=user{i}",
                                     headers={"User-Agent": "Mozilla/5.0 (crew app)"})
        try:
            urllib.request.urlopen(req, timeout=5).read()
        except OSError:
            pass  # a 500 is an answer too; it is in the simulator's log either way


def _served(srv, start, users: bool):
    """The simulator's ground truth: its 5xx (not FEATURE_DISABLED) to users or to the probes."""
    return sum(1 for r in srv.records if r["ts"] >= start and r["status"] is not None and 500 <= r["status"] <= 599
               and r.get("error_code") != "FEATURE_DISABLED"
               and (r.get("user_agent") or "").startswith("phasegate/") != users)


def _crit(doc, cid):
    return next(c for c in doc["criteria"] if c["id"] == cid)


def test_server_errors_counted_exactly_from_render_logs_with_restarts_events_and_no_key_anywhere(
        tmp_path, sim, fake, monkeypatch):
    # A server-errors window: a third of the answers are 500s for four seconds, probes and users alike.
    sched = write_profile(tmp_path, '[[fault]]\nkind = "server_error"\nat = "1s"\nfor = "4s"\nrate = 0.35\n', "f.toml")
    srv = sim(schedule=sched)
    f = fake(srv)
    monkeypatch.setenv("TEST_RENDER_KEY", KEY)
    start = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(minutes=3)
    # Render's logs lag behind its traffic; so do the simulator's records, each appended when its answer
    # is sent. A pull up to now (a 0 s delay) can pass a request still being answered: it would miss
    # a line. Two seconds of delay, as Render's own is a minute, and the report waits for them.
    prof = _profile(tmp_path, srv, f, delay="2s")
    data = tmp_path / "data"
    c = Collector(load_profile(prof), data, until_ts=time.time() + 6)
    users = threading.Thread(target=_users, args=(srv, 400, "/v1/actions/list", 0.01))
    users.start()  # beside the probes, while the bursts of 500s play out
    c.run()
    users.join()
    # An instance that failed and came back without its startup line, and one with a flag off.
    bad = f.restart(startup="omit", failed=True, ago_s=150)
    off = f.restart(startup="flag_off", ago_s=120)
    users_5xx, probes_5xx = _served(srv, start.timestamp(), True), _served(srv, start.timestamp(), False)
    assert users_5xx > 0 and probes_5xx > 0  # the scenario served 500s to both
    while time.time() < max(x["ts"] for x in srv.records) + 3:  # the report's pull reaches the last request
        time.sleep(0.2)

    out = tmp_path / "out"
    res = phasegate("report", "--profile", prof, "--data", data, "--phase", PHASE, "--start", start.isoformat(),
                    "--hours", "1", "--out", out, env={"TEST_RENDER_KEY": KEY}, timeout=300)
    assert res.returncode == 10, res.stdout + res.stderr  # NO-GO
    out, = (p for p in (out / PHASE).iterdir() if p.is_dir())
    doc = json.loads((out / "signoff.json").read_text())
    r = doc["render"]
    assert r["available"] and not r["failed_reads"]
    # Exactly what the simulator served, each source apart and named.
    assert r["traffic"]["overall"]["http_5xx"] == users_5xx
    assert r["probes_logged"]["http_5xx"] == probes_5xx
    assert r["traffic"]["overall"]["samples"] == sum(
        1 for x in srv.records if x["ts"] >= start.timestamp() and x["status"] is not None
        and not (x.get("user_agent") or "").startswith("phasegate/"))
    no5 = _crit(doc, "no_5xx")
    assert f"Render request logs {users_5xx} of" in no5["detail"], no5["detail"]
    assert no5["measured"] == doc["overall"]["http_5xx"] + users_5xx and no5["passed"] is False
    # The startup criterion names the instance and the time of each bad start.
    fl = _crit(doc, "flags_at_startup")
    assert fl["passed"] is False and fl["measured"] == 2, fl
    assert f"instance {bad['id']} started" in fl["detail"] and "logged no [FeatureFlags] line" in fl["detail"]
    assert f"instance {off['id']} at" in fl["detail"] and "FAULT_LENS_V1_ENABLED=false" in fl["detail"]
    # The server_failed event: on the timeline (events), in service_healthy's evidence, and its own criterion.
    failed_ev = [e for e in r["events"] if e["type"] == "server_failed"]
    assert len(failed_ev) == 1 and failed_ev[0]["details"]["instanceId"]
    assert "1 server_failed and 2 server_restarted events" in _crit(doc, "service_healthy")["detail"]
    errs = _crit(doc, "render_errors")
    assert errs["passed"] is False and errs["measured"] == r["error_lines"] + 1
    # One error line per 500 served (users' and probes'), as the fake logs them.
    assert r["error_lines"] == sum(1 for x in srv.records if x["ts"] >= start.timestamp() and x["status"] == 500)
    # Render's latency quantile is shown beside the probes' P99, never mixed in.
    assert r["metrics"]["latency"] and r["metrics"]["latency_path"] == "/v1/actions/execute"
    assert "Render's own p99 for /v1/actions/execute: max" in _crit(doc, "execute_p99")["detail"]
    assert "(a quantile per step, not samples: shown, not judged)" in _crit(doc, "execute_p99")["detail"]
    # More than 100 steps of metrics (three minutes at 1 s): every status counted, as served.
    assert len({p["ts"] for p in r["metrics"]["requests_series"]}) > 0
    assert sum(r["metrics"]["requests_by_status"].values()) == sum(
        1 for x in srv.records if x["ts"] >= start.timestamp() and x["status"] is not None)

    html = (out / "signoff.html").read_text()
    assert "Render: requests by status" in html and "Startup lines, per instance" in html
    assert bad["id"] in html and "server_failed" in html
    pdf = "".join(p.extract_text() for p in PdfReader(out / "signoff.pdf").pages)
    assert "flags_at_startup" in pdf and "Render request logs" in pdf
    page1 = next(t for t in (p.extract_text() for p in PdfReader(out / "signoff.pdf").pages) if "VERDICT:" in t)
    assert "From Render's side" in page1 and f"{users_5xx} of" in page1, page1
    # The key in no output: parquet bytes, HTML, PDF text, JSON, stderr.
    for path in data.rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path
    for text in (html, pdf, json.dumps(doc), res.stderr, res.stdout):
        assert KEY not in text


def test_many_pages_and_overlapping_pulls_count_each_log_line_once(tmp_path, sim, fake, monkeypatch):
    srv = sim("healthy")
    f = fake(srv)
    monkeypatch.setenv("TEST_RENDER_KEY", KEY)
    t0 = time.time() - 1
    _users(srv, 260)  # three pages of request lines at Render's largest page (100)
    _users(srv, 3, "/v1/nowhere")
    t1 = time.time() + 1
    src = load_profile(_profile(tmp_path, srv, f)).platform
    win = Window(datetime.fromtimestamp(t0 - 5, timezone.utc), datetime.fromtimestamp(t1 + 200, timezone.utc))
    # Two collectors' pulls over overlapping intervals, in their own directories, then merged.
    a, b = tmp_path / "a" / "data", tmp_path / "b"
    one = pull_evidence(src, a, "t", Window(win.start, datetime.fromtimestamp(t0 + (t1 - t0) * 0.7, timezone.utc)),
                        now=t1 + 200)
    two = pull_evidence(src, b, "t", Window(datetime.fromtimestamp(t0 + (t1 - t0) * 0.3, timezone.utc), win.end),
                        now=t1 + 200)
    assert one.requests + two.requests > 263  # the overlap was read twice
    assert one.requests < 263 and two.requests < 263
    for path in b.rglob("*.parquet"):
        dest = a / path.relative_to(b)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, dest)
    assert len(pulled_intervals(a)) == 2
    # A third pull over the whole window finds nothing left to read.
    again = pull_evidence(src, a, "t", win, now=t1 + 200)
    assert again.intervals == [] and again.lines == 0
    # The metrics range (over 200 one-second steps) was asked for in parts of at most 100 steps.
    metric_calls = [p for p, _auth in f.seen if p.startswith("/v1/metrics/http-requests")]
    assert len(metric_calls) >= 3, metric_calls

    from phasegate.analysis import analyze
    history(load_profile(SIM_PROFILE), [], win.start.timestamp(), win.end.timestamp(), a, seed=1)  # probe samples
    custom = _profile(tmp_path, srv, f, '[criteria.users_404]\nmetric = "status_count"\n'
                      'where = { source = "render", status = 404 }\nmax = 0\n')
    an = analyze(load_profile(custom), a, win, now=win.end)
    assert an.render["traffic"]["overall"]["samples"] == 263
    assert an.render["traffic"]["overall"]["status_counts"] == {"200": 260, "404": 3}
    assert an.render["metrics"]["requests_by_status"] == {"200": 260, "404": 3}
    assert an.render["coverage"]["parts"] == 1  # the two overlapping intervals merge into one
    # A criterion written as data names Render's request logs as its source.
    users_404 = next(c for c in evaluate(load_profile(custom), an).criteria if c.id == "users_404")
    assert users_404.passed is False and users_404.measured == 3, users_404


def test_429_waits_and_is_recorded_and_401_is_one_line_and_the_report_says_unavailable(tmp_path, sim, fake, monkeypatch):
    srv = sim("healthy")
    f = fake(srv)
    monkeypatch.setenv("TEST_RENDER_KEY", KEY)
    _users(srv, 20)
    src = load_profile(_profile(tmp_path, srv, f)).platform
    now = time.time() + 1
    win = Window(datetime.fromtimestamp(now - 60, timezone.utc), datetime.fromtimestamp(now, timezone.utc))
    f.burst, f.burst_retry_after = 2, 1  # the next two calls answer 429 Retry-After: 1
    data = tmp_path / "data"
    res = pull_evidence(src, data, "t", win, now=now)
    assert res.failed == [] and res.requests == 20
    assert [w for w in res.notes if "429: waited 1.0 s (Retry-After)" in w], res.notes
    rows = read_samples(data, win.start - timedelta(days=1), win.end + timedelta(days=1))
    marker = rows[rows["probe"] == "render.pull"]
    assert len(marker) == 1 and json.loads(marker.iloc[0]["evidence"])["waits"] == res.notes

    # The wrong key: one line naming the variable, and the report says Render was unavailable.
    wrong = "rnd_WRONGwrongWRONG0123456789"
    prof = _profile(tmp_path, srv, f)
    bad = phasegate("pull-platform", "--profile", prof, "--data", tmp_path / "d2",
                    env={"TEST_RENDER_KEY": wrong})
    assert bad.returncode == 1
    lines = bad.stderr.strip().splitlines()
    errors = [ln for ln in lines if ln.startswith("phasegate: error:")]
    assert len(errors) == 1 and "$TEST_RENDER_KEY" in errors[0] and "HTTP 401" in errors[0], bad.stderr
    assert wrong not in bad.stderr + bad.stdout
    monkeypatch.setenv("TEST_RENDER_KEY", wrong)
    history(load_profile(SIM_PROFILE), [], now - 900, now, data, seed=1)  # the probes' samples of the window
    so = signoff.run(prof, data, PHASE, start=(win.start - timedelta(minutes=10)).isoformat(), hours=1,
                     out_dir=tmp_path / "out")
    r = so.doc["render"]
    assert [x for x in r["failed_reads"] if "$TEST_RENDER_KEY" in x["error"]], r["failed_reads"]
    assert any("Render: failed read" in n and "$TEST_RENDER_KEY" in n for n in so.doc["inputs"]["notes"])
    fl = _crit(so.doc, "flags_at_startup")
    assert fl["passed"] is None and "Render's logs cover" in fl["detail"]
    assert wrong not in json.dumps(so.doc)


def test_simulate_platform_startup_fault_fails_the_startup_criterion_naming_instance_and_time(tmp_path, monkeypatch):
    from phasegate.analysis import analyze
    from phasegate.platformsim import start_platform

    monkeypatch.setenv("TEST_RENDER_KEY", KEY)
    made = []
    try:
        for startup in ("flag_off", "omit"):
            plat, srv = start_platform(0, KEY, 0, startup=startup)
            made += [plat, srv]
            # A deploy goes live: its instance starts the same way (deploy_ended, then its line or none).
            req = urllib.request.Request(f"{plat.api}/services/{SERVICE}/deploys", data=b"{}", method="POST",
                                         headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
            urllib.request.urlopen(req, timeout=5).read()
            deadline = time.monotonic() + 60  # a hang guard: the fake's deploys take 1 s
            while plat.default.deploys[0]["status"] != "live" and time.monotonic() < deadline:
                time.sleep(0.1)
            assert plat.default.deploys[0]["status"] == "live"
            # The deploy_ended event must be settled: the logs cover a minute past it.
            later = time.time() + 90
            data = tmp_path / startup
            win = Window(datetime.fromtimestamp(later - 600, timezone.utc), datetime.fromtimestamp(later, timezone.utc))
            prof = load_profile(_profile(tmp_path, srv, plat))
            assert pull_evidence(prof.platform, data, "t", win, now=later).failed == []
            history(load_profile(SIM_PROFILE), [], win.start.timestamp(), later, data, seed=1)
            an = analyze(prof, data, win, now=win.end)
            fl = next(c for c in evaluate(prof, an).criteria if c.id == "flags_at_startup")
            assert fl.passed is False, fl
            inst = plat.default.instances
            if startup == "flag_off":
                assert fl.measured == 2  # the first instance and the deploy's, each named with its time
                for i in inst:
                    assert f"instance {i['id']} at " in fl.detail and "FAULT_LENS_V1_ENABLED=false" in fl.detail
            else:
                dep = plat.default.deploys[0]["id"]
                assert fl.measured == 1 and f"(deploy_ended of {dep}) and logged no [FeatureFlags] line" in fl.detail
    finally:
        for s in made:
            s.shutdown()
            s.server_close()
