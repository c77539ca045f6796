"""A fleet of tenants: templated probes, per-tenant statistics worst first, the per-tenant criterion."""

import json
import re
from datetime import datetime, timedelta, timezone

import pytest
from pypdf import PdfReader

from phasegate import signoff
from phasegate.collector import probe_jobs
from phasegate.errors import ScenarioError
from phasegate.history import history
from phasegate.probe import run_probe
from phasegate.profile import load_profile
from phasegate.simulator import Fault, load_schedule, tenant_of

from conftest import PROFILES, phasegate, url, write_profile

FLEET = PROFILES / "fault-lens-staging-fleet.toml"
PHASE = "phase2-staging-full"
START = datetime(2026, 1, 29, 15, 0, tzinfo=timezone.utc)
H = 3600.0
BAD = ("yacht-07", "yacht-31")


def fleet_history(tmp_path, faults, hours=2.0):
    data = tmp_path / "fleet"
    history(load_profile(FLEET), faults, START.timestamp(), START.timestamp() + hours * H, data, seed=3)
    return data


def fleet_run(data, hours=2.0, **kw):
    return signoff.run(FLEET, data, PHASE, start=START.isoformat(), hours=hours,
                       as_of=(START + timedelta(hours=hours)).isoformat(), **kw)


def crit(doc, cid):
    return next(c for c in doc["criteria"] if c["id"] == cid)


def test_fleet_profile_runs_every_probe_once_per_yacht():
    p = load_profile(FLEET)
    jobs = probe_jobs(p)
    assert len(p.target.tenants) == 50
    assert len(jobs) == 50 * len(p.probes)
    assert {t for _, t in jobs} == set(p.target.tenants)


def test_two_bad_tenants_are_named_first_and_fail_the_per_tenant_criterion(tmp_path):
    data = fleet_history(tmp_path, [Fault("server_error", rate=0.2, tenants=BAD)])
    doc = fleet_run(data).doc
    rows = doc["tenants"]["rows"]
    assert doc["tenants"]["count"] == 50
    assert {r["tenant"] for r in rows[:2]} == set(BAD)
    assert all(r["errors"] == 0 for r in rows[2:])
    assert all(r["http_5xx"] == r["errors"] > 0 for r in rows[:2])
    c = crit(doc, "tenant_error_rate")
    assert c["passed"] is False and c["threshold"] == 0.01
    assert c["detail"].startswith("2 of 50 tenants at or above 1.00%: ")
    assert c["measured"] == pytest.approx(rows[0]["error_rate"], abs=1e-6)
    named = c["detail"].split(";")[0]
    assert all(t in named for t in BAD) and named.count("yacht-") == 2
    # The fleet-wide 5xx criterion says where, too.
    assert all(t in crit(doc, "no_5xx")["detail"] for t in BAD)
    # Counts per tenant add up to the whole.
    assert sum(r["samples"] for r in rows) == doc["overall"]["samples"]
    assert sum(r["errors"] for r in rows) == doc["overall"]["errors"]


def test_healthy_fleet_passes_the_per_tenant_criterion(tmp_path):
    doc = fleet_run(fleet_history(tmp_path, [])).doc
    c = crit(doc, "tenant_error_rate")
    assert c["passed"] is True, c["detail"]
    assert c["detail"].startswith("all 50 tenants below 1.00%")


def test_one_error_on_a_thin_tenant_is_not_settled_either_way(tmp_path):
    # 15 minutes: ~110 samples a yacht, too few for an upper bound below 1 % even with no error.
    data = fleet_history(tmp_path, [], hours=0.25)
    c = crit(fleet_run(data, hours=0.25).doc, "tenant_error_rate")
    assert c["passed"] is None
    assert "too few samples for an upper bound below 1.00%" in c["detail"]


def test_canary_profile_has_no_tenant_criterion(tmp_path):
    from phasegate.profile import load_profile as lp
    data = tmp_path / "canary"
    history(lp(PROFILES / "simulator.toml"), [], START.timestamp(), START.timestamp() + H, data)
    doc = signoff.run(PROFILES / "simulator.toml", data, "phase1-staging-canary", start=START.isoformat(),
                      hours=1, as_of=(START + timedelta(hours=1)).isoformat()).doc
    assert doc["tenants"] is None
    assert "tenant_error_rate" not in [c["id"] for c in doc["criteria"]]


@pytest.mark.parametrize("path,headers,expected", [
    ("/v1/actions/list?domain=faults&yacht=yacht-07", {}, "yacht-07"),
    ("/v1/actions/health?tenant=t1", {}, "t1"),
    ("/v1/actions/health", {"X-Yacht-Id": "yacht-31"}, "yacht-31"),
    ("/v1/actions/health", {"x-tenant-id": "t9"}, "t9"),
    ("/v1/actions/health", {}, None),
])
def test_simulator_reads_the_tenant_from_query_or_header(path, headers, expected):
    assert tenant_of(path, headers) == expected


def test_schedule_tenants_must_be_a_list_of_names(tmp_path):
    bad = write_profile(tmp_path, '[[fault]]\nkind = "server_error"\ntenants = "yacht-07"\n', "s.toml")
    with pytest.raises(ScenarioError, match=r"fault\[0\]\.tenants: must be a list of tenant names"):
        load_schedule(bad)


@pytest.mark.parametrize("line,message", [
    ("latency_s = 12", "fault[0].latency_s: must be [low, high] in seconds, got 12"),
    ("latency_s = [15, 12]", "fault[0].latency_s: must be [low, high] in seconds, got [15, 12]"),
    ('factor = "fast"', "fault[0].factor: must be a positive number, got 'fast'"),
    ("count = 0", "fault[0].count: must be a positive whole number, got 0"),
    ('probes = "list"', "fault[0].probes: must be a list of probe names"),
])
def test_bad_schedule_values_are_one_line_naming_the_key(tmp_path, line, message):
    bad = write_profile(tmp_path, f'[[fault]]\nkind = "slow_execute"\n{line}\n', "s.toml")
    with pytest.raises(ScenarioError) as exc:
        load_schedule(bad)
    assert str(exc.value) == f"{bad}: {message}"
    # And through the CLI: one line, exit 2, no traceback.
    res = phasegate("simulate", "history", "--schedule", bad, "--hours", "1", "--data", tmp_path / "d")
    assert res.returncode == 2 and res.stderr.strip() == f"phasegate: error: {bad}: {message}", res.stderr


def test_live_fleet_templated_in_path_query_and_header(tmp_path, sim):
    """Real HTTP: a bad yacht gets 500s, the others 200s, whichever way the tenant is sent."""
    sched = write_profile(tmp_path, '[[fault]]\nkind = "server_error"\ntenants = ["y2"]\n', "s.toml")
    srv = sim(schedule=sched)
    prof = write_profile(tmp_path, f'''
[target]
name = "fleet"
base_url = "{url(srv)}"
interval = "5s"
timeout = "2s"
tenants = ["y1", "y2", "y3"]
[[probes]]
name = "by_query"
path = "/v1/actions/list?domain=faults&yacht={{tenant}}"
[[probes]]
name = "by_header"
path = "/v1/actions/health"
headers = {{ "X-Yacht-Id" = "{{tenant}}" }}
''')
    p = load_profile(prof)
    rows = [run_probe(p.target, probe, tenant=t) for probe, t in probe_jobs(p)]
    got = {(r["probe"], r["tenant"]): r["status"] for r in rows}
    assert got == {(pr, t): 500 if t == "y2" else 200 for pr in ("by_query", "by_header") for t in ("y1", "y2", "y3")}


@pytest.mark.slow
def test_fleet_report_names_the_bad_yachts_first_in_the_pdf(tmp_path):
    data = fleet_history(tmp_path, [Fault("server_error", rate=0.2, tenants=BAD)])
    res = phasegate("report", "--profile", FLEET, "--data", data, "--phase", PHASE, "--start", START.isoformat(),
                    "--hours", "2", "--as-of", (START + timedelta(hours=2)).isoformat(), "--out", tmp_path / "r",
                    timeout=300)
    assert res.returncode == 10, res.stdout + res.stderr  # NO-GO: the 5xx are hard failures
    assert re.search(r"\[FAIL\] soft tenant_error_rate +No tenant.s error rate over target: 2 of 50 tenants", res.stdout), res.stdout
    folder = next(p for p in (tmp_path / "r" / PHASE).iterdir() if p.is_dir())
    text = "".join(pg.extract_text() for pg in PdfReader(folder / "signoff.pdf").pages)
    section = text[text.index("Per-tenant statistics"):]
    order = [section.index(f"yacht-{i:02d}") for i in range(1, 51) if f"yacht-{i:02d}" in section[:4000]]
    first_two = sorted(section.index(t) for t in BAD)
    assert first_two[1] < min(o for o in order if o not in first_two)
    doc = json.loads((folder / "signoff.json").read_text())
    assert [r["tenant"] for r in doc["tenants"]["rows"][:2]] == sorted(BAD, key=section.index)
    # Every table fits the printed page: the tenant and probe tables are the widest, and a table
    # wider than the page is cut off at its edge in the PDF (its text may still extract).
    tables, overflowing = _tables_against_page(folder / "signoff.html")
    assert tables >= 5 and overflowing == []


def _tables_against_page(html_file):
    """(<table>s laid out, [(page, table's right edge, page's right edge)] for those past the edge).
    Only <table> elements: the lab template also lays out its output areas as CSS tables."""
    from weasyprint import HTML
    from weasyprint.formatting_structure.boxes import TableBox
    doc = HTML(string=html_file.read_text(), base_url=str(html_file.parent)).render()
    count, out = 0, []
    for n, page in enumerate(doc.pages, 1):
        box = page._page_box
        right = box.content_box_x() + box.width
        for b in box.descendants():
            if isinstance(b, TableBox) and b.element is not None and b.element.tag == "table":
                count += 1
                if b.position_x + b.margin_width() > right + 0.5:
                    out.append((n, round(b.position_x + b.margin_width()), round(right)))
    return count, out


# -- many collectors: collect --shard K/N -------------------------------------------------------


def test_shards_split_the_fleet_without_overlap_or_loss():
    from phasegate.collector import shard_of
    p = load_profile(FLEET)
    every = probe_jobs(p)
    parts = [probe_jobs(p, (k, 4)) for k in range(1, 5)]
    assert sorted(map(repr, (j for part in parts for j in part))) == sorted(map(repr, every))
    assert all(len(part) > 20 for part in parts)  # 50 yachts x 4 probes, spread by the hash
    assert shard_of("yacht-07", 4) == shard_of("yacht-07", 4) and shard_of(None, 4) == 1


@pytest.mark.slow
def test_four_shard_collectors_count_what_the_simulator_answered(tmp_path, sim_proc):
    log = tmp_path / "requests.jsonl"
    base = sim_proc("--request-log", log)
    prof = write_profile(tmp_path, f'''
extends = "{FLEET}"
checks = []  # only the probes: the simulator's log is compared with them
[target]
name = "sharded"
base_url = "{base}"
interval = "1s"
timeout = "0.9s"
headers = {{}}
auth_optional = true

[[probes]]
name = "list"
path = "/v1/actions/list?domain=faults&yacht={{tenant}}"

[[probes]]
name = "health"
path = "/v1/actions/health?yacht={{tenant}}"
  [probes.extract]
  health_status = "status"

[criteria.execute_p99]
probe = "list"

[criteria.acceptance]
enabled = false
''')
    data = tmp_path / "data"
    import subprocess
    import sys
    procs = [subprocess.Popen([sys.executable, "-m", "phasegate.cli", "collect", "--profile", str(prof), "--data",
                               str(data), "--for", "4s", "--quiet", "--shard", f"{k}/4"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for k in range(1, 5)]
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    from collections import Counter
    served = Counter(tenant_of(json.loads(x)["path"], {}) for x in log.read_text().splitlines())
    t0, t1 = START - timedelta(days=3650), datetime.now(timezone.utc) + timedelta(minutes=1)
    from phasegate.analysis import analyze
    from phasegate.window import Window
    a = analyze(load_profile(prof), data, Window(t0, t1), now=t1)
    counted = {r["tenant"]: r["samples"] for r in a.tenants["rows"]}
    assert len(counted) == 50 and sum(counted.values()) >= 50 * 2 * 3
    assert counted == dict(served)
    assert [sh["shard"] for sh in a.coverage["shards"]] == ["1/4", "2/4", "3/4", "4/4"]
    assert all(sh["actual"] > 0 for sh in a.coverage["shards"])


def test_a_stopped_shard_is_a_named_coverage_gap(tmp_path):
    # Shard 3 of 4 ran the first hour only: the report names it, and cannot decide.
    p = load_profile(FLEET)
    import pyarrow as pa
    from phasegate.store import SCHEMA, read_samples, write_tables
    data = fleet_history(tmp_path, [])
    df = read_samples(data, START, START + timedelta(hours=2))
    from phasegate.collector import shard_of
    shard = [f"{shard_of(t if isinstance(t, str) else None, 4)}/4" for t in df["tenant"]]
    df["shard"] = shard
    keep = ~((df["shard"] == "3/4") & (df["ts"] >= START + timedelta(hours=1)))
    out = tmp_path / "sharded"
    write_tables(out, [pa.Table.from_pandas(df[keep], schema=SCHEMA, preserve_index=False)], "sharded")
    two_hours = write_profile(tmp_path, f'extends = "{FLEET}"\n[criteria]\nduration = "2h"\n')
    doc = signoff.run(two_hours, out, PHASE, start=START.isoformat(), hours=2,
                      as_of=(START + timedelta(hours=2)).isoformat()).doc
    shards = {sh["shard"]: sh for sh in doc["coverage"]["shards"]}
    assert shards["3/4"]["stopped"] and not shards["1/4"]["stopped"]
    assert shards["3/4"]["longest_gap_s"] == pytest.approx(3600, abs=60)
    assert doc["verdict"] == "INCONCLUSIVE" and "collector shard(s) 3/4 stopped" in doc["reason"]
    assert p.target.tenants  # the fleet the shards split


def test_a_fleet_probed_in_bursts_is_not_a_collector_down(tmp_path):
    # Every yacht's probes fire together once a minute (as `simulate history` writes them, and as
    # a live collector whose jobs start within the same 5 s keeps them): the minute between two
    # bursts is the schedule, not a collector that stopped. An outage still counts, to the second.
    healthy = fleet_run(fleet_history(tmp_path, []), hours=2.0).doc["coverage"]
    assert healthy["collector_down_s"] == 0.0 and healthy["longest_gap_cause"] == "none"
    out = tmp_path / "outage"
    out.mkdir()
    data = fleet_history(out, [Fault("outage", start_s=3600.0, end_s=3600.0 + 600)])
    cov = fleet_run(data, hours=2.0).doc["coverage"]
    assert cov["longest_gap_cause"] == "collector down (no attempts)"
    slack = 2 * 60.0  # two of the longest interval of any one yacht's probe
    assert cov["collector_down_s"] == pytest.approx(cov["longest_gap_s"] - slack, abs=0.001)
    assert 600 <= cov["longest_gap_s"] <= 600 + 60
