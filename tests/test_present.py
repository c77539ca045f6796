"""The report's HTML fragments come from Jinja2 templates with autoescaping: a service's or a
profile's text reaches the page as text, never as markup, in every section."""

import re
from datetime import datetime, timedelta, timezone
from pathlib import Path

from phasegate import present, signoff
from phasegate.history import history
from phasegate.profile import load_profile
from phasegate.simulator import Fault

from conftest import ROOT, SIM_PROFILE

P1 = "phase1-staging-canary"
HOSTILE = '<script>alert("x")</script><img src=x onerror=alert(1)>'
SECTIONS = ["banner", "criteria_table", "probe_table", "tenant_table", "quality_table", "baseline_table",
            "coverage_text", "state_tables", "platform_tables", "runbook", "evidence", "inputs", "traffic_table",
            "actions_table", "render_tables", "render_log_lines", "render_summary", "page_one", "signoff_block"]


def _doc(tmp_path):
    end = datetime.now(timezone.utc).replace(microsecond=0)
    start = end - timedelta(hours=1)
    data = tmp_path / "data"
    history(load_profile(SIM_PROFILE), [Fault("server_error", 600, 1200, rate=0.5)], start.timestamp(),
            end.timestamp(), data, seed=3)
    return signoff.run(SIM_PROFILE, data, P1, start=start.isoformat(), hours=1, as_of=end.isoformat()).doc


def _poison(doc):
    """Hostile text in every free-text field a section shows: names, details, bodies, flag values."""
    doc["reason"] = doc["target"]["name"] = doc["phase"] = HOSTILE
    doc["quality"][HOSTILE] = next(iter(doc["quality"].values()))
    for c in doc["criteria"]:
        c["title"], c["detail"] = HOSTILE, HOSTILE
    doc["probes"][HOSTILE] = next(iter(doc["probes"].values()))
    doc["flags"]["changes"].append({"ts": doc["window"]["start"], "flag": HOSTILE, "value": HOSTILE})
    doc["deployments"]["ids"].append({"id": HOSTILE, "first": "a", "last": "b", "samples": 1})
    doc["inputs"]["notes"] = [HOSTILE]
    doc["inputs"]["files"].append({"path": HOSTILE, "sha256": "0" * 64})
    doc["runbook"].append({"title": HOSTILE, "criterion": HOSTILE, "steps": [HOSTILE], "actions": [HOSTILE]})
    doc["evidence"][0]["response"]["body"] = HOSTILE
    doc["evidence"][0]["probe"] = HOSTILE
    doc["actions"] = [{"ts": "t", "action": HOSTILE, "step": None, "by": HOSTILE, "outcome": HOSTILE, "detail": HOSTILE}]
    doc["platform"] = {"deploys": [{"id": HOSTILE, "trigger": HOSTILE, "started": None, "finished": None,
                                    "status": HOSTILE}], "flags": None,
                       "failed_reads": [{"ts": "t", "probe": HOSTILE, "outcome": HOSTILE, "error": HOSTILE}]}
    return doc


def test_every_section_escapes_what_the_service_and_the_profile_said(tmp_path):
    doc = _doc(tmp_path)
    assert doc["verdict"] == "NO-GO" and doc["evidence"] and doc["runbook"]
    clean = {name: getattr(present, name)(doc) for name in SECTIONS}
    _poison(doc)
    shown = set()
    for name in SECTIONS:
        html = getattr(present, name)(doc)
        assert "<script" not in html and "<img src=x" not in html, name
        if "&lt;script&gt;" in html:
            shown.add(name)
        # Only the hostile text changed the page, never its structure of tags.
        assert re.findall(r"<(/?\w+)", html).count("script") == 0, name
    # Each section given hostile text showed it, escaped (the rest have no such field in this window).
    assert shown == set(SECTIONS) - {"tenant_table", "baseline_table", "traffic_table", "render_tables",
                                     "render_log_lines", "render_summary"}, shown
    assert clean["page_one"].count("<tr>") > 1 and "Every criterion holds" not in clean["page_one"]


def test_each_section_is_a_template_and_present_builds_no_markup():
    """One template per section, so a designer changes the page without Python."""
    templates = {p.name.removesuffix(".html.j2") for p in (ROOT / "lib/phasegate/templates/report").glob("*.html.j2")}
    for name in ["banner", "criteria", "probes", "tenants", "quality", "baseline", "coverage", "state", "platform",
                 "section", "page_one", "signoff", "render_summary", "runbook", "evidence", "inputs", "traffic",
                 "rollout_banner", "rollout_table", "actions", "render", "render_log_lines"]:
        assert name in templates, name
    source = Path(present.__file__).read_text()
    assert not re.search(r"<(div|p|table|tr|td|span|h\d|b|code)[ >]", source), "markup built in present.py"
    assert present.section("T <x>", "a & b", "<b>body</b>") == '<div class="pg"><h2>T &lt;x&gt;</h2><p>a &amp; b</p><b>body</b></div>'
