"""A rollout plan: the phases in order, each with its profile, data, start, duration and promotion.

Read and validated on load (`load_plan`); every phase's profile is built then, so a typo in any
of them fails here, naming the phase. Where the rollout stands against a plan is `rollout`'s.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from .config import _Reader
from .errors import ProfileError, WindowError
from .objstore import Storage, is_remote
from .profile import Profile, _merge, _read_toml, build_profile
from .rules import MachineSteps, machine_steps
from .window import parse_time

AFTER_PREVIOUS = "after-previous-go"
FIRST_SAMPLE = "first-sample"  # the first phase: from the first probe sample in its data (a drill)
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


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
                r.fail(f"{where}.start", f"the first phase needs a start time or {FIRST_SAMPLE!r} "
                                         f"({AFTER_PREVIOUS} has no previous phase)")
            start = None
        elif start_text == FIRST_SAMPLE:
            if i != 0:
                r.fail(f"{where}.start", f"{FIRST_SAMPLE!r} is for the first phase; later ones start {AFTER_PREVIOUS}")
            start = None
        else:
            try:
                start = parse_time(start_text, name=f"{where}.start")
            except WindowError:
                r.fail(f"{where}.start", f"must be an ISO 8601 time, {FIRST_SAMPLE!r} or {AFTER_PREVIOUS!r}, "
                                         f"got {start_text!r}")
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



def _data(base: Path, text: str):
    """A phase's dataset: a directory relative to the plan's root, or an s3:// URL as written."""
    return text if is_remote(text) else base / text
