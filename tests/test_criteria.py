"""Criteria written as data in a profile: metrics over filtered samples, per group, PromQL queries
and acceptance commands, judged by the same honest rules as the seed's."""

import json
from datetime import datetime, timedelta, timezone

import pytest
from pypdf import PdfReader

from phasegate import signoff
from phasegate.history import history
from phasegate.profile import load_profile
from phasegate.simulator import Fault

from conftest import PROFILES, SIM_PROFILE, phasegate, write_profile

START = datetime(2026, 1, 28, 14, 45, 1, tzinfo=timezone.utc)
PHASE = "phase1-staging-canary"
H = 3600.0


# The criterion both acceptance-command tests judge the command by.
ACCEPTANCE_HOLDS = '''
[criteria.acceptance_holds]
title = "Acceptance command passes"
kind = "hard"
metric = "errors"
where = { probe = "acceptance" }
max = 0
'''


def list_p95(tmp_path, kind):
    return write_profile(tmp_path, f'''extends = "{SIM_PROFILE}"
[criteria.list_p95]
title = "List endpoint P95 under 1 ms"
kind = "{kind}"
metric = "p95_ms"
where = {{ probe = "list" }}
max = 1
''', f"list-p95-{kind}.toml")


@pytest.fixture(scope="module")
def day(tmp_path_factory):
    data = tmp_path_factory.mktemp("day") / "data"
    history(load_profile(SIM_PROFILE), [], START.timestamp(), START.timestamp() + 24 * H, data, seed=5)
    return data


@pytest.mark.slow
def test_a_soft_latency_criterion_gives_review_named_everywhere(tmp_path, day):
    res = phasegate("report", "--profile", list_p95(tmp_path, "soft"), "--data", day, "--phase", PHASE,
                    "--start", START.isoformat(), "--hours", "24", "--as-of", (START + timedelta(hours=25)).isoformat(),
                    "--out", tmp_path / "r", timeout=300)
    assert res.returncode == 11, res.stdout + res.stderr  # REVIEW
    line = next(ln for ln in res.stdout.splitlines() if "] soft list_p95" in ln)
    assert line.startswith("  [FAIL] soft list_p95") and "List endpoint P95 under 1 ms" in line
    folder = next(p for p in (tmp_path / "r" / PHASE).iterdir() if p.is_dir())
    doc = json.loads((folder / "signoff.json").read_text())
    c = next(c for c in doc["criteria"] if c["id"] == "list_p95")
    assert c["title"] == "List endpoint P95 under 1 ms" and c["passed"] is False and c["kind"] == "soft"
    assert c["measured"] > 1 and c["unit"] == "ms"
    text = " ".join(p.extract_text() for p in PdfReader(folder / "signoff.pdf").pages)
    assert "list_p95" in text and "List endpoint P95 under 1 ms" in text.replace("\n", " ")


def test_the_same_criterion_hard_gives_no_go(tmp_path, day):
    doc = signoff.run(list_p95(tmp_path, "hard"), day, PHASE, start=START.isoformat(), hours=24,
                      as_of=(START + timedelta(hours=25)).isoformat()).doc
    assert doc["verdict"] == "NO-GO" and doc["reason"] == "hard requirement(s) failed: list_p95"


def test_per_tenant_criterion_names_exactly_the_bad_yachts(tmp_path):
    fleet = PROFILES / "fault-lens-staging-fleet.toml"
    bad = ("yacht-07", "yacht-31")
    start = datetime(2026, 1, 29, 15, 0, tzinfo=timezone.utc)
    data = tmp_path / "fleet"
    history(load_profile(fleet), [Fault("server_error", rate=0.2, tenants=bad, probes=("list",))],
            start.timestamp(), start.timestamp() + 2 * H, data, seed=3)
    prof = write_profile(tmp_path, f'''extends = "{fleet}"
[criteria.list_5xx_per_yacht]
title = "No yacht sees a 5xx on the list endpoint"
kind = "hard"
metric = "http_5xx"
where = {{ probe = "list" }}
per = "tenant"
max = 0
''')
    doc = signoff.run(prof, data, "phase2-staging-full", start=start.isoformat(), hours=2,
                      as_of=(start + timedelta(hours=2)).isoformat()).doc
    c = next(c for c in doc["criteria"] if c["id"] == "list_5xx_per_yacht")
    assert c["passed"] is False and sorted(c["groups"]) == list(bad)
    assert "2 of 50 tenants fail: yacht-07:" in c["detail"] and "yacht-31:" in c["detail"]


@pytest.mark.slow
def test_a_failing_acceptance_command_fails_its_criterion_with_its_output(tmp_path, sim_proc):
    base = sim_proc()
    count = tmp_path / "runs"
    script = (f'n=$(cat {count} 2>/dev/null || echo 0); echo $((n+1)) > {count}; '
              'if [ "$n" -lt 3 ]; then echo "checking /v1/actions/list"; '
              'echo "fail-closed: /list answered 200 while FAULT_LENS_V1_ENABLED=false"; exit 1; fi; echo holds')
    prof = write_profile(tmp_path, f'''extends = "{SIM_PROFILE}"
[target]
interval = "1s"
timeout = "0.8s"

[[checks]]
name = "acceptance"
command = ["sh", "-c", {json.dumps(script)}]
interval = "1s"
timeout = "0.9s"

''' + ACCEPTANCE_HOLDS)
    data = tmp_path / "data"
    t0 = datetime.now(timezone.utc) - timedelta(seconds=1)
    res = phasegate("collect", "--profile", prof, "--base-url", base, "--data", data, "--for", "6s", "--quiet")
    assert res.returncode == 0, res.stderr
    assert int(count.read_text()) >= 5  # it ran on its schedule, beside the probes
    res = phasegate("report", "--profile", prof, "--data", data, "--phase", PHASE, "--start", t0.isoformat(),
                    "--hours", "1", "--out", tmp_path / "r", timeout=300)
    assert res.returncode == 10, res.stdout + res.stderr  # NO-GO: a hard criterion failed
    folder = next(p for p in (tmp_path / "r" / PHASE).iterdir() if p.is_dir())
    doc = json.loads((folder / "signoff.json").read_text())
    c = next(c for c in doc["criteria"] if c["id"] == "acceptance_holds")
    assert c["passed"] is False and c["measured"] == 3
    ev = [e for e in doc["evidence"] if e["probe"] == "acceptance" and e["kind"] == "failure"]
    assert ev and ev[0]["outcome"] == "command_failed" and ev[0]["error_code"] == "exit 1"
    assert "while FAULT_LENS_V1_ENABLED=false" in ev[0]["response"]["output_tail"]
    text = " ".join(p.extract_text() for p in PdfReader(folder / "signoff.pdf").pages).replace("\n", " ")
    assert "fail-closed: /list answered 200 while FAULT_LENS_V1_ENABLED=false" in text
    # The probes' own figures do not count the command: it is judged by its criterion alone.
    assert "acceptance" not in doc["probes"]


@pytest.mark.parametrize("scenario,mode,code", [("healthy", "fail-closed", 0), ("flags-off", "fail-closed", 0),
                                               ("healthy", "signed-flow", 0), ("signed-leak", "signed-flow", 1)])
def test_the_shipped_acceptance_script_against_the_simulator(sim_proc, scenario, mode, code):
    import os
    import subprocess
    import sys
    from conftest import ROOT
    base = sim_proc("--scenario", scenario)
    res = subprocess.run([sys.executable, "checks/acceptance.py", mode], cwd=ROOT, capture_output=True, text=True,
                         env={"PATH": os.environ["PATH"], "PHASEGATE_BASE_URL": base}, timeout=60)
    assert res.returncode == code, res.stdout + res.stderr


def test_an_acceptance_command_failing_for_ten_minutes_of_a_day_fails_its_criterion(tmp_path):
    # The same over a whole simulated day: the check fails (exit 1) from 10:00 to 10:10 into it.
    prof = write_profile(tmp_path, f'''extends = "{SIM_PROFILE}"
[[checks]]
name = "acceptance"
command = ["python3", "checks/acceptance.py", "fail-closed"]
interval = "1m"
timeout = "30s"

''' + ACCEPTANCE_HOLDS)
    data = tmp_path / "data"
    history(load_profile(prof), [Fault("command_failed", start_s=10 * H, end_s=10 * H + 600, probes=("acceptance",))],
            START.timestamp(), START.timestamp() + 24 * H, data, seed=5)
    doc = signoff.run(prof, data, PHASE, start=START.isoformat(), hours=24,
                      as_of=(START + timedelta(hours=25)).isoformat()).doc
    c = next(c for c in doc["criteria"] if c["id"] == "acceptance_holds")
    assert c["passed"] is False and c["measured"] == 10 and doc["verdict"] == "NO-GO"
    (ev,) = [e for e in doc["evidence"] if e["probe"] == "acceptance"]
    assert ev["ts"] == "2026-01-29T00:45:01Z" and "DOES NOT HOLD" in ev["response"]["output_tail"]
    from phasegate.present import evidence
    assert "DOES NOT HOLD" in evidence(doc) and "exit status: 1" in evidence(doc)
