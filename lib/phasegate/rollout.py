"""The whole rollout: a plan of phases, and where the rollout stands against it.

A plan (TOML) lists the phases in order, each with its target profile, its data dir, when it
starts (a time, or after the previous phase's GO), how long it must run, and criteria
overrides. `status` reads each phase's latest sign-off report and, for the phase in
progress, computes the verdict so far from its data, then says what to do next in words.

A phase counts as done only when a person has approved (`phasegate approve`) a GO report made
for that phase: the plan's resolved profile (same hash), the plan's window (its start, or the
first sample after the previous phase's window, and its full duration), live samples only
(unless the plan is a drill: `allow_simulated = true`), unchanged since its approval. `status`
says of every other report why it does not count. The approved report is the gate, not a
number computed on the fly.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from . import ledger
from .criteria import describe
from .errors import DataError
from .plan import AFTER_PREVIOUS, EPOCH, Phase, Plan, load_plan  # noqa: F401 - the plan's names, as callers know them
from .window import format_duration, iso, parse_time, utcnow

# -- where the rollout stands ------------------------------------------------------------


def phase_reports(reports: Path, phase_id: str) -> list[tuple[dict, Path]]:
    """Every finished sign-off of a phase, newest first (by the time it was evaluated as of)."""
    found = []
    for f in (reports / phase_id).glob("*/signoff.json"):
        if f.parent.name.endswith((".partial", ".old")) or ".failed" in f.parent.name:
            continue  # a failed run's folder may hold the document its notebook wrote before failing
        try:
            doc = json.loads(f.read_text())
        except (OSError, ValueError):
            continue  # a torn file is not a report; the next good one speaks
        found.append(((doc.get("as_of", ""), doc.get("generated_at", "")), doc, f))
    found.sort(key=lambda x: x[0], reverse=True)
    return [(doc, f) for _, doc, f in found]


def latest_report(reports: Path, phase_id: str) -> tuple[dict, Path] | None:
    """The newest finished sign-off of a phase."""
    found = phase_reports(reports, phase_id)
    return found[0] if found else None


UNAPPROVED = "not approved yet"
UNSIGNED = "the approval is unsigned and the plan requires a signature"


def rejection(plan: Plan, ph: Phase, doc: dict, path: Path, start: datetime | None) -> tuple[str, dict | None]:
    """Why a report does not complete its phase ("" when it does), and its verified approval."""
    from .approval import APPROVAL, verify

    ver = None
    if (path.parent / APPROVAL).exists():  # first: a report changed after its approval says so, whatever it says
        ver = verify(path.parent)
        if ver.ok and plan.require_signature:
            if not ver.signed:
                return UNSIGNED, None
            ver = verify(path.parent, plan.allowed_signers)
        if not ver.ok:
            return f"refused: {ver.problem}", None
    v = doc.get("verdict")
    if v != "GO":
        return f"verdict {v}, not GO", None
    prov = doc.get("provenance")
    if not prov:
        return "made by a phasegate without provenance (no profile hash): render it again", None
    want = plan.profile(ph.id).sha256
    if prov.get("profile_sha256") != want:
        return (f"made with another profile (resolved hash {str(prov.get('profile_sha256'))[:12]}…, the phase's is "
                f"{want[:12]}…: report it with --plan {plan.path})"), None
    w = doc.get("window", {})
    if start is None or w.get("start") != iso(start) or not prov.get("window_complete") or \
            w.get("end") != iso(start + timedelta(seconds=ph.duration_s)):
        want_w = "unknown yet" if start is None else \
            f"{iso(start)} → {iso(start + timedelta(seconds=ph.duration_s))}"
        return f"window {w.get('start')} → {w.get('end')} is not the phase's complete window ({want_w})", None
    sim = prov.get("samples", {}).get("simulated", 0)
    if sim and not plan.allow_simulated:
        return f"{sim:,} simulated samples (only a drill plan, allow_simulated = true, accepts them)", None
    if ver is None:
        return UNAPPROVED, None
    if ver.approval["kind"] != "approval":
        return f"acknowledged by {ver.approval['by']}, not approved", None
    return "", ver.approval


@dataclass
class PhaseState:
    phase: Phase
    state: str  # done, current, waiting
    start: datetime | None = None
    verdict: str | None = None  # the verdict so far (current) or of the signed report (done)
    reason: str = ""
    report: dict | None = None
    report_path: Path | None = None
    doc: dict | None = None
    elapsed_s: float = 0.0
    approval: dict | None = None  # of the report that completed the phase
    unpromoted: bool = False  # it has promotion steps that phasegate act has not carried out
    rejected: list = field(default_factory=list)  # (report path, why it does not count)


@dataclass
class RolloutStatus:
    plan: Plan
    now: datetime
    phases: list
    next_action: str
    verdict: str | None  # the current phase's verdict so far, None when nothing is running

    @property
    def text(self) -> str:
        lines = [f"ROLLOUT: {self.plan.name} ({self.plan.path}) as of {iso(self.now)}"]
        for i, s in enumerate(self.phases, 1):
            ph = s.phase
            head = f"  {i}. {ph.title} [{ph.id}]"
            if s.state == "done":
                body = (f"GO, {approved_text(s.approval)} {s.report['window']['start']} → {s.report['window']['end']}"
                        + (" [DRILL]" if s.report.get("mode") == "drill" else ""))
            elif s.state == "current" and s.verdict and s.doc is None:  # decided from the records, not evaluated
                body = f"{s.verdict}: {s.reason}"
            elif s.state == "current" and s.verdict:
                left = ph.duration_s - s.elapsed_s
                body = (f"{s.verdict} so far, {format_duration(s.elapsed_s)} of {format_duration(ph.duration_s)}, "
                        f"{format_duration(left)} left" if left > 0 else
                        f"{s.verdict}, window complete ({format_duration(ph.duration_s)})") + \
                    (f" (since {iso(s.start)})" if s.start else "") + f": {s.reason}"
            elif s.state == "current":
                body = s.reason
            else:
                body = "not started" + (f" (starts {iso(ph.start)})" if ph.start else " (after the previous phase's GO)")
            lines.append(f"{head}: {body}")
            if s.report_path is not None:
                pdf = s.report_path.with_name("signoff.pdf")
                shown = pdf if pdf.exists() else s.report_path
                lines.append(f"     latest report: {s.report['verdict']} as of {s.report['as_of']}: {shown}")
            elif s.state != "waiting":
                lines.append("     latest report: none")
            for path, why in s.rejected[:5]:
                lines.append(f"     not counted: {path.parent}: {why}")
            if len(s.rejected) > 5:
                lines.append(f"     ... and {len(s.rejected) - 5} more reports that do not count")
        lines.append(f"NEXT: {self.next_action}")
        return "\n".join(lines)


def approved_text(approval: dict) -> str:
    signed = "signed" if approval.get("signature") else "unsigned"
    return f"approved by {approval['by']} at {approval['at']} ({signed})"


def phase_start(ph: Phase, prev_end: datetime | None, now: datetime):
    """Where a phase's window starts, from its dataset: (start or None, the act runs recorded since
    its anchor, why it has not started when that needs saying). The anchor is the plan's start
    time, or the previous phase's approved window end. A promotion (or restart) that `act`
    completed moves the start to the first probe from the whole second after it: the window begins
    on the new deploy, live and verified, so phasegate's own deploy is never inside it."""
    anchor = ph.start if ph.start is not None else prev_end if prev_end is not None else EPOCH  # first-sample

    runs = ledger.runs(ph.data, ph.storage, anchor, now) if anchor < now else []
    moved = ledger.last_complete(runs, ("promote", "restart"))
    if moved is not None:
        # Windows are written to the second (a report's start is truncated): the first probe from
        # the next whole second on, so a deploy that went live in the act's last second, and the
        # old deployment's probes of that second, stay before the window.
        after = moved.ended.replace(microsecond=0) + timedelta(seconds=1)
        start = ledger.first_probe_after(ph.data, ph.storage, after, now)
        return start, runs, "" if start else (f"promoted at {iso(moved.ended)} by {moved.by}; no probe sample since: "
                                                  f"start the collector")
    tried = [r for r in runs if r.kind in ("promote", "restart")]
    if ph.promote and prev_end is not None and not tried:
        # A phase with promotion steps starts with its promotion: probes before it watch the
        # previous state, not the phase.
        return None, runs, ""
    if tried and ph.promote:
        last = tried[-1]
        failed = next((f"{step}: {detail or outcome}" for _, step, outcome, detail in last.steps if outcome != "ok"),
                      "it did not finish")
        return None, runs, f"its {last.kind} by {last.by} at {iso(last.started)} failed ({failed})"
    if ph.start is not None:
        return ph.start, runs, ""
    return ledger.first_probe_after(ph.data, ph.storage, anchor, now), runs, ""


def approve_cmd(plan: Plan, folder) -> str:
    """The exact approve command for a report of this plan: with --key when it requires signatures."""
    key = " --key SSH_KEY" if plan.require_signature else " [--key SSH_KEY]"
    return f"phasegate approve {folder} --plan {plan.path} --by NAME{key}"


def _report_cmd(plan: Plan, ph: Phase) -> str:
    return f"phasegate report --plan {plan.path} --phase {ph.id}"


def status(plan: Plan, now: datetime | None = None, evaluate: bool = True) -> RolloutStatus:
    """`evaluate=False`: where each phase starts and which is current, without analysing its data."""
    from .signoff import run

    now = now or utcnow()
    states: list[PhaseState] = []
    prev_end: datetime | None = None
    action, verdict = None, None
    for i, ph in enumerate(plan.phases):
        reps = phase_reports(plan.reports, ph.id)
        doc, rpath = reps[0] if reps else (None, None)
        if action is not None:  # a phase before this one is not done yet
            states.append(PhaseState(ph, "waiting", report=doc, report_path=rpath))
            continue
        start, runs, why_none = phase_start(ph, prev_end, now)
        # A phase with promotion steps that act has not carried out yet (a person may promote by
        # hand; its window then starts at the first probe, as without steps).
        unpromoted = bool(ph.promote) and prev_end is not None and \
            ledger.last_complete(runs, ("promote", "restart")) is None
        rejected, unapproved, replace = [], None, False
        for rdoc, rp in reps:
            why, approval = rejection(plan, ph, rdoc, rp, start)
            if not why:
                states.append(PhaseState(ph, "done", verdict="GO", report=rdoc, report_path=rp, start=start,
                                         approval=approval, rejected=rejected))
                prev_end = parse_time(rdoc["window"]["end"])
                break
            rejected.append((rp, why))
            if why in (UNAPPROVED, UNSIGNED) and unapproved is None:
                unapproved, replace = rp.parent, why == UNSIGNED
        else:
            rdoc = None
        if rdoc is not None:
            continue
        nxt = plan.phases[i + 1] if i + 1 < len(plan.phases) else None
        s = PhaseState(ph, "current", start=start, report=doc, report_path=rpath, rejected=rejected,
                       unpromoted=unpromoted)
        states.append(s)
        if unapproved is not None:
            s.reason = f"a GO report for the phase's complete window awaits approval: {unapproved}"
            action = (f"sign its approval again (the plan requires a signature): {approve_cmd(plan, unapproved)} --replace"
                      if replace else f"review the report and approve it: {approve_cmd(plan, unapproved)}")
            s.verdict, verdict, s.elapsed_s = "GO", "GO", ph.duration_s
            continue
        begin = ph.begin or "start the phase"
        collect = f"phasegate collect --profile {ph.profile_file} --data {ph.data}"
        promote = f"phasegate act --plan {plan.path} --execute (its promotion: {'; '.join(describe(ph.promote))})"
        if start is None:
            since = f"since the previous phase's GO ({iso(prev_end)})" if prev_end else "yet"
            s.reason = why_none or (f"not started: awaiting its promotion by phasegate act (a phase with promotion steps "
                                    f"starts once they are verified)" if unpromoted else
                                    f"not started: no samples in {ph.data} {since}")
            action = (f"proceed to {ph.title}: " + (promote if ph.promote else begin)
                      + f"; then start the collector: {collect}") if not why_none else \
                f"{why_none}; once the cause is fixed: phasegate act --plan {plan.path} --execute"
            continue

        rolled = ledger.last_complete([r for r in runs if r.started >= start], ("rollback",))
        if rolled is not None:
            s.verdict, verdict = "NO-GO", "NO-GO"
            s.reason = (f"rolled back at {iso(rolled.ended)} by {rolled.by} (phasegate act: "
                        f"{len(rolled.steps)} steps done); the window since {iso(start)} cannot pass any more")
            action = (f"find and fix the cause, then restart the phase (its promotion again; a new window starts once "
                      f"it is verified): phasegate act --plan {plan.path} --restart --execute --by NAME")
            continue
        if start > now:
            s.reason = f"starts {iso(start)}"
            action = f"wait {format_duration((start - now).total_seconds())} until {iso(start)}, then {begin}"
            continue
        if not evaluate:
            s.reason, action = "in progress", f"report it: {_report_cmd(plan, ph)}"
            continue
        try:
            so = run(plan.path, ph.data, ph.id, start=iso(start), hours=ph.duration_s / 3600.0, as_of=iso(now),
                     plan=plan, pull=False)  # status only reads what is stored
        except DataError as exc:
            s.reason = f"no evidence yet: {exc}"
            action = f"start the collector: {collect}"
            continue
        d = so.doc
        s.doc, s.verdict, s.reason = d, d["verdict"], d["reason"]
        s.elapsed_s = d["window"]["elapsed_s"]
        verdict = d["verdict"]
        end = start + timedelta(seconds=ph.duration_s)
        action = _next_action(plan, ph, nxt, d, end, now)

    if action is None:
        action = "rollout complete: every phase has an approved GO report"
    return RolloutStatus(plan, now, states, action, verdict)


def _next_action(plan: Plan, ph: Phase, nxt: Phase | None, d: dict, end: datetime, now: datetime) -> str:
    v = d["verdict"]
    report = _report_cmd(plan, ph)
    if v == "NO-GO":
        steps = d["runbook"]
        if steps:
            first = steps[0]
            return f"run {first['title']}: " + "; ".join(first["steps"][:2]) + f" (failed: {first['criterion']})"
        failed = [c["id"] for c in d["criteria"] if c["passed"] is False and c["kind"] == "hard"]
        return f"stop the rollout and investigate: {', '.join(failed)} failed"
    if v == "REVIEW":
        soft = [c for c in d["criteria"] if c["passed"] is False]
        return "review the soft target(s) before going on: " + "; ".join(f"{c['id']}: {c['detail']}" for c in soft[:3])
    if v == "PENDING":
        return f"wait {format_duration((end - now).total_seconds())} (window ends {iso(end)}), then sign off: {report}"
    if v == "INCONCLUSIVE":
        return f"not enough evidence to decide ({d['reason']}); fix collection and extend the window, then: {report}"
    # GO computed now over the complete window, but no approved report yet.
    after = f"; then proceed to {nxt.title}: {nxt.begin or 'start it'}" if nxt else "; that completes the rollout"
    return f"render the GO report ({report}) and approve it ({approve_cmd(plan, 'REPORT_DIR')}){after}"


def collecting_phase(plan: Plan, now: datetime | None = None) -> Phase | None:
    """The phase a collector serving the whole rollout should probe now: the first phase not yet
    completed by an approved GO (None when every phase is)."""
    st = status(plan, now or utcnow(), evaluate=False)
    return next((s.phase for s in st.phases if s.state == "current"), None)


def collect_plan(plan: Plan, *, until_ts: float | None = None, recheck_s: float = 60.0, progress=None,
                 compact_every_s: float = 60.0, say=print) -> int:
    """Collect for whichever phase is in progress, switching profile and data dir when that phase
    is approved, so one collector (unit, cron line) serves the whole rollout without edits.
    Returns the samples collected; stops on SIGTERM/SIGINT, at `until_ts`, or when every phase is done."""
    import signal
    import threading
    import time

    from .collector import Collector

    stopping = threading.Event()
    current: list = [None]

    def stop(*_args):
        stopping.set()
        if current[0] is not None:
            current[0].stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    total, last = 0, None
    while not stopping.is_set() and (until_ts is None or time.time() < until_ts):
        ph = collecting_phase(plan)
        if ph is None:
            say(f"rollout complete: every phase of {plan.path} has an approved GO report; nothing to collect")
            break
        if ph.id != last:
            say(f"collecting for {ph.title} [{ph.id}] into {ph.data}")
            last = ph.id
        end = time.time() + recheck_s
        c = Collector(plan.profile(ph.id), ph.data, until_ts=end if until_ts is None else min(end, until_ts),
                      compact_every_s=compact_every_s, progress=progress)
        current[0] = c
        if stopping.is_set():
            break
        total += c.run().samples
        current[0] = None
    return total


def phase_window(plan: Plan, phase_id: str, now: datetime) -> tuple[Phase, datetime]:
    """A phase and its window start, as `status` sees them (without analysing the data: the
    report is about to do that)."""
    plan.phase(phase_id)
    st = status(plan, now, evaluate=False)
    current = next(s for s in st.phases if s.phase.id == phase_id)
    if current.start is None:
        raise DataError(f"{current.phase.id}: {current.reason}; next: {st.next_action}")
    return current.phase, current.start


def summary(plan, as_of=None, out_dir=None, root=None) -> dict:
    """Every phase's sign-off compiled into one timeline document (`rollout.json` in out_dir)."""
    from .signoff import find_path, write_json

    plan = plan if isinstance(plan, Plan) else load_plan(find_path(plan), root)
    now = parse_time(as_of, name="as_of") if as_of not in (None, "") else utcnow()
    st = status(plan, now)
    phases = []
    for s in st.phases:
        d = s.doc or s.report  # the live verdict for the phase in progress, else its latest report
        row = {"id": s.phase.id, "title": s.phase.title, "state": s.state, "verdict": s.verdict,
               "required_s": s.phase.duration_s, "report": str(s.report_path) if s.report_path else None,
               "report_verdict": s.report["verdict"] if s.report else None,
               "report_as_of": s.report["as_of"] if s.report else None, "reason": s.reason,
               "approved": approved_text(s.approval) if s.approval else None,
               "drill": bool(s.report and s.report.get("mode") == "drill"),
               "not_counted": [{"report": str(p.parent), "why": why} for p, why in s.rejected]}
        if d:
            row.update(start=d["window"]["start"], end=d["window"]["end"], observed_end=d["window"]["observed_end"],
                       samples=d["overall"]["samples"], errors=d["overall"]["errors"],
                       failed=[{"id": c["id"], "kind": c["kind"], "detail": c["detail"]}
                               for c in d["criteria"] if c["passed"] is False and c["id"] != "window_complete"],
                       runbook=[r["title"] for r in d.get("runbook", [])], actions=d.get("actions", []),
                       tenants=(d.get("tenants") or {}).get("count"))
        phases.append(row)
    doc = {"plan": {"name": plan.name, "path": str(plan.path)}, "as_of": iso(now), "generated_at": iso(utcnow()),
           "current_verdict": st.verdict, "next_action": st.next_action, "phases": phases}
    if out_dir not in (None, ""):
        write_json(doc, Path(out_dir) / "rollout.json")
    return doc
