"""HTML fragments of a sign-off document. Reads `signoff.json`'s dict; computes nothing.

Words, not emoji, carry every state so the PDF reads the same without an emoji font.
"""

from __future__ import annotations

import json
from html import escape

COLORS = {"GO": "#1a7f37", "NO-GO": "#cf222e", "REVIEW": "#9a6700", "PENDING": "#0969da", "INCONCLUSIVE": "#6e7781"}
CSS = """
<style>
.pg table { border-collapse: collapse; font-size: 11px; margin: 6px 0 14px 0; max-width: 100%; }
.pg th, .pg td { border: 1px solid #d0d7de; padding: 2px 4px; text-align: left !important; vertical-align: top;
  white-space: nowrap; }
.pg th { white-space: normal; }
.pg .wrap { white-space: normal; min-width: 9em; }
@media print { .pg table { font-size: 8px; } .pg th, .pg td { padding: 1px 3px; } }
.pg td:last-child { white-space: normal; overflow-wrap: anywhere; }
.pg th { background: #f6f8fa; }
.pg .pass { color: #1a7f37; font-weight: bold; } .pg .fail { color: #cf222e; font-weight: bold; }
.pg .unknown { color: #6e7781; font-weight: bold; }
.pg pre { white-space: pre-wrap; word-break: break-all; font-size: 11px; background: #f6f8fa; padding: 6px; }
.pg .banner { color: white; padding: 12px 16px; border-radius: 6px; }
.pg .banner h1 { margin: 0; font-size: 26px; color: white; } .pg .banner p { margin: 4px 0 0 0; }
.pg .keep { break-inside: avoid; page-break-inside: avoid; }
.pg h2, .pg h3, .pg h4 { break-after: avoid; page-break-after: avoid; }
.page-one { break-after: page; page-break-after: always; }
@media print { .page-one .banner { padding: 6px 10px; } .page-one .banner h1 { font-size: 20px; }
  .page-one .banner p { font-size: 10px; } .page-one h3 { font-size: 13px; margin: 6px 0 2px 0; }
  .page-one h4 { font-size: 11px; margin: 4px 0 1px 0; } .page-one li, .page-one p { font-size: 9px; }
  .page-one ol { margin: 0 0 2px 0; } .page-one p { margin: 2px 0; } .page-one small { font-size: 7px; } }
.pg .signoff th { width: 9em; } .pg .signoff td { white-space: normal; }
@media print { .pg table, .pg pre { page-break-inside: avoid; } }
</style>
"""


def _state(state) -> str:
    if state == "passed":
        return '<span class="pass">PASS</span>'
    if state == "failed":
        return '<span class="fail">FAIL</span>'
    if state == "pending":
        return '<span class="unknown">PENDING</span>'
    return '<span class="unknown">INCONCLUSIVE</span>'


def _num(v, unit="") -> str:
    """One unit per kind of figure: rates in %, latency in ms with one decimal (s above 10 s)."""
    if v is None:
        return "–"
    if unit == "ratio":
        return _pct(v)
    if unit == "ms":
        return _ms(v)
    if isinstance(v, float):
        return f"{v:,.3f}".rstrip("0").rstrip(".") + (f" {unit}" if unit else "")
    return f"{v:,}" + (f" {unit}" if unit else "")


def _pct(v) -> str:
    if v is None:
        return "–"
    p = v * 100
    return "0 %" if p == 0 else f"{p:.2f} %" if p >= 0.1 else f"{p:.2g} %"


def _ms(v) -> str:
    if v is None:
        return "–"
    return f"{v / 1000:,.1f} s" if v >= 10_000 else f"{v:,.1f} ms"


def _table(headers, rows) -> str:
    head = "".join(f"<th>{escape(str(h))}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f'<div class="pg"><table><tr>{head}</tr>{body}</table></div>'


def banner(doc: dict) -> str:
    w = doc["window"]
    live = (doc.get("provenance") or {}).get("samples", {}).get("live", 0)
    sim = f" — {live:,} live and {doc['simulated_samples']:,} simulated samples" if doc.get("simulated_samples") else ""
    mode = {"drill": "DRILL · ", "simulated": "SIMULATED · "}.get(doc.get("mode"), "")
    return CSS + (
        f'<div class="pg"><div class="banner" style="background:{COLORS.get(doc["verdict"], "#333")}">'
        f'<h1>{mode}VERDICT: {escape(doc["verdict"])}</h1>'
        f'<p>{escape(doc["phase"])} · {escape(doc["target"]["name"])} · window {w["start"]} → {w["end"]}'
        f' (observed to {w["observed_end"]}){escape(sim)}</p>'
        f'<p>{escape(doc["reason"])}</p>'
        + ('<p><b>TLS certificates were not verified</b> (target.tls insecure_skip_verify): this evidence does '
           'not show the service is the one named.</p>' if (doc.get("target") or {}).get("insecure_skip_verify") else "")
        + '</div></div>'
    )


def criteria_table(doc: dict) -> str:
    rows = []
    for c in doc["criteria"]:
        unit = c.get("unit", "")
        unc = "–"
        if c.get("bound") is not None:
            unc = "≤ " + _num(c["bound"], unit)
        if c.get("interval"):
            unc += f" (CI {_num(c['interval'][0], unit)} – {_num(c['interval'][1], unit)})"
        kind = c["kind"] + (" <b>dry-run</b>" if c.get("dry_run") else "")
        rows.append([f'<div class="wrap">{escape(c["title"])}<br><code>{escape(c["id"])}</code></div>', kind, _state(c["state"]), _num(c["measured"], unit), unc,
                     _num(c["threshold"], unit), "–" if c.get("n") is None else f"{c['n']:,}", escape(c["detail"])])
    note = (f'<div class="pg"><p>Upper bounds are one-sided at {doc["parameters"]["confidence"]:.0%} confidence '
            f'(rates: Clopper-Pearson; percentiles: order statistics); a rate or P99 passes only when its bound is '
            f'below the threshold (mode: {doc["parameters"]["rate_mode"]}). Dry-run criteria never move the verdict.</p></div>')
    return _table(["criterion", "kind", "result", "measured", "upper bound", "threshold", "n", "detail"], rows) + note


def probe_table(doc: dict) -> str:
    rows = []
    for name, s in [*doc["probes"].items(), ("ALL", doc["overall"])]:
        codes = ", ".join(f"{k}×{v}" for k, v in s["status_counts"].items())
        ci = s.get("p99_ci_ms")
        rows.append([f"<b>{escape(name)}</b>", f"{s['samples']:,}", escape(codes), f"{s['errors']:,}",
                     _num(s["error_rate"], "ratio"), f"{s['http_5xx']:,}", f"{s['feature_disabled']:,}",
                     _ms(s["p50_ms"]), _ms(s["p95_ms"]), _ms(s["p99_ms"]),
                     "n too small" if ci is None else f"{_ms(ci[0])} – {_ms(ci[1])}", _ms(s["max_ms"])])
    return _table(["probe", "samples", "status codes", "errors", "error rate", "5xx", "503 FEATURE_ DISABLED",
                   "p50", "p95", "p99", "p99 95% CI", "max"], rows)


def tenant_table(doc: dict, limit: int = 25) -> str:
    """Per tenant, worst first; the rest of a large fleet summarised in one line, never dropped silently."""
    t = doc.get("tenants")
    if not t:
        return '<div class="pg"><p>No sample carries a tenant: the probes are not templated over a fleet.</p></div>'
    rows = []
    for r in t["rows"][:limit]:
        rows.append([f"<b>{escape(r['tenant'])}</b>", f"{r['samples']:,}", f"{r['errors']:,}", _num(r["error_rate"], "ratio"),
                     _num(r["rate_upper"], "ratio"), f"{r['http_5xx']:,}", f"{r['feature_disabled']:,}",
                     f"{r['timeouts']:,}", _num(r["p50_ms"]), _num(r["p95_ms"]), _num(r["p99_ms"]),
                     escape(f"{r['worst_probe']} ({r['worst_probe_errors']})" if r["worst_probe"] else "–")])
    html = _table(["tenant", "samples", "errors", "error rate", "rate upper bound", "5xx", "503 FEATURE_ DISABLED",
                   "timeouts", "p50 ms", "p95 ms", "p99 ms", "most errors on"], rows)
    rest = t["rows"][limit:]
    notes = []
    if rest:
        notes.append(f"{len(rest)} more tenants, each at or below {rest[0]['error_rate']:.3%} errors "
                     f"(all {t['count']} are in signoff.json).")
    if t["untagged_samples"]:
        notes.append(f"{t['untagged_samples']:,} samples carry no tenant (probes not templated over the fleet).")
    return html + "".join(f'<div class="pg"><p>{escape(n)}</p></div>' for n in notes)


def quality_table(doc: dict) -> str:
    rows = [[escape(p), f"{q['thin_hours']:,}", f"{q['transitions']:,}", f"{q['failures']:,}",
             '<span class="fail">FLAPPING</span>' if q["flapping"] else "no"] for p, q in doc["quality"].items()]
    return _table(["probe", "thin hours (< 50 % of expected samples)", "ok/failed transitions", "failures",
                   "flapping"], rows)


def baseline_table(doc: dict) -> str:
    if not doc.get("baseline"):
        return '<div class="pg"><p>No baseline was given: canary-vs-baseline comparison not run.</p></div>'
    rows = []
    for p, c in doc["baseline"]["probes"].items():
        rows.append([escape(p), f"{c['n_canary']:,} / {c['n_base']:,}", f"{c['median_canary_ms']:.1f} / {c['median_base_ms']:.1f}",
                     f"{c['hl_shift_ms']:+.1f} ({c['rel_shift']:+.1%})", f"{c['p_latency']:.3g}", f"{c['p99_ratio']:.2f}",
                     f"{c['err_canary']:.3%} / {c['err_base']:.3%}", f"{c['p_errors']:.3g}"])
    return _table(["probe", "n canary / baseline", "median ms canary / baseline", "Hodges-Lehmann shift ms",
                   "Mann-Whitney p (canary slower)", "p99 ratio", "error rate canary / baseline",
                   "Fisher p (canary worse)"], rows)


def coverage_text(doc: dict) -> str:
    c = doc["coverage"]
    rows = [[escape(p), f"{v['actual']:,}", f"{v['expected']:,.0f}", _num(v["ratio"], "ratio")]
            for p, v in c["per_probe"].items()]
    summary = (f"<p>{c['actual']:,} of {c['expected']:,.0f} expected samples ({c['ratio']:.1%}; need "
               f"{c['min_coverage']:.0%}). Longest gap without any attempt: {c['longest_gap_s']:,.0f} s "
               f"({c['longest_gap_start']} → {c['longest_gap_end']}; cause: {escape(c['longest_gap_cause'])}; "
               f"allowed {c['max_gap_s']:,.0f} s). Longest stretch where every attempt failed (service failing): "
               f"{c['longest_failing_s']:,.0f} s.</p>")
    for note in doc["inputs"].get("notes", []):
        summary += f"<p><b>Data source:</b> {escape(note)}</p>"
    excluded = doc["inputs"]["excluded"]
    if excluded:
        summary += "<p><b>Excluded input:</b> " + "; ".join(
            f"{escape(e['file'])} ({escape(e['reason'])})" for e in excluded) + "</p>"
    out = f'<div class="pg">{summary}</div>' + _table(["probe", "actual", "expected", "coverage"], rows)
    if c.get("shards"):
        out += "<h4>Collector shards</h4>" + _table(
            ["shard", "actual", "expected", "coverage", "longest gap s", "last sample", "state"],
            [[escape(sh["shard"]), f"{sh['actual']:,}", f"{sh['expected']:,.0f}", _num(sh["ratio"], "ratio"),
              f"{sh['longest_gap_s']:,.0f}", sh["last_sample"] or "none in the window",
              '<span class="fail">STOPPED</span>' if sh["stopped"] else "running"] for sh in c["shards"]])
    return out


def state_tables(doc: dict) -> str:
    deps = doc["deployments"]
    dep_rows = [[escape(d["id"]), d["first"], d["last"], f"{d['samples']:,}"] for d in deps["ids"]]
    out = "<h4>Deployments</h4>" + _table(["deployment id", "first seen", "last seen", "samples"], dep_rows)
    if deps["rollbacks"]:
        out += _table(["rollback at", "back to", "from"],
                      [[r["ts"], escape(r["to"]), escape(r["from"])] for r in deps["rollbacks"]])
    fl = doc["flags"]
    flag_rows = [[c["ts"], escape(c["flag"]), escape(json.dumps(c["value"]))] for c in fl["changes"]]
    out += "<h4>Feature flags (first value and every change)</h4>" + _table(["time", "flag", "value"], flag_rows)
    out += platform_tables(doc) + actions_table(doc)
    h = doc["health"]
    out += (f'<div class="pg"><p>Health: {h["answered"]:,} answered health samples, {h["unhealthy"]:,} unhealthy, '
            f'handlers loaded min {h["min_loaded"]}/{h["handlers_total"]}.</p></div>')
    fails = doc["anomalies"]["assertion_failures"]
    if fails:
        out += "<h4>Baseline drift (assertion failures by message)</h4>" + _table(
            ["probe", "message", "count", "first", "last"],
            [[escape(g["probe"]), escape(g["message"]), f"{g['count']:,}", g["first"], g["last"]] for g in fails])
    return out


def platform_tables(doc: dict) -> str:
    """The hosting platform's own record: deploys in the window and the flag values it holds."""
    p = doc.get("platform")
    if not p:
        return ""
    out = "<h4>Platform deploys in the window (each one unexpected during a phase)</h4>" + _table(
        ["deploy", "trigger", "started", "finished", "status"],
        [[escape(d["id"]), escape(d["trigger"] or "–"), d["started"] or "before the window", d["finished"] or "–",
          escape(d["status"] or "–")] for d in p["deploys"]])
    if p["flags"]:
        out += "<h4>Platform environment flags (first value and every change)</h4>" + _table(
            ["time", "flag", "value"],
            [[c["ts"], escape(c["flag"]), escape(json.dumps(c["value"]))] for c in p["flags"]["changes"]])
    if p["failed_reads"]:
        out += "<h4>Platform reads that failed</h4>" + _table(
            ["time", "call", "outcome", "error"],
            [[f["ts"], escape(f["probe"]), escape(f["outcome"]), escape(f["error"] or "")] for f in p["failed_reads"]])
    return out


def section(title: str, intro: str = "", body: str = "") -> str:
    """A heading with what follows it in one block, so a page never ends on the heading alone."""
    return (f'<div class="pg"><h2>{escape(title)}</h2>' + (f"<p>{escape(intro)}</p>" if intro else "")
            + body + "</div>")


# Page 1 holds the whole decision for any report: past these, it summarises and points on.
PAGE_ONE_CRITERIA = 6  # rows of criteria that do not hold
PAGE_ONE_SCENARIOS = 3  # runbook scenarios, each with its first steps
PAGE_ONE_STEPS = 3
PAGE_ONE_TEXT = 170  # characters of a criterion's detail, of a step, of Render's line


def _short(text: str, n: int = PAGE_ONE_TEXT) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 1].rstrip() + "…"


def page_one(doc: dict, out_dir: str = "") -> str:
    """The page that decides: the verdict and why; every failed or undecided criterion with its
    title, measured value, threshold, first/last occurrence and what it found; what to do (each
    runbook scenario's first steps); the sign-off block. Whatever the report holds, this fits one
    page: past PAGE_ONE_* it summarises and names where the rest continues. Then a page break."""
    open_ = [c for c in doc["criteria"] if c["state"] in ("failed", "inconclusive", "pending") and not c.get("dry_run")]
    # Failures first (hard before soft), then what is undecided: what matters most survives the cut.
    open_.sort(key=lambda c: (c["state"] != "failed", c["kind"] != "hard"))
    rows = []
    for c in open_[:PAGE_ONE_CRITERIA]:
        when = f"{c['first']} → {c['last']}" if c.get("first") else "–"
        rows.append([f'<div class="wrap"><b>{escape(c["title"])}</b> <code>{escape(c["id"])}</code> ({c["kind"]})'
                     f'<br><small>{escape(_short(c["detail"]))}</small></div>', _state(c["state"]),
                     _num(c["measured"], c.get("unit", "")), _num(c["threshold"], c.get("unit", "")), when])
    crit = (_table(["criterion", "result", "measured", "threshold", "first → last occurrence"], rows) if rows else
            '<div class="pg"><p>Every criterion holds.</p></div>')
    rest = open_[PAGE_ONE_CRITERIA:]
    if rest:
        crit += (f'<p>{len(rest)} more do not hold: {escape(", ".join(c["id"] for c in rest))} — continued under '
                 '“Decision criteria” on the next page.</p>')
    steps = ""
    for r in doc["runbook"][:PAGE_ONE_SCENARIOS]:
        more = len(r["steps"]) - PAGE_ONE_STEPS
        steps += (f'<h4>{escape(r["title"])} <small>(for {escape(r["criterion"])})</small></h4><ol>'
                  + "".join(f"<li>{escape(_short(st, 120))}</li>" for st in r["steps"][:PAGE_ONE_STEPS]) + "</ol>"
                  + (f'<p><small>{more} more step(s) under “Runbook”.</small></p>' if more > 0 else ""))
    later = doc["runbook"][PAGE_ONE_SCENARIOS:]
    if later:
        names = "; ".join(f"{r['title']} (for {r['criterion']})" for r in later)
        steps += f"<p>Also: {escape(names)} — under “Runbook”.</p>"
    runbook_html = ('<div class="keep"><h3>What to do now</h3>' + steps + "</div>") if steps else ""
    return ('<div class="page-one">' + banner(doc) + '<div class="pg"><div class="keep"><h3>Criteria that do not hold</h3>'
            + crit + render_summary(doc) + "</div>" + runbook_html + signoff_block(doc, out_dir) + "</div></div>")


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
    if not said:
        return ""
    return '<p><b>From Render\'s side:</b> ' + escape(_short("; ".join(said), 2 * PAGE_ONE_TEXT)) + ".</p>"


def signoff_block(doc: dict, out_dir: str = "") -> str:
    """Phase, window, profile hash, version; the approval's lines from approval.json when the
    report has been approved, else lines to sign."""
    from pathlib import Path

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
    rows = "".join(f"<tr><th>{escape(k)}</th><td>{escape(str(v))}</td></tr>" for k, v in facts)
    return f'<div class="keep signoff"><h3>Sign-off</h3><table>{rows}</table></div>'


def runbook(doc: dict) -> str:
    if not doc["runbook"]:
        return '<div class="pg"><p>No hard requirement failed: no runbook step applies.</p></div>'
    parts = []
    for r in doc["runbook"]:
        steps = "".join(f"<li>{escape(s)}</li>" for s in r["steps"])
        machine = ("<p>phasegate act can carry out: " + escape("; ".join(r["actions"])) + "</p>") if r.get("actions") else ""
        parts.append(f'<h4>{escape(r["title"])} (criterion {escape(r["criterion"])})</h4><ol>{steps}</ol>{machine}')
    return '<div class="pg">' + "".join(parts) + "</div>"


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
    parts = []
    for e in doc["evidence"][:limit]:
        title = f"{e['kind']}: {e['probe']} at {e['ts']} — {e['outcome']}"
        if e["status"] is not None:
            title += f" HTTP {e['status']}"
        if e["error_code"]:
            title += f" {e['error_code']}"
        parts.append(f"<h4>{escape(title)}</h4><pre>{escape(_response_text(e['response']))}</pre>")
    more = len(doc["evidence"]) - limit
    if more > 0:
        parts.append(f"<p>{more} more in signoff.json.</p>")
    return '<div class="pg">' + "".join(parts) + "</div>"


def inputs(doc: dict) -> str:
    rows = [[escape(f["path"]), f"<code>{f['sha256']}</code>"] for f in doc["inputs"]["files"]]
    head = (f'<div class="pg"><p>Profile {escape(doc["profile"]["path"])} sha256 <code>{doc["profile"]["sha256"]}</code>. '
            f'Generated {doc["generated_at"]}, as of {doc["as_of"]}.</p></div>')
    return head + _table(["input file", "sha256"], rows)


def traffic_table(doc: dict) -> str:
    t = doc.get("traffic")
    out = ""
    p = doc.get("prometheus")
    if p:
        hist = p.get("p99_from_histogram", {})

        def p99(route):
            h = hist.get(route)
            if not h or h["p99_ms"] is None:
                return "–"
            return f"{h['p99_ms']:,.1f} (bucket {h['bucket_ms'][0]:g}–{h['bucket_ms'][1]:g} ms)"

        rows = [[f"<b>{escape(r)}</b>", f"{s['samples']:,}", escape(", ".join(f"{k}×{v}" for k, v in s["status_counts"].items())),
                 f"{s['http_5xx']:,}", _num(s["error_rate"], "ratio"), p99(r)]
                for r, s in [*p["routes"].items(), ("ALL", p["overall"])]]
        out += ('<div class="pg"><p>From Prometheus (raw counters differenced per scrape; counter resets counted). '
                'When request logs are imported too, the criteria count the logs and show these beside them. '
                'P99 from the latency histogram is interpolated within its bucket, as histogram_quantile does: '
                'the true P99 lies anywhere inside the bucket shown.</p></div>'
                + _table(["route", "requests", "status codes", "5xx", "5xx rate", "p99 ms from histogram"], rows))
    if not t:
        return out or ('<div class="pg"><p>No real traffic in this window (import request logs with '
                       'phasegate import-logs, or pull counts with phasegate pull-traffic).</p></div>')
    rows = []
    for name, s in [*t["routes"].items(), ("ALL", t["overall"])]:
        rows.append([f"<b>{escape(name)}</b>", f"{s['samples']:,}", escape(", ".join(f"{k}×{v}" for k, v in s["status_counts"].items())),
                     f"{s['http_5xx']:,}", _num(s["error_rate"], "ratio"), _num(s["p50_ms"]), _num(s["p99_ms"]), _num(s["max_ms"])])
    return out + ('<div class="pg"><p>From request logs: every request the service answered in the window, '
                  'P99 exact from the logged request times (millisecond resolution).</p></div>'
                  + _table(["route", "requests", "status codes", "5xx", "5xx rate", "p50 ms", "p99 ms", "max ms"], rows))


def rollout_banner(doc: dict) -> str:
    v = doc["current_verdict"]
    color = COLORS.get(v, "#333") if v else "#333"
    return CSS + (f'<div class="pg"><div class="banner" style="background:{color}"><h1>{escape(doc["plan"]["name"])}</h1>'
                  f'<p>as of {doc["as_of"]} · phase in progress: {escape(v or "none")}</p></div>'
                  f'<p><b>Next:</b> {escape(doc["next_action"])}</p></div>')


def rollout_table(doc: dict) -> str:
    rows, fails = [], []
    for p in doc["phases"]:
        verdict = f"GO, {p['approved']}" if p["state"] == "done" else (p["verdict"] or "–")
        window = f"{p['start']} →<br>{p['end']}" if p.get("start") else "not started"
        # The report's folder, not its whole path: the full path wrapped over ten lines in the PDF.
        short = "/".join(p["report"].replace("\\", "/").split("/")[-3:-1]) if p["report"] else ""
        report = (f"{p['report_verdict']} as of {p['report_as_of']}:<br><code style=\"white-space: nowrap\" "
                  f"title=\"{escape(p['report'])}\">{escape(short)}</code>") if p["report"] else "none"
        rows.append([f"<b>{escape(p['title'])}</b>", f'<div class="wrap">{escape(verdict)}</div>', window,
                     f"{p['samples']:,}" if p.get("samples") is not None else "–", report])
        fails += [[escape(p["title"]), escape(f"{c['kind']} {c['id']}"), escape(c["detail"])] for c in p.get("failed", [])]
    out = _table(["phase", "verdict", "window", "samples", "latest report"], rows)
    if fails:
        out += "<h4>Failed criteria</h4>" + _table(["phase", "criterion", "detail"], fails)
    acts = [[escape(p["title"]), *_action_cells(a)] for p in doc["phases"] for a in p.get("actions", [])]
    if acts:
        out += "<h4>Actions taken (phasegate act)</h4>" + _table(["phase", "time", "action", "by", "outcome", "detail"], acts)
    return out


def _action_cells(a: dict) -> list:
    ok = a["outcome"] == "ok"
    return [a["ts"], escape(a["action"] or a["step"]), escape(a["by"] or "–"),
            f'<span class="{"pass" if ok else "fail"}">{escape(a["outcome"])}</span>', escape(a["detail"] or "")]


def actions_table(doc: dict) -> str:
    """What `phasegate act` did in the window (rollbacks, promotions), each step with its time."""
    acts = doc.get("actions") or []
    began = doc.get("started_by")
    head = f"<p>This window began after the {escape(began['text'])}.</p>" if began else ""
    if not acts:
        return "<h4>Actions taken (phasegate act)</h4>" + head if head else ""
    return "<h4>Actions taken (phasegate act)</h4>" + head + _table(["time", "action", "by", "outcome", "detail"],
                                                                   [_action_cells(a) for a in acts])


def render_tables(doc: dict) -> str:
    """What Render's logs, metrics and events say of the window, as pulled."""
    r = doc.get("render")
    if not r:
        return ""
    cov = r["coverage"]
    head = (f"Logs, metrics and events pulled for {cov['from'] or '–'} .. {cov['until'] or '–'} "
            f"({cov['covered_s'] / max(cov['window_s'], 1e-9):.1%} of the window, {cov['parts']} part(s)).")
    if not r["available"]:
        head = "Render was unavailable for this window: nothing could be pulled."
    out = f'<div class="pg"><p>{escape(head)}</p></div>'
    if r["failed_reads"]:
        out += "<h4>Render reads that failed (stored; asked again by the next pull)</h4>" + _table(
            ["time", "call", "outcome", "error"],
            [[f["ts"], escape(f["call"]), escape(f["outcome"]), escape(f["error"] or "")] for f in r["failed_reads"]])
    t = r["traffic"]
    if t:
        rows = [[f"<b>{escape(name)}</b>", f"{s['samples']:,}", escape(", ".join(f"{k}×{v}" for k, v in s["status_counts"].items())),
                 f"{s['http_5xx']:,}", f"{s['feature_disabled']:,}", _num(s["p50_ms"]), _num(s["p99_ms"]), _num(s["max_ms"])]
                for name, s in [*t["routes"].items(), ("ALL", t["overall"])]]
        out += "<h4>Real users' requests, from Render's request logs</h4>" + _table(
            ["route", "requests", "status codes", "5xx", "FEATURE_DISABLED", "p50 ms", "p99 ms", "max ms"], rows)
    own = r["probes_logged"]
    out += (f'<div class="pg"><p>Render also logged the probes\' own {own["requests"]:,} requests '
            f'({own["http_5xx"]:,} 5xx, {own["feature_disabled"]:,} FEATURE_DISABLED): counted once, as probes.</p></div>')
    m = r["metrics"]
    if m["requests_by_status"] or m["latency"]:
        q = f"p{m['latency_quantile'] * 100:g}"
        out += (f'<div class="pg"><p>Render\'s metrics, one value per {m["resolution_s"]:g} s step: requests by status '
                f'{escape(", ".join(f"{k}×{v:,}" for k, v in m["requests_by_status"].items()) or "none")}; '
                f'{q} latency of {escape(m["latency_path"])} at most {_ms(m["latency_max_ms"])} over {len(m["latency"])} steps. '
                f'Render computes the quantile per step over requests we do not see: it is shown beside the '
                f'probes\' exact order statistics, never mixed into them.</p></div>')
    out += "<h4>Startup lines, per instance</h4>" + _table(
        ["time", "instance", "flags", "line"],
        [[s["ts"], escape(s["instance"] or "–"),
          ("<span class=\"fail\">OFF: " + escape(", ".join(s["off"])) + "</span>") if s["off"] else "all on",
          escape(s["line"] or "")] for s in r["startups"]])
    if r["starts"]:
        out += "<h4>Instance starts (events) and their startup lines</h4>" + _table(
            ["started", "event", "instance", "deploy", "startup line"],
            [[st["ts"], escape(st["event"]), escape(st["instance"] or "–"), escape(st["deploy"] or "–"),
              st["line"] or ('<span class="fail">none</span>' if st["settled"] else "not pulled yet")]
             for st in r["starts"]])
    out += "<h4>Service events</h4>" + _table(
        ["time", "event", "details"],
        [[e["ts"], ('<span class="fail">' + escape(e["type"]) + "</span>") if e["type"] == "server_failed"
          else escape(e["type"] or ""), escape(json.dumps(e["details"], sort_keys=True)[:300])] for e in r["events"]])
    levels = ", ".join(f"{k} {v:,}" for k, v in r["log_levels"].items()) or "none"
    out += f'<div class="pg"><p>App log lines pulled, by level: {escape(levels)}; error lines: {r["error_lines"]:,} (the first in the appendix).</p></div>'
    return out


def render_log_lines(doc: dict) -> str:
    """The first error-level lines Render logged (redacted when stored, escaped here)."""
    r = doc.get("render")
    if not r or not r["first_errors"]:
        return ""
    rows = [[e["ts"], escape(e["level"] or ""), escape(e["instance"] or "–"), escape(e["message"] or "")]
            for e in r["first_errors"]]
    more = r["error_lines"] - len(rows)
    return ("<h4>Render: first error log lines</h4>" + _table(["time", "level", "instance", "message"], rows)
            + (f'<div class="pg"><p>{more:,} more error lines in the dataset.</p></div>' if more > 0 else ""))
