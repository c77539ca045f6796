"""Real traffic: request logs from a real nginx in front of the simulator, and /metrics."""

import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from datetime import datetime, timedelta, timezone

import pytest

from phasegate import signoff
from phasegate.store import read_samples
from phasegate.traffic import import_logs

from conftest import free_port as _free_port, phasegate, url, write_profile

EPOCH = datetime(2000, 1, 1, tzinfo=timezone.utc)
FAR = datetime(2100, 1, 1, tzinfo=timezone.utc)
LOG_FORMAT = '\'$remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent "$http_referer" "$http_user_agent" $request_time\''



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


def via_nginx_profile(tmp_path, base, extra=""):
    """Probes through nginx too, health only, so every injected 500 reaches real traffic."""
    return write_profile(tmp_path, f'''
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
{extra}''')


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
    profile = via_nginx_profile(tmp_path, base)
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


@pytest.fixture
def prometheus(tmp_path):
    """A real Prometheus on 127.0.0.1 scraping the given target every second."""
    binary = shutil.which("prometheus")
    if not binary:
        pytest.skip("needs Prometheus: apt-get install -y prometheus (.ci/run installs it)")
    procs = []

    def start(target_port: int) -> str:
        port = _free_port()
        conf = tmp_path / "prometheus.yml"
        conf.write_text("global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: sim\n"
                        f"    static_configs:\n      - targets: ['127.0.0.1:{target_port}']\n")
        proc = subprocess.Popen([binary, f"--config.file={conf}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                                 f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        procs.append(proc)
        base = f"http://127.0.0.1:{port}"
        for _ in range(200):
            try:
                if urllib.request.urlopen(f"{base}/-/ready", timeout=1).status == 200:
                    return base
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("Prometheus did not become ready")

    yield start
    for p in procs:
        p.terminate()
        p.wait(timeout=20)


def _prom_has(base, query, minimum=1):
    import json
    q = urllib.parse.urlencode({"query": query})
    doc = json.load(urllib.request.urlopen(f"{base}/api/v1/query?{q}", timeout=5))
    return len(doc["data"]["result"]) >= minimum


def test_prometheus_and_nginx_log_both_count_exactly_the_injected_500s(sim, tmp_path, nginx, prometheus):
    start_nginx, log = nginx
    sched = tmp_path / "f.toml"
    sched.write_text('[[fault]]\nkind = "server_error"\ncount = 7\nprobes = ["list"]\n')
    sim_log = tmp_path / "sim.jsonl"
    srv = sim(schedule=sched, request_log=sim_log)
    prom = prometheus(srv.port)
    for _ in range(100):  # the zero-valued series are scraped before any error happens
        if _prom_has(prom, "http_requests_total", 12):
            break
        time.sleep(0.2)
    window_start = datetime.now(timezone.utc) - timedelta(seconds=1)
    base = start_nginx(url(srv))
    codes = [_get(f"{base}/v1/actions/list?domain=faults&i={i}") for i in range(40)]
    assert codes.count(500) == 7
    time.sleep(3.5)  # let at least two scrapes see the final counters
    window_end = datetime.now(timezone.utc)
    profile = via_nginx_profile(tmp_path, base, f'[prometheus]\nurl = "{prom}"\n')
    data = tmp_path / "data"
    assert phasegate("collect", "--profile", profile, "--data", data, "--for", "1.5s", "--quiet").returncode == 0
    pulled = phasegate("pull-traffic", "--profile", profile, "--data", data, "--start", window_start.isoformat(),
                       "--end", window_end.isoformat())
    assert pulled.returncode == 0, pulled.stderr
    # A second pull overlapping the first (the hourly job's windows overlap): only the part not
    # yet pulled is fetched, so nothing is counted twice.
    again = phasegate("pull-traffic", "--profile", profile, "--data", data,
                      "--start", (window_start - timedelta(seconds=10)).isoformat(), "--end", window_end.isoformat())
    assert again.returncode == 0, again.stderr
    assert "already pulled: not counted again" in again.stderr and again.stdout.startswith("pulled 0 requests")
    doc = signoff.run(profile, data, "p", start=window_start.isoformat(), hours=1).doc
    assert doc["prometheus"]["routes"]["/v1/actions/list"]["http_5xx"] == 7
    assert doc["prometheus"]["routes"]["/v1/actions/list"]["samples"] == 40
    # The histogram's P99 is only known to its bucket: the exact P99 (server log) lies inside it.
    import json as _json
    import numpy as np
    lat = [e["latency_ms"] for e in map(_json.loads, sim_log.read_text().splitlines()) if "/list" in e["path"]]
    hist = doc["prometheus"]["p99_from_histogram"]["/v1/actions/list"]
    assert hist["requests"] == 40
    lo, hi = hist["bucket_ms"]
    assert lo <= np.percentile(lat, 99) <= hi and lo <= hist["p99_ms"] <= hi
    assert phasegate("import-logs", "--file", log, "--data", data).returncode == 0
    doc = signoff.run(profile, data, "p", start=window_start.isoformat(), hours=1).doc
    c = next(c for c in doc["criteria"] if c["id"] == "no_5xx")
    assert c["measured"] == 7 and c["passed"] is False  # counted once: the log, with Prometheus beside it
    assert "traffic 7 of" in c["detail"] and "prometheus 7 of" in c["detail"] and "not added" in c["detail"]
    # A window that ends in the future is pulled up to now, and says so: the rest stays unpulled
    # for a later pull instead of being marked as covered.
    from phasegate.prom import pulled_intervals
    later = phasegate("pull-traffic", "--profile", profile, "--data", data, "--start", window_start.isoformat(),
                      "--hours", "1")
    assert later.returncode == 0, later.stderr
    assert "the window ends in the future: pulled up to" in later.stderr
    assert max(hi for _lo, hi in pulled_intervals(data)) <= time.time()


def test_counter_resets_and_increments():
    from phasegate.prom import increments
    inc, resets = increments([(1, "0"), (2, "3"), (3, "3"), (4, "5"), (5, "2"), (6, "4")])
    assert inc == [(2.0, 3.0), (4.0, 2.0), (5.0, 2.0), (6.0, 2.0)] and resets == 1
    assert sum(d for _, d in inc) == 9  # 5 before the restart, 4 after


@pytest.mark.parametrize("window,covered,want", [
    ((0, 100), [], [(0, 100)]),
    ((0, 100), [(0, 100)], []),
    ((0, 100), [(20, 30), (50, 60)], [(0, 20), (30, 50), (60, 100)]),
    ((0, 100), [(-50, 10), (90, 200)], [(10, 90)]),
    ((0, 100), [(10, 40), (30, 70)], [(0, 10), (70, 100)]),  # covered parts that overlap each other
    ((0, 100), [(100, 200), (-100, 0)], [(0, 100)]),  # touching at a point is not overlapping
])
def test_only_the_parts_no_earlier_pull_covered_are_pulled(window, covered, want):
    from phasegate.prom import uncovered
    assert uncovered(window, covered) == want


def test_pull_traffic_without_prometheus_section_is_bad_input(tmp_path):
    from conftest import SIM_PROFILE
    res = phasegate("pull-traffic", "--profile", SIM_PROFILE, "--data", tmp_path, "--start", "2026-01-01T00:00:00Z",
                    "--hours", "1")
    assert res.returncode == 2 and "no [prometheus] section" in res.stderr


@pytest.mark.slow
def test_prometheus_down_is_a_line_in_the_data_section_not_a_crash(tmp_path):
    from conftest import SIM_PROFILE
    from test_report import END, START, make
    data = make(tmp_path, [], hours=24)
    profile = write_profile(tmp_path, f'''
extends = "{SIM_PROFILE}"
[prometheus]
url = "http://127.0.0.1:{_free_port()}"
timeout = "2s"
''', name="prom-down.toml")
    res = phasegate("report", "--profile", profile, "--data", data, "--phase", "phase1-staging-canary",
                    "--start", START.isoformat(), "--end", END.isoformat(), "--out", tmp_path / "r",
                    "--formats", "html", timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr  # GO on the probe evidence
    assert "data: Prometheus not used: Prometheus at http://127.0.0.1:" in res.stdout
    html = next((tmp_path / "r").rglob("signoff.html")).read_text()
    assert "Data source:</b> Prometheus not used: Prometheus at http://127.0.0.1:" in html
    assert "unreachable" in html


PROMQL = 'sum(http_requests_total{status=~"5.."}) or vector(0)'


@pytest.mark.parametrize("errors", [7, 0])
def test_promql_criterion_fails_on_injected_500s_and_a_rerun_without_prometheus_agrees(sim, tmp_path, prometheus,
                                                                                      errors):
    sched = tmp_path / "f.toml"
    sched.write_text(f'[[fault]]\nkind = "server_error"\ncount = {errors}\nprobes = ["list"]\n' if errors else "")
    srv = sim(schedule=sched) if errors else sim()
    prom = prometheus(srv.port)
    for _ in range(100):
        if _prom_has(prom, "http_requests_total", 1):
            break
        time.sleep(0.2)
    window_start = datetime.now(timezone.utc) - timedelta(seconds=2)
    codes = [_get(f"{url(srv)}/v1/actions/list?domain=faults&i={i}") for i in range(20)]
    assert codes.count(500) == errors
    time.sleep(3.5)  # two scrapes see the final counters
    profile = write_profile(tmp_path, f'''
[target]
name = "promql"
base_url = "{url(srv)}"
interval = "0.5s"
timeout = "0.4s"
[[probes]]
name = "health"
path = "/v1/actions/health"
[prometheus]
url = "{prom}"
[criteria]
duration = "1m"
[criteria.server_errors]
title = "No 5xx seen by Prometheus"
kind = "hard"
promql = '{PROMQL}'
aggregate = "max"
max = 0
''')
    data = tmp_path / "data"
    assert phasegate("collect", "--profile", profile, "--data", data, "--for", "1.5s", "--quiet").returncode == 0
    end = datetime.now(timezone.utc)

    def judged():
        doc = signoff.run(profile, data, "p", start=window_start.isoformat(), end=end.isoformat(),
                          as_of=end.isoformat()).doc
        return next(c for c in doc["criteria"] if c["id"] == "server_errors"), doc

    c, doc = judged()
    assert c["passed"] is (errors == 0), c
    assert c["measured"] == errors and PROMQL in c["detail"]
    assert any(n.startswith("PromQL server_errors:") for n in doc["inputs"]["notes"])
    # Prometheus gone: the stored values give the same verdict.
    prometheus_procs = [p for p in __import__("psutil").process_iter(["name", "cmdline"])
                        if p.info["name"] == "prometheus" and f"--web.listen-address={prom[7:]}" in (p.info["cmdline"] or [])]
    for p in prometheus_procs:
        p.terminate()
        p.wait(20)
    again, _ = judged()
    assert (again["passed"], again["measured"], again["detail"]) == (c["passed"], c["measured"], c["detail"])
