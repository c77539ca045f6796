"""Page 1 of the PDF decides, whatever the report holds: the verdict, the criteria that do not
hold with their times, what to do, and the sign-off block, read back from the PDF's first page."""

import json
import re

import pytest
from pypdf import PdfReader

from conftest import SIM_PROFILE, phasegate, write_profile

PHASE = "phase1-staging-canary"
END = "2026-12-03T12:00:00Z"

LONG = """
[[fault]]
kind = "server_error"
at = "5m"
for = "5m"
rate = 0.5
[[fault]]
kind = "flags_off"
at = "15m"
for = "5m"
[[fault]]
kind = "handler_loss"
at = "25m"
for = "5m"
[[fault]]
kind = "deploy"
at = "35m"
[[fault]]
kind = "slow_execute"
at = "40m"
for = "10m"
latency_s = [12, 14]
[[fault]]
kind = "count_drift"
at = "45m"
for = "5m"
"""


def _report(tmp_path, name, history_args, as_of=END, hours="1", code=None):
    data = tmp_path / name / "data"
    made = phasegate("simulate", "history", *history_args, "--hours", "1", "--end", END, "--data", data)
    assert made.returncode == 0, made.stderr
    out = tmp_path / name / "out"
    res = phasegate("report", "--profile", SIM_PROFILE, "--data", data, "--phase", PHASE, "--start",
                    "2026-12-03T11:00:00Z", "--hours", hours, "--as-of", as_of, "--out", out, timeout=300)
    if code is not None:
        assert res.returncode == code, res.stdout + res.stderr
    # Progress on stderr, each step once done, with its time; the summary on stdout.
    lines = res.stderr.splitlines()
    assert len(lines) == 2 and re.fullmatch(r"phasegate: notebook ran in \d+\.\d s \(pulls, analysis, figures\): "
                                            r"(GO|NO-GO|REVIEW|PENDING|INCONCLUSIVE)", lines[0]), res.stderr
    assert re.fullmatch(r"phasegate: exported html, pdf in \d+\.\d s", lines[1]), res.stderr
    folder, = (p for p in (out / PHASE).iterdir() if p.is_dir())
    doc = json.loads((folder / "signoff.json").read_text())
    pdf = PdfReader(folder / "signoff.pdf")
    return doc, pdf, pdf.pages[0].extract_text()


def _decides(doc, pdf, page1):
    """Everything a reviewer decides on is on page 1, in order, with the footer and title kept."""
    assert f"VERDICT: {doc['verdict']}" in page1
    assert doc["reason"][:60] in " ".join(page1.split())
    flat = " ".join(page1.split())
    open_ = [c for c in doc["criteria"] if c["state"] in ("failed", "inconclusive", "pending")]
    open_.sort(key=lambda c: (c["state"] != "failed", c["kind"] != "hard"))  # failures first, hard ones first
    shown = open_[:6]
    for c in shown:
        assert c["title"] in flat, c["id"]
        if c.get("first"):
            assert c["first"] in flat, c["id"]
    if len(open_) > 6:
        assert f"{len(open_) - 6} more do not hold" in flat
    for r in doc["runbook"][:3]:
        assert r["title"] in flat
    # The sign-off block, whole, after the criteria.
    assert flat.index("Sign-off") > flat.index("Criteria that do not hold")
    assert "Profile SHA-256" in flat and doc["provenance"]["profile_sha256"] in flat and "Signature" in flat
    assert f"Page 1 of {len(pdf.pages)}" in flat
    assert pdf.metadata.title == f"Phase sign-off: {PHASE} — {doc['verdict']}"


@pytest.mark.slow
def test_page_one_decides_for_each_verdict_and_for_a_long_no_go(tmp_path):
    doc, pdf, page1 = _report(tmp_path, "no-go", ["--scenario", "server-errors"], code=10)
    assert doc["verdict"] == "NO-GO" and [r["criterion"] for r in doc["runbook"]] == ["no_5xx", "service_healthy"]
    _decides(doc, pdf, page1)
    assert "Scenario 1: 5xx Errors Detected" in page1 and "Scenario 3: Service Unhealthy" in page1

    doc, pdf, page1 = _report(tmp_path, "review", ["--scenario", "slow-execute"])
    assert doc["verdict"] == "REVIEW", doc["reason"]
    assert "so far" not in doc["reason"]  # the window is closed: its evidence is whole
    _decides(doc, pdf, page1)

    doc, pdf, page1 = _report(tmp_path, "pending", ["--scenario", "healthy"], hours="24")
    assert doc["verdict"] == "PENDING"
    _decides(doc, pdf, page1)

    sched = write_profile(tmp_path, LONG, "long.toml")
    doc, pdf, page1 = _report(tmp_path, "long", ["--schedule", sched], code=10)
    failed = [c for c in doc["criteria"] if c["state"] == "failed"]
    assert len(failed) >= 6 and len(doc["runbook"]) >= 3
    _decides(doc, pdf, page1)
    # What a failure found is on page 1 too: the anomaly names its deployment.
    assert "dep-d6a2k8pqr31c73abcd10" in " ".join(page1.split())
