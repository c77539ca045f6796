"""The criteria Render's own evidence judges (`sources._render`): flags confirmed at startup, error
log lines and failed instances; and what Render adds to the detail of the seed's criteria (its
latency quantile beside the probes' P99, its errors and events beside the health checks)."""

from __future__ import annotations

from .analysis import Analysis
from .profile import Profile
from .result import CriterionResult
from .rules import Criterion
from .window import parse_time


def _render_latency(a: Analysis) -> str:
    """Render's latency quantile beside the probes' exact P99: one value per resolution step,
    computed by Render over requests we cannot see, so shown and never judged or mixed in."""
    m = (a.render or {}).get("metrics") or {}
    if not m.get("latency"):
        return ""
    return (f"; Render's own p{m['latency_quantile'] * 100:g} for {m['latency_path']}: max "
            f"{m['latency_max_ms'] / 1000:.3f} s over {len(m['latency'])} steps of {m['resolution_s']:g} s "
            "(a quantile per step, not samples: shown, not judged)")


def _render_health(r: dict) -> str:
    ev = r["events_count"]
    failed = [e for e in r["events"] if e["type"] == "server_failed"]
    text = (f"Render: {r['error_lines']} error log lines, {ev['server_failed']} server_failed and "
            f"{ev['server_restarted']} server_restarted events")
    if failed:
        text += " (server_failed " + ", ".join(
            f"{e['ts']}" + (f" instance {e['details'].get('instanceId')}" if e["details"].get("instanceId") else "")
            for e in failed[:4]) + ")"
    if not r["available"]:
        text += f" — logs unavailable: {_unavailable(r)}"
    return text


def _unavailable(r: dict) -> str:
    f = r["failed_reads"]
    return f"{len(f)} failed read(s), last {f[-1]['call']} at {f[-1]['ts']}: {f[-1]['error']}" if f else "nothing pulled"


def _render_coverage(r: dict, p: Profile, a: Analysis) -> str | None:
    """Why Render's logs cannot vouch for the whole window, or None when they cover it (up to the
    delay with which Render's logs arrive)."""
    if not r["available"]:
        return f"Render's logs unavailable for this window: {_unavailable(r)}"
    cov = r["coverage"]
    allowed = (p.platform.evidence_delay_s if p.platform else 60.0) + 60.0
    tail = max(0.0, (a.observed_end - parse_time(cov["until"], name="until")).total_seconds())
    head = max(0.0, (parse_time(cov["from"], name="from") - a.window.start).total_seconds())
    window = (a.observed_end - a.window.start).total_seconds()
    inner = max(0.0, window - tail - head - cov["covered_s"])
    if tail > allowed or head > 1.0 or inner > 1.0:
        return (f"Render's logs cover {cov['covered_s'] / max(window, 1e-9):.1%} of the window ({cov['from']} .. "
                f"{cov['until']}, {cov['parts']} part(s))" + (f"; {len(r['failed_reads'])} failed read(s)"
                                                               if r["failed_reads"] else ""))
    return None


def _flags_at_startup(c: Criterion, a: Analysis, p: Profile) -> CriterionResult:
    """Every instance start in the window logged the startup line with every flag on (the seed's
    operator searched Render's logs for "[FeatureFlags]" at startup)."""
    r = a.render
    line = p.platform.startup_line if p.platform else "[FeatureFlags]"
    bad = [f"instance {s['instance']} at {s['ts']} logged " + ", ".join(
        f"{k}={'missing' if s['flags'].get(k) is None else str(s['flags'][k]).lower()}" for k in s["off"])
        for s in r["startups"] if s["off"]]
    missing = [f"instance {st['instance'] or '(unnamed)'} started {st['ts']} ({st['event']}"
               + (f" of {st['deploy']}" if st["deploy"] else "") + f") and logged no {line} line"
               for st in r["starts"] if st["line"] is None and st["settled"]]
    waiting = [st for st in r["starts"] if st["line"] is None and not st["settled"]]
    fails = bad + missing
    times = sorted([s["ts"] for s in r["startups"] if s["off"]]
                   + [st["ts"] for st in r["starts"] if st["line"] is None and st["settled"]])
    n = len(r["startups"])
    if fails:
        return CriterionResult(c.id, c.kind, False, len(fails), c.threshold, "Render logs: " + "; ".join(fails[:6])
                               + (f"; … {len(fails) - 6} more" if len(fails) > 6 else ""), n=n,
                               first=times[0], last=times[-1])
    gap = _render_coverage(r, p, a)
    if gap or waiting:
        why = gap or (f"instance start at {waiting[0]['ts']} ({waiting[0]['event']}): its {line} line is not in the "
                      "logs pulled so far")
        return CriterionResult(c.id, c.kind, None, 0, c.threshold, why, n=n)
    flags = ", ".join(p.platform.flags) if p.platform else "the flags"
    if not n:
        detail = f"no instance started in the window (Render's logs cover it up to {r['coverage']['until']})"
    else:
        detail = (f"{n} startup line(s), each with {flags} on: "
                  + ", ".join(f"{s['instance']} at {s['ts']}" for s in r["startups"][:6]))
    return CriterionResult(c.id, c.kind, True, 0, c.threshold, detail, n=n)


def _render_errors(c: Criterion, a: Analysis, p: Profile) -> CriterionResult:
    """Error-level app log lines and failed instances on Render (Scenario 3's "check Render logs
    for errors"): a soft target, beside the probes' health checks."""
    r = a.render
    failed = r["events_count"]["server_failed"]
    k = r["error_lines"] + failed
    detail = _render_health(r)
    if r["first_errors"]:
        e = r["first_errors"][0]
        detail += f"; first error line {e['ts']} ({e['instance']}): {e['message'][:160]}"
    times = sorted([e["ts"] for e in r["first_errors"]] + [e["ts"] for e in r["events"] if e["type"] == "server_failed"])
    if k > c.threshold:
        return CriterionResult(c.id, c.kind, False, k, c.threshold, detail, n=sum(r["log_levels"].values()),
                               first=times[0] if times else None, last=times[-1] if times else None)
    gap = _render_coverage(r, p, a)
    return CriterionResult(c.id, c.kind, None if gap else True, k, c.threshold, gap or detail,
                           n=sum(r["log_levels"].values()))
