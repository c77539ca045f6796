"""Issue 28: real networks. HTTPS servers on 127.0.0.1 with certificates from a test CA the tests
make (trustme): trust by ca_file, mutual TLS, SNI, expired and soon-to-expire certificates, TLS
failures named exactly; a real forward proxy (tinyproxy, Debian) carrying probes and an API call
by HTTPS_PROXY and by proxy_url, NO_PROXY bypassing it, its credentials in no output."""

import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from phasegate import signoff
from phasegate.errors import ProfileError
from phasegate.probe import run_probe
from phasegate.profile import load_profile
from phasegate.store import read_samples

from conftest import fast_profile, free_port as _free_port, phasegate, write_profile

trustme = pytest.importorskip("trustme")
EVER = (datetime(2000, 1, 1, tzinfo=timezone.utc), datetime(2100, 1, 1, tzinfo=timezone.utc))
HEALTH = {"status": "healthy", "handlers_loaded": 4, "handlers_total": 4,
          "feature_flags": {"FAULT_LENS_V1_ENABLED": True, "FAULT_LENS_SUGGESTIONS_ENABLED": True,
                            "FAULT_LENS_SIGNED_ACTIONS_ENABLED": True}}


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802
        body = json.dumps(HEALTH).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_GET  # noqa: N815

    def log_message(self, *a):
        pass


class TlsServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, ctx: ssl.SSLContext):
        super().__init__(("127.0.0.1", 0), Handler)
        self.socket = ctx.wrap_socket(self.socket, server_side=True)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self):
        return f"https://127.0.0.1:{self.server_address[1]}"

    def handle_error(self, request, client_address):
        pass  # a client refusing our certificate is the point of a test


@pytest.fixture
def ca():
    return trustme.CA()


@pytest.fixture
def servers():
    made = []
    yield lambda ctx: made.append(TlsServer(ctx)) or made[-1]
    for s in made:
        s.shutdown()
        s.server_close()


def _server_ctx(ca, *names, not_after=None, client_ca=None):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    kw = {"not_after": not_after} if not_after else {}
    ca.issue_cert(*names, **kw).configure_cert(ctx)
    if client_ca is not None:
        client_ca.configure_trust(ctx)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def _profile(tmp_path, url, tls="", target_extra="", name="p.toml"):
    return fast_profile(tmp_path, url, interval="2s", timeout="1.5s", extra=f"{target_extra}\n[target.tls]\n{tls}",
                        name=name)


def _health(profile_path):
    prof = load_profile(profile_path)
    return run_probe(prof.target, prof.probe("health"))


def test_a_probe_trusts_its_ca_file_and_names_an_unknown_ca(tmp_path, ca, servers):
    srv = servers(_server_ctx(ca, "127.0.0.1"))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    ok = _health(_profile(tmp_path, srv.url, f'ca_file = "{tmp_path / "ca.pem"}"'))
    assert ok["outcome"] == "ok" and ok["tls_version"] in ("TLSv1.2", "TLSv1.3"), ok
    assert ok["cert_expiry"] is not None and ok["tls_ms"] is not None
    bad = _health(_profile(tmp_path, srv.url, "", name="q.toml"))
    assert bad["outcome"] == "tls_error" and bad["error"].startswith("TLS: unknown CA"), bad
    res = phasegate("check", "--profile", tmp_path / "q.toml")
    assert res.returncode == 1 and "❌ UNHEALTHY (TLS_ERROR (TLS: unknown CA" in res.stdout, res.stdout


def test_mutual_tls_with_a_client_certificate_and_without(tmp_path, ca, servers):
    srv = servers(_server_ctx(ca, "127.0.0.1", client_ca=ca))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    client = ca.issue_cert("collector@phasegate")
    client.cert_chain_pems[0].write_to_path(str(tmp_path / "client.pem"))
    client.private_key_pem.write_to_path(str(tmp_path / "client.key"))
    with_cert = _health(_profile(tmp_path, srv.url, f'ca_file = "{tmp_path / "ca.pem"}"\n'
                                                    f'cert_file = "{tmp_path / "client.pem"}"\n'
                                                    f'key_file = "{tmp_path / "client.key"}"'))
    assert with_cert["outcome"] == "ok", with_cert
    without = _health(_profile(tmp_path, srv.url, f'ca_file = "{tmp_path / "ca.pem"}"', name="q.toml"))
    assert without["outcome"] == "tls_error", without
    assert "client certificate" in without["error"] or "handshake" in without["error"], without["error"]


def test_server_name_reaches_the_right_virtual_host(tmp_path, ca, servers):
    ctx = _server_ctx(ca, "other.internal")  # what 127.0.0.1 gets without SNI for canary.internal
    canary = _server_ctx(ca, "canary.internal")
    ctx.sni_callback = lambda sock, name, _ctx: setattr(sock, "context", canary) if name == "canary.internal" else None
    srv = servers(ctx)
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    named = _health(_profile(tmp_path, srv.url, f'ca_file = "{tmp_path / "ca.pem"}"\nserver_name = "canary.internal"'))
    assert named["outcome"] == "ok", named
    plain = _health(_profile(tmp_path, srv.url, f'ca_file = "{tmp_path / "ca.pem"}"', name="q.toml"))
    assert plain["outcome"] == "tls_error" and "mismatch" in plain["error"], plain


def test_an_expired_certificate_fails_and_one_expiring_soon_fails_the_soft_criterion(tmp_path, ca, servers):
    now = datetime.now(timezone.utc)
    expired = servers(_server_ctx(ca, "127.0.0.1", not_after=now - timedelta(days=1)))
    soon = servers(_server_ctx(ca, "127.0.0.1", not_after=now + timedelta(days=5)))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    trust = f'ca_file = "{tmp_path / "ca.pem"}"'
    row = _health(_profile(tmp_path, expired.url, trust))
    assert row["outcome"] == "tls_error" and row["error"].startswith("TLS: certificate expired"), row
    prof = _profile(tmp_path, soon.url, trust, name="soon.toml")
    data = tmp_path / "data"
    res = phasegate("collect", "--profile", prof, "--data", data, "--for", "5s", "--quiet", timeout=60)
    assert res.returncode == 0, res.stderr
    df = read_samples(data, *EVER, columns=["probe", "outcome", "tls_version", "cert_expiry"])
    # (This server answers every path with the health document: the other probes' assertions fail.)
    assert df["outcome"].isin(["ok", "assertion_failed"]).all() and df["cert_expiry"].notna().all()
    assert df["tls_version"].notna().all()
    doc = signoff.run(prof, data, "phase1-staging-canary", end=datetime.now(timezone.utc).isoformat(), hours=1).doc
    crit = next(c for c in doc["criteria"] if c["id"] == "cert_expiry")
    assert crit["kind"] == "soft" and crit["passed"] is False and crit["threshold"] == 14, crit
    assert 3.5 < crit["measured"] < 5.5 and "days after the window's end (needs 14)" in crit["detail"], crit
    assert doc["tls"]["earliest_expiry"][:10] == (now + timedelta(days=5)).strftime("%Y-%m-%d")


@pytest.mark.parametrize("tls,message", [
    ('ca_file = "missing.pem"', "target.tls.ca_file: cannot read missing.pem: No such file or directory"),
    ('cert_file = "CERT"', "target.tls.key_file: cert_file and key_file go together"),
    ('cert_file = "CERT"\nkey_file = "OTHERKEY"', "target.tls.key_file: does not match target.tls.cert_file"),
    ('min_version = "SSL3"', "target.tls.min_version: must be one of TLS1.2, TLS1.3, got 'SSL3'"),
    ('ca_file = "CERTKEY"\nsni = "x"', "target.tls.sni: unknown key"),
])
def test_bad_tls_settings_name_the_key(tmp_path, ca, tls, message, monkeypatch):
    cert = ca.issue_cert("a.internal")
    other = ca.issue_cert("b.internal")
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    other.private_key_pem.write_to_path(str(tmp_path / "other.key"))
    (tmp_path / "certkey.pem").write_text("not a certificate")
    tls = tls.replace("OTHERKEY", str(tmp_path / "other.key")).replace("CERTKEY", str(tmp_path / "cert.pem")) \
        .replace("CERT", str(tmp_path / "cert.pem"))
    path = _profile(tmp_path, "https://127.0.0.1:1", tls)
    monkeypatch.chdir(tmp_path)  # relative paths are the working directory's
    with pytest.raises(ProfileError) as exc:
        load_profile(path)
    assert str(exc.value).startswith(f"{path}: {message}"), str(exc.value)


# -- proxies ---------------------------------------------------------------------------------

PROXY_PASSWORD = "s3cretPROXYpass0123"



@pytest.fixture
def proxy(tmp_path):
    """tinyproxy on 127.0.0.1, logging each request; with auth=True it wants Basic credentials."""
    exe = shutil.which("tinyproxy") or ("/usr/bin/tinyproxy" if os.path.exists("/usr/bin/tinyproxy") else None)
    if exe is None:
        pytest.skip("needs a forward proxy: apt-get install -y tinyproxy (.ci/run installs it)")
    made = []

    def start(auth=False):
        port, log = _free_port(), tmp_path / f"proxy-{len(made)}.log"
        conf = tmp_path / f"proxy-{len(made)}.conf"
        conf.write_text(f'Port {port}\nListen 127.0.0.1\nTimeout 30\nAllow 127.0.0.1\nLogFile "{log}"\nLogLevel Connect\n'
                        + (f"BasicAuth pguser {PROXY_PASSWORD}\n" if auth else ""))
        proc = subprocess.Popen([exe, "-d", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        made.append(proc)
        for _ in range(100):
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.05)
        return f"127.0.0.1:{port}", log

    yield start
    for proc in made:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)


def _log(path: Path) -> str:
    return path.read_text() if path.exists() else ""


def test_https_proxy_carries_probes_and_no_proxy_bypasses_it(tmp_path, ca, servers, proxy):
    srv = servers(_server_ctx(ca, "127.0.0.1"))
    port = srv.server_address[1]
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    prof = _profile(tmp_path, srv.url, f'ca_file = "{tmp_path / "ca.pem"}"')
    where, log = proxy()
    via = {"HTTPS_PROXY": f"http://{where}"}
    res = phasegate("check", "--profile", prof, env=via)
    assert "✅ HEALTHY" in res.stdout, res.stdout + res.stderr
    assert f"CONNECT 127.0.0.1:{port}" in _log(log)  # through the proxy, a TLS tunnel
    data = tmp_path / "data"
    assert phasegate("collect", "--profile", prof, "--data", data, "--for", "3s", "--quiet", env=via).returncode == 0
    df = read_samples(data, *EVER, columns=["probe", "proxy_ms", "connect_ms", "tls_ms", "tls_version"])
    assert df["proxy_ms"].notna().all() and df["tls_ms"].notna().all() and df["tls_version"].notna().all()
    seen = _log(log).count("CONNECT 127.0.0.1")
    res = phasegate("check", "--profile", prof, env={**via, "NO_PROXY": "localhost,127.0.0.1"})
    assert "✅ HEALTHY" in res.stdout and _log(log).count("CONNECT 127.0.0.1") == seen  # bypassed


def test_proxy_url_with_credentials_carries_probes_and_an_api_call_and_the_password_is_nowhere(tmp_path, ca, servers,
                                                                                                proxy, sim):
    from test_platform import KEY, FakeRender, profile_for

    srv = servers(_server_ctx(ca, "127.0.0.1"))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    where, log = proxy(auth=True)
    url = f"http://pguser:{PROXY_PASSWORD}@{where}"
    prof = _profile(tmp_path, srv.url, f'ca_file = "{tmp_path / "ca.pem"}"', target_extra=f'proxy_url = "{url}"')
    data = tmp_path / "data"
    col = phasegate("collect", "--profile", prof, "--data", data, "--for", "3s", "--quiet")
    assert col.returncode == 0, col.stderr
    df = read_samples(data, *EVER, columns=["outcome", "proxy_ms"])
    assert len(df) and not df["outcome"].isin(["connection_error", "tls_error"]).any(), df
    wrong = _profile(tmp_path, srv.url, f'ca_file = "{tmp_path / "ca.pem"}"', name="wrong.toml",
                     target_extra=f'proxy_url = "http://pguser:nope@{where}"')
    res = phasegate("check", "--profile", wrong)
    assert re.search(r"UNHEALTHY \(CONNECTION_ERROR \(the proxy answered CONNECT with 40[17] ", res.stdout), res.stdout
    rep = phasegate("report", "--profile", prof, "--data", data, "--phase", "phase1-staging-canary", "--end", "now",
                    "--hours", "1", "--out", tmp_path / "reports", "--formats", "json,html")
    assert rep.returncode in (10, 11, 12, 13), rep.stdout + rep.stderr
    # An API call (the platform's) through the same proxy, by the environment's HTTP_PROXY.
    f = FakeRender(env={"FAULT_LENS_V1_ENABLED": "true"})
    try:
        plat = profile_for(tmp_path, f)
        pulled = phasegate("pull-platform", "--profile", plat, "--data", tmp_path / "pdata",
                           env={"TEST_RENDER_KEY": KEY, "HTTP_PROXY": url})
    finally:
        f.shutdown()
        f.server_close()
    assert pulled.returncode == 0, pulled.stderr
    assert f"GET {f.api}/services/srv-d5fr5hre5dus73d3gdn0/deploys" in _log(log)
    # And by the profile's [target] proxy_url, no proxy variable set: the API calls take the
    # target's route; its no_proxy sends them direct.
    f = FakeRender(env={"FAULT_LENS_V1_ENABLED": "true"})
    try:
        base = profile_for(tmp_path, f)
        by_profile = write_profile(tmp_path, f'extends = "{base}"\n[target]\nproxy_url = "{url}"\n', "plat-proxy.toml")
        bypass = write_profile(tmp_path, f'extends = "{by_profile}"\n[target]\nno_proxy = "127.0.0.1"\n', "plat-direct.toml")
        seen = _log(log).count(f"GET {f.api}/services/")
        pulled2 = phasegate("pull-platform", "--profile", by_profile, "--data", tmp_path / "pdata2",
                            env={"TEST_RENDER_KEY": KEY})
        through = _log(log).count(f"GET {f.api}/services/")
        direct = phasegate("pull-platform", "--profile", bypass, "--data", tmp_path / "pdata3",
                           env={"TEST_RENDER_KEY": KEY})
    finally:
        f.shutdown()
        f.server_close()
    assert pulled2.returncode == 0 and direct.returncode == 0, pulled2.stderr + direct.stderr
    assert through > seen and _log(log).count(f"GET {f.api}/services/") == through, (seen, through)
    for path in tmp_path.rglob("*"):
        # (The profile and the proxy's own config hold it, as written by the test.)
        if path.is_file() and not path.name.startswith("proxy-") and path.suffix != ".toml":
            assert PROXY_PASSWORD.encode() not in path.read_bytes(), path
    for r in (col, res, rep, pulled, pulled2, direct):
        assert PROXY_PASSWORD not in r.stdout + r.stderr


def test_an_api_call_trusts_requests_ca_bundle_and_goes_by_https_proxy_unless_no_proxy(tmp_path, ca, servers, proxy,
                                                                                       monkeypatch):
    """The API clients' requests session: the system's trust plus REQUESTS_CA_BUNDLE, the
    environment's proxy (a CONNECT tunnel for https), NO_PROXY bypassing it."""
    from phasegate.apiclient import fetch
    from phasegate.network import Route

    srv = servers(_server_ctx(ca, "127.0.0.1"))
    port = srv.server_address[1]
    bundle = tmp_path / "bundle.pem"
    ca.cert_pem.write_to_path(str(bundle))
    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "HTTPS_PROXY", "https_proxy", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    ex = fetch(f"{srv.url}/v1/services", "GET", {}, None, 5.0, 1 << 20)
    assert ex.outcome == "tls_error" and ex.error.startswith("TLS: unknown CA"), ex
    # The profile's [target.tls] ca_file, as a profile's Render and Prometheus calls take it.
    ex = fetch(f"{srv.url}/v1/services", "GET", {}, None, 5.0, 1 << 20, route=Route(ca_file=str(bundle)))
    assert (ex.outcome, ex.status) == (None, 200), ex
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(bundle))
    ex = fetch(f"{srv.url}/v1/services", "GET", {}, None, 5.0, 1 << 20)
    assert (ex.outcome, ex.status, json.loads(ex.body)["status"]) == (None, 200, "healthy"), ex
    where, log = proxy()
    monkeypatch.setenv("HTTPS_PROXY", f"http://{where}")
    ex = fetch(f"{srv.url}/v1/services", "GET", {}, None, 5.0, 1 << 20)
    assert ex.status == 200 and _log(log).count(f"CONNECT 127.0.0.1:{port}") == 1, ex
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    ex = fetch(f"{srv.url}/v1/services", "GET", {}, None, 5.0, 1 << 20)
    assert ex.status == 200 and _log(log).count(f"CONNECT 127.0.0.1:{port}") == 1, ex  # bypassed
