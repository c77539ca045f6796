"""Page 1 of the PDF decides, whatever the report holds: the verdict, the criteria that do not
hold with their times, what to do, and the sign-off block, read back from the PDF's first page."""

import itertools
import json
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET

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
    return doc, pdf, pdf.pages[0].extract_text(), folder / "signoff.pdf"


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
    # Then a page break: the next section starts page 2, however little page 1 holds.
    assert pdf.pages[1].extract_text().lstrip().startswith("Decision criteria"), pdf.pages[1].extract_text()[:200]


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    """One report of each verdict and a long NO-GO (many failed criteria, every runbook scenario)."""
    tmp = tmp_path_factory.mktemp("page-one")
    sched = write_profile(tmp, LONG, "long.toml")
    return {"no-go": _report(tmp, "no-go", ["--scenario", "server-errors"], code=10),
            "review": _report(tmp, "review", ["--scenario", "slow-execute"]),
            "pending": _report(tmp, "pending", ["--scenario", "healthy"], hours="24"),
            "long": _report(tmp, "long", ["--schedule", sched], code=10)}


@pytest.mark.slow
def test_page_one_decides_for_each_verdict_and_for_a_long_no_go(reports):
    doc, pdf, page1, _ = reports["no-go"]
    assert doc["verdict"] == "NO-GO" and [r["criterion"] for r in doc["runbook"]] == ["no_5xx", "service_healthy"]
    _decides(doc, pdf, page1)
    assert "Scenario 1: 5xx Errors Detected" in page1 and "Scenario 3: Service Unhealthy" in page1

    doc, pdf, page1, _ = reports["review"]
    assert doc["verdict"] == "REVIEW", doc["reason"]
    assert "so far" not in doc["reason"]  # the window is closed: its evidence is whole
    _decides(doc, pdf, page1)

    doc, pdf, page1, _ = reports["pending"]
    assert doc["verdict"] == "PENDING"
    _decides(doc, pdf, page1)

    doc, pdf, page1, _ = reports["long"]
    failed = [c for c in doc["criteria"] if c["state"] == "failed"]
    assert len(failed) >= 6 and len(doc["runbook"]) >= 3
    _decides(doc, pdf, page1)
    # What a failure found is on page 1 too: the anomaly names its deployment.
    assert "dep-d6a2k8pqr31c73abcd10" in " ".join(page1.split())


def _lines(pdf_path):
    """Page 1's text lines with their boxes (points, origin top left), as poppler lays them out."""
    xml = subprocess.run(["pdftotext", "-bbox-layout", "-f", "1", "-l", "1", str(pdf_path), "-"],
                         capture_output=True, text=True, check=True).stdout
    page = ET.fromstring(re.sub(r'xmlns="[^"]+"', "", xml)).find(".//page")
    out = []
    for line in page.iter("line"):
        box = tuple(float(line.get(k)) for k in ("xMin", "yMin", "xMax", "yMax"))
        text = " ".join(w.text or "" for w in line.iter("word"))
        # The SIMULATED watermark's letters (96 px, rotated) lie over the page on purpose, translucent.
        if box[3] - box[1] > 40 and len(text) == 1:
            continue
        out.append((box, text))
    return float(page.get("width")), float(page.get("height")), out


@pytest.mark.slow
@pytest.mark.skipif(not (shutil.which("pdftotext") and shutil.which("pdftoppm")),
                    reason="needs poppler's pdftotext and pdftoppm: apt-get install poppler-utils")
def test_page_one_renders_with_nothing_overlapping(reports, tmp_path):
    """Page 1 rendered to an image: no two lines of text overlap, every line lies inside the page
    above its footer, and every line is painted (ink in its box, so nothing is hidden or clipped)."""
    from PIL import Image

    for name, (doc, _pdf, _page1, path) in reports.items():
        width, height, lines = _lines(path)
        assert len(lines) > 20, name
        for (a, ta), (b, tb) in itertools.combinations(lines, 2):
            overlap_x, overlap_y = min(a[2], b[2]) - max(a[0], b[0]), min(a[3], b[3]) - max(a[1], b[1])
            assert overlap_x <= 0.5 or overlap_y <= 0.5, f"{name}: {ta!r} overlaps {tb!r}"
        footer = next(box for box, text in lines if text.startswith("Page 1 of"))
        for box, text in lines:
            assert 0 <= box[0] < box[2] <= width and 0 <= box[1] < box[3] <= height, (name, text)
            if box is not footer and box[1] < footer[1] - 1:
                assert box[3] <= footer[1], f"{name}: {text!r} runs into the footer"
        dpi = 72
        subprocess.run(["pdftoppm", "-png", "-r", str(dpi), "-f", "1", "-l", "1", "-singlefile", str(path),
                        str(tmp_path / name)], check=True, capture_output=True)
        img = Image.open(tmp_path / f"{name}.png").convert("L")
        assert abs(img.size[0] - width) <= 1 and abs(img.size[1] - height) <= 1, (name, img.size)  # 1 px = 1 pt
        for box, text in lines:
            crop = img.crop((int(box[0]), int(box[1]), int(box[2]) + 1, int(box[3]) + 1))
            lo, hi = crop.getextrema()
            assert hi - lo > 60, f"{name}: line {text!r} is not visible in the rendered page"
