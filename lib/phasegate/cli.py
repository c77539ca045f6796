"""`phasegate` command line: options in, one library call, a distinct exit status out."""

from __future__ import annotations

import functools
import logging
import os
import shlex
import signal
import sys
import time
import traceback
from datetime import datetime, timedelta, timezone

import click

from .errors import PhasegateError
from .objstore import writing
from .redact import printable, redact_text

EXIT_BAD_INPUT = 2
# The simulator's scenarios (simulator.SCENARIOS), listed here so --help needs no import of it.
SCENARIO_NAMES = ("healthy", "server-errors", "flags-off", "handler-loss", "deploy-change", "rollback",
                  "slow-execute", "count-drift", "signed-leak", "malformed-json", "hang", "reset",
                  "slow-drip", "oversized")


def _one_line(msg: str) -> str:
    """Redacted, and with control characters escaped, so an error is always exactly one line."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in redact_text(msg))


def _command_line() -> str:
    return "phasegate " + shlex.join(sys.argv[1:])


def _say(text: str, err: bool = False) -> None:
    """Print text that holds service-controlled strings (error codes, ids, paths): control
    characters are shown escaped, so no answer can repaint the terminal."""
    click.echo(printable(text), err=err)


class _PrintableFormatter(logging.Formatter):
    """Log lines carry service strings too: one line each, control characters escaped."""

    def format(self, record):
        return _one_line(super().format(record))


def _guard(fn):
    """Bad input is one line and exit 2; only a real crash is exit 1."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except PhasegateError as exc:
            click.echo(f"phasegate: error: {_one_line(str(exc))}", err=True)
            sys.exit(EXIT_BAD_INPUT)
        except KeyboardInterrupt:
            click.echo("phasegate: interrupted", err=True)
            sys.exit(130)
        except Exception as exc:  # noqa: BLE001 - the last line of defence
            if os.environ.get("PHASEGATE_DEBUG"):
                traceback.print_exc()
            click.echo(f"phasegate: internal error: {type(exc).__name__}: {_one_line(str(exc))}", err=True)
            sys.exit(1)
    return wrapper


class PathText(click.ParamType):
    """A path as text; a NUL byte (which no filesystem accepts) is bad input, not a crash."""

    name = "path"

    def convert(self, value, param, ctx):
        if "\x00" in str(value):
            self.fail("contains a NUL byte", param, ctx)
        return str(value)


PATH = PathText()
base_url_opt = click.option("--base-url", help="Override the profile's target base URL (e.g. a simulator port).")
profile_opt = click.option("--profile", "profile_path", type=PATH, required=True, help="Profile TOML file.")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="phasegate", prog_name="phasegate", message="%(prog)s %(version)s")
@click.option("-v", "--verbose", is_flag=True, help="Log store and collector details to stderr.")
def cli(verbose):
    """phasegate: decide from evidence whether a rollout phase may proceed."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="phasegate: %(message)s")
    for handler in logging.getLogger().handlers:
        handler.setFormatter(_PrintableFormatter("phasegate: %(message)s"))


@cli.command()
@click.option("--profile", "profile_path", type=PATH, help="Profile TOML file (or give --plan).")
@click.option("--plan", type=PATH, help="Rollout plan: collect for the phase in progress, switching profile and data "
              "dir when it is approved (one collector for the whole rollout).")
@click.option("--recheck", default="60s", show_default=True, help="With --plan: how often to look for the next phase.")
@click.option("--data", "data_dir", type=PATH, help="Data directory for the parquet dataset (with --plan: the phase's).")
@click.option("--for", "run_for", help="Stop after this long (90s, 15m, 24h).")
@click.option("--until", help="Stop at this ISO 8601 time (UTC unless an offset is given).")
@click.option("--compact-every", default="60s", show_default=True, help="How often the journal is compacted to parquet.")
@click.option("--quiet", is_flag=True, help="No live progress line.")
@click.option("--shard", help="K/N: probe only shard K of N (a stable hash of each tenant), so N collectors "
              "on N machines feed one dataset.")
@base_url_opt
@_guard
def collect(profile_path, plan, recheck, data_dir, run_for, until, compact_every, quiet, shard, base_url):
    """Probe the target on schedule; every attempt becomes a stored row."""
    from .collector import Collector, parse_shard, terminal_progress
    from .errors import ProfileError, WindowError
    from .profile import load_profile
    from .window import parse_duration, parse_time

    if bool(plan) == bool(profile_path):
        raise ProfileError("give --profile (and --data) or --plan, one of them")
    if plan:
        from .rollout import collect_plan, load_plan
        if data_dir or shard or base_url:
            raise ProfileError("with --plan, the phase gives the data dir and target (no --data, --shard, --base-url)")
        until_ts = time.time() + parse_duration(run_for) if run_for else (
            parse_time(until, name="--until").timestamp() if until else None)
        n = collect_plan(load_plan(plan), until_ts=until_ts, recheck_s=parse_duration(recheck),
                         compact_every_s=parse_duration(compact_every),
                         progress=None if quiet else terminal_progress, say=lambda m: _say(m, err=True))
        click.echo(f"collected {n} samples for {plan}")
        return
    if not data_dir:
        raise ProfileError("missing --data (the dataset the samples go into)")
    profile = load_profile(profile_path, base_url)
    if run_for and until:
        raise WindowError("give --for or --until, not both")
    until_ts = None
    if run_for:
        until_ts = time.time() + parse_duration(run_for)
    elif until:
        until_ts = parse_time(until, name="--until").timestamp()
        if until_ts <= time.time():
            raise WindowError(f"--until {until} is already past")
    c = Collector(profile, data_dir, until_ts=until_ts, shard=parse_shard(shard),
                  compact_every_s=parse_duration(compact_every), progress=None if quiet else terminal_progress)
    c.install_signal_handlers()
    stats = c.run()  # a recovered journal is logged as it happens (a warning: always shown)
    click.echo(f"collected {stats.samples} samples ({stats.errors} not ok) into {data_dir}, run {stats.run_id}")
    if profile.platform is not None:
        click.echo(f"platform: {stats.platform_reads} reads, {stats.platform_failed} failed calls"
                   + (f" ({stats.platform_note})" if stats.platform_note else ""))
    if stats.store_dropped:
        click.echo(f"phasegate: error: {stats.store_dropped} samples could not be stored and were dropped", err=True)
        sys.exit(1)


@cli.command()
@profile_opt
@click.option("--data", "data_dir", type=PATH, help="Also store the samples in this data directory.")
@base_url_opt
@_guard
def check(profile_path, data_dir, base_url):
    """One probe round, printed as the CANARY HEALTH CHECK block; exit 1 when unhealthy."""
    from .check import run_check
    from .profile import load_profile

    result = run_check(load_profile(profile_path, base_url), data_dir)
    _say(result.text)
    sys.exit(0 if result.healthy else 1)


@cli.command()
@click.option("--profile", "profile_path", type=PATH, help="Profile TOML file (or give --plan).")
@click.option("--plan", type=PATH, help="Rollout plan: profile, overrides, data dir and window come from its phase.")
@click.option("--latest", is_flag=True, help="With --plan: the phase in progress, from its start to now.")
@click.option("--data", "data_dir", type=PATH, help="Data directory with collected samples (default with --plan: the phase's).")
@click.option("--phase", help="Phase name, e.g. phase1-staging-canary.")
@click.option("--start", help="Window start, ISO 8601 (default with --plan: the phase's start; without: --hours "
              "(or the profile's duration) before --end).")
@click.option("--end", help="Window end, ISO 8601 or 'now' (may be in the future: an interim report).")
@click.option("--hours", type=float, help="Window length in hours: after --start, or before --end (default now).")
@click.option("--out", "out_root", type=PATH, help="Root folder for report folders [default: reports, or the plan's].")
@click.option("--formats", default="html,pdf", show_default=True,
              help="Any of html,pdf,json,ipynb (signoff.json and the executed notebook are always written).")
@click.option("--bucket", default="5m", show_default=True, help="Timeline bucket size.")
@click.option("--as-of", help="Evaluate as if it were this time (re-run a recorded report exactly).")
@click.option("--baseline-data", type=PATH, help="Data dir of the baseline (control yachts, or the previous phase).")
@click.option("--baseline-start", help="Baseline window start (default: the same window).")
@click.option("--baseline-end", help="Baseline window end (default: start + the window's length).")
@click.option("--notify", type=click.Choice(["change", "always", "never"]), default="change", show_default=True,
              help="POST a summary to the webhook: when the verdict changed, every time, or never.")
@click.option("--webhook-env", help="Environment variable holding the webhook URL [default: PHASEGATE_WEBHOOK_URL].")
@click.option("--engine", help="Where the analysis runs: duckdb (embedded) or spark://HOST:PORT (a Spark standalone "
              "master) [default: the profile's [engine] url, else duckdb].")
@click.option("-q", "--quiet", is_flag=True, help="No progress lines on stderr (each step's time once it is done).")
@click.option("--keep-failed", type=click.IntRange(0), default=20, show_default=True,
              help="Failed runs (<stamp>.failed folders) the phase keeps; older ones are removed.")
@click.option("--keep-interim", type=click.IntRange(1), default=200, show_default=True,
              help="Reports without an approval or acknowledgement the phase keeps; approved ones are never removed.")
@_guard
def report(profile_path, plan, latest, data_dir, phase, start, end, hours, out_root, formats, bucket, as_of,
           baseline_data, baseline_start, baseline_end, notify, webhook_env, engine, quiet, keep_failed, keep_interim):
    """Run the sign-off notebook; exit 0 GO, 10 NO-GO, 11 REVIEW, 12 PENDING, 13 INCONCLUSIVE."""
    from .report import EXIT_CODES, make_report

    result = make_report(profile_path=profile_path, data_dir=data_dir, phase=phase, start=start, end=end,
                         hours=hours, out_root=out_root, formats=formats, bucket=bucket, as_of=as_of,
                         baseline=(baseline_data, baseline_start, baseline_end), plan=plan, latest=latest,
                         notify=notify, webhook_env=webhook_env, command=_command_line(), engine=engine,
                         keep_failed=keep_failed, keep_interim=keep_interim,
                         progress=None if quiet else (lambda line: click.echo(line, err=True)))
    _say(result.summary)
    if not result.verdict:  # --latest between phases: nothing in progress, nothing wrong
        sys.exit(0)
    if result.notify_failed:
        click.echo("phasegate: warning: the notification was not delivered (see the notify line above)", err=True)
    sys.exit(EXIT_CODES[result.verdict])


@cli.command()
@click.argument("before", type=PATH)
@click.argument("after", type=PATH)
@click.option("--json", "as_json", is_flag=True, help="The changes as JSON.")
@_guard
def diff(before, after, as_json):
    """What changed between two reports of a phase (report folders or their signoff.json): verdict,
    each criterion's state and measured value, new and resolved failures, samples."""
    import json

    from .index import diff_folders, diff_text

    d = diff_folders(before, after)
    click.echo(json.dumps(d, indent=2, default=str) if as_json else diff_text(d))


@cli.command()
@click.option("--plan", type=PATH, required=True, help="Rollout plan TOML.")
@click.option("--as-of", help="Evaluate as if it were this time.")
@_guard
def status(plan, as_of):
    """Where the rollout stands and what to do next; exit as `report` for the phase in progress
    (0 when nothing is running: not started, or complete)."""
    from .report import EXIT_CODES
    from .rollout import load_plan, status as rollout_status
    from .window import parse_time

    st = rollout_status(load_plan(plan), parse_time(as_of, name="--as-of") if as_of else None)
    _say(st.text)
    sys.exit(EXIT_CODES[st.verdict] if st.verdict else 0)


@cli.command()
@click.option("--plan", type=PATH, required=True, help="Rollout plan TOML.")
@click.option("--out", "out_root", type=PATH, help="Root folder [default: the plan's reports dir].")
@click.option("--formats", default="html,pdf", show_default=True, help="Exports besides the notebook and JSON.")
@click.option("--as-of", help="Evaluate as if it were this time.")
@_guard
def summary(plan, out_root, formats, as_of):
    """Render every phase's sign-off on one timeline (notebooks/rollout_summary.ipynb); exit as `status`."""
    from .report import EXIT_CODES, make_summary

    result = make_summary(plan, out_root=out_root, formats=formats, as_of=as_of)
    _say(result.summary)
    sys.exit(EXIT_CODES.get(result.verdict, 0))


@cli.command()
@click.argument("report_dir", type=PATH)
@click.option("--by", required=True, help="Who approves (a name or e-mail; the signer's principal with --key).")
@click.option("--comment", default="", help="Why, or on what condition.")
@click.option("--key", type=PATH, help="SSH private key to sign the approval with (ssh-keygen -Y sign, namespace phasegate).")
@click.option("--acknowledge", is_flag=True, help="Record that a report was read (a NO-GO before act rolls it back): "
              "never completes a phase.")
@click.option("--plan", type=PATH, help="The rollout plan whose rules apply (require_signature, allowed_signers) "
              "[default: the plan the report was made with].")
@click.option("--replace", is_flag=True, help="Replace an earlier approval of this report (it is kept in approvals/).")
@_guard
def approve(report_dir, by, comment, key, acknowledge, plan, replace):
    """Approve a GO report: REPORT_DIR/approval.json with who, when and every file's SHA-256."""
    from .approval import approve as do_approve

    a = do_approve(report_dir, by, comment, key, acknowledge, plan=plan, replace=replace)
    how = f"signed with {a['signature']['key']}" if a["signature"] else "unsigned"
    from pathlib import Path

    from .stamp import STAMPED

    stamped = Path(report_dir) / STAMPED
    _say(f"{a['kind']} of {a['report']['verdict']} report {report_dir} by {a['by']} at {a['at']} ({how}); "
         f"{len(a['files'])} files covered" + (f"; the PDF with its approval page: {stamped}" if stamped.exists() else ""))
    if a["report"]["mode"] == "simulated":
        _say("note: the report counts simulated samples: no rollout plan accepts it (only a drill plan would)", err=True)


@cli.command()
@click.argument("report_dir", type=PATH)
@click.option("--allowed-signers", type=PATH, help="OpenSSH allowed-signers file: the signature must be the approver's key.")
@_guard
def verify(report_dir, allowed_signers):
    """Check an approved report: exit 0 when every hash and the signature hold, 1 naming what changed."""
    from .approval import verify as do_verify

    v = do_verify(report_dir, allowed_signers)
    _say(f"{report_dir}: {v.line}")
    sys.exit(0 if v.ok else 1)


@cli.command()
@click.option("--plan", type=PATH, required=True, help="Rollout plan TOML.")
@click.option("--execute", is_flag=True, help="Carry the actions out through the platform (default: only print them).")
@click.option("--by", help="Who is acting, recorded with each action [default: the user running it].")
@click.option("--restart", is_flag=True, help="Restart the phase in progress (after a rollback, once its cause is "
              "fixed): its promotion steps again; a new window starts once they are verified.")
@click.option("--as-of", help="Decide as if it were this time.")
@_guard
def act(plan, execute, by, restart, as_of):
    """Runbook steps on a NO-GO, the next phase's promotion on an approved GO: printed (a dry run),
    or with --execute carried out through the platform and recorded. Exit 0 done, nothing to do,
    or waiting (a GO awaiting approval); 1 a step failed; 2 refused (a person must look)."""
    from .act import act as run_act
    from .rollout import load_plan
    from .window import parse_time

    res = run_act(load_plan(plan), execute=execute, now=parse_time(as_of, name="--as-of") if as_of else None, by=by,
                  restart=restart)
    for line in res.text:
        _say(line)
    sys.exit(1 if res.failed else 0)


@cli.command("import-logs")
@click.option("--format", "fmt", type=click.Choice(["nginx", "json"]), default="nginx", show_default=True)
@click.option("--file", "path", type=PATH, required=True, help="Log file, or - for standard input.")
@click.option("--data", "data_dir", type=PATH, required=True, help="Data directory to add the requests to.")
@click.option("--target", default="traffic", show_default=True, help="Name stored with each request.")
@click.option("--field", "fields", multiple=True, help="JSON field names: ts=time, method=..., path=..., status=..., latency_s=...")
@_guard
def import_logs_cmd(fmt, path, data_dir, target, fields):
    """Import request logs (nginx combined + $request_time, or JSON lines) as traffic samples."""
    from .errors import DataError
    from .traffic import JSON_FIELDS, file_label, import_logs, open_input

    fmap = {}
    for f in fields:
        key, sep, value = f.partition("=")
        if not sep or key not in JSON_FIELDS:
            raise DataError(f"--field must be one of {', '.join(JSON_FIELDS)} as key=name, got {f!r}")
        fmap[key] = value
    stream = open_input(path)
    label = file_label(path) if path != "-" else None
    with stream, writing(data_dir) as local:
        res = import_logs(stream, local, fmt, target, fmap, label)
    click.echo(f"imported {res.rows} requests into {data_dir}; {res.malformed} malformed lines skipped")
    for no, why in res.examples:
        _say(f"  line {no}: {why}", err=True)


@cli.command("pull-traffic")
@profile_opt
@click.option("--data", "data_dir", type=PATH, required=True, help="Data directory to add the counts to.")
@click.option("--start", required=True, help="Window start, ISO 8601.")
@click.option("--end", help="Window end, ISO 8601 (default: start + --hours).")
@click.option("--hours", type=float, help="Window length in hours, instead of --end.")
@_guard
def pull_traffic_cmd(profile_path, data_dir, start, end, hours):
    """Pull request counts per route and status from the profile's Prometheus (query_range)."""
    from .errors import ProfileError
    from .profile import load_profile
    from .prom import iso_ts, pull_traffic
    from .window import Window

    profile = load_profile(profile_path)
    if profile.prometheus is None:
        raise ProfileError(f"{profile_path}: prometheus: no [prometheus] section to pull from")
    window = Window.from_args(start, end=end, hours=hours)
    with writing(data_dir, profile.storage, window.start, window.end, mirror=True) as local:
        res = pull_traffic(profile.prometheus, local, window)
    click.echo(f"pulled {res.requests:g} requests in {res.rows} increments from {res.series} series into {data_dir}")
    for lo, hi in res.already:
        click.echo(f"  {iso_ts(lo)} .. {iso_ts(hi)} already pulled: not counted again", err=True)
    for note in res.notes:
        _say(f"  {note}", err=True)


@cli.command("pull-platform")
@profile_opt
@click.option("--data", "data_dir", type=PATH, required=True, help="Data directory to add the deploys and flags to.")
@click.option("--start", help="Logs, metrics and events from (ISO 8601; default: the profile's window before now).")
@click.option("--end", help="... until (default: now, less [platform] evidence_delay).")
@_guard
def pull_platform_cmd(profile_path, data_dir, start, end):
    """Read deploys and flag environment variables from the profile's platform API (Render) now,
    and the service's logs, metrics and events over the window no earlier pull covered."""
    from .errors import ProfileError
    from .evidence import pull_evidence
    from .platform import pull_platform
    from .profile import load_profile
    from .window import Window

    profile = load_profile(profile_path)
    if profile.platform is None:
        raise ProfileError(f"{profile_path}: platform: no enabled [platform] section to read")
    src = profile.platform
    window = Window.resolve(start, end, None, profile.criteria.duration_s) if start else None
    with writing(data_dir, profile.storage) as local:
        res = pull_platform(src, local, profile.target.name)
        ev = None
        if src.evidence:
            if window is None:
                now = time.time()
                window = Window.from_args(datetime.fromtimestamp(now - profile.criteria.duration_s, timezone.utc),
                                          end=datetime.fromtimestamp(now, timezone.utc))
            ev = pull_evidence(src, local, profile.target.name, window)
    click.echo(f"read {res.deploys} deploys" + (f" and flags {res.flags_text}" if res.flags else "")
               + f"; {res.rows} rows into {data_dir}")
    if ev is not None:
        click.echo(ev.text + f"; {ev.rows} rows")
    for note in res.notes + (ev.notes if ev else []):
        _say(f"  {note}", err=True)
    failed = res.failed + len(ev.failed if ev else [])
    if failed:
        why = f": Render {ev.failed[0]}" if ev and ev.failed else ""
        click.echo(f"phasegate: error: {failed} platform API call(s) failed (stored as failed reads){why}", err=True)
        sys.exit(1)


@cli.group()
def simulate():
    """A built-in simulator of the Fault Lens service (health, list, suggestions, execute), with faults."""


@simulate.command("serve")
@click.option("--port", type=click.IntRange(0, 65535), default=8765, show_default=True, help="0 picks a free port.")
@click.option("--scenario", default="healthy", show_default=True, type=click.Choice(SCENARIO_NAMES),
              help="A named scenario: " + ", ".join(SCENARIO_NAMES) + ".")
@click.option("--schedule", type=PATH, help="A TOML fault schedule (instead of --scenario).")
@click.option("--span", default="60s", show_default=True, help="Length over which a scenario plays out.")
@click.option("--request-log", type=PATH, help="Write one JSON line per request answered.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--tls-cert", type=PATH, help="Serve HTTPS with this certificate (PEM) ...")
@click.option("--tls-key", type=PATH, help="... and this key (PEM).")
@click.option("--hang", "hang_for", default="60s", show_default=True, help="How long hang/slow-drip faults hold a connection.")
@_guard
def serve(port, scenario, schedule, span, request_log, seed, tls_cert, tls_key, hang_for):
    """Serve the simulated backend on 127.0.0.1 until interrupted."""
    from .errors import ScenarioError
    from .simulator import start_server
    from .window import parse_duration

    try:
        tls = (tls_cert, tls_key) if tls_cert or tls_key else None
        srv = start_server(port, scenario, schedule, request_log, seed, parse_duration(span),
                           parse_duration(hang_for), tls)
    except OSError as exc:
        raise ScenarioError(f"cannot serve on 127.0.0.1:{port}: {exc.strerror or exc}") from None
    scheme = "https" if tls else "http"
    click.echo(f"simulator on {scheme}://127.0.0.1:{srv.port} scenario={'schedule' if schedule else scenario}", err=True)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        srv.shutdown()
        srv.server_close()


@simulate.command("platform")
@click.option("--port", type=click.IntRange(0, 65535), default=8766, show_default=True, help="The Render API's port (0: a free one).")
@click.option("--service-port", type=click.IntRange(0, 65535), default=8765, show_default=True,
              help="The simulated service it deploys, served by the same process (0: a free one).")
@click.option("--scenario", default="healthy", show_default=True, type=click.Choice(SCENARIO_NAMES),
              help="The service's scenario to start with.")
@click.option("--service-id", default="srv-d5fr5hre5dus73d3gdn0", show_default=True, help="The service's id.")
@click.option("--also-service", "also", multiple=True, help="Another service id running the same simulator (repeatable).")
@click.option("--deploy-time", default="5s", show_default=True, help="How long a deploy takes to go live.")
@click.option("--key-env", default="RENDER_API_KEY", show_default=True,
              help="Environment variable holding the API key the fake accepts.")
@click.option("--hook-key-env", default="RENDER_DEPLOY_HOOK_KEY", show_default=True,
              help="Environment variable holding the deploy hook's key (unset: a random one, not shown).")
@click.option("--request-log", type=PATH, help="The service's request log (one JSON line per request).")
@click.option("--startup", default="ok", show_default=True, type=click.Choice(("ok", "omit", "flag_off")),
              help="How instances start: log the [FeatureFlags] line, omit it, or log a flag off.")
@_guard
def platform_cmd(port, service_port, scenario, service_id, also, deploy_time, key_env, hook_key_env, request_log,
                 startup):
    """A Render-compatible API on 127.0.0.1 and the service it deploys, for drills: deploys go
    live over --deploy-time and switch the service's flags; /_sim/fault injects service faults."""
    from .errors import ScenarioError
    from .platformsim import start_platform
    from .window import parse_duration

    key = os.environ.get(key_env, "")
    if not key:
        raise ScenarioError(f"${key_env} is not set: the fake platform needs the key its clients will send")
    try:
        plat, sim = start_platform(port, key, service_port, scenario, parse_duration(deploy_time), request_log,
                                   service_id=service_id, services=also, hook_key=os.environ.get(hook_key_env, ""),
                                   startup=startup)
    except OSError as exc:
        raise ScenarioError(f"cannot serve on 127.0.0.1: {exc.strerror or exc}") from None
    click.echo(f"render fake on {plat.api} (service {service_id}{', ' + ', '.join(also) if also else ''}); "
               f"service simulator on http://127.0.0.1:{sim.port}", err=True)
    click.echo(f"  inject a fault: curl -X POST {plat.base}/_sim/fault -d '{{\"kind\": \"server_error\", \"for\": \"2m\"}}'; "
               f"clear them: curl -X POST {plat.base}/_sim/clear", err=True)
    click.echo(f"  restart an instance: curl -X POST {plat.base}/_sim/platform -d "
               f"'{{\"restart\": {{\"startup\": \"omit\", \"failed\": true}}}}'", err=True)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        for srv in (plat, sim):
            srv.shutdown()
            srv.server_close()


@simulate.command("history")
@click.option("--profile", "profile_path", type=PATH, default="profiles/simulator.toml", show_default=True)
@click.option("--scenario", default="healthy", show_default=True, type=click.Choice(SCENARIO_NAMES),
              help="A named scenario: " + ", ".join(SCENARIO_NAMES) + ".")
@click.option("--schedule", type=PATH, help="A TOML fault schedule; offsets count from the window start.")
@click.option("--hours", type=float, default=24.0, show_default=True)
@click.option("--end", default="now", show_default=True, help="Window end, ISO 8601 or 'now'.")
@click.option("--data", "data_dir", type=PATH, required=True)
@click.option("--seed", type=int, default=0, show_default=True)
@_guard
def history_cmd(profile_path, scenario, schedule, hours, end, data_dir, seed):
    """Write a synthetic dataset (marked simulated) in the collector's schema."""
    from .profile import load_profile
    from .history import history
    from .simulator import load_schedule, scenario_faults
    from .window import Window, iso, parse_duration, parse_time

    end_dt = parse_time(end, name="--end")
    window = Window.from_args(end_dt - timedelta(seconds=parse_duration(hours * 3600.0)), end=end_dt)
    profile = load_profile(profile_path)
    faults = load_schedule(schedule) if schedule else scenario_faults(scenario, window.duration_s)
    with writing(data_dir, profile.storage) as local:
        n = history(profile, faults, window.start.timestamp(), window.end.timestamp(), local, seed)
    click.echo(f"wrote {n} simulated samples {iso(window.start)} .. {iso(window.end)} into {data_dir}")


def _raise_interrupt(*_args):
    raise KeyboardInterrupt


def main(argv=None) -> None:
    """Entry point: click's usage errors become one line and exit 2, like every other bad input."""
    try:
        code = cli.main(args=argv, prog_name="phasegate", standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as exc:
        click.echo(exc.ctx.get_help())
        sys.exit(0)
    except click.UsageError as exc:
        hint = f" (see: phasegate {exc.ctx.command_path.partition(' ')[2]} --help)".replace("  ", " ") if exc.ctx else ""
        click.echo(f"phasegate: error: {_one_line(exc.format_message())}{hint}", err=True)
        sys.exit(EXIT_BAD_INPUT)
    except click.ClickException as exc:
        click.echo(f"phasegate: error: {_one_line(exc.format_message())}", err=True)
        sys.exit(EXIT_BAD_INPUT)
    except click.Abort:
        click.echo("phasegate: interrupted", err=True)
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
