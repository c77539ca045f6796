"""What `phasegate act` did to a phase, read back from the phase's own dataset.

Every step `act` carries out is a sample (source "action") in the phase's dataset, written as the
step ends. This module reads them back, whatever window a report covered: whether a rollback was
already carried out (never done twice), when a promotion or restart was verified (the phase's
window starts after it), and which deploys phasegate itself triggered (expected, not anomalies).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime

from .objstore import local_dir

PROBE_SOURCES = ("probe", "check")  # what a phase's window is made of: probes and acceptance commands


@dataclass
class Run:
    """One `act --execute`: its steps in order; complete when its last step succeeded."""

    run_id: str
    kind: str  # rollback, promote, restart
    by: str
    started: datetime
    ended: datetime
    complete: bool = False
    failed: bool = False
    deploys: list = field(default_factory=list)
    steps: list = field(default_factory=list)  # (ts, step, outcome, detail)


def _frame(data, storage, start: datetime, end: datetime, sources, columns):
    from .store import read_samples

    path = local_dir(data, storage, start, end)
    if not path.is_dir():
        return None
    df = read_samples(path, start, end, sources=sources, columns=["source", *columns])
    return None if df.empty else df


def runs(data, storage, since: datetime, until: datetime) -> list[Run]:
    """Every act run recorded in [since, until), oldest first."""
    df = _frame(data, storage, since, until, ["action"], ["request_id", "probe", "outcome", "evidence", "deployment_id"])
    if df is None:
        return []
    out: dict[str, Run] = {}
    cols = ["ts", "request_id", "probe", "outcome", "evidence", "deployment_id"]
    for ts, rid, step, outcome, ev, did in df.sort_values(["ts", "request_id"])[cols].itertuples(index=False):
        try:
            e = json.loads(ev) if ev else {}
        except ValueError:
            e = {}
        run_id = str(rid).rsplit(":", 1)[0]
        when = ts.to_pydatetime()
        r = out.setdefault(run_id, Run(run_id, e.get("kind") or "", e.get("by") or "", when, when))
        r.ended = when
        r.steps.append((when, step, outcome, e.get("detail")))
        if outcome != "ok":
            r.failed = True
        elif e.get("last"):
            r.complete = True
        if did and step == "act.deploy" and did not in r.deploys:
            r.deploys.append(did)
    return sorted(out.values(), key=lambda r: r.started)


def last_complete(all_runs: list[Run], kinds: tuple) -> Run | None:
    done = [r for r in all_runs if r.kind in kinds and r.complete and not r.failed]
    return done[-1] if done else None


def first_probe_after(data, storage, after: datetime, now: datetime) -> datetime | None:
    """The first probe (or acceptance command) sample at or after `after`: when a window starts."""
    if after >= now:
        return None
    df = _frame(data, storage, after, now, list(PROBE_SOURCES), [])
    return None if df is None else df["ts"].min().to_pydatetime()
