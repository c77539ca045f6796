"""Issue 25: a person's record is never lost. Re-rendering an approved GO, an acknowledged NO-GO
and an interim report; a plan's signature rules applied by `approve` itself; --replace keeping
the earlier approval as history. Real reports (papermill), real ssh-keygen signatures."""

import json
from datetime import timedelta

import pytest

from phasegate import act
from phasegate.rollout import load_plan
from phasegate.simulator import Fault

from conftest import phasegate
from test_rollout import H, P1, P1_END, P1_START, _key, drill, gen, status


def _report(root, plan, as_of, *more):
    res = phasegate("report", "--plan", plan, *more, "--as-of", as_of.isoformat(), "--formats", "json", cwd=root,
                    timeout=300)
    assert res.returncode in (0, 10, 12), res.stdout + res.stderr
    return res


def _folders(root):
    return sorted(p.name for p in (root / "reports" / P1).iterdir() if p.is_dir())


@pytest.mark.slow
def test_re_rendering_an_approved_go_writes_a_revision_beside_it(tmp_path):
    key, signers = _key(tmp_path)
    _key(tmp_path, "ben")
    plan = drill(tmp_path, f'require_signature = true\nallowed_signers = "{signers}"')
    gen(tmp_path, "fault-lens-staging.toml", P1, P1_START, 24)
    as_of = P1_END + timedelta(minutes=5)
    _report(tmp_path, plan, as_of, "--phase", P1)
    out = tmp_path / "reports" / P1 / "20260129T144501Z"
    # The plan requires signatures: approve refuses an unsigned approval up front, in one line.
    bad = phasegate("approve", out, "--by", "rita@example.org", cwd=tmp_path)
    assert bad.returncode == 2 and len(bad.stderr.splitlines()) == 1, bad.stderr
    assert "requires signed approvals (require_signature = true): add --key SSH_KEY" in bad.stderr
    assert not (out / "approval.json").exists()
    # A key not listed for the approver is refused before anything is written.
    wrong = phasegate("approve", out, "--by", "ben@example.org", "--key", key, cwd=tmp_path)
    assert wrong.returncode == 2 and "--key is not listed for ben@example.org" in wrong.stderr, wrong.stderr
    assert not (out / "approval.json").exists()
    ok = phasegate("approve", out, "--by", "rita@example.org", "--key", key, cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    # The hourly job and a manual re-render both run again: the signed folder is left alone.
    _report(tmp_path, plan, as_of + timedelta(minutes=30), "--phase", P1)
    _report(tmp_path, plan, as_of + timedelta(minutes=40), "--phase", P1)
    assert _folders(tmp_path) == ["20260129T144501Z", "20260129T144501Z.r2"]  # r2 itself rewritten in place
    v = phasegate("verify", out, "--allowed-signers", signers)
    assert v.returncode == 0 and "signed, key checked against the allowed signers" in v.stdout, v.stdout
    st = status(tmp_path, P1_END + timedelta(hours=1), plan=plan)
    assert "GO, approved by rita@example.org" in st.stdout and "NEXT: proceed to Phase 2" in st.stdout
    assert f"not counted: reports/{P1}/20260129T144501Z.r2: not approved yet" in st.stdout
    # --replace: ben signs anew; rita's approval is kept as history, and both verify.
    again = phasegate("approve", out, "--by", "ben@example.org", "--key", tmp_path / "ben_ed25519", cwd=tmp_path)
    assert again.returncode == 2 and "--replace records a new one" in again.stderr
    rep = phasegate("approve", out, "--by", "ben@example.org", "--key", tmp_path / "ben_ed25519", "--replace",
                    "--comment", "re-read after the incident review", cwd=tmp_path)
    assert rep.returncode == 0, rep.stderr
    history = list((out / "approvals").iterdir())
    assert len(history) == 1 and json.loads((history[0] / "approval.json").read_text())["by"] == "rita@example.org"
    v = phasegate("verify", out, "--allowed-signers", signers)
    assert v.returncode == 0, v.stdout
    assert "approval by ben@example.org" in v.stdout and "1 earlier approval(s) in approvals/ verified too" in v.stdout
    # The revision folder is a report too: re-rendering goes on beside both.
    _report(tmp_path, plan, as_of + timedelta(minutes=50), "--phase", P1)
    assert _folders(tmp_path) == ["20260129T144501Z", "20260129T144501Z.r2"]
    assert phasegate("verify", out, "--allowed-signers", signers).returncode == 0


@pytest.mark.slow
def test_an_acknowledged_no_go_and_an_interim_report_under_the_hourly_job(tmp_path):
    gen(tmp_path, "fault-lens-staging.toml", P1, P1_START, 6, [Fault("server_error", start_s=H, count=3)])
    plan = drill(tmp_path)
    # Interim reports of an open window (PENDING) rewrite one folder in place.
    gen_clean = tmp_path / "data" / P1
    assert gen_clean.is_dir()
    _report(tmp_path, plan, P1_START + timedelta(minutes=50), "--latest")
    _report(tmp_path, plan, P1_START + timedelta(minutes=55), "--latest")
    assert _folders(tmp_path) == ["20260129T144501Z"]
    doc = json.loads((tmp_path / "reports" / P1 / "20260129T144501Z" / "signoff.json").read_text())
    assert doc["verdict"] == "PENDING" and doc["as_of"] == "2026-01-28T15:40:01Z"
    # The 5xx arrive; the hourly report says NO-GO and the on-call acknowledges it.
    _report(tmp_path, plan, P1_START + timedelta(hours=2), "--latest")
    nogo = tmp_path / "reports" / P1 / "20260129T144501Z"
    assert json.loads((nogo / "signoff.json").read_text())["verdict"] == "NO-GO"
    ack = phasegate("approve", nogo, "--acknowledge", "--by", "oncall-anna", cwd=tmp_path)
    assert ack.returncode == 0, ack.stderr
    # The next hourly runs do not touch the acknowledged folder.
    _report(tmp_path, plan, P1_START + timedelta(hours=3), "--latest")
    _report(tmp_path, plan, P1_START + timedelta(hours=4), "--latest")
    assert _folders(tmp_path) == ["20260129T144501Z", "20260129T144501Z.r2"]
    v = phasegate("verify", nogo)
    assert v.returncode == 0 and "acknowledgement by oncall-anna" in v.stdout, v.stdout
    # act keeps using the acknowledgement: the newest revision is the same window's NO-GO.
    p = load_plan(tmp_path / "drill-plan.toml", tmp_path)
    proposal = act.propose(p, P1_START + timedelta(hours=4, minutes=5))
    assert proposal.kind == "rollback" and proposal.report.parent.name == "20260129T144501Z.r2"
    assert act._acknowledged(p, proposal)
    # An acknowledgement never completes a phase.
    assert "verdict NO-GO, not GO" in status(tmp_path, P1_START + timedelta(hours=4)).stdout
