"""Webhook notifications against a real receiver on 127.0.0.1: only on verdict change by default."""

import json
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler

import pytest

from phasegate import signoff
from phasegate.history import history
from phasegate.notify import notify
from phasegate.profile import load_profile
from phasegate.simulator import Fault

from conftest import SIM_PROFILE, LoopbackServer, phasegate, stopping

START = datetime(2026, 1, 28, 14, 45, 1, tzinfo=timezone.utc)
PHASE = "phase1-staging-canary"
SECRET_PATH = "/services/T0SECRET/B0SECRET/xoxwebhooktokensecret"


class Receiver(LoopbackServer):
    def __init__(self, status=200):
        self.got, self.status = [], status
        outer = self

        class H(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.got.append({"path": self.path, "type": self.headers["Content-Type"], "json": json.loads(body)})
                self.send_response(outer.status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *a):
                pass

        super().__init__(H)

    @property
    def url(self):
        return self.base + SECRET_PATH


@pytest.fixture
def receiver():
    yield from stopping(Receiver)


def doc_at(data, hours):
    return signoff.run(SIM_PROFILE, data, PHASE, start=START.isoformat(), hours=24,
                       as_of=(START + timedelta(hours=hours)).isoformat()).doc


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("n") / "data"
    history(load_profile(SIM_PROFILE), [Fault("server_error", start_s=7 * 3600, count=2, probes=("list",))],
            START.timestamp(), START.timestamp() + 10 * 3600, d, seed=2)
    return d


def test_sends_on_change_only(tmp_path, data, receiver, monkeypatch):
    r = receiver()
    monkeypatch.setenv("PHASEGATE_WEBHOOK_URL", r.url)
    state = tmp_path / "reports" / PHASE
    first = notify(doc_at(data, 5), "r/5h.pdf", state)
    again = notify(doc_at(data, 6), "r/6h.pdf", state)  # still PENDING: quiet
    worse = notify(doc_at(data, 8), "r/8h.pdf", state)  # the 500s arrive: NO-GO
    assert (first.sent, again.sent, worse.sent) == (True, False, True)
    assert again.line == "notify: not sent: verdict unchanged (PENDING) since 2026-01-28T19:45:01Z"
    assert worse.line == "notify: sent NO-GO (was PENDING) to the webhook in $PHASEGATE_WEBHOOK_URL"
    assert len(r.got) == 2 and all(g["type"] == "application/json" for g in r.got)
    text = r.got[1]["json"]["text"]
    assert text.startswith("*phase1-staging-canary*: *NO-GO* (was PENDING) — hard requirement(s) failed: no_5xx")
    assert "• hard no_5xx: 2 of" in text and "runbook: Scenario 1: 5xx Errors Detected" in text
    assert text.endswith("report: r/8h.pdf")
    assert r.got[1]["json"]["blocks"][0]["text"]["text"] == text  # Slack's block form says the same
    always = notify(doc_at(data, 9), "r/9h.pdf", state, mode="always")
    assert always.sent and len(r.got) == 3


def test_failed_delivery_is_retried_next_run_and_never_shows_the_url(tmp_path, data, receiver, monkeypatch):
    down = receiver(status=500)
    monkeypatch.setenv("HOOK", down.url)
    state = tmp_path / "s"
    res = notify(doc_at(data, 8), "r.pdf", state, env_name="HOOK")
    assert res.failed and not res.sent
    assert res.line == "notify: webhook in $HOOK failed (HTTP 500); the NO-GO will be sent again on the next run"
    up = receiver()
    monkeypatch.setenv("HOOK", up.url)
    assert notify(doc_at(data, 8), "r.pdf", state, env_name="HOOK").sent  # not lost: sent now
    assert "SECRET" not in res.line and not (state / ".notify-state.json").read_text().count("SECRET")


def test_unset_or_bad_url_sends_nothing(tmp_path, data, monkeypatch):
    monkeypatch.delenv("PHASEGATE_WEBHOOK_URL", raising=False)
    assert notify(doc_at(data, 5), "r", tmp_path).line == "notify: not sent: $PHASEGATE_WEBHOOK_URL is not set"
    monkeypatch.setenv("PHASEGATE_WEBHOOK_URL", "file:///etc/passwd")
    res = notify(doc_at(data, 5), "r", tmp_path)
    assert res.failed and res.line == "notify: not sent: $PHASEGATE_WEBHOOK_URL is not an http(s) URL"


@pytest.mark.slow
def test_report_notifies_once_per_verdict_change(tmp_path, data, receiver):
    r = receiver()
    env = {"PHASEGATE_WEBHOOK_URL": r.url}
    args = ["report", "--profile", SIM_PROFILE, "--data", data, "--phase", PHASE, "--start", START.isoformat(),
            "--out", tmp_path / "reports", "--formats", "html"]
    one = phasegate(*args, "--as-of", (START + timedelta(hours=5)).isoformat(), env=env, timeout=300)
    two = phasegate(*args, "--as-of", (START + timedelta(hours=6)).isoformat(), env=env, timeout=300)
    assert (one.returncode, two.returncode) == (12, 12), one.stdout + one.stderr
    assert "notify: sent PENDING to the webhook in $PHASEGATE_WEBHOOK_URL" in one.stdout
    assert "notify: not sent: verdict unchanged (PENDING)" in two.stdout
    assert len(r.got) == 1 and r.got[0]["path"] == SECRET_PATH
    assert "report: " in r.got[0]["json"]["text"] and "signoff.html" in r.got[0]["json"]["text"]
    for out in (one.stdout + one.stderr, two.stdout + two.stderr):
        assert "SECRET" not in out
    for f in (tmp_path / "reports").rglob("*"):
        if f.is_file():
            assert b"SECRET" not in f.read_bytes(), f
