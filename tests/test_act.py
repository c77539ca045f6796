"""Issue 20: act on the verdict. The fake Render API and the simulator on 127.0.0.1: a NO-GO's
runbook carried out (flag off, one deploy, 503s verified), an approved GO promoting the next
phase, and every refusal in one line."""

import fcntl
import json
from datetime import datetime, timedelta, timezone

import pytest

from phasegate import present, rollout
from phasegate.history import history
from phasegate.profile import load_profile
from phasegate.simulator import load_schedule

from conftest import SIM_PROFILE, phasegate, stopping, write_profile
from test_notify import Receiver
from test_platform import KEY, SERVICE, FakeRender

V1, SUGG, SIGNED = "FAULT_LENS_V1_ENABLED", "FAULT_LENS_SUGGESTIONS_ENABLED", "FAULT_LENS_SIGNED_ACTIONS_ENABLED"
P1, P2 = "phase1-staging-canary", "phase2-staging-full"
ENV = {"TEST_RENDER_KEY": KEY}


@pytest.fixture
def fake():
    yield from stopping(FakeRender)


def _profile(tmp_path, sim_url, api, name="p.toml"):
    # The seed's Scenario 1 with its machine steps: flag off, deploy, the list probe answers 503.
    return write_profile(tmp_path, f'''extends = "{SIM_PROFILE}"
[target]
name = "act-sim"
base_url = "{sim_url}"
[platform]
enabled = true
api_url = "{api}"
service_id = "{SERVICE}"
api_key_env = "TEST_RENDER_KEY"
timeout = "5s"
[runbook.scenario_1]
set_env = {{ {V1} = "false" }}
deploy = true
deploy_hook_env = ""
verify = {{ probe = "list", expect_status = [503], within = "30s" }}
''', name)


def _plan(tmp_path, profile, start, extra="", phase2="", duration="2h"):
    return write_profile(tmp_path, f'''name = "act drill"
allow_simulated = true
reports = "{tmp_path / 'reports'}"
{extra}
[[phase]]
id = "{P1}"
profile = "{profile}"
data = "{tmp_path / 'p1'}"
start = "{start.isoformat()}"
duration = "{duration}"
{phase2}''', "plan.toml")


def _one_line_refusal(res, text):
    assert res.returncode == 2, res.stdout + res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and text in lines[0], res.stderr
    return lines[0]


@pytest.fixture
def receiver():
    yield from stopping(Receiver)


def test_a_5xx_no_go_is_rolled_back_through_the_platform_and_shows_in_the_next_report(tmp_path, sim, fake, receiver):
    srv = sim()
    deployed = []

    # The fake drives the simulator: once the deploy is live the service runs with its variables.
    f = fake(env={V1: "true", SUGG: "true", SIGNED: "true"}, on_deploy=deployed.append, models=[srv.model])
    profile = _profile(tmp_path, f"http://127.0.0.1:{srv.port}", f.api)
    now = datetime.now(timezone.utc).replace(microsecond=0)
    start = now - timedelta(hours=1)
    sched = write_profile(tmp_path, '[[fault]]\nkind = "server_error"\ncount = 6\nprobes = ["list"]\n', "f.toml")
    history(load_profile(profile), load_schedule(sched), start.timestamp(), now.timestamp(), tmp_path / "p1", seed=2)
    plan = _plan(tmp_path, profile, start, extra="auto_rollback = true")
    rep = phasegate("report", "--plan", plan, "--phase", P1, "--formats", "json", env=ENV, timeout=300)
    assert rep.returncode == 10, rep.stderr  # NO-GO: six 500s
    reads = len(f.seen)

    dry = phasegate("act", "--plan", plan, env=ENV)
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.splitlines()[1:] == [f"  1. set {V1}=false on the platform",
                                           "  2. trigger a deploy and follow it until live (within 15 m)",
                                           "  3. verify: the list probe answers 503 within 30 s"], dry.stdout
    assert "DRY RUN" in dry.stdout and len(f.seen) == reads and f.writes == []  # nothing sent, not even a read

    # Refusals, each before any change: a held lock, a stale report, a platform changed meanwhile.
    with open(tmp_path / "reports" / ".act.lock", "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        _one_line_refusal(phasegate("act", "--plan", plan, "--execute", env=ENV), "another phasegate act holds the lock")
    later = (datetime.now(timezone.utc) + timedelta(hours=3)).isoformat()
    _one_line_refusal(phasegate("act", "--plan", plan, "--execute", "--as-of", later, env=ENV),
                      "ago (max_report_age 2 h 0 m): report again before acting")
    f.env[V1] = "false"  # someone turned it off by hand
    _one_line_refusal(phasegate("act", "--plan", plan, "--execute", env=ENV),
                      f"the platform changed since the report: {V1} was on, is off now")
    f.env[V1] = "true"
    assert f.writes == []

    hook = receiver()
    done = phasegate("act", "--plan", plan, "--execute", "--by", "oncall-anna", timeout=120,
                     env={**ENV, "PHASEGATE_WEBHOOK_URL": hook.url})
    assert done.returncode == 0, done.stdout + done.stderr
    assert [(m, p, b) for m, p, b in f.writes] == [
        ("PUT", f"/v1/services/{SERVICE}/env-vars/{V1}", {"value": "false"}),
        ("POST", f"/v1/services/{SERVICE}/deploys", {"clearCache": "do_not_clear"})]
    assert len(deployed) == 1 and deployed[0][V1] == "false"
    dep = f.deploys[0]["id"]
    assert f.deploys[0]["status"] == "live" and f.deploys[1]["status"] == "deactivated"  # Render's lifecycle
    assert f"trigger a deploy: done (deploy {dep} live after" in done.stdout
    assert "verify list answers 503: done (list answered 503" in done.stdout
    # One notification per step, in order; the deploy was followed to live before the verify.
    texts = [m["json"]["text"] for m in hook.got]
    assert texts[0] == f"phasegate act rollback on {P1}: set {V1}=false: ok"
    assert texts[1].startswith(f"phasegate act rollback on {P1}: trigger a deploy: ok (deploy {dep} live after")
    assert texts[2] == f"phasegate act rollback on {P1}: verify list answers 503: ok (list answered 503 after 1 try)"
    assert len(texts) == 3

    again = phasegate("report", "--plan", plan, "--phase", P1, "--formats", "json,html", env=ENV, timeout=300)
    assert again.returncode == 10, again.stderr
    newest = max((tmp_path / "reports" / P1).glob("*/signoff.json"), key=lambda p: p.stat().st_mtime)
    again_doc = json.loads(newest.read_text())
    acts = again_doc["actions"]
    # act's own deploy, inside the window, is expected: named as phasegate's, not an anomaly.
    anomalies = next(c for c in again_doc["criteria"] if c["id"] == "no_anomalies")
    assert f"expected deployment {dep}: rollback by phasegate act (by oncall-anna)" in anomalies["detail"], anomalies
    assert f"unexpected deployment {dep}" not in anomalies["detail"]
    steps = [(a["action"], a["outcome"], a["by"]) for a in acts]
    assert steps[0] == (f"set {V1}=false", "ok", "oncall-anna") and steps[1] == (f"deploy {dep} triggered", "ok", "oncall-anna")
    assert steps[-2:] == [("trigger a deploy", "ok", "oncall-anna"), ("verify list answers 503", "ok", "oncall-anna")]
    # Every status the deploy passed through on its way to live, in order, between trigger and live.
    passed = [a["action"] for a in acts[2:-2]]
    assert passed and all(p.startswith(f"deploy {dep} ") for p in passed), passed
    assert all(a["ts"] for a in acts) and [a["ts"] for a in acts] == sorted(a["ts"] for a in acts)
    assert acts[1]["deployment_id"] == dep and acts[0]["set"] == {V1: "false"}
    html = (newest.parent / "report.html").read_text() if (newest.parent / "report.html").exists() else \
        next(newest.parent.glob("*.html")).read_text()
    assert "Actions taken (phasegate act)" in html and dep in html
    # ... and the rollout summary's timeline.
    summary = rollout.summary(plan)
    assert [a["action"] for a in summary["phases"][0]["actions"]] == [a["action"] for a in acts]
    assert "Actions taken (phasegate act)" in present.rollout_table(summary)
    # The phase's dataset shows the rollback done: a second act does not do it again.
    twice = phasegate("act", "--plan", plan, "--execute", env=ENV, timeout=120)
    assert twice.returncode == 0 and "was rolled back at" in twice.stdout, twice.stdout + twice.stderr
    assert "nothing more to do by machine" in twice.stdout and len(f.writes) == 2
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path
    assert KEY not in done.stdout + done.stderr + again.stdout + again.stderr


def test_an_approved_go_promotes_the_next_phase_and_an_unapproved_one_is_refused(tmp_path, sim, fake):
    srv = sim()
    f = fake(env={V1: "true", SUGG: "false", SIGNED: "false"})
    profile = _profile(tmp_path, f"http://127.0.0.1:{srv.port}", f.api)
    now = datetime.now(timezone.utc).replace(microsecond=0)
    start = now - timedelta(hours=6, minutes=1)  # 6 h: enough execute samples to bound its P99
    history(load_profile(profile), [], start.timestamp(), now.timestamp(), tmp_path / "p1", seed=3)
    plan = _plan(tmp_path, profile, start, duration="6h", phase2=f'''
[[phase]]
id = "{P2}"
profile = "{profile}"
data = "{tmp_path / 'p2'}"
duration = "2h"
  [phase.promote]
  set_env = {{ {SUGG} = "true", {SIGNED} = "true" }}
  deploy = true
''')
    rep = phasegate("report", "--plan", plan, "--phase", P1, "--formats", "json", env=ENV, timeout=300)
    assert rep.returncode == 0, rep.stderr  # GO (a drill on simulated samples)
    folder = next((tmp_path / "reports" / P1).glob("*/signoff.json")).parent
    # Waiting for the approval is a normal state for the unattended job: exit 0, saying what it waits for.
    wait = phasegate("act", "--plan", plan, "--execute", env=ENV)
    assert wait.returncode == 0 and "waiting: the GO report" in wait.stdout and "does not count yet" in wait.stdout
    assert f"phasegate approve {folder}" in wait.stdout and f.writes == []
    assert phasegate("approve", folder, "--by", "reviewer-ben", env=ENV).returncode == 0

    dry = phasegate("act", "--plan", plan, env=ENV)
    assert dry.returncode == 0 and "promote" in dry.stdout and f.writes == [], dry.stdout + dry.stderr
    done = phasegate("act", "--plan", plan, "--execute", env=ENV, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert [(m, p, b) for m, p, b in f.writes] == [
        ("PUT", f"/v1/services/{SERVICE}/env-vars/{SIGNED}", {"value": "true"}),
        ("PUT", f"/v1/services/{SERVICE}/env-vars/{SUGG}", {"value": "true"}),
        ("POST", f"/v1/services/{SERVICE}/deploys", {"clearCache": "do_not_clear"})]
    assert f.env == {V1: "true", SUGG: "true", SIGNED: "true"}
    assert list((tmp_path / "p2").rglob("*.parquet")) or list((tmp_path / "p2").rglob("*.jnl"))  # recorded in phase 2


def test_a_failed_step_stops_the_sequence_and_is_not_retried(tmp_path, sim, fake):
    srv = sim()
    f = fake(env={V1: "true", SUGG: "true", SIGNED: "true"}, fail_writes=("POST",))
    profile = _profile(tmp_path, f"http://127.0.0.1:{srv.port}", f.api)
    now = datetime.now(timezone.utc).replace(microsecond=0)
    start = now - timedelta(hours=1)
    sched = write_profile(tmp_path, '[[fault]]\nkind = "server_error"\ncount = 3\nprobes = ["list"]\n', "f.toml")
    history(load_profile(profile), load_schedule(sched), start.timestamp(), now.timestamp(), tmp_path / "p1", seed=4)
    plan = _plan(tmp_path, profile, start)
    assert phasegate("report", "--plan", plan, "--phase", P1, "--formats", "json", env=ENV, timeout=300).returncode == 10
    # Without auto_rollback the NO-GO must be acknowledged first.
    _one_line_refusal(phasegate("act", "--plan", plan, "--execute", env=ENV), "is not acknowledged")
    folder = next((tmp_path / "reports" / P1).glob("*/signoff.json")).parent
    assert phasegate("approve", folder, "--acknowledge", "--by", "oncall-anna", env=ENV).returncode == 0
    res = phasegate("act", "--plan", plan, "--execute", env=ENV, timeout=120)
    assert res.returncode == 1, res.stdout + res.stderr
    assert "  2. trigger a deploy: FAILED (HTTP 503" in res.stdout
    assert "stopped at step 2 (trigger a deploy); nothing after it was sent. Not retried" in res.stdout
    assert [m for m, _p, _b in f.writes] == ["PUT", "POST"]  # one POST: never retried blindly
