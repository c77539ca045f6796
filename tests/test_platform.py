"""The platform adapter against a local fake of Render's API shape on 127.0.0.1."""

import json
import time
from datetime import datetime, timedelta, timezone

import pytest

from phasegate import signoff
from phasegate.errors import ProfileError
from phasegate.history import history
from phasegate.platform import pull_platform
from phasegate.platformsim import PlatformSim
from phasegate.profile import load_profile
from phasegate.store import read_samples

from conftest import SIM_PROFILE, phasegate, stopping, write_profile

KEY = "rnd_TESTKEYsecretvalue0123456789"
SERVICE = "srv-d5fr5hre5dus73d3gdn0"
PHASE = "phase1-staging-canary"
FLAGS = ("FAULT_LENS_V1_ENABLED", "FAULT_LENS_SUGGESTIONS_ENABLED", "FAULT_LENS_SIGNED_ACTIONS_ENABLED")


def iso(dt):
    return dt.isoformat().replace("+00:00", "Z")


def FakeRender(deploys=(), env=None, delay_s=0.0, on_deploy=None, fail_writes=(), deploy_s=0.3, models=()):
    """`phasegate simulate platform`'s server, in process: Render's shapes, 401 without the key,
    deploys that go live over `deploy_s`. Every request is in `seen`, every write in `writes`."""
    return PlatformSim(key=KEY, service_id=SERVICE, env=env, deploys=deploys, delay_s=delay_s,
                       on_deploy=on_deploy, fail_writes=fail_writes, deploy_s=deploy_s, models=models)


@pytest.fixture
def fake():
    yield from stopping(FakeRender)


def profile_for(tmp_path, f, timeout="5s"):
    return write_profile(tmp_path, f'''extends = "{SIM_PROFILE}"
[platform]
enabled = true
api_url = "{f.api}"
service_id = "{SERVICE}"
api_key_env = "TEST_RENDER_KEY"
timeout = "{timeout}"
''')


def deploy(did, created, finished, status="live", trigger="manual"):
    return {"id": did, "status": status, "trigger": trigger, "createdAt": iso(created),
            "finishedAt": iso(finished) if finished else None, "commit": {"id": "abc123", "message": "m"}}


def live_window(tmp_path, hours=2.0):
    """Probe history ending now, so a report's window (ending now) also holds the flags read now."""
    end = datetime.now(timezone.utc).replace(microsecond=0)
    start = end - timedelta(hours=hours)
    data = tmp_path / "data"
    history(load_profile(SIM_PROFILE), [], start.timestamp(), end.timestamp(), data, seed=1)
    return data, start


def crit(doc, cid):
    return next(c for c in doc["criteria"] if c["id"] == cid)


def test_flag_turned_off_and_a_deploy_in_the_window_show_with_their_times(tmp_path, fake, monkeypatch):
    data, start = live_window(tmp_path)
    mid = start + timedelta(hours=1)
    old = deploy("dep-old", start - timedelta(days=3), start - timedelta(days=3) + timedelta(minutes=4))
    new = deploy("dep-new", mid, mid + timedelta(minutes=5))
    f = fake(deploys=[new, old], env={"FAULT_LENS_V1_ENABLED": "false", "FAULT_LENS_SUGGESTIONS_ENABLED": "true",
                                      "DATABASE_URL": "postgres://u:pw@db/x"})
    monkeypatch.setenv("TEST_RENDER_KEY", KEY)
    so = signoff.run(profile_for(tmp_path, f), data, PHASE, start=start.isoformat(), hours=24, out_dir=tmp_path / "out")
    doc = so.doc
    p = doc["platform"]
    assert [d["id"] for d in p["deploys"]] == ["dep-new"]  # the old one is outside the window
    assert p["deploys"][0]["started"] == iso(mid) and p["deploys"][0]["status"] == "live"
    an = crit(doc, "no_anomalies")
    assert an["passed"] is False
    assert f"unexpected deployment dep-new: started {iso(mid)}, finished {iso(mid + timedelta(minutes=5))} (live), trigger manual" in an["detail"]
    fd = crit(doc, "no_feature_disabled")
    assert fd["passed"] is False and "platform env: off in 1 of 1 reads: FAULT_LENS_V1_ENABLED=false at " in fd["detail"]
    # An env var the service does not have is unset, not off.
    assert p["flags"]["last"] == {"FAULT_LENS_V1_ENABLED": False, "FAULT_LENS_SUGGESTIONS_ENABLED": True}
    assert doc["verdict"] == "NO-GO"
    assert any(n.startswith("platform: 2 render deploys read; flags FAULT_LENS_V1_ENABLED=false") for n in doc["inputs"]["notes"])
    assert all(auth == f"Bearer {KEY}" for _, auth in f.seen)
    # The key is in no file written, and the env var values we did not ask for are not stored.
    for path in [*tmp_path.rglob("*.parquet"), *tmp_path.rglob("*.json")]:
        raw = path.read_bytes()
        assert KEY.encode() not in raw and b"postgres://" not in raw, path


def test_rollback_deploy_fails_no_rollback(tmp_path, fake, monkeypatch):
    data, start = live_window(tmp_path)
    at = start + timedelta(minutes=30)
    f = fake(deploys=[deploy("dep-back", at, at + timedelta(minutes=3), trigger="rollback")],
             env={n: "true" for n in FLAGS})
    monkeypatch.setenv("TEST_RENDER_KEY", KEY)
    doc = signoff.run(profile_for(tmp_path, f), data, PHASE, start=start.isoformat(), hours=24).doc
    rb = crit(doc, "no_rollback")
    assert rb["passed"] is False and rb["measured"] == 1
    assert f"platform: rollback deploy dep-back started {iso(at)}" in rb["detail"]
    assert crit(doc, "no_feature_disabled")["passed"] is True


def test_deploys_are_paged_by_cursor_and_not_counted_twice_across_pulls(tmp_path, fake, monkeypatch):
    now = datetime.now(timezone.utc).replace(microsecond=0)
    deps = [deploy(f"dep-{i:03d}", now - timedelta(hours=300 - i), now - timedelta(hours=300 - i) + timedelta(minutes=2))
            for i in range(250)]
    f = fake(deploys=deps, env={})
    monkeypatch.setenv("TEST_RENDER_KEY", KEY)
    src = load_profile(profile_for(tmp_path, f)).platform
    first = pull_platform(src, tmp_path / "d", "t")
    pull_platform(src, tmp_path / "d", "t")
    assert first.deploys == 250 and first.failed == 0
    assert sum("cursor=" in path for path, _ in f.seen if "/deploys" in path) == 2 * 2  # pages 2 and 3, twice
    df = read_samples(tmp_path / "d", now - timedelta(days=30), now + timedelta(hours=1), sources=["platform"],
                      columns=["probe", "request_id", "flags"])
    dep = df[df["probe"] == "render.deploy"]
    assert len(dep) == 1000 and dep["request_id"].nunique() == 500  # stored twice, distinct events 500
    assert json.loads(df[df["probe"] == "render.env"]["flags"].iloc[0]) == {n: None for n in FLAGS}


def test_a_hanging_api_is_cut_at_the_deadline_and_stored_as_a_failed_read(tmp_path, fake, monkeypatch):
    f = fake(delay_s=3.0)
    monkeypatch.setenv("TEST_RENDER_KEY", KEY)
    prof = profile_for(tmp_path, f, timeout="0.5s")
    res = phasegate("pull-platform", "--profile", prof, "--data", tmp_path / "d", env={"TEST_RENDER_KEY": KEY})
    assert res.returncode == 1
    assert "deploys not read: no complete response within 0.5s" in res.stderr
    # Deploys, variables, and Render's logs (the service lookup they start with): each cut at 0.5 s.
    assert res.stderr.strip().endswith("phasegate: error: 3 platform API call(s) failed (stored as failed reads): "
                                       "Render render.service: no complete response within 0.5s"), res.stderr
    assert KEY not in res.stdout + res.stderr
    df = read_samples(tmp_path / "d", datetime(2020, 1, 1, tzinfo=timezone.utc), datetime.now(timezone.utc) + timedelta(1),
                      sources=["platform"], columns=["probe", "outcome"])
    # The server answers after 3 s: a timeout outcome means the 0.5 s deadline cut the call.
    assert sorted(df["outcome"]) == ["timeout", "timeout"]


def test_wrong_key_is_an_http_error_row_that_names_no_key(tmp_path, fake, monkeypatch):
    f = fake()
    res = phasegate("pull-platform", "--profile", profile_for(tmp_path, f), "--data", tmp_path / "d",
                    env={"TEST_RENDER_KEY": "rnd_wrongWRONGwrong"})
    assert res.returncode == 1 and "deploys not read: HTTP 401" in res.stderr
    assert "rnd_wrong" not in res.stdout + res.stderr


def test_no_key_set_is_a_note_not_a_failure(tmp_path, fake, monkeypatch):
    monkeypatch.delenv("TEST_RENDER_KEY", raising=False)
    data, start = live_window(tmp_path, hours=1)
    f = fake()
    doc = signoff.run(profile_for(tmp_path, f), data, PHASE, start=start.isoformat(), hours=24).doc
    assert "platform: $TEST_RENDER_KEY is not set: render deploys and flags were not read" in doc["inputs"]["notes"]
    assert doc["platform"] is None and f.seen == []


@pytest.mark.parametrize("table,message", [
    ('[platform]\nkind = "heroku"\nservice_id = "srv-1"', "platform.kind: must be render (the only platform adapter), got 'heroku'"),
    ('[platform]\napi_url = "srv"\nservice_id = "srv-1"', "platform.api_url: must be an http(s) URL, got 'srv'"),
    ('[platform]\nservice_id = ""', "platform.service_id: must be a service id like srv-..., got ''"),
    ('[platform]\nservice_id = "srv 1; rm"', "platform.service_id: must be a service id like srv-..., got 'srv 1; rm'"),
    ('[platform]\nservice_id = "srv-1"\napi_key_env = "rnd_abc def"',
     "platform.api_key_env: must name an environment variable (the key itself never goes in a profile)"),
    ('[platform]\nservice_id = "srv-1"\napi_key = "x"', "platform.api_key: unknown key"),
    ('[platform]\nservice_id = "srv-1"\ninterval = "5s"\ntimeout = "10s"',
     "platform.timeout: must be below platform.interval (10s >= 5s)"),
    ('[platform]\nservice_id = "srv-1"\nlatency_quantile = 99', "platform.latency_quantile: must be between 0 and 1, got 99"),
    ('[platform]\nservice_id = "srv-1"\nmetrics_resolution = "1.5s"',
     "platform.metrics_resolution: must be a whole number of seconds, at least 1s"),
    ('[platform]\nservice_id = "srv-1"\nowner_id = "tea x"', "platform.owner_id: must be a workspace id like tea-..., got 'tea x'"),
    ('[platform]\nservice_id = "srv-1"\nstartup_line = " "', "platform.startup_line: must not be empty"),
    ('[platform]\nservice_id = "srv-1"\nevidence = "yes"', "platform.evidence: must be true or false, got str 'yes'"),
    ('[platform]\nservice_id = "srv-1"\nevidence_delay = "soon"',
     "platform.evidence_delay: must be a duration like 30s, 15m or 24h, got 'soon'"),
])
def test_bad_platform_sections_name_the_key(tmp_path, table, message):
    path = write_profile(tmp_path, f'extends = "{SIM_PROFILE}"\n{table}\n')
    with pytest.raises(ProfileError) as exc:
        load_profile(path)
    assert str(exc.value) == f"{path}: {message}"


def test_a_running_collector_reads_the_platform_on_its_interval(tmp_path, fake, sim, monkeypatch):
    from phasegate.collector import Collector

    from conftest import url

    srv = sim()
    f = fake(env={"FAULT_LENS_V1_ENABLED": "true", "FAULT_LENS_SUGGESTIONS_ENABLED": "false"})
    prof = write_profile(tmp_path, f'''extends = "{SIM_PROFILE}"
[target]
base_url = "{url(srv)}"
interval = "1s"
timeout = "0.8s"
[platform]
enabled = true
api_url = "{f.api}"
service_id = "{SERVICE}"
api_key_env = "TEST_RENDER_KEY"
interval = "1s"
timeout = "0.5s"
''')
    monkeypatch.setenv("TEST_RENDER_KEY", KEY)
    data = tmp_path / "data"
    c = Collector(load_profile(prof), data, until_ts=time.time() + 3.5, compact_every_s=1.0)
    stats = c.run()
    assert stats.platform_reads >= 3 and stats.platform_failed == 0
    df = read_samples(data, datetime(2020, 1, 1, tzinfo=timezone.utc), datetime.now(timezone.utc) + timedelta(minutes=1),
                      sources=["platform"], columns=["probe", "flags"])
    env = df[df["probe"] == "render.env"]
    assert len(env) == stats.platform_reads
    assert json.loads(env["flags"].iloc[-1])["FAULT_LENS_SUGGESTIONS_ENABLED"] is False
    assert stats.samples > 0  # the probes ran beside it

