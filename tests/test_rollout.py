"""The rollout plan and `phasegate status`: each state of phases 1-2 over simulator data."""

import json
import os
import re
import subprocess
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from phasegate import signoff
from phasegate.approval import approve
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


def drill(root: Path, extra: str = "") -> Path:
    """The shipped plan as a drill (`allow_simulated = true`): the simulator's histories may
    complete its phases. Same profiles, so the same resolved hashes. Its phases are promoted by
    hand here (their [phase.promote] tables dropped): a phase starts at its first probe after the
    previous GO (tests/test_rollout_drill.py runs act's promotions)."""
    path = root / "drill-plan.toml"
    if not path.exists() or extra:
        text = PLAN.read_text().replace('profile = "', f'profile = "{PROFILES}/')
        text = re.sub(r"\n  \[phase\.promote\]\n(  [^\n]*\n)+", "\n", text)
        path.write_text(f"allow_simulated = true\n{extra}\n" + text)
    return path


def promoting_drill(root: Path) -> Path:
    """The shipped plan as a drill with its [phase.promote] tables kept: act promotes its phases."""
    path = root / "plan.toml"
    path.write_text("allow_simulated = true\n" + PLAN.read_text().replace('profile = "', f'profile = "{PROFILES}/'))
    return path


def status(root: Path, as_of: datetime, plan=None):
    res = phasegate("status", "--plan", plan or drill(root), "--as-of", as_of.isoformat(), cwd=root)
    assert res.stderr == "", res.stderr
    return res


def go_report(root: Path, plan=None) -> Path:
    """Phase 1's 24 clean hours and its GO sign-off, as `phasegate report --plan` writes it."""
    gen(root, "fault-lens-staging.toml", P1, P1_START, 24)
    out = root / "reports" / P1 / "20260129T144501Z"
    so = signoff.run(None, root / "data" / P1, P1, start=P1_START.isoformat(), hours=24, out_dir=out,
                     as_of=(P1_END + timedelta(minutes=5)).isoformat(), plan=plan or drill(root))
    assert so.doc["verdict"] == "GO", so.doc["reason"]
    return out


def signed_go(root: Path):
    """go_report, approved by a reviewer (unsigned)."""
    out = go_report(root)
    approve(out, by="Rita Reviewer", now=P1_END + timedelta(minutes=10))
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
                         f"phasegate report --plan {drill(tmp_path)} --phase {P1}")


def test_phase1_go_and_phase2_not_started_says_proceed(tmp_path):
    signed_go(tmp_path)
    res = status(tmp_path, P1_END + timedelta(minutes=30))
    assert res.returncode == 0
    assert ("1. Phase 1: Staging Canary [phase1-staging-canary]: GO, approved by Rita Reviewer at 2026-01-29T14:55:01Z "
            "(unsigned) 2026-01-28T14:45:01Z → 2026-01-29T14:45:01Z [DRILL]") in res.stdout
    assert f"reports/{P1}/20260129T144501Z/signoff.json" in res.stdout
    assert res.stdout.splitlines()[-1].startswith("NEXT: proceed to Phase 2: Staging Full Rollout: enable the same three "
                                                 "flags for all staging yachts")


def test_a_phase_with_promotion_steps_starts_with_its_promotion(tmp_path):
    # The shipped plan promotes Phase 2 through act: probes after Phase 1's GO watch the old state.
    plan = promoting_drill(tmp_path)
    signed_go(tmp_path)
    gen(tmp_path, "fault-lens-staging-fleet.toml", P2, P2_START, 3)
    res = status(tmp_path, P2_START + timedelta(hours=3), plan=plan)
    line = next(l for l in res.stdout.splitlines() if l.startswith("  2. "))
    assert "not started: awaiting its promotion by phasegate act" in line, res.stdout
    assert res.stdout.splitlines()[-1].startswith(f"NEXT: proceed to Phase 2: Staging Full Rollout: phasegate act --plan "
                                                 f"{plan} --execute (its promotion: set FAULT_LENS_")


def test_phase1_go_and_phase2_running(tmp_path):
    signed_go(tmp_path)
    gen(tmp_path, "fault-lens-staging-fleet.toml", P2, P2_START, 3)
    res = status(tmp_path, P2_START + timedelta(hours=3))
    assert res.returncode == 12, res.stdout
    assert "GO, approved by Rita Reviewer" in res.stdout
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
                out_dir=tmp_path / "reports" / P1 / "interim", as_of=now.isoformat(), plan=drill(tmp_path))
    res = status(tmp_path, now)
    assert "latest report: PENDING as of 2026-01-28T20:45:01Z" in res.stdout
    assert "2. Phase 2" in res.stdout and "not started" in res.stdout.split("2. Phase 2")[1]


@pytest.mark.slow
def test_report_latest_reports_the_phase_in_progress(tmp_path):
    signed_go(tmp_path)
    gen(tmp_path, "fault-lens-staging-fleet.toml", P2, P2_START, 2)
    as_of = (P2_START + timedelta(hours=2)).isoformat()
    plan = drill(tmp_path)
    res = phasegate("report", "--plan", plan, "--latest", "--as-of", as_of, cwd=tmp_path, timeout=300)
    assert res.returncode == 12, res.stdout + res.stderr
    assert res.stdout.startswith("VERDICT: PENDING  (phase2-staging-full, 2026-01-29T15:00:0")
    assert res.stdout.splitlines()[0].endswith("[DRILL: simulated samples, a drill plan]")
    folder = next(p for p in (tmp_path / "reports" / P2).iterdir() if p.is_dir())
    doc = json.loads((folder / "signoff.json").read_text())
    assert doc["plan"]["path"] == str(plan) and doc["rerun"].startswith(f"phasegate report --plan {plan} ")
    assert doc["mode"] == "drill" and doc["provenance"]["command"].startswith(f"phasegate report --plan {plan} --latest")
    assert doc["tenants"]["count"] == 50
    assert (folder / "signoff.pdf").exists()
    # status now lists it as phase 2's latest report.
    assert f"latest report: PENDING as of {as_of.replace('+00:00', 'Z')}" in status(tmp_path, P2_START + timedelta(hours=2)).stdout


def test_report_latest_with_nothing_running_is_one_line(tmp_path):
    signed_go(tmp_path)
    res = phasegate("report", "--plan", drill(tmp_path), "--latest", "--as-of", (P1_END + timedelta(hours=1)).isoformat(),
                    cwd=tmp_path)
    # Between phases an hourly job has nothing to report: one line, exit 0, nothing written.
    assert res.returncode == 0 and res.stderr == "", res.stderr
    assert res.stdout.startswith("no phase of Fault Lens V1 rollout in progress to report: not started: no samples "
                                 "in data/phase2-staging-full") and len(res.stdout.splitlines()) == 1
    assert "next: proceed to Phase 2: Staging Full Rollout" in res.stdout
    assert not (tmp_path / "reports" / "phase2-staging-full").exists()


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
     "plan.toml: phase[0].start: the first phase needs a start time or 'first-sample' (after-previous-go has no previous phase)"),
    ('[[phase]]\nid = "phase1-staging-canary"\nprofile = "P"\nstart = "yesterday"\n',
     "plan.toml: phase[0].start: must be an ISO 8601 time, 'first-sample' or 'after-previous-go', got 'yesterday'"),
    ('[[phase]]\nid = "phase1-staging-canary"\nprofile = "P"\nstart = "2026-01-01T00:00:00Z"\n'
     '[[phase]]\nid = "phase2-staging-full"\nprofile = "P"\nstart = "first-sample"\n',
     "plan.toml: phase[1].start: 'first-sample' is for the first phase; later ones start after-previous-go"),
    ('[[phase]]\nid = "phase1-staging-canary"\nprofile = "P"\nstart = "2026-01-01T00:00:00Z"\n'
     '[phase.promote]\ndeploy_hook_env = "HOOK"\n',
     "plan.toml: phase[0].promote.deploy_hook_env: needs deploy = true"),
    ('[[phase]]\nid = "phase1-staging-canary"\nprofile = "P"\nstart = "2026-01-01T00:00:00Z"\nduration = "a day"\n',
     "plan.toml: phase[0].duration: must be a duration like 30s, 15m or 24h, got 'a day'"),
    ('[[phase]]\nid = "phase1-staging-canary"\nprofile = "P"\nstart = "2026-01-01T00:00:00Z"\nowner = "me"\n',
     "plan.toml: phase[0].owner: unknown key"),
    ('[[phase]]\nid = "phase1-staging-canary"\nprofile = "P"\nstart = "2026-01-01T00:00:00Z"\n'
     '[phase.criteria.error_rate]\nthreshold = -1\n',
     "plan.toml → phase1-staging-canary (fault-lens-staging.toml): criteria.error_rate.threshold: must not be negative, got -1"),
    ('[[phase]]\nid = "phase9"\nprofile = "P"\nstart = "2026-01-01T00:00:00Z"\n',
     "unknown phase 'phase9' for"),
    ('max_report_age = "soon"\n[[phase]]\nid = "phase1-staging-canary"\nprofile = "P"\nstart = "2026-01-01T00:00:00Z"\n',
     "plan.toml: max_report_age: must be a duration like 30s, 15m or 24h, got 'soon'"),
    ('[[phase]]\nid = "phase1-staging-canary"\nprofile = "P"\nstart = "2026-01-01T00:00:00Z"\n'
     '[phase.promote]\nset_env = { FLAG = "on" }\nverify = { probe = "lst", expect_status = [200] }\n',
     "plan.toml: phase[0].promote.verify.probe: unknown probe 'lst'; known: execute, health, list, suggestions"),
    ('[[phase]]\nid = "phase1-staging-canary"\nprofile = "P"\nstart = "2026-01-01T00:00:00Z"\n'
     '[phase.promote]\nrestart = true\n',
     "plan.toml: phase[0].promote.restart: unknown key"),
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
    res = phasegate("summary", "--plan", drill(tmp_path), "--as-of", as_of.isoformat(), cwd=tmp_path, timeout=300)
    assert res.returncode == 10, res.stdout + res.stderr
    assert ("  Phase 1: Staging Canary: GO, approved by Rita Reviewer at 2026-01-29T14:55:01Z (unsigned) [DRILL]\n"
            "  Phase 2: Staging Full Rollout: NO-GO\n") in res.stdout
    folder = tmp_path / "reports" / "rollout" / as_of.strftime("%Y%m%dT%H%M%SZ")
    assert sorted(p.name for p in folder.iterdir()) == ["rollout.html", "rollout.ipynb", "rollout.json", "rollout.pdf"]
    doc = json.loads((folder / "rollout.json").read_text())
    assert [p["state"] for p in doc["phases"]] == ["done", "current", "waiting", "waiting"]
    assert doc["phases"][0]["report"].endswith(f"{P1}/20260129T144501Z/signoff.json")
    assert [c["id"] for c in doc["phases"][1]["failed"]] == ["no_5xx", "service_healthy", "tenant_error_rate"]
    text = "".join(pg.extract_text() for pg in PdfReader(folder / "rollout.pdf").pages)
    for needle in ("Fault Lens V1 rollout", "Phase 1: Staging Canary", "approved by Rita Reviewer", "Phase 4: Production Rollout",
                   "Failed criteria", "tenant_error_rate", "Next: run Scenario 1: 5xx Errors Detected"):
        assert needle in text.replace("\n", " "), needle
    assert "Rollout timeline" in (folder / "rollout.html").read_text()  # the figure's alt text


# -- approval: only an approved GO of the plan's phase, window and profile completes it --------


def test_a_go_report_without_approval_does_not_complete_the_phase(tmp_path):
    out = go_report(tmp_path)
    res = status(tmp_path, P1_END + timedelta(minutes=30))
    assert "NEXT: proceed to Phase 2" not in res.stdout
    rel = out.relative_to(tmp_path)  # as the plan names it: relative to the working directory
    assert f"not counted: {rel}: not approved yet" in res.stdout
    assert res.stdout.splitlines()[-1] == (f"NEXT: review the report and approve it: phasegate approve {rel} "
                                           f"--plan {drill(tmp_path)} --by NAME [--key SSH_KEY]")


def test_simulated_samples_complete_no_phase_of_a_real_plan(tmp_path):
    out = go_report(tmp_path, plan=PLAN)  # the shipped plan: not a drill
    approve(out, by="Rita Reviewer")
    res = status(tmp_path, P1_END + timedelta(minutes=30), plan=PLAN)
    assert "NEXT: proceed to Phase 2" not in res.stdout and "approved by" not in res.stdout.split("not counted")[0]
    assert "simulated samples (only a drill plan, allow_simulated = true, accepts them)" in res.stdout


def test_a_report_over_another_window_or_profile_does_not_count(tmp_path):
    gen(tmp_path, "fault-lens-staging.toml", P1, P1_START, 25)
    plan = drill(tmp_path)
    late = tmp_path / "reports" / P1 / "late"
    signoff.run(None, tmp_path / "data" / P1, P1, start=(P1_START + timedelta(hours=1)).isoformat(), hours=24,
                out_dir=late, as_of=(P1_END + timedelta(hours=1)).isoformat(), plan=plan)
    other = tmp_path / "reports" / P1 / "other"
    signoff.run(PROFILES / "fault-lens-staging.toml", tmp_path / "data" / P1, P1, start=P1_START.isoformat(), hours=24,
                out_dir=other, as_of=(P1_END + timedelta(hours=1)).isoformat())
    for folder in (late, other):
        assert json.loads((folder / "signoff.json").read_text())["verdict"] == "GO"
        approve(folder, by="Rita Reviewer")
    res = status(tmp_path, P1_END + timedelta(hours=1))
    assert "is not the phase's complete window (2026-01-28T14:45:01Z → 2026-01-29T14:45:01Z)" in res.stdout
    assert f"not counted: {other.relative_to(tmp_path)}: made with another profile" in res.stdout
    assert "NEXT: proceed to Phase 2" not in res.stdout


def _key(tmp_path, name="rita"):
    import shutil
    if shutil.which("ssh-keygen") is None:
        pytest.skip("needs ssh-keygen: apt-get install -y openssh-client (.ci/run installs it)")
    key = tmp_path / f"{name}_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", key], check=True)
    signers = tmp_path / "allowed_signers"
    with open(signers, "a") as fh:
        fh.write(f"{name}@example.org {(tmp_path / f'{name}_ed25519.pub').read_text()}")
    return key, signers


@pytest.mark.slow
def test_signed_approval_verifies_and_a_changed_byte_is_named_and_refused(tmp_path):
    key, signers = _key(tmp_path)
    gen(tmp_path, "fault-lens-staging.toml", P1, P1_START, 24)
    as_of = (P1_END + timedelta(minutes=5)).isoformat()
    rep = phasegate("report", "--plan", drill(tmp_path), "--phase", P1, "--as-of", as_of, cwd=tmp_path, timeout=300)
    assert rep.returncode == 0, rep.stdout + rep.stderr
    out = tmp_path / "reports" / P1 / "20260129T144501Z"
    res = phasegate("approve", out, "--by", "rita@example.org", "--comment", "read it all", "--key", key)
    assert res.returncode == 0, res.stderr
    assert "approval of GO report" in res.stdout and "signed with SHA256:" in res.stdout
    a = json.loads((out / "approval.json").read_text())
    assert sorted(a["files"]) == ["signoff.html", "signoff.ipynb", "signoff.json", "signoff.pdf"]
    assert a["by"] == "rita@example.org" and a["comment"] == "read it all" and (out / "approval.json.sig").exists()
    ok = phasegate("verify", out, "--allowed-signers", signers)
    assert ok.returncode == 0 and "signed, key checked against the allowed signers" in ok.stdout, ok.stdout + ok.stderr
    strict = drill(tmp_path, f'require_signature = true\nallowed_signers = "{signers}"')
    st = status(tmp_path, P1_END + timedelta(minutes=30), plan=strict)
    assert "GO, approved by rita@example.org" in st.stdout and "(signed)" in st.stdout
    assert "NEXT: proceed to Phase 2" in st.stdout
    # One byte changed in the PDF, then in signoff.json: verify names the file, status refuses.
    for name in ("signoff.pdf", "signoff.json"):
        f = out / name
        original = f.read_bytes()
        at = original.index(b'"reason": "') + 12 if name == "signoff.json" else 100  # still valid JSON
        f.write_bytes(original[:at] + bytes([original[at] ^ 32]) + original[at + 1:])
        bad = phasegate("verify", out)
        assert bad.returncode == 1 and f"{name} changed after the approval" in bad.stdout, bad.stdout
        st = status(tmp_path, P1_END + timedelta(minutes=30), plan=strict)
        assert f"refused: {name} changed after the approval" in st.stdout and "NEXT: proceed to Phase 2" not in st.stdout
        f.write_bytes(original)
    # A signature by a key that is not the approver's fails against the allowed signers.
    other, _ = _key(tmp_path / "..", name=f"mallory{os.getpid()}")
    (out / "approval.json.sig").unlink()
    subprocess.run(["ssh-keygen", "-Y", "sign", "-f", other, "-n", "phasegate", out / "approval.json"],
                   check=True, capture_output=True)
    bad = phasegate("verify", out, "--allowed-signers", signers)
    assert bad.returncode == 1 and "bad signature on approval.json" in bad.stdout, bad.stdout


def test_unsigned_approval_is_shown_as_such_and_a_signature_plan_refuses_it(tmp_path):
    out = signed_go(tmp_path)
    v = phasegate("verify", out)
    assert v.returncode == 0 and "approval by Rita Reviewer at 2026-01-29T14:55:01Z (unsigned)" in v.stdout
    _key_path, signers = _key(tmp_path)
    strict = drill(tmp_path, f'require_signature = true\nallowed_signers = "{signers}"')
    st = status(tmp_path, P1_END + timedelta(minutes=30), plan=strict)
    assert "the approval is unsigned and the plan requires a signature" in st.stdout


def test_approving_anything_but_go_needs_acknowledge_and_never_completes(tmp_path):
    gen(tmp_path, "fault-lens-staging.toml", P1, P1_START, 24, [Fault("server_error", start_s=H, count=1)])
    out = tmp_path / "reports" / P1 / "nogo"
    signoff.run(None, tmp_path / "data" / P1, P1, start=P1_START.isoformat(), hours=24, out_dir=out,
                as_of=(P1_END + timedelta(minutes=5)).isoformat(), plan=drill(tmp_path))
    res = phasegate("approve", out, "--by", "Rita")
    assert res.returncode == 2 and "verdict is NO-GO, not GO: only a GO can be approved" in res.stderr
    res = phasegate("approve", out, "--by", "Rita", "--acknowledge")
    assert res.returncode == 0 and res.stdout.startswith("acknowledgement of NO-GO report")
    assert "verdict NO-GO, not GO" in status(tmp_path, P1_END + timedelta(minutes=30)).stdout
    assert phasegate("verify", tmp_path / "nope").returncode == 2
    assert phasegate("approve", out, "--by", "Rita", "--acknowledge").returncode == 2  # already approved


def test_report_latest_before_any_evidence_is_inconclusive_in_one_line(tmp_path):
    # Phase 1 has begun but its collector has written nothing: the hourly job says so, exit 13.
    res = phasegate("report", "--plan", drill(tmp_path), "--latest", "--as-of", (P1_START + timedelta(hours=1)).isoformat(),
                    cwd=tmp_path)
    assert res.returncode == 13 and res.stderr == "", res.stdout + res.stderr
    assert res.stdout.startswith("INCONCLUSIVE: no evidence yet for phase1-staging-canary since 2026-01-28T14:45:01Z")
    assert len(res.stdout.splitlines()) == 1


def test_a_promoted_window_starts_after_the_second_its_deploy_went_live(tmp_path):
    # Reports write windows to the second. The drill once failed when the act's deploy went live
    # in the same second as the first probe after the act: the truncated start took the deploy
    # into the window as an unexpected one. The window starts at the next whole second's probe.
    from phasegate import rollout
    from phasegate.store import write_samples
    from phasegate.window import iso

    plan = promoting_drill(tmp_path)
    ph = load_plan(plan).phases[1]
    t = datetime(2026, 12, 4, 8, 13, 28, tzinfo=timezone.utc).timestamp()
    action = {"source": "action", "probe": "act.deploy", "outcome": "ok", "request_id": "act-x:1",
              "evidence": json.dumps({"kind": "promote", "by": "anna", "last": True})}
    probe = {"source": "probe", "probe": "list", "outcome": "ok", "status": 200}
    write_samples(ph.data, [{**action, "ts": t + 0.4}, {**probe, "ts": t + 0.7, "request_id": "a"},
                            {**probe, "ts": t + 1.2, "request_id": "b"}], "x")
    now = datetime.fromtimestamp(t + 5, timezone.utc)
    start, runs, _ = rollout.phase_start(ph, datetime.fromtimestamp(t - 60, timezone.utc), now)
    assert [r.kind for r in runs] == ["promote"]
    assert start.timestamp() == t + 1.2 and iso(start) == "2026-12-04T08:13:29Z"  # not 08:13:28Z: the deploy's second
