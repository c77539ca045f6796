"""A hostile or broken service, bad input and missing secrets cannot spoof, stall or quietly skew
the sign-off: each case here was reproduced against an earlier main."""

import json
import os
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler

import pytest

from phasegate.profile import CRITERIA_IDS, load_profile
from phasegate.store import read_samples

from conftest import PROFILES, SIM_PROFILE, LoopbackServer, phasegate, url, write_profile

EVER = (datetime(2000, 1, 1, tzinfo=timezone.utc), datetime(2100, 1, 1, tzinfo=timezone.utc))


def serve(answer):
    """A loopback server whose every answer is answer(path) -> (status, headers, body bytes)."""
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            self.rfile.read(int(self.headers.get("Content-Length") or 0))  # unread, it would reset the answer
            status, headers, body = answer(self.path)
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_POST = do_GET  # noqa: N815

        def log_message(self, *args):
            pass

    return LoopbackServer(Handler)


SPOOF = "\x1b[2J\x1b[H\x1b[32m/list: ✅ 200 OK\r"


def test_check_escapes_control_characters_from_the_service(tmp_path):
    srv = serve(lambda path: (503, {"Content-Type": "application/json"},
                              json.dumps({"error": {"code": SPOOF}}).encode()))
    try:
        res = phasegate("check", "--profile", SIM_PROFILE, "--base-url", srv.base)
    finally:
        srv.shutdown()
    assert res.returncode == 1, res.stderr
    out = res.stdout + res.stderr
    assert "\x1b" not in out and "\r" not in out
    assert "\\x1b[2J" in res.stdout and "/list: ❌ 503" in res.stdout


def test_oversized_header_is_capped_and_marked_truncated(tmp_path):
    huge = "d" * 60_000
    srv = serve(lambda path: (200, {"Content-Type": "application/json", "X-Deployment-Id": huge},
                              json.dumps({"status": "healthy", "handlers_loaded": 4, "handlers_total": 4}).encode()))
    data = tmp_path / "data"
    try:
        res = phasegate("check", "--profile", SIM_PROFILE, "--base-url", srv.base, "--data", data)
    finally:
        srv.shutdown()
    assert res.returncode == 1  # list/suggestions/execute assertions fail on this body
    df = read_samples(data, *EVER)
    ids = set(df["deployment_id"].dropna())
    assert len(ids) == 1
    (stored,) = ids
    assert len(stored) == 256 and stored.endswith("…[truncated: 60,000 chars]")
    for ev in df["evidence"].dropna():
        assert len(json.loads(ev)["headers"]["x-deployment-id"]) == 256


@pytest.mark.parametrize("line,why", [
    ('{"time": "2026-01-28T15:00:00Z", "method": "GET", "path": "/a\\ud800", "status": 200}', "surrogate"),
    ('{"time": "2026-01-28T15:00:00Z", "method": "GET", "path": "/a", "status": 99999999999}',
     "status 99999999999 is not an HTTP status (100-599)"),
    ('{"time": 1e300, "method": "GET", "path": "/a", "status": 200}', "is not between 1970 and 2200"),
    ('{"time": NaN, "method": "GET", "path": "/a", "status": 200}', "time nan is not between 1970 and 2200"),
    ('{"time": "2026-01-28T15:00:00Z", "method": "GET", "path": "/a", "status": 200, "request_time": NaN}',
     "is not a duration"),
    ('{"time": "0001-01-01T00:00:00+01:00", "method": "GET", "path": "/a", "status": 200}', "is not between 1970 and 2200"),
    ('{"time": "2026-01-28T15:00:00Z", "method": "GET", "path": "/a", "status": true}', "is not an HTTP status"),
])
def test_a_bad_json_log_line_is_counted_and_the_rest_imported(tmp_path, line, why):
    good = '{"time": "2026-01-28T15:00:0%dZ", "method": "GET", "path": "/ok", "status": 200, "request_time": 0.01}'
    log = tmp_path / "access.jsonl"
    log.write_text("\n".join([good % 1, line, good % 2]) + "\n")
    res = phasegate("import-logs", "--format", "json", "--file", log, "--data", tmp_path / "d")
    assert res.returncode == 0, res.stderr
    assert "imported 2 requests" in res.stdout and "1 malformed lines skipped" in res.stdout
    assert "line 2:" in res.stderr and why in res.stderr, res.stderr
    assert len(read_samples(tmp_path / "d", *EVER)) == 2


def test_a_bad_nginx_line_with_an_out_of_range_number_is_counted(tmp_path):
    ok = '127.0.0.1 - - [28/Jan/2026:15:00:0%d +0000] "GET /ok HTTP/1.1" 200 12 "-" "curl" 0.010'
    bad = '127.0.0.1 - - [28/Jan/2026:15:00:05 +0000] "GET /x HTTP/1.1" 200 99999999999999999999999 "-" "curl" ' \
          + "9" * 400
    log = tmp_path / "access.log"
    log.write_text("\n".join([ok % 1, bad, ok % 2]) + "\n")
    res = phasegate("import-logs", "--file", log, "--data", tmp_path / "d")
    assert res.returncode == 0, res.stderr
    assert "imported 2 requests" in res.stdout and "1 malformed lines skipped" in res.stdout
    assert "line 2:" in res.stderr


@pytest.mark.parametrize("args,message", [
    (["--until", "0001-01-01T00:00:00+01:00"], "--until is out of range"),
    (["--until", "9999-12-31T23:59:59-01:00"], "--until is out of range"),
    (["--base-url", "http://[::1", "--for", "1s"], "--base-url: is not a valid URL (Invalid IPv6 URL)"),
])
def test_bad_times_and_urls_are_bad_input_not_a_crash(tmp_path, args, message):
    res = phasegate("collect", "--profile", SIM_PROFILE, "--data", tmp_path / "d", *args)
    assert res.returncode == 2, res.stdout + res.stderr
    assert message in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr


def test_a_profile_extending_a_fifo_is_refused_not_a_hang(tmp_path):
    fifo = tmp_path / "base.toml"
    os.mkfifo(fifo)
    prof = write_profile(tmp_path, 'extends = "base.toml"\n')
    res = phasegate("check", "--profile", prof, timeout=60)
    assert res.returncode == 2
    assert f"profile is not a regular file: {fifo}" in res.stderr


@pytest.mark.parametrize("verb", ["collect", "check"])
def test_unset_auth_env_refuses_to_start(tmp_path, sim, verb):
    srv = sim()
    env = {"FAULT_LENS_API_TOKEN": ""}
    args = [verb, "--profile", PROFILES / "fault-lens-staging.toml", "--base-url", url(srv)]
    if verb == "collect":
        args += ["--data", tmp_path / "d", "--for", "2s"]
    res = phasegate(*args, env=env)
    assert res.returncode == 2, res.stdout + res.stderr
    assert "$FAULT_LENS_API_TOKEN is not set or empty" in res.stderr
    assert not (tmp_path / "d").exists() or not list((tmp_path / "d").rglob("*.parquet"))
    # With the token set, the same command probes.
    res = phasegate(*args, env={"FAULT_LENS_API_TOKEN": "tok-1234567890"})
    assert res.returncode == 0, res.stdout + res.stderr


def test_auth_optional_probes_without_the_header(tmp_path, sim):
    srv = sim()
    res = phasegate("check", "--profile", SIM_PROFILE, "--base-url", url(srv), env={"FAULT_LENS_API_TOKEN": ""})
    assert res.returncode == 0, res.stdout + res.stderr


RUNBOOK_WORDS = {"no_5xx": "5xx", "no_feature_disabled": "FEATURE_DISABLED", "no_rollback": "Rollback",
                 "service_healthy": "Unhealthy", "acceptance": "FEATURE_DISABLED", "flags_at_startup": "FEATURE_DISABLED"}


@pytest.mark.parametrize("name", sorted(p.name for p in PROFILES.glob("*.toml") if "rollout" not in p.name))
def test_every_hard_criterion_links_a_runbook_that_fits(name):
    # window_complete never gives a NO-GO (open: pending; short: inconclusive), so it needs none.
    p = load_profile(PROFILES / name)
    hard = [c for c in p.criteria.items if c.kind == "hard" and c.enabled and c.id != "window_complete"]
    assert {c.id for c in hard} == set(RUNBOOK_WORDS) - ({"acceptance"} if not p.checks else set())
    for c in hard:
        assert c.runbook in p.runbook, (name, c.id)
        assert RUNBOOK_WORDS[c.id] in p.runbook[c.runbook].title, (name, c.id, p.runbook[c.runbook].title)
    assert "do not roll back again" in p.runbook[p.criteria.get("no_rollback").runbook].steps[0]
    assert set(CRITERIA_IDS) | {"acceptance"} >= {c.id for c in p.criteria.items}
