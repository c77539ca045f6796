"""`phasegate report`: run the sign-off notebook with papermill, export HTML and PDF.

The executed notebook is the one source of truth: the HTML is nbconvert's export of it
without code, and the PDF is WeasyPrint's rendering of that same HTML (`export`). WeasyPrint
is a PyPI wheel that uses the system's pango (present on a fresh machine of this kind), so
PDFs need no root step, no browser download and no LaTeX.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from .config import memory_limit
from .errors import DataError, ProfileError, ReportError, StoreError, WindowError
from . import index
from .export import Exporter
from .objstore import is_remote
from .profile import check_engine, load_profile
from .redact import redact_text
from .window import Window, iso, parse_duration, parse_time, utcnow

EXIT_CODES = {"GO": 0, "NO-GO": 10, "REVIEW": 11, "PENDING": 12, "INCONCLUSIVE": 13}
NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "phase_signoff.ipynb"
FORMATS = ("html", "pdf", "json", "ipynb")  # json and the executed notebook are always written
# Each notebook cell's time limit: a report that cannot finish says so instead of hanging a timer.
CELL_TIMEOUT_S = int(os.environ.get("PHASEGATE_CELL_TIMEOUT", "1800"))
# Errors raised inside the notebook that mean bad input, not a crash.
# Raised inside the notebook, they are bad input or a refused store (credentials): one line, and
# no failed run to keep.
_INPUT_ERRORS = {cls.__name__: cls for cls in (DataError, ProfileError, WindowError, StoreError)}


@dataclass
class ReportResult:
    verdict: str
    folder: Path
    files: dict
    doc: dict
    summary: str
    notify_failed: bool = False


def _bad_engine(problem: str):
    raise ReportError(f"--engine {problem}")


def make_report(profile_path, data_dir, phase, start, end=None, hours=None, out_root="reports",
                formats="html,pdf", bucket="5m", notebook=NOTEBOOK, as_of=None,
                baseline=(None, None, None), plan=None, latest=False, notify="change",
                webhook_env=None, command=None, engine=None, keep_failed=None, keep_interim=None,
                progress=None) -> ReportResult:
    """With `plan`, the profile, data dir, reports root and window default to the plan's phase;
    `latest` reports the phase in progress from its start to now. Every run updates the phase's
    index (`phasegate.index`); a run that fails is kept as <stamp>.failed; `keep_failed` and
    `keep_interim` (defaults index.KEEP_FAILED, KEEP_INTERIM) bound what the phase keeps."""
    wanted = _formats(formats)
    memory_limit()  # bad input in milliseconds, not from inside the kernel
    if engine:
        check_engine(engine, _bad_engine)
    # Validate everything cheap before starting a kernel: bad input is exit 2 in milliseconds.
    now = parse_time(as_of, name="as_of") if as_of else utcnow().replace(microsecond=0)
    if plan:
        from .rollout import load_plan, phase_window
        if profile_path:
            raise ReportError("give --profile or --plan, not both (the plan names each phase's profile)")
        p = load_plan(plan)
        if bool(latest) == bool(phase):
            raise ReportError("with --plan, give --phase or --latest (one of them)")
        if latest:
            from .rollout import status as rollout_status
            st = rollout_status(p, now, evaluate=False)
            current = next((x for x in st.phases if x.state == "current"), None)
            if current is None or current.start is None or current.start > now:
                # Between phases (or before the first): an hourly job has nothing to report, and
                # that is not bad input. One line, exit 0.
                why = current.reason if current is not None else "every phase has an approved GO report"
                return ReportResult("", Path(), {}, {}, f"no phase of {p.name} in progress to report: {why}; "
                                                        f"next: {st.next_action}")
            ph, first = current.phase, current.start  # what status just found: not computed again
        elif start is None:
            ph, first = phase_window(p, phase, now)
        if start is None or latest:
            phase, start = ph.id, iso(first)
            if end is None and hours is None:
                hours = ph.duration_s / 3600.0
        ph = p.phase(phase)
        data_dir = data_dir or ph.data
        out_root = out_root or p.reports
        profile = p.profile(phase)
    else:
        if latest:
            raise ReportError("--latest needs --plan (the plan says which phase is in progress)")
        if not profile_path or not phase or not data_dir:
            missing = [n for n, v in (("--profile", profile_path), ("--data", data_dir), ("--phase", phase)) if not v]
            raise ReportError(f"missing {', '.join(missing)} (or give --plan)")
        # No --start: the window ends at --end (or now) and lasts --hours (or the profile's duration).
        profile = load_profile(profile_path)
    out_root = out_root or "reports"
    profile.check_phase(phase)
    window = Window.resolve(start, end, hours, profile.criteria.duration_s, now)
    if window.start >= now:
        raise WindowError(f"window starts in the future ({window.start.isoformat()}): nothing to report yet")
    parse_duration(bucket)
    if not is_remote(data_dir) and not Path(data_dir).is_dir():  # s3://: the notebook mirrors it
        if latest:  # the phase in progress, before its collector wrote anything: not bad input
            return ReportResult("INCONCLUSIVE", Path(), {}, {}, f"INCONCLUSIVE: no evidence yet for {phase} since "
                                f"{iso(window.start)}: {data_dir} does not exist; is the collector running?")
        raise DataError(f"data dir does not exist: {data_dir}")
    folder = _target(Path(out_root) / phase, _stamp(window.end))
    stage = _stage(folder)
    params = {
        "profile": str(Path(profile_path).resolve()) if profile_path else "",
        "data_dir": str(data_dir) if is_remote(data_dir) else str(Path(data_dir).resolve()),
        "phase": phase, "start": window.start.isoformat(), "end": window.end.isoformat(), "hours": "",
        # No --as-of: the notebook takes its own now, after it has read the platform's flags (read
        # after a now taken here, they would fall past the window's end).
        "out_dir": str(stage.resolve()), "bucket": bucket, "as_of": now.isoformat() if as_of else "",
        "baseline_data": "" if not baseline[0] else str(baseline[0]) if is_remote(baseline[0])
        else str(Path(baseline[0]).resolve()),
        "baseline_start": baseline[1] or "", "baseline_end": baseline[2] or "",
        "plan": str(Path(plan).resolve()) if plan else "",
        # Recorded in the provenance as typed; masked first, since parameters land in the notebook.
        "command": redact_text(command or "phasegate " + shlex.join(sys.argv[1:])),
        "engine": engine or "",
    }
    try:
        if baseline[0] and not is_remote(baseline[0]) and not Path(baseline[0]).is_dir():
            raise DataError(f"baseline data dir does not exist: {baseline[0]}")
        for key, value in params.items():  # papermill writes parameters into the notebook
            if redact_text(value) != value:
                raise ReportError(f"parameter {key} looks like it holds a secret; refusing to write it into the notebook")
        doc = _render(notebook, stage, "signoff", params, wanted, progress)
    except DataError as exc:
        shutil.rmtree(stage, ignore_errors=True)  # bad input: nothing worth keeping
        if latest and str(exc).startswith("no samples in "):
            # The phase in progress has no evidence yet (it has just begun, or the collector is
            # down): the hourly job's answer is "cannot decide", said in one line, not bad input.
            return ReportResult("INCONCLUSIVE", Path(), {}, {}, f"INCONCLUSIVE: no evidence yet for {phase} "
                                f"since {iso(window.start)}: {exc}; is the collector running?")
        raise
    except (ProfileError, WindowError, StoreError):
        shutil.rmtree(stage, ignore_errors=True)
        raise
    except Exception as exc:  # noqa: BLE001 - any failure of the run: its notebook is kept and indexed
        why = str(exc) if isinstance(exc, ReportError) else f"{type(exc).__name__}: {exc}"
        kept = index.keep_failed(stage, folder, why, params)
        why = why.replace(str(stage), str(kept))
        index.update(folder.parent)
        raise ReportError(f"{why}; the failed run is kept in {kept}") from None
    files = _swap_in(stage, folder, "signoff")
    folder = files["json"].parent  # a revision, when an approval arrived meanwhile
    from .notify import DEFAULT_ENV, notify as send

    sent = send(doc, files.get("pdf") or files.get("html") or files["json"], folder.parent, notify,
                webhook_env or DEFAULT_ENV)
    pruned = index.update(folder.parent, (index.KEEP_FAILED if keep_failed is None else keep_failed,
                                          index.KEEP_INTERIM if keep_interim is None else keep_interim))
    summary = summarize(doc, files) + f"\n  index {folder.parent / index.INDEX_HTML}"
    if pruned:
        summary += f"\n  retention: removed {len(pruned)} old run(s): {', '.join(pruned)}"
    # An unset webhook is only worth a line when notifications were asked for by name.
    if sent.configured or webhook_env or notify != "change":
        summary += "\n  " + sent.line
    return ReportResult(doc["verdict"], folder, files, doc, summary, notify_failed=sent.failed)


SUMMARY_NOTEBOOK = NOTEBOOK.with_name("rollout_summary.ipynb")


def make_summary(plan, out_root=None, formats="html,pdf", as_of=None, notebook=SUMMARY_NOTEBOOK) -> ReportResult:
    """The rollout summary document: every phase's sign-off on one timeline, as notebook, JSON,
    HTML and PDF under <reports>/rollout/<as-of>/."""
    from .rollout import load_plan

    wanted = _formats(formats)
    p = load_plan(plan)
    now = parse_time(as_of, name="as_of") if as_of else utcnow().replace(microsecond=0)
    folder = Path(out_root or p.reports) / "rollout" / _stamp(now)
    stage = _stage(folder)
    params = {"plan": str(Path(plan).resolve()), "as_of": now.isoformat(), "out_dir": str(stage.resolve()),
              "root": str(Path.cwd())}
    doc = _render(notebook, stage, "rollout", params, wanted)
    files = _swap_in(stage, folder, "rollout")
    index.write_root_index(folder.parent.parent)
    lines = [f"ROLLOUT SUMMARY: {doc['plan']['name']} as of {doc['as_of']}"]
    lines += [f"  {ph['title']}: {'GO, ' + ph['approved'] if ph['state'] == 'done' else ph['verdict'] or ph['state']}"
              + (" [DRILL]" if ph.get("drill") else "") for ph in doc["phases"]]
    lines.append(f"  next: {doc['next_action']}")
    lines += [f"  {k:5} {v}" for k, v in files.items()]
    return ReportResult(doc["current_verdict"] or "", folder, files, doc, "\n".join(lines))


def _formats(formats: str) -> list[str]:
    wanted = [f.strip() for f in formats.split(",") if f.strip()]
    bad = [f for f in wanted if f not in FORMATS]
    if bad:
        raise ReportError(f"unknown format {bad[0]!r}; choose from {', '.join(FORMATS)}")
    return [f for f in wanted if f in ("html", "pdf")]  # the exports; the JSON and notebook always come


def _stamp(dt) -> str:
    """A folder name for a time: 20260129T144501Z."""
    return iso(dt).replace("-", "").replace(":", "")


def _revision(name: str, stamp: str) -> int:
    """1 for <stamp>, N for <stamp>.rN, 0 for anything else."""
    if name == stamp:
        return 1
    rest = name[len(stamp):]
    return int(rest[2:]) if rest.startswith(".r") and rest[2:].isdigit() else 0


def _target(parent: Path, stamp: str) -> Path:
    """The folder a report of this window goes to: its latest revision, rewritten in place (an
    hourly interim report), unless that holds an approval or acknowledgement: a person's record
    is never replaced, so the re-render becomes the next revision beside it (<stamp>.r2, ...)."""
    from .approval import holds_record

    revs = sorted((_revision(p.name, stamp), p) for p in parent.glob(f"{stamp}*") if p.is_dir()) \
        if parent.is_dir() else []
    revs = [(n, p) for n, p in revs if n]
    if not revs:
        return parent / stamp
    n, last = revs[-1]
    return parent / f"{stamp}.r{n + 1}" if holds_record(last) else last


def _stage(folder: Path) -> Path:
    """A fresh folder beside `folder` to render into. Swapped in whole when done, so a failed run
    never leaves a previous report half-replaced (an hourly interim report rewrites one folder)."""
    stage = folder.with_name(folder.name + ".partial")
    try:
        shutil.rmtree(stage, ignore_errors=True)
        stage.mkdir(parents=True)
    except OSError as exc:
        raise ReportError(f"cannot write the report under {folder.parent}: {exc.strerror or exc}") from None
    return stage


def _render(notebook: Path, stage: Path, stem: str, params: dict, wanted: list, progress=None) -> dict:
    """Execute the notebook into stage/<stem>.ipynb (it writes <stem>.json), export the wanted
    formats from that executed notebook, and return the JSON document. `progress(line)` hears of
    each step once it is done, with its time: a step that fails says so in its own one line."""
    say = progress or (lambda _line: None)
    t0 = time.monotonic()
    # The exporter imports and warms up on the other core while the kernel runs.
    exiting: list = []  # the kernel, once asked to shut down: its exit is awaited after the export
    try:
        with Exporter() if wanted else contextlib.nullcontext() as exporter:
            _execute(notebook, stage / f"{stem}.ipynb", params, exiting)
            doc = json.loads((stage / f"{stem}.json").read_text())
            t1 = time.monotonic()
            say(f"phasegate: notebook ran in {t1 - t0:.1f} s (pulls, analysis, figures): {doc.get('verdict') or 'done'}")
            if exporter is not None:
                exporter.run(stage / f"{stem}.ipynb", stage / f"{stem}.html" if "html" in wanted else None,
                             stage / f"{stem}.pdf" if "pdf" in wanted else None)
                say(f"phasegate: exported {', '.join(wanted)} in {time.monotonic() - t1:.1f} s")
    finally:
        _reap(exiting)
    return doc


def _swap_in(stage: Path, folder: Path, stem: str) -> dict:
    """Replace folder by stage; the files it now holds, by format. A folder that came to hold an
    approval while this run rendered is not replaced: the run becomes the next revision."""
    from .approval import holds_record

    if holds_record(folder):
        folder = _target(folder.parent, folder.name.split(".r")[0])
    old = folder.with_name(folder.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        os.replace(folder, old)
    os.replace(stage, folder)
    shutil.rmtree(old, ignore_errors=True)
    return {k: folder / f"{stem}.{k}" for k in ("ipynb", "json", "html", "pdf") if (folder / f"{stem}.{k}").exists()}


def _execute(notebook: Path, out: Path, params: dict, exiting: list | None = None) -> None:
    """Run the notebook into `out`. With `exiting`, the kernel is asked to shut down and its process
    put there, for the caller to `_reap` once it has done what the executed notebook was for."""
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError

    own = exiting is None
    exiting = [] if own else exiting
    try:
        with tempfile.TemporaryDirectory(prefix="phasegate-kernel-", dir=_socket_parent()) as sockets:
            pm.execute_notebook(str(notebook), str(out), parameters=params, kernel_name="python3",
                                progress_bar=False, log_output=False, cwd=str(notebook.parent),
                                execution_timeout=CELL_TIMEOUT_S, start_timeout=120,
                                kernel_manager_class=_ipc_kernel_manager(sockets, exiting))
    except TimeoutError as exc:  # nbclient's CellTimeoutError is one
        raise ReportError(f"a cell of the sign-off notebook ran over {CELL_TIMEOUT_S} s and was stopped "
                          f"(see {out}): {exc}") from None
    except PapermillExecutionError as exc:
        cls = _INPUT_ERRORS.get(exc.ename)
        if cls is not None:
            raise cls(exc.evalue) from None
        raise ReportError(f"the sign-off notebook failed in cell {exc.exec_count}: {exc.ename}: {exc.evalue} "
                          f"(see {out})") from None
    finally:
        if own:
            _reap(exiting)


def _reap(exiting: list, grace_s: float = 5.0) -> None:
    """Wait for kernels asked to shut down to exit; one still running after `grace_s` is
    terminated, then killed (as jupyter_client does when it waits itself)."""
    while exiting:
        proc = exiting.pop()
        for stop in (None, proc.terminate, proc.kill):
            if stop is not None:
                stop()
            try:
                proc.wait(timeout=grace_s)
                break
            except subprocess.TimeoutExpired:
                continue


def _socket_parent() -> str:
    """Where the kernel's Unix sockets go: the temporary directory, unless its path is too long
    for a socket address (108 bytes with the names added), then /tmp."""
    tmp = tempfile.gettempdir()
    if len(os.fsencode(tmp)) <= 60:
        return tmp
    if os.access("/tmp", os.W_OK | os.X_OK):
        return "/tmp"
    raise ReportError(f"the temporary directory {tmp} is too long a path for the kernel's sockets, and /tmp is not "
                      "writable: set TMPDIR to a shorter one")


def _ipc_kernel_manager(socket_dir: str, exiting: list):
    """A kernel manager speaking over Unix sockets: nothing listens on TCP, and no warning says so.
    A kernel asked to shut down is not waited for: its process goes into `exiting`."""
    from jupyter_client.manager import AsyncKernelManager

    class IpcKernelManager(AsyncKernelManager):
        def __init__(self, **kw):
            super().__init__(**kw)
            self.transport = "ipc"
            self.ip = str(Path(socket_dir) / "kernel")

        async def _async_interrupt_kernel(self) -> None:
            # jupyter_client sends SIGINT before every shutdown request; an idle kernel that gets it
            # logs "KeyboardInterrupt caught in kernel" on our stderr (seen once in a loaded suite
            # run). The shutdown request stops it alone; a cell over its timeout is still interrupted.
            if not self.shutting_down:
                await super()._async_interrupt_kernel()

        async def _async_finish_shutdown(self, waittime=None, pollinterval=0.1, restart=False) -> None:
            # The kernel has answered its last cell and got the shutdown request; its exit (the
            # interpreter's teardown with pandas, matplotlib and DuckDB loaded: ~0.3 s) need not
            # hold up the export, so it is awaited after it (`_reap`).
            proc = getattr(self.provisioner, "process", None)
            if restart or proc is None:
                await super()._async_finish_shutdown(waittime, pollinterval, restart)
            else:
                exiting.append(proc)

    return IpcKernelManager


def summarize(doc: dict, files: dict) -> str:
    marks = {"passed": "PASS", "failed": "FAIL", "pending": "PEND", "inconclusive": "----"}
    w = doc["window"]
    mode = {"drill": "  [DRILL: simulated samples, a drill plan]", "simulated": "  [SIMULATED samples]"}.get(doc.get("mode"), "")
    lines = [f"VERDICT: {doc['verdict']}  ({doc['phase']}, {w['start']} → {w['end']}, observed to {w['observed_end']}){mode}",
             f"  {doc['reason']}"]
    for c in doc["criteria"]:
        lines.append(f"  [{marks[c['state']]}] {c['kind']:4} {c['id']:<20} {c['title']}: {c['detail']}")
    for r in doc["runbook"]:
        lines.append(f"  runbook: {r['title']}: " + "; ".join(r["steps"][:2]))
    for e in doc["inputs"]["excluded"]:
        lines.append(f"  excluded: {e['file']} ({e['reason']})")
    for note in doc["inputs"].get("notes", []):
        lines.append(f"  data: {note}")
    for kind, path in files.items():
        lines.append(f"  {kind:5} {path}")
    return "\n".join(lines)


