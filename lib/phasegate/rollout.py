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
import os
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from .config import _Reader
from .errors import DataError, ProfileError, WindowError
from .objstore import Storage, is_remote, local_dir
from .profile import Profile, _merge, _read_toml, build_profile
from .rules import MachineSteps, machine_steps
from .window import format_duration, iso, parse_time, utcnow

AFTER_PREVIOUS = "after-previous-go"


@dataclass(frozen=True)
class Phase:
    id: str
    title: str
    profile_file: Path
    data: Path | str  # a directory, or an s3:// URL
    start: datetime | None  # None: after the previous phase's GO
    duration_s: float
    begin: str = ""  # what an operator does to start the phase, in words
    overrides: dict = field(default_factory=dict, compare=False)
    promote: MachineSteps = MachineSteps()  # what `act` does to start it, after the previous phase's approved GO
    storage: Storage = Storage()  # how its profile reaches an s3:// dataset
    promote_raw: dict = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True)
class Plan:
    path: Path
    name: str
    reports: Path
    phases: tuple[Phase, ...]
    allow_simulated: bool = False  # a drill: simulated samples may complete a phase (every output says DRILL)
    require_signature: bool = False  # approvals must be signed by a key in allowed_signers
    allowed_signers: Path | None = None
    max_report_age_s: float = 7200.0  # `act` refuses to act on an older report
    auto_rollback: bool = False  # `act --execute` may roll back on a NO-GO without an acknowledgement

    def phase(self, phase_id: str) -> Phase:
        for ph in self.phases:
            if ph.id == phase_id:
                return ph
        raise ProfileError(f"{self.path}: no phase {phase_id!r}; phases: {', '.join(p.id for p in self.phases)}")

    def profile(self, phase_id: str) -> Profile:
        """The phase's profile with the plan's criteria overrides and required duration applied."""
        ph = self.phase(phase_id)
        raw = _merge(_read_toml(ph.profile_file), {"criteria": ph.overrides})
        profile = build_profile(raw, f"{self.path} → {ph.id} ({ph.profile_file.name})")
        profile.check_phase(ph.id)
        return profile


def load_plan(path: str | os.PathLike, root: str | os.PathLike | None = None) -> Plan:
    """Read and validate a plan; every phase's profile is loaded now, so a typo fails here.
    `root`: the directory its data and report dirs are relative to (default: the working directory)."""
    path = Path(path)
    base = Path(root) if root not in (None, "") else Path()
    if not path.is_file():
        raise ProfileError(f"rollout plan not found: {path}")
    raw = _read_toml(path)
    if "target" in raw and "phase" not in raw:
        raise ProfileError(f"{path}: a profile, not a rollout plan (a plan lists [[phase]] tables with their profiles)")
    src = str(path)
    top = _Reader(src, raw, "")
    name = top.take("name", (str,), path.stem)
    # Data and report dirs are relative to the working directory (the project), profiles to the plan.
    reports = base / top.take("reports", (str,), "reports")
    tables = top.take("phase", (list,), required=True)
    allow_simulated = top.take("allow_simulated", (bool,), False)
    require_signature = top.take("require_signature", (bool,), False)
    signers = top.take("allowed_signers", (str,), None)
    max_age = top.duration("max_report_age", 7200.0)
    auto_rollback = top.take("auto_rollback", (bool,), False)
    top.done()
    if require_signature and signers is None:
        top.fail("allowed_signers", "is required with require_signature = true (an OpenSSH allowed-signers file)")
    allowed_signers = None if signers is None else path.parent / signers
    if not tables:
        top.fail("phase", "needs at least one [[phase]]")
    phases = []
    for i, t in enumerate(tables):
        where = f"phase[{i}]"
        r = _Reader(src, t, where)
        pid = r.take("id", (str,), required=True)
        prof = path.parent / r.take("profile", (str,), required=True)
        start_text = r.take("start", (str,), AFTER_PREVIOUS)
        if start_text == AFTER_PREVIOUS:
            if i == 0:
                r.fail(f"{where}.start", f"the first phase needs a start time ({AFTER_PREVIOUS} has no previous phase)")
            start = None
        else:
            try:
                start = parse_time(start_text, name=f"{where}.start")
            except WindowError:
                r.fail(f"{where}.start", f"must be an ISO 8601 time or {AFTER_PREVIOUS!r}, got {start_text!r}")
        duration = r.duration("duration", None)
        overrides = dict(r.take("criteria", (dict,), {}))
        if duration is not None:
            overrides["duration"] = f"{duration:g}s"
        phases.append(Phase(
            id=pid, title=r.take("title", (str,), pid), profile_file=prof,
            data=_data(base, r.take("data", (str,), f"data/{pid}")), start=start,
            duration_s=duration or 0.0, begin=r.take("begin", (str,), ""), overrides=overrides,
            promote_raw=r.take("promote", (dict,), {})))
        r.done()
    ids = [p.id for p in phases]
    dup = next((x for x in ids if ids.count(x) > 1), None)
    if dup:
        raise ProfileError(f"{src}: phase: id {dup!r} is used twice")
    extra = dict(allow_simulated=allow_simulated, require_signature=require_signature, allowed_signers=allowed_signers,
                 max_report_age_s=max_age, auto_rollback=auto_rollback)
    plan = Plan(path=path, name=name, reports=reports, phases=tuple(phases), **extra)
    resolved = []
    for i, ph in enumerate(phases):
        profile = plan.profile(ph.id)  # validates the profile and the overrides, naming the phase
        where = f"phase[{i}].promote"
        pr = _Reader(src, ph.promote_raw, where)
        promote = machine_steps(pr, where, {p.name for p in profile.probes})
        pr.done()
        resolved.append(Phase(ph.id, ph.title, ph.profile_file, ph.data, ph.start, profile.criteria.duration_s,
                              ph.begin, ph.overrides, promote, storage=profile.storage))
    return Plan(path=path, name=name, reports=reports, phases=tuple(resolved), **extra)


# -- where the rollout stands ------------------------------------------------------------


def phase_reports(reports: Path, phase_id: str) -> list[tuple[dict, Path]]:
    """Every finished sign-off of a phase, newest first (by the time it was evaluated as of)."""
    found = []
    for f in (reports / phase_id).glob("*/signoff.json"):
        if f.parent.name.endswith((".partial", ".old")):
            continue
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


def rejection(plan: Plan, ph: Phase, doc: dict, path: Path, start: datetime | None) -> tuple[str, dict | None]:
    """Why a report does not complete its phase ("" when it does), and its verified approval."""
    from .approval import APPROVAL, verify

    ver = None
    if (path.parent / APPROVAL).exists():  # first: a report changed after its approval says so, whatever it says
        ver = verify(path.parent, plan.allowed_signers if plan.require_signature else None)
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
    if plan.require_signature and not ver.signer_checked:
        return "the approval is unsigned and the plan requires a signature", None
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
            elif s.state == "current" and s.verdict:
                left = ph.duration_s - s.elapsed_s
                body = (f"{s.verdict} so far, {format_duration(s.elapsed_s)} of {format_duration(ph.duration_s)}"
                        + (f", {format_duration(left)} left" if left > 0 else ", window complete")
                        + f" (since {iso(s.start)}): {s.reason}")
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


def _data(base: Path, text: str):
    """A phase's dataset: a directory relative to the plan's root, or an s3:// URL as written."""
    return text if is_remote(text) else base / text


def _first_sample_after(data, after: datetime, now: datetime, storage=None) -> datetime | None:
    from .store import read_samples

    if after >= now:
        return None
    data = local_dir(data, storage, after, now)
    if not data.is_dir():
        return None
    ts = read_samples(data, after, now, columns=["ts"])["ts"]
    return None if ts.empty else ts.min().to_pydatetime()


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
        start = ph.start if ph.start is not None else _first_sample_after(ph.data, prev_end, now, ph.storage)
        rejected, unapproved = [], None
        for rdoc, rp in reps:
            why, approval = rejection(plan, ph, rdoc, rp, start)
            if not why:
                states.append(PhaseState(ph, "done", verdict="GO", report=rdoc, report_path=rp, start=start,
                                         approval=approval, rejected=rejected))
                prev_end = parse_time(rdoc["window"]["end"])
                break
            rejected.append((rp, why))
            if why == UNAPPROVED and unapproved is None:
                unapproved = rp.parent
        else:
            rdoc = None
        if rdoc is not None:
            continue
        nxt = plan.phases[i + 1] if i + 1 < len(plan.phases) else None
        s = PhaseState(ph, "current", start=start, report=doc, report_path=rpath, rejected=rejected)
        states.append(s)
        if unapproved is not None:
            s.reason = f"a GO report for the phase's complete window awaits approval: {unapproved}"
            action = f"review the report and approve it: phasegate approve {unapproved} --by NAME [--key SSH_KEY]"
            s.verdict, verdict = "GO", "GO"
            continue
        begin = ph.begin or "start the phase"
        collect = f"phasegate collect --profile {ph.profile_file} --data {ph.data}"
        if start is None:
            s.reason = f"not started: no samples in {ph.data} since the previous phase's GO ({iso(prev_end)})"
            action = f"proceed to {ph.title}: {begin}; then start the collector: {collect}"
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
    return f"render the GO report ({report}) and approve it (phasegate approve REPORT_DIR --by NAME){after}"


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
