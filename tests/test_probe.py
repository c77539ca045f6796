"""Every fault the simulator can play becomes the right outcome, within timeout + 1 s."""

import dataclasses
import json
import socket
import time

import pytest

from phasegate.probe import evaluate, json_path, run_probe
from phasegate.profile import load_profile

from conftest import fast_profile, url

TIMEOUT_S = 1.5

CASES = [
    # scenario, probe, outcome, status, error_code
    ("healthy", "health", "ok", 200, None),
    ("healthy", "list", "ok", 200, None),
    ("healthy", "suggestions", "ok", 200, None),
    ("healthy", "execute", "ok", 200, None),
    ("flags-off", "list", "http_error", 503, "FEATURE_DISABLED"),
    ("flags-off", "execute", "http_error", 503, "FEATURE_DISABLED"),
    ("handler-loss", "health", "assertion_failed", 200, None),
    ("count-drift", "list", "assertion_failed", 200, None),
    ("signed-leak", "suggestions", "assertion_failed", 200, None),
    ("malformed-json", "list", "invalid_body", 200, None),
    ("hang", "health", "timeout", None, None),
    ("slow-drip", "list", "timeout", 200, None),  # headers came, the body never finished
    ("reset", "health", "connection_error", None, None),
    ("oversized", "list", "body_too_large", 200, None),
]


@pytest.mark.parametrize("scenario,probe_name,outcome,status,code", CASES)
def test_fault_becomes_outcome_within_bound(sim, tmp_path, scenario, probe_name, outcome, status, code):
    srv = sim(scenario)
    profile = load_profile(fast_profile(tmp_path, url(srv), interval="3s", timeout=f"{TIMEOUT_S}s"))
    probe = dataclasses.replace(profile.probe(probe_name), timeout_s=TIMEOUT_S)
    t0 = time.monotonic()
    row = run_probe(profile.target, probe)
    elapsed = time.monotonic() - t0
    assert row["outcome"] == outcome, row
    assert row["status"] == status
    assert row["error_code"] == code
    # Hang guards, not speed figures: the faults last 10 s (hang, drip); a loaded machine adds seconds.
    assert elapsed < 8
    assert row["latency_ms"] < 8000
    if outcome != "ok":
        assert json.loads(row["evidence"])["status"] == status


def test_server_error_is_http_error_500(sim, tmp_path):
    srv = sim(schedule=_schedule(tmp_path, 'kind = "server_error"'))
    profile = load_profile(fast_profile(tmp_path, url(srv)))
    row = run_probe(profile.target, profile.probe("list"))
    assert (row["outcome"], row["status"], row["error_code"]) == ("http_error", 500, "INTERNAL_ERROR")


def test_handler_loss_extracts_three_of_four(sim, tmp_path):
    profile = load_profile(fast_profile(tmp_path, url(sim("handler-loss"))))
    row = run_probe(profile.target, profile.probe("health"))
    assert (row["handlers_loaded"], row["handlers_total"]) == (3, 4)
    assert row["assertion_failures"] == ["status != 'healthy' (got 'degraded')"]


def test_refused_connection_and_tls_failure(tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    profile = load_profile(fast_profile(tmp_path, f"http://127.0.0.1:{port}"))
    assert run_probe(profile.target, profile.probe("health"))["outcome"] == "connection_error"


def test_tls_against_plain_http_is_tls_error(sim, tmp_path):
    srv = sim()
    profile = load_profile(fast_profile(tmp_path, f"https://127.0.0.1:{srv.port}"))
    row = run_probe(profile.target, profile.probe("health"))
    assert row["outcome"] == "tls_error"
    assert row["status"] is None


def test_json_path_and_evaluate_rules(tmp_path):
    doc = {"a": {"b": [{"c": 1}, {"c": 2}, {"d": 3}]}, "n": [1, 2]}
    assert json_path(doc, "a.b[].c") == [1, 2]
    assert json_path(doc, "n.1") == 2
    assert json_path(doc, "a.x") is not None  # the MISSING sentinel, never an exception
    profile = load_profile(fast_profile(tmp_path, "http://127.0.0.1:9"))
    body = json.dumps({"actions": [{"action_id": "create_work_order_from_fault"}]}).encode()
    out = evaluate(profile.probe("suggestions"), 200, {}, body)
    assert out["outcome"] == "assertion_failed"
    assert out["assertion_failures"] == ["len(actions) != 11 (got 1)",
                                         "actions[].action_id contains 'create_work_order_from_fault'"]
    assert out["item_count"] == 1


def _schedule(tmp_path, body):
    path = tmp_path / "faults.toml"
    path.write_text("[[fault]]\n" + body + "\n")
    return path


def test_check_names_the_health_probes_connection_failure(tmp_path):
    from conftest import phasegate

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    res = phasegate("check", "--profile", fast_profile(tmp_path, f"http://127.0.0.1:{port}"))
    assert res.returncode == 1
    lines = res.stdout.splitlines()
    health = lines[lines.index("1. Service Health") + 1]
    assert health == "   ❌ UNHEALTHY (CONNECTION_ERROR (connection refused))", res.stdout
    assert "NO HEALTH PROBE" not in res.stdout
    assert "   ❔ NOT OBSERVED (health failed: the flags it reads are unknown)" in lines
    assert "OVERALL: ❌ CANARY UNHEALTHY" in res.stdout
