"""HTML fragments of a sign-off document. Reads `signoff.json`'s dict; computes nothing.

Each fragment is one Jinja2 template under `templates/report/` (autoescaped: a service's text
never becomes markup); what is here only chooses what a fragment shows (page 1's cut, the rows of a
table) and hands the template the document. Words, not emoji, carry every state so the PDF reads
the same without an emoji font.
"""

from __future__ import annotations

import json
from pathlib import Path

from markupsafe import Markup

from .templating import render

COLORS = {"GO": "#1a7f37", "NO-GO": "#cf222e", "REVIEW": "#9a6700", "PENDING": "#0969da", "INCONCLUSIVE": "#6e7781"}

# Page 1 holds the whole decision for any report: past these, it summarises and points on.
PAGE_ONE_CRITERIA = 6  # rows of criteria that do not hold
PAGE_ONE_SCENARIOS = 3  # runbook scenarios, each with its first steps
PAGE_ONE_STEPS = 3
PAGE_ONE_TEXT = 170  # characters of a criterion's detail, of a step, of Render's line


def _fragment(name: str, **context) -> str:
    return render(f"report/{name}.html.j2", **context)


def _with_all(groups: dict, overall: dict) -> list:
    return [*groups.items(), ("ALL", overall)]


def banner(doc: dict) -> str:
    live = (doc.get("provenance") or {}).get("samples", {}).get("live", 0)
    samples = (f" — {live:,} live and {doc['simulated_samples']:,} simulated samples"
               if doc.get("simulated_samples") else "")
    return _fragment("banner", doc=doc, color=COLORS.get(doc["verdict"], "#333"), samples=samples,
                     mode={"drill": "DRILL · ", "simulated": "SIMULATED · "}.get(doc.get("mode"), ""),
                     insecure=(doc.get("target") or {}).get("insecure_skip_verify"))


def criteria_table(doc: dict) -> str:
    return _fragment("criteria", doc=doc)


def probe_table(doc: dict) -> str:
    return _fragment("probes", rows=_with_all(doc["probes"], doc["overall"]))


def tenant_table(doc: dict, limit: int = 25) -> str:
    """Per tenant, worst first; the rest of a large fleet summarised in one line, never dropped silently."""
    return _fragment("tenants", t=doc.get("tenants"), limit=limit)


def quality_table(doc: dict) -> str:
    return _fragment("quality", doc=doc)


def baseline_table(doc: dict) -> str:
    return _fragment("baseline", doc=doc)


def coverage_text(doc: dict) -> str:
    return _fragment("coverage", doc=doc)


def state_tables(doc: dict) -> str:
    return _fragment("state", doc=doc, platform=Markup(platform_tables(doc)), actions=Markup(actions_table(doc)))


def platform_tables(doc: dict) -> str:
    """The hosting platform's own record: deploys in the window and the flag values it holds."""
    p = doc.get("platform")
    return _fragment("platform", p=p) if p else ""


def section(title: str, intro: str = "", body: str = "") -> str:
    """A heading with what follows it in one block, so a page never ends on the heading alone.
    `body` is markup a fragment or a plot made."""
    return _fragment("section", title=title, intro=intro, body=Markup(body))


def page_one(doc: dict, out_dir: str = "") -> str:
    """The page that decides: the verdict and why; every failed or undecided criterion with its
    title, measured value, threshold, first/last occurrence and what it found; what to do (each
    runbook scenario's first steps); the sign-off block. Whatever the report holds, this fits one
    page: past PAGE_ONE_* it summarises and names where the rest continues. Then a page break."""
    open_ = [c for c in doc["criteria"] if c["state"] in ("failed", "inconclusive", "pending") and not c.get("dry_run")]
    # Failures first (hard before soft), then what is undecided: what matters most survives the cut.
    open_.sort(key=lambda c: (c["state"] != "failed", c["kind"] != "hard"))
    return _fragment("page_one", banner=Markup(banner(doc)), shown=open_[:PAGE_ONE_CRITERIA],
                     rest=open_[PAGE_ONE_CRITERIA:], scenarios=doc["runbook"][:PAGE_ONE_SCENARIOS],
                     later=doc["runbook"][PAGE_ONE_SCENARIOS:], steps=PAGE_ONE_STEPS, text=PAGE_ONE_TEXT,
                     render_summary=Markup(render_summary(doc)), signoff=Markup(signoff_block(doc, out_dir)))


def render_summary(doc: dict) -> str:
    """Page 1's line on what Render itself reported failing (or that it could not be read), so a
    reviewer sees which failures come from the platform's side and not from the probes."""
    r = doc.get("render")
    if not r:
        return ""
    said = []
    if not r["available"]:
        said.append("Render was unavailable: its logs, metrics and events could not be read for this window")
    users = (r.get("traffic") or {}).get("overall")
    if users and users["http_5xx"]:
        said.append(f"{users['http_5xx']:,} of {users['samples']:,} real users' requests answered 5xx in Render's request logs")
    if users and users["feature_disabled"]:
        said.append(f"{users['feature_disabled']:,} real users' requests answered 503 FEATURE_DISABLED")
    startup = next((c for c in doc["criteria"] if c["id"] == "flags_at_startup" and c["state"] == "failed"), None)
    if startup:
        said.append(startup["detail"].removeprefix("Render logs: "))
    if r["error_lines"]:
        said.append(f"{r['error_lines']:,} error log lines")
    if r["events_count"]["server_failed"]:
        said.append(f"{r['events_count']['server_failed']} server_failed event(s)")
    return _fragment("render_summary", said=said, limit=2 * PAGE_ONE_TEXT) if said else ""


def signoff_block(doc: dict, out_dir: str = "") -> str:
    """Phase, window, profile hash, version; the approval's lines from approval.json when the
    report has been approved, else lines to sign."""
    prov = doc.get("provenance", {})
    approval = None
    f = Path(out_dir) / "approval.json" if out_dir else None
    if f is not None and f.is_file():
        try:
            approval = json.loads(f.read_text())
        except (OSError, ValueError):
            approval = None
    w = doc["window"]
    facts = [("Phase", doc["phase"]), ("Window", f"{w['start']} → {w['end']} (observed to {w['observed_end']})"),
             ("Profile SHA-256", prov.get("profile_sha256", "–")), ("phasegate", prov.get("phasegate_version", "–")),
             ("Samples", f"{prov.get('samples', {}).get('live', 0):,} live, "
                         f"{prov.get('samples', {}).get('simulated', 0):,} simulated")]
    if approval:
        sig = "signed" if approval.get("signature") else "unsigned"
        facts += [("Approved by", f"{approval['by']} at {approval['at']} ({sig})"),
                  ("Comment", approval.get("comment") or "–")]
    else:
        facts += [("Approved by", "______________________________"), ("Date", "______________________________"),
                  ("Signature", "______________________________")]
    return _fragment("signoff", facts=facts)


def runbook(doc: dict) -> str:
    return _fragment("runbook", doc=doc)


def _response_text(r: dict) -> str:
    """A raw response as a reviewer reads it: an HTTP answer's headers, then its body indented when
    it is JSON; an acceptance command's exit status and the tail of its output as printed."""
    if "output_tail" in r:
        return (f"$ {' '.join(r['command'])}\nexit status: {r['exit_status']}  ({r['output_bytes']:,} bytes of output)\n"
                f"--- last lines ---\n{r['output_tail']}")
    head = [f"HTTP {r.get('status')}"] + [f"{k}: {v}" for k, v in (r.get("headers") or {}).items()]
    body = r.get("body") or ""
    try:
        body = json.dumps(json.loads(body), indent=1, ensure_ascii=False)
    except (ValueError, RecursionError):
        pass
    lines = body.splitlines()
    if len(lines) > 30:  # the appendix shows the start; signoff.json holds the whole (capped) body
        body = "\n".join(lines[:30] + [f"… {len(lines) - 30} more lines in signoff.json"])
    more = " (truncated)" if r.get("truncated") else ""
    return "\n".join(head) + f"\n\n{body}" + (f"\n[{r.get('body_bytes', 0):,} bytes{more}]" if more else "")


def evidence(doc: dict, limit: int = 12) -> str:
    return _fragment("evidence", shown=[{**e, "text": _response_text(e["response"])} for e in doc["evidence"][:limit]],
                     more=len(doc["evidence"]) - limit)


def inputs(doc: dict) -> str:
    return _fragment("inputs", doc=doc)


def traffic_table(doc: dict) -> str:
    p, t = doc.get("prometheus"), doc.get("traffic")
    return _fragment("traffic", doc=doc, prom_rows=_with_all(p["routes"], p["overall"]) if p else [],
                     log_rows=_with_all(t["routes"], t["overall"]) if t else [])


def rollout_banner(doc: dict) -> str:
    v = doc["current_verdict"]
    return _fragment("rollout_banner", doc=doc, color=COLORS.get(v, "#333") if v else "#333")


def rollout_table(doc: dict) -> str:
    return _fragment("rollout_table", doc=doc)


def actions_table(doc: dict) -> str:
    """What `phasegate act` did in the window (rollbacks, promotions), each step with its time."""
    return _fragment("actions", acts=doc.get("actions") or [], began=doc.get("started_by"))


def render_tables(doc: dict) -> str:
    """What Render's logs, metrics and events say of the window, as pulled."""
    r = doc.get("render")
    if not r:
        return ""
    t = r["traffic"]
    return _fragment("render", r=r, traffic_rows=_with_all(t["routes"], t["overall"]) if t else [])


def render_log_lines(doc: dict) -> str:
    """The first error-level lines Render logged (redacted when stored, escaped here)."""
    r = doc.get("render")
    return _fragment("render_log_lines", r=r) if r and r["first_errors"] else ""
