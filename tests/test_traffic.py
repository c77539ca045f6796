"""Real traffic: request logs from a real nginx in front of the simulator, and /metrics."""

import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from datetime import datetime, timedelta, timezone

import pytest

from phasegate import signoff
from phasegate.store import read_samples
from phasegate.traffic import import_logs

from conftest import phasegate, url, write_profile

EPOCH = datetime(2000, 1, 1, tzinfo=timezone.utc)
FAR = datetime(2100, 1, 1, tzinfo=timezone.utc)
LOG_FORMAT = '\'$remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent "$http_referer" "$http_user_agent" $request_time\''


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def nginx(tmp_path):
    """A real nginx on 127.0.0.1 reverse-proxying to an upstream; yields (start(upstream) -> base url, log path)."""
    binary = shutil.which("nginx") or ("/usr/sbin/nginx" if shutil.os.path.exists("/usr/sbin/nginx") else None)
    if not binary:
        pytest.skip("needs nginx: apt-get install -y nginx (.ci/run installs it)")
    procs = []
    log = tmp_path / "access.log"

    def start(upstream: str) -> str:
        port = _free_port()
        conf = tmp_path / "nginx.conf"
        conf.write_text(f"""
daemon off;
worker_processes 1;
pid {tmp_path}/nginx.pid;
error_log {tmp_path}/error.log;
{"user root;" if shutil.os.geteuid() == 0 else ""}
events {{ worker_connections 256; }}
http {{
  log_format timed {LOG_FORMAT};
  access_log {log} timed;
  client_body_temp_path {tmp_path}/body; proxy_temp_path {tmp_path}/proxy;
  fastcgi_temp_path {tmp_path}/fcgi; uwsgi_temp_path {tmp_path}/uwsgi; scgi_temp_path {tmp_path}/scgi;
  server {{
    listen 127.0.0.1:{port};
    location / {{ proxy_pass {upstream}; }}
  }}
}}
""")
        proc = subprocess.Popen([binary, "-c", str(conf), "-p", str(tmp_path)], stderr=subprocess.PIPE)
        procs.append(proc)
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                return f"http://127.0.0.1:{port}"
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"nginx did not start: {proc.stderr.read()[:500]!r}")

    yield start, log
    for p in procs:
        p.terminate()
        p.wait(timeout=10)


def _get(u):
    try:
        return urllib.request.urlopen(u, timeout=5).status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_nginx_log_counts_exactly_the_injected_500s(sim, tmp_path, nginx):
    start, log = nginx
    sched = tmp_path / "f.toml"
    sched.write_text('[[fault]]\nkind = "server_error"\ncount = 7\nprobes = ["list"]\n')
    srv = sim(schedule=sched)
    base = start(url(srv))
    window_start = datetime.now(timezone.utc) - timedelta(seconds=2)
    codes = [_get(f"{base}/v1/actions/list?domain=faults&i={i}") for i in range(40)]
    codes += [_get(f"{base}/v1/actions/suggestions?domain=faults") for _ in range(10)]
    assert codes.count(500) == 7
    # Probes through nginx too (health only, so the injected 500s all reach real traffic).
    profile = write_profile(tmp_path, f'''
[target]
name = "via-nginx"
base_url = "{base}"
interval = "0.5s"
timeout = "0.4s"
[[probes]]
name = "health"
path = "/v1/actions/health"
[criteria]
duration = "1m"
''')
    data = tmp_path / "data"
    assert phasegate("collect", "--profile", profile, "--data", data, "--for", "2s", "--quiet").returncode == 0
    time.sleep(0.3)
    res = phasegate("import-logs", "--format", "nginx", "--file", log, "--data", data)
    assert res.returncode == 0, res.stderr
    traffic = read_samples(data, EPOCH, FAR, columns=["source", "probe", "status"])
    traffic = traffic[traffic["source"] == "traffic"]
    assert int((traffic["status"] == 500).sum()) == 7
    assert len(traffic[traffic["probe"] == "/v1/actions/list"]) == 40
    again = phasegate("import-logs", "--format", "nginx", "--file", log, "--data", data)  # idempotent
    assert len(read_samples(data, EPOCH, FAR, columns=["source"]).query("source == 'traffic'")) == len(traffic)
    assert again.returncode == 0
    doc = signoff.run(profile, data, "p", start=window_start.isoformat(), hours=1).doc
    c = next(c for c in doc["criteria"] if c["id"] == "no_5xx")
    assert c["passed"] is False and c["measured"] == 7
    assert "probes 0 of" in c["detail"] and "traffic 7 of" in c["detail"] and "/v1/actions/list 7" in c["detail"]
    assert doc["traffic"]["routes"]["/v1/actions/list"]["http_5xx"] == 7
    assert doc["verdict"] == "NO-GO"


def test_json_lines_with_custom_fields_and_malformed_lines(tmp_path):
    lines = [
        '{"at": "2026-01-28T15:00:00Z", "verb": "GET", "uri": "/v1/actions/list?key=s3cret", "code": 200, "secs": 0.041}',
        '{"at": "2026-01-28T15:00:01Z", "verb": "POST", "uri": "/v1/actions/execute", "code": 502, "secs": 1.5}',
        "not json",
        '{"at": "2026-01-28T15:00:02Z", "verb": "GET"}',
        "",
    ]
    res = import_logs(iter(l + "\n" for l in lines), tmp_path, "json",
                      fields={"ts": "at", "method": "verb", "path": "uri", "status": "code", "latency_s": "secs"},
                      label="t")
    assert (res.rows, res.malformed) == (2, 2)
    assert [n for n, _ in res.examples] == [3, 4]
    df = read_samples(tmp_path, EPOCH, FAR).sort_values("ts")
    assert list(df["status"]) == [200, 502] and list(df["outcome"]) == ["ok", "http_error"]
    assert list(df["latency_ms"]) == [41.0, 1500.0]
    assert "s3cret" not in df["url"].iloc[0]


def test_simulator_metrics_match_its_request_log(sim, tmp_path):
    import json
    log = tmp_path / "r.jsonl"
    sched = tmp_path / "f.toml"
    sched.write_text('[[fault]]\nkind = "server_error"\ncount = 3\nprobes = ["execute"]\n')
    srv = sim(schedule=sched, request_log=log)
    for _ in range(5):
        req = urllib.request.Request(f"{url(srv)}/v1/actions/execute", data=b"{}", method="POST")
        try:
            urllib.request.urlopen(req, timeout=5)
        except urllib.error.HTTPError:
            pass
        _get(f"{url(srv)}/v1/actions/health")
    text = urllib.request.urlopen(f"{url(srv)}/metrics").read().decode()
    entries = [json.loads(x) for x in log.read_text().splitlines()]
    assert sum(e["status"] == 500 for e in entries) == 3
    assert 'http_requests_total{method="POST",route="/v1/actions/execute",status="500"} 3.0' in text
    assert 'http_requests_total{method="POST",route="/v1/actions/execute",status="200"} 2.0' in text
    assert 'http_request_duration_seconds_count{method="GET",route="/v1/actions/health"} 5.0' in text
