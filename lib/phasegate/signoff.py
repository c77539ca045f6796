"""The sign-off computation the notebook makes: analysis → criteria → `signoff.json`.

`run` is the one call behind the notebook, so executing the notebook with papermill
directly and through `phasegate report` gives the same document.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from . import __version__
from .analysis import Analysis, analyze
from .criteria import Decision, evaluate
from .errors import DataError
from .objstore import Location, is_remote, local_dir
from .profile import Profile, load_profile
from .redact import redact_url
from .store import sha256
from .window import Window, iso, parse_duration, parse_time, utcnow

SCHEMA_VERSION = 2


@dataclass
class Signoff:
    profile: Profile
    analysis: Analysis
    decision: Decision
    doc: dict
    path: Path | None


def find_path(path: str | os.PathLike) -> Path:
    """A relative path as given, else from the project root (the notebook runs in notebooks/)."""
    p = Path(path)
    if p.is_absolute() or p.exists():
        return p
    for parent in Path.cwd().parents[:3]:
        if (parent / p).exists():
            return parent / p
    return p


def run(profile_path, data_dir, phase, start=None, end=None, hours=None, out_dir=None, bucket="5m",
        as_of=None, baseline_data=None, baseline_start=None, baseline_end=None, plan=None, pull=True,
        command=None, engine=None) -> Signoff:
    """Analyse the window, evaluate the criteria, and write `signoff.json` into out_dir.
    With `plan` (a rollout plan or its path), the phase's profile and overrides come from it.
    `pull`: first read what the profile's Prometheus and platform API hold (False: only what is stored).
    `command`: the command line that asked for this report, recorded in its provenance.
    `engine`: duckdb or spark://HOST:PORT (default: the profile's [engine] url)."""
    if plan not in (None, ""):
        from .plan import Plan, load_plan
        plan = plan if isinstance(plan, Plan) else load_plan(find_path(plan))
        profile, profile_file = plan.profile(phase), plan.phase(phase).profile_file
    else:
        profile_file = find_path(profile_path)
        profile = load_profile(profile_file)
    profile.check_phase(phase)
    # s3://: the dataset's local mirror; what is pulled into it below goes up to the bucket too.
    loc = Location(data_dir, profile.storage) if is_remote(data_dir) else None
    data = loc.local if loc else find_path(data_dir)
    if loc:
        loc.check()
        data.mkdir(parents=True, exist_ok=True)
    elif not data.is_dir():
        raise DataError(f"data dir does not exist: {data_dir}")
    notes, platform_seen = [], None
    if pull and profile.platform is not None:
        # Before `now` is taken, so the flags read now fall inside a window that ends now.
        lines, platform_seen = _pull_platform(profile, data)
        notes += lines
    now = parse_time(as_of, name="as_of") if as_of not in (None, "") else utcnow()
    window = Window.resolve(start, end, hours, profile.criteria.duration_s, now)
    baseline = None
    if baseline_data not in (None, ""):
        # Default: the canary's own window; a start alone lasts as long as the canary's window.
        bwin = window if baseline_start in (None, "") else Window.resolve(
            baseline_start, baseline_end, None, window.duration_s)
        bdir = local_dir(baseline_data, profile.storage, bwin.start, bwin.end) if is_remote(baseline_data) \
            else find_path(baseline_data)
        if not bdir.is_dir():
            raise DataError(f"baseline data dir does not exist: {baseline_data}")
        baseline = (bdir, bwin)
    observed = Window(window.start, window.observed_end(now))
    if pull and profile.prometheus is not None and observed.end > observed.start:
        # Pull whatever part of the window no earlier pull covered (pulls never overlap: an hourly
        # report adds the last hour). A Prometheus that is down is a line in the report's data
        # section, never a failed report.
        from .prom import pull_traffic
        try:
            pulled = pull_traffic(profile.prometheus, data, observed)
            notes += [f"Prometheus: {pulled.requests:g} requests from {pulled.series} series"] + pulled.notes
        except DataError as exc:
            notes.append(f"Prometheus not used: {exc}")
    if pull and profile.platform is not None and profile.platform.evidence and observed.end > observed.start:
        notes += _pull_evidence(profile, data, observed)
    queries = [c for c in profile.criteria.items if c.promql and c.enabled]
    if pull and queries and observed.end > observed.start:
        # PromQL criteria: their values are stored as they are read, so a re-run judges the same.
        from .prom import pull_queries
        try:
            notes += pull_queries(profile.prometheus, data, observed, queries)
        except DataError as exc:
            notes.append(f"PromQL criteria use the values stored earlier: {exc}")
    if loc:
        loc.push()
        loc.pull(window.start, observed.end)
    analysis = analyze(profile, data, window, now=now, bucket_s=parse_duration(bucket), baseline=baseline,
                       engine=engine or None)
    decision = evaluate(profile, analysis)
    doc = build_doc(profile, profile_file, loc.url if loc else data, phase, analysis, decision, bucket)
    doc["inputs"]["notes"] = notes
    # The platform's flags when this report was made (also outside a closed window): what
    # `phasegate act` checks are unchanged before it acts.
    doc["inputs"]["platform_seen"] = platform_seen
    doc["provenance"]["engine"] = redact_url(engine or profile.engine)  # where the figures were computed
    doc["provenance"]["command"] = command or f"{Path(sys.argv[0]).name} (notebook run directly, not by phasegate report)"
    if plan not in (None, ""):
        doc["plan"] = {"path": str(plan.path), "sha256": sha256(plan.path), "name": plan.name,
                       "allow_simulated": plan.allow_simulated}
        doc["started_by"] = _started_by(data, window)
        doc["rerun"] = doc["rerun"].replace(f"--profile {profile_file}", f"--plan {plan.path}", 1)
    sim = doc["provenance"]["samples"]["simulated"]
    # A drill: a plan that allows simulated samples (it rehearses, on them or on a simulated
    # service probed live). Said on every output.
    drill = plan not in (None, "") and plan.allow_simulated
    doc["mode"] = "drill" if drill else ("simulated" if sim else "live")
    if baseline is not None:
        given = baseline_data if is_remote(baseline_data) else baseline[0]  # the bucket, not its local mirror
        doc["rerun"] += f" --baseline-data {given} --baseline-start {iso(baseline[1].start)} " \
                        f"--baseline-end {iso(baseline[1].end)}"
    path = None
    if out_dir not in (None, ""):
        path = Path(out_dir) / "signoff.json"
        write_json(doc, path)
    return Signoff(profile, analysis, decision, doc, path)


def _started_by(data: Path, window: Window) -> dict | None:
    """The promotion (or restart) by phasegate act that this window began after, if one did: its
    deploy is phasegate's own, before the window, and the report says so."""
    from datetime import timedelta

    from .ledger import last_complete, runs

    run = last_complete(runs(data, None, window.start - timedelta(days=7), window.start + timedelta(seconds=1)),
                        ("promote", "restart"))
    if run is None:
        return None
    words = "promotion" if run.kind == "promote" else "restart"
    return {"kind": run.kind, "by": run.by, "verified_at": iso(run.ended), "deploys": run.deploys,
            "text": f"{words} by phasegate act (by {run.by}), verified {iso(run.ended)}"
                    + (f": deploy {', '.join(run.deploys)}" if run.deploys else "")}


def _pull_platform(profile: Profile, data: Path) -> tuple[list[str], dict | None]:
    """Deploys and flags from the hosting platform, now: (lines for the report's data section, the
    flags as read with their time, or None). No key or a failed call is a line, never a failed report."""
    src = profile.platform
    if not os.environ.get(src.api_key_env):
        return [f"platform: ${src.api_key_env} is not set: {src.kind} deploys and flags were not read"], None
    from .platform import pull_platform  # with the HTTP client (~0.1 s): only when there is a key to call with

    at = utcnow()
    res = pull_platform(src, data, profile.target.name, now=at)
    seen = {"at": iso(at), "flags": res.flags, "service_id": src.service_id, "env_groups": res.groups} \
        if res.flags else None
    return [f"platform: {res.deploys} {src.kind} deploys read" + (f"; flags {res.flags_text}" if res.flags else "")] + \
        [f"platform: {n}" for n in res.notes], seen


def _pull_evidence(profile: Profile, data: Path, observed: Window) -> list[str]:
    """Render's logs, metrics and events for the part of the window no earlier pull covered. A
    failed read is stored (the report says Render was unavailable) and a line here, never a failed report."""
    src = profile.platform
    if not os.environ.get(src.api_key_env):
        return [f"Render: ${src.api_key_env} is not set: logs, metrics and events were not read"]
    from .evidence import pull_evidence

    try:
        res = pull_evidence(src, data, profile.target.name, observed)
    except DataError as exc:
        return [f"Render: logs, metrics and events not pulled: {exc}"]
    return [res.text] + [f"Render: waited: {w}" for w in res.notes] + \
        [f"Render: failed read (stored; the next pull asks again): {f}" for f in res.failed]


def build_doc(profile: Profile, profile_file: Path, data: Path | str, phase: str, a: Analysis, d: Decision,
              bucket: str) -> dict:
    failed_hard = [c for c in d.criteria if c.runbook]
    simulated = a.samples_simulated
    complete = a.elapsed_s >= profile.criteria.duration_s
    return {
        "schema_version": SCHEMA_VERSION,
        # Who made this document from what: enough for a reviewer (and `status`) to tell a real
        # sign-off of the plan's phase from a demo, a drill or a report made with another profile.
        "provenance": {
            "phasegate_version": __version__,
            "profile_sha256": profile.sha256,
            "profile_resolved": profile.resolved,
            "target": {"name": profile.target.name, "base_url": redact_url(profile.target.base_url)},
            "samples": {"live": a.samples_live, "simulated": simulated},
            "window_complete": complete,
            "command": None,
        },
        "generated_at": iso(utcnow()),
        "as_of": iso(a.now),
        "verdict": d.verdict,
        "reason": d.reason,
        "phase": phase,
        "target": {"name": profile.target.name, "base_url": redact_url(profile.target.base_url),
                   "insecure_skip_verify": profile.target.tls.insecure_skip_verify},
        "profile": {"path": str(profile_file), "sha256": sha256(profile_file)},
        "window": {
            "start": iso(a.window.start), "end": iso(a.window.end), "observed_end": iso(a.observed_end),
            "required_duration_s": profile.criteria.duration_s, "elapsed_s": round(a.elapsed_s, 3),
            "complete": complete,
        },
        "criteria": d.to_dict()["criteria"],
        "runbook": [c.runbook | {"criterion": c.id} for c in failed_hard],
        "overall": a.overall,
        "probes": a.probes,
        "coverage": a.coverage,
        "health": a.health,
        "flags": a.flags,
        "deployments": a.deployments,
        "anomalies": a.anomalies,
        "evidence": a.evidence,
        "quality": a.quality,
        "baseline": a.baseline,
        "traffic": a.traffic,
        "prometheus": a.prometheus,
        "tenants": a.tenants,
        "platform": a.platform,
        "render": a.render,
        "actions": a.actions,
        "tls": a.tls,
        "simulated_samples": simulated,
        "inputs": {"data_dir": str(data), **a.inputs},
        "parameters": {"bucket": bucket, "confidence": profile.criteria.confidence,
                       "rate_mode": profile.criteria.rate_mode},
        # What a reviewer runs to reproduce this document from the same inputs.
        "rerun": (f"phasegate report --profile {profile_file} --data {data} --phase {phase} "
                  f"--start {iso(a.window.start)} --end {iso(a.window.end)} --bucket {bucket} --as-of {iso(a.now)}"),
    }


def write_json(doc: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2, sort_keys=False, default=str) + "\n")
    os.replace(tmp, path)
