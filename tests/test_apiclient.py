"""The API clients' HTTP (Render, Prometheus, webhooks) is requests, with urllib3's Retry for
reads and our own watchdog for the total deadline; against real sockets on 127.0.0.1."""

import time

from phasegate.apiclient import fetch, reads

from conftest import free_port
from test_attacks import RawServer, drip_headers


def _server(answers):
    """Answers each connection with the next of `answers` (bytes, or a handler), then the last again."""
    seen = []

    def handle(conn, stop, request):
        seen.append(request.split(b"\r\n", 1)[0].decode())
        answer = answers[min(len(seen), len(answers)) - 1]
        if callable(answer):
            answer(conn, stop, request)
        else:
            conn.sendall(answer)

    return RawServer(handle), seen


def _answer(status, body=b"{}", *headers):
    head = [f"HTTP/1.1 {status} X", f"Content-Length: {len(body)}", "Connection: close", *headers]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def test_dripping_headers_are_cut_at_the_total_deadline():
    srv, seen = _server([drip_headers])
    try:
        t0 = time.monotonic()
        ex = fetch(f"{srv.url}/v1/services", "GET", {}, None, 2.0, 1 << 20)
        took = time.monotonic() - t0
    finally:
        srv.close()
    # requests' own timeout (per read) never fires: a byte comes every 0.5 s. The watchdog does.
    assert (ex.outcome, ex.error, ex.status) == ("timeout", "no complete response within 2s", None), ex
    assert len(seen) == 1  # a timeout is never retried
    assert took < 30  # a hang guard, not a speed figure: the drip would last 5,000 s


def test_a_429_is_retried_after_its_retry_after_and_each_attempt_has_its_own_deadline():
    # 429 (Retry-After: 1), then an answer that drips: the second attempt is cut at its own
    # deadline, not at what was left of the first's after the wait.
    srv, seen = _server([_answer(429, b"slow down", "Retry-After: 1"), _answer(200, b'{"ok": true}')])
    try:
        r = reads(4, (429, 503), budget_s=30)
        ex = fetch(f"{srv.url}/v1/logs", "GET", {}, None, 5.0, 1 << 20, r)
    finally:
        srv.close()
    assert (ex.outcome, ex.status, ex.body) == (None, 200, b'{"ok": true}'), ex
    assert len(seen) == 2 and [(w["status"], w["wait_s"], w["retry_after"]) for w in r.waited] == [(429, 1.0, True)]

    srv, seen = _server([_answer(429, b"", "Retry-After: 1"), drip_headers])
    try:
        r = reads(4, (429,), budget_s=30)
        ex = fetch(f"{srv.url}/v1/logs", "GET", {}, None, 1.5, 1 << 20, r)
    finally:
        srv.close()
    assert (ex.outcome, ex.error) == ("timeout", "no complete response within 1.5s") and len(seen) == 2, ex


def test_a_wait_past_the_budget_is_not_waited_on_and_writes_are_not_retried():
    srv, seen = _server([_answer(429, b"later", "Retry-After: 120")])
    try:
        r = reads(6, (429,), budget_s=5)
        t0 = time.monotonic()
        ex = fetch(f"{srv.url}/v1/logs", "GET", {}, None, 5.0, 1 << 20, r)
        took = time.monotonic() - t0
    finally:
        srv.close()
    assert (ex.outcome, ex.status, ex.body) == (None, 429, b"later") and len(seen) == 1, ex
    assert r.waited == [{"status": 429, "wait_s": 120.0, "waited": False}] and took < 60

    srv, seen = _server([_answer(503, b"busy", "Retry-After: 1"), _answer(200)])
    try:
        ex = fetch(f"{srv.url}/v1/services/x/deploys", "POST", {"Content-Length": "2"}, b"{}", 5.0, 1 << 20)
    finally:
        srv.close()
    assert ex.status == 503 and seen == ["POST /v1/services/x/deploys HTTP/1.1"]  # sent once: not idempotent


def test_failures_are_outcomes_not_exceptions():
    srv, _ = _server([_answer(200, b"x" * 5000)])
    try:
        big = fetch(f"{srv.url}/", "GET", {}, None, 5.0, 1000)
    finally:
        srv.close()
    assert (big.outcome, big.error) == ("body_too_large", "body exceeds 1000 bytes")
    refused = fetch(f"http://127.0.0.1:{free_port()}/", "GET", {}, None, 2.0, 1000)
    assert (refused.outcome, refused.error) == ("connection_error", "connection refused"), refused
    garbage, _ = _server([b"NOT HTTP AT ALL\r\n\r\n"])
    try:
        bad = fetch(f"{garbage.url}/", "GET", {}, None, 2.0, 1000)
    finally:
        garbage.close()
    assert bad.outcome == "connection_error" and bad.status is None, bad
