"""Redaction rules (each with true and false positives) and a canary secret through every output."""

import json
import threading
from datetime import datetime, timedelta, timezone

import pyarrow.parquet as pq
import pytest
from pypdf import PdfReader

from phasegate.errors import ProfileError
from phasegate.profile import load_profile
from phasegate.redact import MASK, Secret, redact_headers, redact_text, redact_url
from phasegate.store import read_samples
from phasegate.report import make_report
from phasegate.errors import ReportError

from conftest import phasegate, url, write_profile

ENV_SECRET = "my-literal-env-secret-value"
# Each redaction rule: at least three inputs it must mask (with the secret that must vanish)
# and three look-alikes it must leave alone.
RULES = {
    "auth header values": (
        [("Authorization", "Bearer abc123def456"), ("X-Api-Key", "k-123456"), ("Cookie", "session=abcdef")],
        ["Content-Type", "X-Deployment-Id", "Retry-After"],
    ),
    "secret query parameters": (
        [("https://h/p?key=abc123&x=1", "abc123"), ("https://h/p?api_key=zz9988", "zz9988"),
         ("https://h/p?access_token=t0k3n&domain=faults", "t0k3n"), ("https://h/p?X-Amz-Signature=deadbeef", "deadbeef"),
         ("https://h/p?password=hunter2", "hunter2"), ("https://h/p?secret=s3s3s3", "s3s3s3")],
        ["https://h/v1/actions/list?domain=faults", "https://h/p?keyboard=qwerty&monkey=1",
         "https://h:8443/p?tokens_used=3", "https://h/p?yacht=y1&page=2"],
    ),
    "passwords in URLs": (
        [("https://admin:hunter2@h/p", "hunter2"), ("postgres://app:pa55word@db:5432/x", "pa55word"),
         ("redis://:r3dispw@cache:6379/0", "r3dispw")],
        ["http://127.0.0.1:8765/v1/actions/health", "mailto user@example.com", "https://h:8443/a@b"],
    ),
    "bearer tokens": (
        [("Authorization: Bearer abcdefgh12345678", "abcdefgh12345678"), ("token Zm9vYmFyYmF6cXV4", "Zm9vYmFyYmF6cXV4"),
         ("basic dXNlcjpwYXNzd29yZA==", "dXNlcjpwYXNzd29yZA==")],
        ["the bearer of bad news", "token count 5", "Bearer short"],
    ),
    "PEM blocks": (
        [("-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n-----END PRIVATE KEY-----", "MIIEvQIBADANBgkqhkiG9w0BAQEFAASC"),
         ("-----BEGIN CERTIFICATE-----\nMIIDazCCAlOgAwIBAgIUX\n-----END CERTIFICATE-----", "MIIDazCCAlOgAwIBAgIUX"),
         ("x -----BEGIN RSA PRIVATE KEY-----\nAAAAB3NzaC1yc2E\n-----END RSA PRIVATE KEY----- y", "AAAAB3NzaC1yc2E")],
        ["-----BEGIN notes without an end", "BEGIN PRIVATE KEY as words", "----- a divider -----"],
    ),
    "configured secret values in echoed bodies": (
        [(f'{{"echo": "{ENV_SECRET}"}}', ENV_SECRET), (f"prefix{ENV_SECRET}suffix", ENV_SECRET),
         (f"a {ENV_SECRET} b {ENV_SECRET}", ENV_SECRET)],
        ['{"status": "healthy", "handlers_loaded": 4}', "my-literal-env", "MY-LITERAL-ENV-SECRET"],
    ),
}
CASES_TRUE = [(rule, raw, secret) for rule, (hits, _) in RULES.items() for raw, secret in
              (hits if rule != "auth header values" else [(f"{k}", v) for k, v in hits])]
CASES_FALSE = [(rule, raw) for rule, (_, misses) in RULES.items() for raw in misses]


def _redact(rule, raw):
    if rule == "auth header values":
        return None
    if raw.startswith(("http://", "https://")) and rule == "secret query parameters":
        return redact_url(raw)
    return redact_text(raw, secrets=[ENV_SECRET])


@pytest.mark.parametrize("rule", list(RULES))
def test_every_rule_has_three_true_and_three_false_cases(rule):
    hits, misses = RULES[rule]
    assert len(hits) >= 3 and len(misses) >= 3


@pytest.mark.parametrize("rule,raw,secret", CASES_TRUE)
def test_rule_masks(rule, raw, secret):
    if rule == "auth header values":
        out = redact_headers({raw: secret})
        assert out == {raw.lower(): MASK}
        return
    out = _redact(rule, raw)
    assert secret not in out and MASK in out


@pytest.mark.parametrize("rule,raw", CASES_FALSE)
def test_rule_leaves_look_alikes(rule, raw):
    if rule == "auth header values":
        assert redact_headers({raw: "value-1"}) == {raw.lower(): "value-1"}
        return
    assert _redact(rule, raw) == raw


def test_headers_and_secret_type():
    h = redact_headers({"Authorization": "Bearer x", "X-Api-Key": "k", "Cookie": "c", "Content-Type": "json",
                        "X-Deployment-Id": "dep-1", "Retry-After": "5"})
    assert h == {"authorization": MASK, "x-api-key": MASK, "cookie": MASK, "content-type": "json",
                 "x-deployment-id": "dep-1", "retry-after": "5"}
    s = Secret("Bearer abc")
    assert str(s) == MASK and repr(s) == f"Secret({MASK!r})" and f"{s}" == MASK and s.reveal() == "Bearer abc"


def test_profile_error_does_not_echo_a_url_password(tmp_path):
    p = write_profile(tmp_path, '[target]\nname = "t"\nbase_url = "ftp://u:hunter22@h"\n[[probes]]\nname = "a"\npath = "/"\n')
    with pytest.raises(ProfileError) as err:
        load_profile(p)
    assert "hunter22" not in str(err.value)


TOKEN = "canary-token-7f3a9b2c4d5e6f70"
URLKEY = "canary-urlkey-1a2b3c4d5e"


@pytest.mark.slow
def test_canary_secret_reaches_no_output(sim, tmp_path):
    sched = tmp_path / "faults.toml"
    sched.write_text('[[fault]]\nkind = "echo_auth"\n[[fault]]\nkind = "server_error"\ncount = 2\nprobes = ["execute"]\n')
    srv = sim(schedule=sched)
    profile = write_profile(tmp_path, f'''
[target]
name = "canary"
base_url = "{url(srv)}"
interval = "1s"
timeout = "0.9s"  # the echo is slow-ish; its first sample carries the evidence
auth_header = "Authorization"
auth_env = "PG_CANARY_TOKEN"
auth_scheme = "Bearer"
headers = {{ "X-Api-Key" = "{URLKEY}" }}

[[probes]]
name = "execute"
method = "POST"
path = "/v1/actions/execute?key={URLKEY}"
body = {{ action = "view_fault_details" }}

[[probes]]
name = "health"
path = "/v1/actions/health?token={URLKEY}"
''')
    data = tmp_path / "data"
    env = {"PG_CANARY_TOKEN": TOKEN}
    outputs = []
    start = datetime.now(timezone.utc) - timedelta(seconds=5)
    for args in (["collect", "--for", "4s"], ["check"]):
        r = phasegate(*args, "--profile", profile, "--data", data, env=env)
        outputs += [r.stdout, r.stderr]
    df = read_samples(data, datetime(2000, 1, 1, tzinfo=timezone.utc), datetime(2100, 1, 1, tzinfo=timezone.utc))
    assert len(df) >= 6
    echoed = [e for e in df["evidence"].dropna() if "request_headers" in e]
    assert echoed and all(MASK in e for e in echoed)  # the body echoed the headers: scrubbed
    assert all("key=[REDACTED]" in u or "token=[REDACTED]" in u for u in df["url"])
    r = phasegate("report", "--profile", profile, "--data", data, "--phase", "canary", "--start", start.isoformat(),
                  "--hours", "1", "--out", tmp_path / "reports", env=env, timeout=300)
    outputs += [r.stdout, r.stderr]
    assert r.returncode in (10, 11, 12, 13), r.stderr
    files = [p for p in tmp_path.rglob("*") if p.is_file() and p.name != "p.toml" and p.name != "faults.toml"]
    texts = list(outputs)
    for f in files:
        texts.append(f.read_bytes().decode("latin-1"))
        if f.suffix == ".parquet":
            texts.append(json.dumps(pq.read_table(f).to_pylist(), default=str))
        if f.suffix == ".pdf":
            texts.append("".join(p.extract_text() for p in PdfReader(f).pages))
    assert any(f.suffix == ".pdf" for f in files) and any(f.suffix == ".html" for f in files)
    for secret in (TOKEN, URLKEY):
        leaks = [t[:60] for t in texts if secret in t]
        assert leaks == []


def test_report_refuses_secret_looking_parameters(tmp_path):
    with pytest.raises(ReportError, match="looks like it holds a secret"):
        data = tmp_path / "d?token=abcdef123"
        data.mkdir()
        make_report(profile_path="profiles/simulator.toml", data_dir=str(data),
                    phase="phase1-staging-canary", start="2026-01-28T14:45:01Z", hours=24, out_root=str(tmp_path))


@pytest.fixture
def httpbin_url():
    """httpbin (PyPI) on loopback: a real third-party server that echoes each request back."""
    import logging

    from httpbin import app
    from werkzeug.serving import make_server

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    srv = make_server("127.0.0.1", 0, app, threaded=True)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_port}"
    srv.shutdown()


URL_SECRET = "urlparam-secret-5e6f7a8b9c"


def test_base_url_query_merges_with_probe_queries_and_its_secret_is_scrubbed(tmp_path, httpbin_url):
    prof = write_profile(tmp_path, '''
[target]
name = "echo"
base_url = "http://127.0.0.1:9/"
interval = "5s"
timeout = "4s"

[[probes]]
name = "list"
path = "/anything/v1/list?domain=faults"
  [probes.extract]
  item_count = "len:args"
''')
    base = f"{httpbin_url}/?api_key={URL_SECRET}&v=1"
    data = tmp_path / "data"
    res = phasegate("check", "--profile", prof, "--base-url", base, "--data", data)
    assert res.returncode == 0, res.stdout + res.stderr
    df = read_samples(data, datetime(2000, 1, 1, tzinfo=timezone.utc), datetime(2100, 1, 1, tzinfo=timezone.utc))
    (row,) = df.to_dict("records")
    # The probe path goes after the base path, and both queries reach the server.
    assert row["url"] == f"{httpbin_url}/anything/v1/list?api_key={MASK}&v=1&domain=faults"
    assert row["item_count"] == 3
    echo = json.loads(json.loads(row["evidence"])["body"])
    assert echo["args"] == {"api_key": MASK, "v": "1", "domain": "faults"}
    assert echo["url"].endswith(f"/anything/v1/list?api_key={MASK}&v=1&domain=faults")
    texts = [res.stdout, res.stderr] + [p.read_bytes().decode("latin-1") for p in data.rglob("*") if p.is_file()]
    texts += [json.dumps(pq.read_table(p).to_pylist(), default=str) for p in data.rglob("*.parquet")]
    assert [t[:60] for t in texts if URL_SECRET in t] == []
