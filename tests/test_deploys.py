"""Issue 25: act follows Render's deploy lifecycle, against `phasegate simulate platform`'s server
on 127.0.0.1 driving the simulator: a slow deploy, a failed build, a 429 burst, a flag kept in an
environment group, the deploy hook and a 202 trigger. Each checks the action rows act recorded."""

import json
import urllib.request
from datetime import datetime, timedelta, timezone

import pytest

from phasegate import act, signoff
from phasegate.errors import ActionRefused
from phasegate.history import history
from phasegate.platformsim import _Limit
from phasegate.profile import load_profile
from phasegate.rollout import load_plan
from phasegate.simulator import Fault
from phasegate.store import read_samples

from conftest import SIM_PROFILE, stopping, write_profile
from test_platform import KEY, SERVICE, FakeRender

V1, SUGG, SIGNED = "FAULT_LENS_V1_ENABLED", "FAULT_LENS_SUGGESTIONS_ENABLED", "FAULT_LENS_SIGNED_ACTIONS_ENABLED"
P1 = "phase1-staging-canary"
ON = {V1: "true", SUGG: "true", SIGNED: "true"}


@pytest.fixture
def fake():
    yield from stopping(FakeRender)


def _no_go(tmp_path, srv, f, steps="", deploy_hook_env=""):
    """A plan whose phase 1 is NO-GO (six 500s on list), reported with the platform read."""
    profile = write_profile(tmp_path, f'''extends = "{SIM_PROFILE}"
[target]
name = "deploy-sim"
base_url = "http://127.0.0.1:{srv.port}"
[platform]
enabled = true
api_url = "{f.api}"
service_id = "{SERVICE}"
api_key_env = "TEST_RENDER_KEY"
timeout = "5s"
retry = "30s"
[runbook.scenario_1]
set_env = {{ {V1} = "false" }}
deploy = true
deploy_hook_env = "{deploy_hook_env}"
deploy_within = "90s"
verify = {{ probe = "list", expect_status = [503], within = "30s" }}
{steps}
''')
    now = datetime.now(timezone.utc).replace(microsecond=0)
    start = now - timedelta(hours=1)
    history(load_profile(profile), [Fault("server_error", count=6, probes=("list",))], start.timestamp(),
            now.timestamp(), tmp_path / "p1", seed=2)
    plan = write_profile(tmp_path, f'''name = "deploys"
allow_simulated = true
auto_rollback = true
reports = "{tmp_path / 'reports'}"
[[phase]]
id = "{P1}"
profile = "{profile}"
data = "{tmp_path / 'p1'}"
start = "{start.isoformat()}"
duration = "2h"
''', "plan.toml")
    so = signoff.run(None, tmp_path / "p1", P1, start=start.isoformat(), hours=2, out_dir=tmp_path / "reports" / P1 / "nogo",
                     plan=plan)
    assert so.doc["verdict"] == "NO-GO", so.doc["reason"]
    return load_plan(plan), so.doc


def _actions(tmp_path):
    df = read_samples(tmp_path / "p1", datetime(2020, 1, 1, tzinfo=timezone.utc),
                      datetime.now(timezone.utc) + timedelta(minutes=5), sources=["action"],
                      columns=["request_id", "probe", "outcome", "health_status", "deployment_id", "evidence", "error"])
    df = df.sort_values(["ts", "request_id"])
    df["detail"] = [json.loads(e).get("detail") for e in df["evidence"]]
    return df


@pytest.mark.slow
def test_a_slow_deploy_is_followed_until_live_and_only_then_verified(tmp_path, sim, fake, monkeypatch):
    srv = sim()
    f = fake(env=dict(ON), models=[srv.model], deploy_s=20.0)  # live 20 s after the trigger
    monkeypatch.setenv("TEST_RENDER_KEY", KEY)
    plan, _doc = _no_go(tmp_path, srv, f)
    res = act.act(plan, execute=True, by="oncall-anna")
    assert not res.failed, res.text
    rows = _actions(tmp_path)
    steps = list(rows["probe"])
    assert steps[0] == "act.set_env" and steps[1] == "act.deploy" and steps[-1] == "act.verify", steps
    dep = rows["deployment_id"].iloc[1]
    statuses = [s for p, s in zip(rows["probe"], rows["health_status"]) if p == "act.deploy_status"]
    # Every status the deploy passed through, recorded as it was seen, ending live.
    assert statuses[-1] == "live" and {"build_in_progress", "update_in_progress"} <= set(statuses), statuses
    trigger_ts = rows["ts"].iloc[1]
    live_ts = rows[(rows["probe"] == "act.deploy_status") & (rows["health_status"] == "live")]["ts"].iloc[0]
    verify = rows[rows["probe"] == "act.verify"].iloc[0]
    assert (live_ts - trigger_ts).total_seconds() >= 19  # it waited for Render, not a fixed pause
    assert verify["ts"] >= live_ts and verify["outcome"] == "ok"
    # Verified against the new instance: the first verify probe already got 503 (the old one served 200).
    assert "answered 503 after 1 try" in verify["detail"], verify["detail"]
    assert f.deploys[0]["id"] == dep and f.deploys[0]["status"] == "live" and f.deploys[1]["status"] == "deactivated"
    assert json.loads(rows["evidence"].iloc[-1])["last"] is True


def test_a_failed_build_stops_before_the_verify_and_the_old_deploy_keeps_serving(tmp_path, sim, fake, monkeypatch):
    srv = sim()
    f = fake(env=dict(ON), models=[srv.model], deploy_s=1.0)
    f.fail_next.append("build_failed")
    monkeypatch.setenv("TEST_RENDER_KEY", KEY)
    plan, _doc = _no_go(tmp_path, srv, f)
    res = act.act(plan, execute=True, by="oncall-anna")
    assert res.failed
    assert any("trigger a deploy: FAILED (deploy dep-" in line and "ended build_failed" in line for line in res.text), res.text
    assert any(line.startswith("stopped at step 2 (trigger a deploy)") for line in res.text)
    rows = _actions(tmp_path)
    assert "act.verify" not in set(rows["probe"])  # never verified against the old instance
    last = rows.iloc[-1]
    assert (last["probe"], last["outcome"], last["health_status"]) == ("act.deploy_status", "deploy_failed", "build_failed")
    assert not json.loads(last["evidence"])["last"]
    assert srv.model.env[V1] == "true" and f.deploys[0]["status"] == "build_failed" and f.deploys[1]["status"] == "live"
    assert [m for m, _p, _b in f.writes] == ["PUT", "POST"]  # the trigger was sent once


def test_a_429_burst_is_waited_out_and_recorded(tmp_path, sim, fake, monkeypatch):
    srv = sim()
    f = fake(env=dict(ON), models=[srv.model], deploy_s=0.5)
    monkeypatch.setenv("TEST_RENDER_KEY", KEY)
    plan, _doc = _no_go(tmp_path, srv, f)
    f.deploy_limit = _Limit(1, 3.0)  # one deploy per 3 s: spend it, so act's trigger meets a 429
    req = urllib.request.Request(f"{f.api}/services/{SERVICE}/deploys", data=b"{}", method="POST",
                                 headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    assert urllib.request.urlopen(req, timeout=5).status == 201
    f.burst, f.burst_retry_after = 2, 1  # and the next two calls (the environment read) answer 429
    res = act.act(plan, execute=True, by="oncall-anna")
    assert not res.failed, res.text
    assert any("reading the environment was rate-limited: 429: waited" in line for line in res.text), res.text
    rows = _actions(tmp_path)
    trigger = rows[rows["probe"] == "act.deploy"].iloc[0]
    assert "rate-limited: 429: waited" in trigger["detail"] and "(Retry-After)" in trigger["detail"], trigger["detail"]
    triggers = [p for p, _a in f.seen if p.startswith("POST /v1/services/")]
    assert len(triggers) == 3  # the test's, act's refused with 429, act's accepted after the wait
    assert sum(d.get("trigger") == "api" for d in f.deploys) == 2  # one deploy by act, never two
    assert rows["probe"].iloc[-1] == "act.verify" and rows["outcome"].iloc[-1] == "ok"


def test_a_flag_kept_in_an_environment_group_is_read_as_such_and_not_shadowed(tmp_path, sim, fake, monkeypatch):
    srv = sim()
    f = fake(env={SUGG: "true", SIGNED: "true"}, models=[srv.model], deploy_s=0.5)
    group = f.add_group("fault-lens-flags", {V1: "true"})
    monkeypatch.setenv("TEST_RENDER_KEY", KEY)
    plan, doc = _no_go(tmp_path, srv, f)
    seen = doc["inputs"]["platform_seen"]
    assert seen["flags"][V1] is True and seen["env_groups"] == {V1: "fault-lens-flags"}  # on, not "unset"
    with pytest.raises(ActionRefused) as exc:
        act.act(plan, execute=True, by="oncall-anna")
    assert f"{V1} is kept in the environment group fault-lens-flags ({group.id})" in str(exc.value)
    assert "set override_group = true on the step" in str(exc.value)
    assert f.writes == []
    assert "act.set_env" not in set(read_samples(tmp_path / "p1", datetime(2020, 1, 1, tzinfo=timezone.utc),
                                                 datetime.now(timezone.utc) + timedelta(minutes=1),
                                                 columns=["probe"])["probe"])
    # The step may say so: then a service-level override is made, and the group keeps its value.
    plan, _doc = _no_go(tmp_path, srv, f, steps="override_group = true")
    res = act.act(plan, execute=True, by="oncall-anna")
    assert not res.failed, res.text
    assert f.env[V1] == "false" and group.env[V1] == "true"
    rows = _actions(tmp_path)
    assert list(rows["probe"])[0] == "act.set_env" and rows["probe"].iloc[-1] == "act.verify"


def test_a_deploy_through_the_hook_and_a_202_trigger_are_followed_the_same_way(tmp_path, sim, fake, monkeypatch):
    srv = sim()
    f = fake(env=dict(ON), models=[srv.model], deploy_s=0.5)
    monkeypatch.setenv("TEST_RENDER_KEY", KEY)
    monkeypatch.setenv("TEST_HOOK_URL", f.hook_url())
    plan, _doc = _no_go(tmp_path, srv, f, deploy_hook_env="TEST_HOOK_URL")
    res = act.act(plan, execute=True, by="oncall-anna")
    assert not res.failed, res.text
    assert ("POST", f"/deploy/{SERVICE}", {}) in f.writes and f.deploys[0]["trigger"] == "deploy_hook"
    rows = _actions(tmp_path)
    assert rows[rows["probe"] == "act.deploy"]["deployment_id"].iloc[0] == f.deploys[0]["id"]
    hook_key = f.default.hook_key
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert hook_key.encode() not in path.read_bytes(), path
    assert hook_key not in "\n".join(res.text)

    # Render may answer a trigger 202 with no body: the deploy is found by its time and trigger.
    (tmp_path / "p1").rename(tmp_path / "p1-hook")
    f.answer_202 = True
    plan, _doc = _no_go(tmp_path, srv, f)
    res = act.act(plan, execute=True, by="oncall-anna")
    assert not res.failed, res.text
    trigger = _actions(tmp_path).query("probe == 'act.deploy'").iloc[0]
    assert f"found deploy {f.deploys[0]['id']} by its time and trigger" in trigger["detail"], trigger["detail"]
    assert f.deploys[0]["status"] == "live"
