"""The rollout plan and `phasegate status`: each state of phases 1-2 over simulator data."""

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from phasegate import signoff
from phasegate.errors import ProfileError
from phasegate.history import history
from phasegate.profile import load_profile
from phasegate.rollout import load_plan
from phasegate.simulator import Fault

from conftest import PROFILES, phasegate, write_profile

PLAN = PROFILES / "fault-lens-rollout.toml"
P1, P2 = "phase1-staging-canary", "phase2-staging-full"
P1_START = datetime(2026, 1, 28, 14, 45, 1, tzinfo=timezone.utc)  # the seed's Phase 1 start
P1_END = P1_START + timedelta(hours=24)
P2_START = P1_END + timedelta(minutes=15)
H = 3600.0


def gen(root: Path, profile: str, data: str, start: datetime, hours: float, faults=()):
    history(load_profile(PROFILES / profile), list(faults), start.timestamp(), start.timestamp() + hours * H,
            root / "data" / data, seed=7)


def status(root: Path, as_of: datetime):
    res = phasegate("status", "--plan", PLAN, "--as-of", as_of.isoformat(), cwd=root)
    assert res.stderr == "", res.stderr
    return res


def signed_go(root: Path):
    """Phase 1's 24 clean hours and its GO sign-off, as `phasegate report --plan` writes it."""
    gen(root, "fault-lens-staging.toml", P1, P1_START, 24)
    out = root / "reports" / P1 / "20260129T144501Z"
    so = signoff.run(None, root / "data" / P1, P1, start=P1_START.isoformat(), hours=24, out_dir=out,
                     as_of=(P1_END + timedelta(minutes=5)).isoformat(), plan=PLAN)
    assert so.doc["verdict"] == "GO", so.doc["reason"]
    return out


def test_shipped_plan_has_the_seeds_four_phases_with_tighter_production_targets():
    plan = load_plan(PLAN)
    assert [p.id for p in plan.phases] == [P1, P2, "phase3-production-canary", "phase4-production-full"]
    assert plan.phases[0].start == P1_START and all(p.start is None for p in plan.phases[1:])
    staging, prod = plan.profile(P1), plan.profile("phase3-production-canary")
    assert staging.criteria.get("error_rate").threshold == 0.01
    assert prod.criteria.get("error_rate").threshold == 0.005
    assert prod.criteria.get("execute_p99").threshold == 8000
    assert plan.phases[3].duration_s == 48 * H
    assert len(plan.profile(P2).target.tenants) == 50


def test_phase1_pending(tmp_path):
    gen(tmp_path, "fault-lens-staging.toml", P1, P1_START, 6)
    res = status(tmp_path, P1_START + timedelta(hours=6))
    assert res.returncode == 12
    lines = res.stdout.splitlines()
    assert lines[1].startswith("  1. Phase 1: Staging Canary [phase1-staging-canary]: PENDING so far, 6 h 0 m of 24 h 0 m, "
                               "18 h 0 m left")
    assert "latest report: none" in lines[2]
    assert "2. Phase 2: Staging Full Rollout [phase2-staging-full]: not started (after the previous phase's GO)" in lines[3]
    assert lines[-1] == (f"NEXT: wait 18 h 0 m (window ends 2026-01-29T14:45:01Z), then sign off: "
                         f"phasegate report --plan {PLAN} --phase {P1}")


def test_phase1_go_and_phase2_not_started_says_proceed(tmp_path):
    signed_go(tmp_path)
    res = status(tmp_path, P1_END + timedelta(minutes=30))
    assert res.returncode == 0
    assert "1. Phase 1: Staging Canary [phase1-staging-canary]: GO (signed) 2026-01-28T14:45:01Z → 2026-01-29T14:45:01Z" in res.stdout
    assert f"reports/{P1}/20260129T144501Z/signoff.json" in res.stdout
    assert res.stdout.splitlines()[-1].startswith("NEXT: proceed to Phase 2: Staging Full Rollout: enable the same three "
                                                 "flags for all staging yachts")


def test_phase1_go_and_phase2_running(tmp_path):
    signed_go(tmp_path)
    gen(tmp_path, "fault-lens-staging-fleet.toml", P2, P2_START, 3)
    res = status(tmp_path, P2_START + timedelta(hours=3))
    assert res.returncode == 12, res.stdout
    assert "GO (signed)" in res.stdout
    line = next(l for l in res.stdout.splitlines() if l.startswith("  2. "))
    assert "PENDING so far, 3 h 0 m of 24 h 0 m, 21 h 0 m left (since 2026-01-29T15:00:0" in line
    assert res.stdout.splitlines()[-1].startswith("NEXT: wait 21 h 0 m (window ends 2026-01-30T15:00:0")


def test_phase2_no_go_names_the_runbook_step(tmp_path):
    signed_go(tmp_path)
    gen(tmp_path, "fault-lens-staging-fleet.toml", P2, P2_START, 3,
        [Fault("server_error", start_s=H, end_s=H + 600, rate=0.5, tenants=("yacht-12",))])
    res = status(tmp_path, P2_START + timedelta(hours=3))
    assert res.returncode == 10
    line = next(l for l in res.stdout.splitlines() if l.startswith("  2. "))
    assert "NO-GO so far" in line and "hard requirement(s) failed: no_5xx" in line
    assert res.stdout.splitlines()[-1] == (
        "NEXT: run Scenario 1: 5xx Errors Detected: Disable feature flags immediately: set FAULT_LENS_V1_ENABLED=false "
        "in the Render dashboard; Trigger a deployment (deploy hook: POST https://api.render.com/deploy/<service-id>"
        "?key=<deploy-hook-key>) (failed: no_5xx)")


def test_a_pending_interim_report_does_not_complete_a_phase(tmp_path):
    gen(tmp_path, "fault-lens-staging.toml", P1, P1_START, 6)
    now = P1_START + timedelta(hours=6)
    signoff.run(None, tmp_path / "data" / P1, P1, start=P1_START.isoformat(), hours=24,
                out_dir=tmp_path / "reports" / P1 / "interim", as_of=now.isoformat(), plan=PLAN)
    res = status(tmp_path, now)
    assert "latest report: PENDING as of 2026-01-28T20:45:01Z" in res.stdout
    assert "2. Phase 2" in res.stdout and "not started" in res.stdout.split("2. Phase 2")[1]


@pytest.mark.slow
def test_report_latest_reports_the_phase_in_progress(tmp_path):
    signed_go(tmp_path)
    gen(tmp_path, "fault-lens-staging-fleet.toml", P2, P2_START, 2)
    as_of = (P2_START + timedelta(hours=2)).isoformat()
    res = phasegate("report", "--plan", PLAN, "--latest", "--as-of", as_of, cwd=tmp_path, timeout=300)
    assert res.returncode == 12, res.stdout + res.stderr
    assert res.stdout.startswith("VERDICT: PENDING  (phase2-staging-full, 2026-01-29T15:00:0")
    folder = next((tmp_path / "reports" / P2).iterdir())
    doc = json.loads((folder / "signoff.json").read_text())
    assert doc["plan"]["path"] == str(PLAN) and doc["rerun"].startswith(f"phasegate report --plan {PLAN} ")
    assert doc["tenants"]["count"] == 50
    assert (folder / "signoff.pdf").exists()
    # status now lists it as phase 2's latest report.
    assert f"latest report: PENDING as of {as_of.replace('+00:00', 'Z')}" in status(tmp_path, P2_START + timedelta(hours=2)).stdout


def test_report_latest_with_nothing_running_is_one_line(tmp_path):
    signed_go(tmp_path)
    res = phasegate("report", "--plan", PLAN, "--latest", "--as-of", (P1_END + timedelta(hours=1)).isoformat(), cwd=tmp_path)
    assert res.returncode == 2 and res.stdout == ""
    assert res.stderr.startswith("phasegate: error: phase2-staging-full: not started: no samples in data/phase2-staging-full")
    assert len(res.stderr.splitlines()) == 1


def test_a_missing_plan_or_a_profile_given_as_plan_is_one_line(tmp_path):
    res = phasegate("status", "--plan", tmp_path / "nope.toml")
    assert res.returncode == 2 and res.stderr == f"phasegate: error: rollout plan not found: {tmp_path / 'nope.toml'}\n"
    res = phasegate("status", "--plan", PROFILES / "fault-lens-staging.toml")
    assert res.returncode == 2 and res.stderr.endswith(
        "fault-lens-staging.toml: a profile, not a rollout plan (a plan lists [[phase]] tables with their profiles)\n")


def _plan(tmp_path, body):
    return write_profile(tmp_path, f'name = "t"\n{body}', "plan.toml")


@pytest.mark.parametrize("body,message", [
    ("", "plan.toml: phase: is required"),
    ('[[phase]]\nid = "phase1-staging-canary"\nprofile = "x.toml"\n',
     "plan.toml: phase[0].start: the first phase needs a start time (after-previous-go has no previous phase)"),
    ('[[phase]]\nid = "phase1-staging-canary"\nprofile = "P"\nstart = "yesterday"\n',
     "plan.toml: phase[0].start: must be an ISO 8601 time or 'after-previous-go', got 'yesterday'"),
    ('[[phase]]\nid = "phase1-staging-canary"\nprofile = "P"\nstart = "2026-01-01T00:00:00Z"\nduration = "a day"\n',
     "plan.toml: phase[0].duration: must be a duration like 30s, 15m or 24h, got 'a day'"),
    ('[[phase]]\nid = "phase1-staging-canary"\nprofile = "P"\nstart = "2026-01-01T00:00:00Z"\nowner = "me"\n',
     "plan.toml: phase[0].owner: unknown key"),
    ('[[phase]]\nid = "phase1-staging-canary"\nprofile = "P"\nstart = "2026-01-01T00:00:00Z"\n'
     '[phase.criteria.error_rate]\nthreshold = -1\n',
     "plan.toml → phase1-staging-canary (fault-lens-staging.toml): criteria.error_rate.threshold: must not be negative, got -1"),
    ('[[phase]]\nid = "phase9"\nprofile = "P"\nstart = "2026-01-01T00:00:00Z"\n',
     "unknown phase 'phase9' for"),
])
def test_bad_plans_name_the_key(tmp_path, body, message):
    path = _plan(tmp_path, body.replace('"P"', f'"{PROFILES / "fault-lens-staging.toml"}"'))
    with pytest.raises(ProfileError) as exc:
        load_plan(path)
    assert message in str(exc.value).replace(str(tmp_path) + "/", "")
    res = phasegate("status", "--plan", path)
    assert res.returncode == 2 and len(res.stderr.splitlines()) == 1 and message in res.stderr.replace(str(tmp_path) + "/", "")


@pytest.mark.slow
def test_rollout_summary_document_compiles_every_phase(tmp_path):
    from pypdf import PdfReader

    signed_go(tmp_path)
    gen(tmp_path, "fault-lens-staging-fleet.toml", P2, P2_START, 3,
        [Fault("server_error", start_s=H, end_s=H + 600, rate=0.5, tenants=("yacht-12",))])
    as_of = P2_START + timedelta(hours=3)
    res = phasegate("summary", "--plan", PLAN, "--as-of", as_of.isoformat(), cwd=tmp_path, timeout=300)
    assert res.returncode == 10, res.stdout + res.stderr
    assert "  Phase 1: Staging Canary: GO (signed)\n  Phase 2: Staging Full Rollout: NO-GO\n" in res.stdout
    folder = tmp_path / "reports" / "rollout" / as_of.strftime("%Y%m%dT%H%M%SZ")
    assert sorted(p.name for p in folder.iterdir()) == ["rollout.html", "rollout.ipynb", "rollout.json", "rollout.pdf"]
    doc = json.loads((folder / "rollout.json").read_text())
    assert [p["state"] for p in doc["phases"]] == ["done", "current", "waiting", "waiting"]
    assert doc["phases"][0]["report"].endswith(f"{P1}/20260129T144501Z/signoff.json")
    assert [c["id"] for c in doc["phases"][1]["failed"]] == ["no_5xx", "service_healthy", "tenant_error_rate"]
    text = "".join(pg.extract_text() for pg in PdfReader(folder / "rollout.pdf").pages)
    for needle in ("Fault Lens V1 rollout", "Phase 1: Staging Canary", "GO (signed)", "Phase 4: Production Rollout",
                   "Failed criteria", "tenant_error_rate", "Next: run Scenario 1: 5xx Errors Detected"):
        assert needle in text.replace("\n", " "), needle
    assert "Rollout timeline" in (folder / "rollout.html").read_text()  # the figure's alt text
