"""`phasegate act --plan P`: carry out what the latest report of the phase in progress calls for,
through the platform, with a human in the loop.

On a NO-GO it proposes the failed criteria's runbook machine steps (set_env, deploy, verify);
on an approved GO of the previous phase, the next phase's promotion steps; with `--restart`, the
phase's promotion again (after a rollback, once a person has fixed the cause). By default it
prints them and changes nothing (not even a read of the platform). `--execute` carries them out,
one call at a time under the adapter's deadline, stopping at the first step that fails: a
deploy is followed through Render's lifecycle until it is live (or fails), and `verify` runs only
then. Each step, and each status the deploy passes through, is stored as a sample (source
"action") in the phase's dataset, so the next report and the rollout summary show it, and goes
to the webhook. What was done is read back from there: a rollback is never carried out twice.

It refuses, in one line and before any change, when the report is older than the plan's
`max_report_age`, when the profile changed since the report, when the platform's flags are no
longer what the report saw, when a flag lives in an environment group the step would shadow,
when another `act` holds the plan's lock, and when a rollback's NO-GO is neither acknowledged
nor covered by `auto_rollback`. Waiting (a GO not approved yet, a window still open) is not a
refusal: it says what it waits for and exits 0.
"""

from __future__ import annotations

import fcntl
import getpass
import json
import os
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from . import ledger
from .criteria import describe
from .errors import ActionRefused as Refused
from .platform import FAILED, LIVE, ON, call, follow, read_env, trigger_deploy
from .redact import redact_text
from .profile import Profile
from .rollout import Plan, approve_cmd, phase_reports, rejection, status
from .rules import MachineSteps
from .window import format_duration, iso, parse_time, utcnow

LOCK = ".act.lock"


@dataclass
class Proposal:
    kind: str  # "rollback", "promote" or "" (nothing to do)
    phase: str = ""  # the phase whose dataset records the actions
    report: Path | None = None
    doc: dict | None = None
    steps: MachineSteps = MachineSteps()
    why: str = ""
    profile: Profile | None = None
    approved_at: str | None = None  # a promotion's GO: when it was approved

    def age_s(self, now: datetime) -> float:
        """How old the decision is: the report's age, or for a promotion the approval's (a GO
        approved hours after it was made is fresh from the approval on)."""
        made = parse_time(self.doc["generated_at"], name="generated_at")
        if self.approved_at:
            made = max(made, parse_time(self.approved_at, name="approved at"))
        return (now - made).total_seconds()

    def lines(self) -> list[str]:
        return describe(self.steps)


@dataclass
class ActResult:
    text: list = field(default_factory=list)
    failed: bool = False


def propose(plan: Plan, now: datetime, restart: bool = False) -> Proposal:
    """What the rollout's state calls for, from the reports and the phases' own records of what
    act did (no platform call)."""
    st = status(plan, now, evaluate=False)
    prev = None
    for s in st.phases:
        if s.state == "done":
            prev = s
            continue
        if s.state != "current":
            break
        ph = s.phase
        if restart:
            if not ph.promote:
                raise Refused(f"{ph.title} has no [phase.promote] steps to restart it with: restart it by hand "
                              f"({ph.begin or 'start the phase'})")
            return Proposal("restart", ph.id, None, None, ph.promote,
                            f"restart {ph.title}: its promotion again; a new window starts once it is verified",
                            plan.profile(ph.id))
        if s.start is not None:
            runs = ledger.runs(ph.data, ph.storage, s.start, now)
            rolled = ledger.last_complete(runs, ("rollback",))
            if rolled is not None:
                return Proposal("", ph.id, why=(
                    f"{ph.title} was rolled back at {iso(rolled.ended)} by {rolled.by} (recorded in its dataset): "
                    f"nothing more to do by machine; once the cause is fixed: phasegate act --plan {plan.path} "
                    f"--restart --execute"))
        # Only reports of the phase's current window count: a NO-GO of the window before a
        # restart was dealt with already (its rollback is behind the restart).
        reps = [(d, p) for d, p in phase_reports(plan.reports, ph.id)
                if s.start is not None and (d.get("window") or {}).get("start") == iso(s.start)]
        if reps:
            doc, path = reps[0]
            if doc.get("verdict") == "NO-GO":
                profile = plan.profile(ph.id)
                ids = [r["id"] for r in doc.get("runbook", [])]
                steps = _merge([profile.runbook[i].machine for i in ids if i in profile.runbook])
                failed = ", ".join(r["criterion"] for r in doc.get("runbook", [])) or "hard criteria"
                return Proposal("rollback", ph.id, path, doc, steps, f"{ph.title} is NO-GO ({failed})", profile)
            if doc.get("verdict") == "GO" and doc.get("window", {}).get("complete"):
                why = rejection(plan, ph, doc, path, s.start)[0]
                if why:  # waiting for a person: not a failure of the unattended job
                    return Proposal("", ph.id, why=f"waiting: the GO report {path.parent} does not count yet ({why}): "
                                                   f"{approve_cmd(plan, path.parent)}")
        if prev is not None and prev.report_path is not None and ph.promote and s.unpromoted:
            return Proposal("promote", ph.id, prev.report_path, prev.report, ph.promote,
                            f"{prev.phase.title} has an approved GO: start {ph.title}", plan.profile(ph.id),
                            approved_at=(prev.approval or {}).get("at"))
        return Proposal("", ph.id, why=f"{ph.title}: {s.reason or 'in progress'}; nothing calls for an action")
    return Proposal("", why="every phase is done or waiting; nothing calls for an action")


def _merge(parts: list[MachineSteps]) -> MachineSteps:
    env = dict(kv for m in parts for kv in m.set_env)
    verify = next((m.verify for m in parts if m.verify), None)
    deploys = [m for m in parts if m.deploy]
    hook = next((m.deploy_hook_env for m in deploys if m.deploy_hook_env), None)
    within = max((m.deploy_within_s for m in deploys), default=900.0)
    return MachineSteps(tuple(sorted(env.items())), bool(deploys), verify, hook, within,
                        any(m.override_group for m in parts))


def act(plan: Plan, execute: bool = False, now: datetime | None = None, by: str | None = None,
        restart: bool = False) -> ActResult:
    now = now or utcnow()
    with _lock(plan):
        p = propose(plan, now, restart)
        res = ActResult()
        if not p.kind:
            res.text.append(p.why)
            return res
        if p.doc is not None:
            age = p.age_s(now)
            if age > plan.max_report_age_s:
                since = "approved" if p.approved_at else "made"
                raise Refused(f"the report {p.report.parent} was {since} {format_duration(age)} ago (max_report_age "
                              f"{format_duration(plan.max_report_age_s)}): report again before acting")
        if p.kind == "rollback":
            _check_profile(p)
        if not p.steps:
            res.text.append(f"{p.why}; its runbook has no machine steps: follow its steps by hand")
            return res
        head = f"{'EXECUTING' if execute else 'DRY RUN (nothing sent; --execute carries it out)'}: {p.kind} — {p.why}"
        res.text += [head] + [f"  {i}. {line}" for i, line in enumerate(p.lines(), 1)]
        if not execute:
            return res
        if p.kind == "rollback" and not plan.auto_rollback and not _acknowledged(plan, p):
            raise Refused(f"the NO-GO report {p.report.parent} is not acknowledged and the plan does not set "
                          f"auto_rollback = true: phasegate approve {p.report.parent} --acknowledge --by NAME"
                          + (" --key SSH_KEY" if plan.require_signature else ""))
        _run(plan, p, by or _who(), res)
        return res


def _check_profile(p: Proposal) -> None:
    saw = p.doc.get("provenance", {}).get("profile_sha256")
    if saw and saw != p.profile.sha256:
        raise Refused(f"the profile of {p.phase} changed since the report {p.report.parent} "
                      f"(SHA-256 {saw[:12]}… then, {p.profile.sha256[:12]}… now): report again before acting")


def _acknowledged(plan: Plan, p: Proposal) -> bool:
    """A person acknowledged a NO-GO of this window (this report, or another revision of it), with
    a signature the plan accepts when it requires one."""
    from .approval import APPROVAL, verify

    window = p.doc.get("window", {})
    for doc, path in phase_reports(plan.reports, p.phase):
        w = doc.get("window", {})
        if doc.get("verdict") != "NO-GO" or (w.get("start"), w.get("end")) != (window.get("start"), window.get("end")):
            continue
        if not (path.parent / APPROVAL).exists():
            continue
        v = verify(path.parent, plan.allowed_signers if plan.require_signature else None)
        if v.ok:
            return True
    return False


def _who() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid {os.getuid()}"


@contextmanager
def _lock(plan: Plan):
    plan.reports.mkdir(parents=True, exist_ok=True)
    path = plan.reports / LOCK
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            raise Refused(f"another phasegate act holds the lock on {plan.path} ({holder}): not acting twice") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} since {iso(utcnow())}".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing releases the lock


# -- carrying it out ----------------------------------------------------------------------


def _run(plan: Plan, p: Proposal, by: str, res: ActResult) -> None:
    from . import notify

    src = p.profile.platform
    if src is None:
        raise Refused(f"{p.phase}'s profile has no enabled [platform] section: nothing can act on the service")
    key = os.environ.get(src.api_key_env, "")
    if not key:
        raise Refused(f"${src.api_key_env} is not set: the platform API needs its key")
    hook = None
    if p.steps.deploy and p.steps.deploy_hook_env:
        hook = os.environ.get(p.steps.deploy_hook_env, "")
        if not hook:
            raise Refused(f"${p.steps.deploy_hook_env} is not set: the deploy step triggers the service's deploy hook")
    env, row = read_env(src, key)
    if env is None:
        raise Refused(f"cannot read the platform's environment before acting: {row.get('error')}")
    if row.get("retried"):
        res.text.append(f"  (reading the environment was rate-limited: {'; '.join(row['retried'])})")
    if p.kind != "restart":  # a restart is a person's fresh decision; the others act on a report's view
        _check_state(p, src, env.values)
    _check_groups(p.steps, env)
    rec = _Recorder(plan, p, by, [key, hook])  # only now: a refusal leaves nothing in the dataset
    steps = list(_calls(p, src, key, hook, rec))
    try:
        for i, (what, step) in enumerate(steps, 1):
            row = step()
            rec.add(what, row, last=i == len(steps) and row["outcome"] == "ok")
            detail = f" ({row['detail']})" if row.get("detail") else ""
            res.text.append(f"  {i}. {what}: {'done' if row['outcome'] == 'ok' else 'FAILED'}{detail}")
            sent = notify.send_text(rec.scrub(f"phasegate act {p.kind} on {p.phase}: {what}: {row['outcome']}{detail}"))
            if sent:
                res.text.append(f"     {sent}")
            if row["outcome"] != "ok":
                res.failed = True
                res.text.append(f"stopped at step {i} ({what}); nothing after it was sent. Not retried: check the "
                                f"platform, then report again")
                break
    finally:
        rec.close()  # what was done is stored, whatever stopped the sequence
    res.text.append(f"recorded {rec.n} action(s) in {p.phase}'s dataset ({rec.where})")


def _check_state(p: Proposal, src, env: dict) -> None:
    """The flags the platform has now must be the ones the report saw last; else someone acted meanwhile."""
    seen = (p.doc.get("inputs") or {}).get("platform_seen") or {}
    if seen.get("service_id", src.service_id) != src.service_id:
        return  # the report watched another service (a promotion to production): nothing to compare
    saw = seen.get("flags")
    if not saw:
        raise Refused(f"the report {p.report.parent} saw no platform flags (was [platform] read?): "
                      f"cannot tell whether the state changed since; report again with the platform enabled")
    for name, was in sorted(saw.items()):
        now = (str(env[name]).strip().lower() in ON) if name in env else None
        if now != was:
            raise Refused(f"the platform changed since the report: {name} was {_word(was)}, is {_word(now)} now; "
                          f"someone acted meanwhile: report again before acting")


def _check_groups(steps: MachineSteps, env) -> None:
    """A variable kept in an environment group is not shadowed by a service-level one unless the step says so."""
    for name, _value in steps.set_env:
        if name in env.groups and name not in env.own and not steps.override_group:
            gid, gname = env.groups[name]
            raise Refused(f"{name} is kept in the environment group {gname} ({gid}): setting it on the service would "
                          f"shadow the group's value; change it in the group, or set override_group = true on the step")


def _word(v) -> str:
    return "unset" if v is None else ("on" if v else "off")


def _calls(p: Proposal, src, key, hook, rec):
    for name, value in p.steps.set_env:
        yield f"set {name}={value}", lambda n=name, v=value: _api(src, key, "PUT", f"/services/{src.service_id}/env-vars/{n}",
                                                                    {"value": v}, flags={n: v})
    if p.steps.deploy:
        yield "trigger a deploy", lambda: _deploy(src, key, hook, p.steps.deploy_within_s, rec)
    if p.steps.verify:
        yield (f"verify {p.steps.verify.probe} answers {'/'.join(map(str, p.steps.verify.expect_status))}",
               lambda: _verify(p.profile, p.steps.verify))


def _api(src, key, method, path, body, flags=None) -> dict:
    _answer, row = call(src, method, path, key, body)
    row["probe"] = "act.set_env"
    if flags:
        row["flags"] = json.dumps(flags)
    if row["outcome"] != "ok":
        row["detail"] = row.get("error")
    return row


def _deploy(src, key, hook, within_s: float, rec) -> dict:
    """Trigger one deploy, record it, and follow it until live or failed: the step's row is the
    deploy's last status. Until it is live the old instance serves, so nothing is verified before."""
    t0 = time.monotonic()
    d, row = trigger_deploy(src, key, hook)
    row["probe"] = "act.deploy"
    if d is None:
        row["detail"] = row.get("error")
        return row
    did = str(d["id"])
    notes = [row["note"]] if row.get("note") else []
    notes += ["rate-limited: " + "; ".join(row["retried"])] if row.get("retried") else []
    row.update(deployment_id=did, health_status=d.get("status"),
               detail=f"deploy {did} triggered" + (f" ({'; '.join(notes)})" if notes else ""))
    rec.add(f"deploy {did} triggered", row)

    def seen(state, _at):
        if state != LIVE and state not in FAILED:
            rec.add(f"deploy {did} {state}", {"probe": "act.deploy_status", "outcome": "ok", "deployment_id": did,
                                               "health_status": state, "detail": f"deploy {did}: {state}"})

    final, last = follow(src, key, d, within_s, seen)
    took = format_duration(time.monotonic() - t0)
    out = {"probe": "act.deploy_status", "deployment_id": did, "health_status": final, "method": "GET",
           "status": last.get("status"), "url": last.get("url")}
    if final == LIVE:
        return {**out, "outcome": "ok", "detail": f"deploy {did} live after {took}"}
    if final in FAILED:
        return {**out, "outcome": "deploy_failed", "error": f"deploy {did} ended {final}",
                "detail": f"deploy {did} ended {final} after {took}: the previous deploy keeps serving"}
    return {**out, "outcome": "timeout", "error": last.get("error"),
            "detail": f"deploy {did} not live within {format_duration(within_s)} ({last.get('error')})"}


def _verify(profile: Profile, v) -> dict:
    """The probe (every tenant of it) until all answer an expected status, or `within` passes."""
    from .collector import probe_jobs
    from .probe import run_probe

    jobs = [(pr, t) for pr, t in probe_jobs(profile) if pr.name == v.probe]
    secrets = profile.secret_values()
    deadline, tries, last = time.monotonic() + v.within_s, 0, []
    while True:
        tries += 1
        last = [run_probe(profile.target, pr, tenant=t, secrets=secrets) for pr, t in jobs]
        if all(r.get("status") in v.expect_status for r in last):
            got = sorted({r["status"] for r in last})
            return {"probe": "act.verify", "outcome": "ok", "status": got[0], "method": "GET",
                    "detail": f"{v.probe} answered {'/'.join(map(str, got))} after {tries} tr{'y' if tries == 1 else 'ies'}"}
        if time.monotonic() + 2.0 > deadline:
            seen = sorted({str(r.get("status") or r.get("outcome")) for r in last})
            return {"probe": "act.verify", "outcome": "verify_failed", "status": last[0].get("status") if last else None,
                    "method": "GET", "detail": f"{v.probe} still answered {', '.join(seen)} after "
                                               f"{format_duration(v.within_s)} ({tries} tries)"}
        time.sleep(2.0)


class _Recorder:
    """Action rows into the phase's dataset (s3:// too), written as each step ends."""

    def __init__(self, plan: Plan, p: Proposal, by: str, secrets):
        from .objstore import Location
        from .store import SampleWriter

        self.p, self.by, self.n = p, by, 0
        self.secrets = [x for x in secrets if x]
        self.loc = Location(plan.phase(p.phase).data, p.profile.storage)
        self.where = self.loc.url
        self.run_id = f"act-{utcnow().strftime('%Y%m%dT%H%M%SZ')}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.writer = SampleWriter(self.loc.local, self.run_id, upload=self.loc.push if self.loc.remote else None)

    def scrub(self, text):
        return redact_text(text, self.secrets) if isinstance(text, str) else text

    def add(self, what: str, row: dict, last: bool = False) -> None:
        self.n += 1
        evidence = {"action": what, "kind": self.p.kind, "by": self.by, "why": self.p.why,
                    "report": str(self.p.report.parent) if self.p.report else None, "detail": row.get("detail"),
                    "last": last}
        out = {k: self.scrub(v) for k, v in row.items() if k not in ("detail", "note", "retried")}
        out.update(ts=time.time(), source="action", target=self.p.profile.target.name, error_code=self.p.kind,
                   request_id=f"{self.run_id}:{self.n}", evidence=self.scrub(json.dumps(evidence)), tenant=None,
                   simulated=False, assertion_failures=[])
        self.writer.append(out)

    def close(self) -> None:
        self.writer.close(wait_s=5.0)
