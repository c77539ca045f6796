"""The scheduling recipes in deploy/: systemd units verified by systemd itself, and the cron
lines run as cron would run them (sh -c with the file's variables), against the simulator."""

import os
import re
import shlex
import shutil
import signal
import subprocess
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from phasegate.history import history
from phasegate.profile import load_profile
from phasegate.store import read_samples

from conftest import ROOT, SIM_PROFILE, fast_profile, url, write_profile

DEPLOY = ROOT / "deploy"
FIELD = re.compile(r"^(\*|\d+(-\d+)?)(/\d+)?(,(\*|\d+(-\d+)?)(/\d+)?)*$")


def cron_file():
    """(variables, [(schedule fields, user, command)]) of deploy/cron/phasegate."""
    env, jobs = {}, []
    for line in (DEPLOY / "cron" / "phasegate").read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        m = re.match(r"^([A-Z_]+)=(.*)$", line)
        if m:
            env[m.group(1)] = m.group(2)
            continue
        parts = line.split(None, 6)
        jobs.append((parts[:5], parts[5], parts[6]))
    return env, jobs


def wait_for(pred, limit=60.0):
    end = time.monotonic() + limit
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.2)
    return False


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def test_cron_lines_are_valid_and_keep_secrets_out():
    env, jobs = cron_file()
    assert [j[0] for j in jobs] == [["*/5", "*", "*", "*", "*"], ["7", "*", "*", "*", "*"]]
    # act runs in the report's job, after it: it reads the report just made; a dry run as written.
    report, act = jobs[1][2].index("phasegate report --plan"), jobs[1][2].index("phasegate act --plan")
    assert report < act and "--execute" not in jobs[1][2]
    for fields, user, cmd in jobs:
        assert all(FIELD.match(f) for f in fields), fields
        assert user == "phasegate" and "%" not in cmd  # cron turns a bare % into a newline
    text = (DEPLOY / "cron" / "phasegate").read_text()
    assert "TOKEN=" not in text and "KEY=" not in text and "WEBHOOK_URL=" not in text


@pytest.fixture
def project(tmp_path):
    """A deployment directory like /opt/phasegate: the venv, a plan, a data dir."""
    (tmp_path / ".venv").symlink_to(ROOT / ".venv")
    return tmp_path


def drill_plan(tmp_path, base_url, phases=1, duration="1h", start=None) -> Path:
    """A drill plan (simulated and short-lived samples allowed) of `phases` phases over the simulator,
    each with its data dir relative to the deployment directory, as the shipped plan has them."""
    prof = fast_profile(tmp_path, base_url, extra="""
[criteria]
rate_mode = "observed"
min_coverage = 0.5
[criteria.execute_p99]
enabled = false
""")
    start = start or datetime.now(timezone.utc)
    body = 'name = "drill"\nallow_simulated = true\n'
    ids = ["phase1-staging-canary", "phase2-staging-full"]  # phases the simulator's profile knows
    for i in range(1, phases + 1):
        body += (f'\n[[phase]]\nid = "{ids[i - 1]}"\ntitle = "Phase {i}"\nprofile = "{prof}"\ndata = "data/p{i}"\n'
                 f'start = "{start.isoformat() if i == 1 else "after-previous-go"}"\nduration = "{duration}"\n')
    return write_profile(tmp_path, body, "plan.toml")


def run_cron_job(cmd: str, env: dict, **kw):
    return subprocess.Popen(["/bin/sh", "-c", cmd], env={**os.environ, **env}, start_new_session=True, **kw)


def test_cron_collector_line_restarts_a_dead_collector_and_never_runs_two(project, sim, tmp_path):
    srv = sim()
    env, jobs = cron_file()
    env.update(PG=str(project), PLAN=str(drill_plan(tmp_path, url(srv))), LOCKS=str(tmp_path))
    cmd = jobs[0][2]
    first = run_cron_job(cmd, env)
    try:
        # Probes written to the journal (past its header) before the collector is killed.
        assert wait_for(lambda: any(p.stat().st_size > 512 for p in (project / "data").rglob("*.jnl")))
        second = run_cron_job(cmd, env)
        assert second.wait(timeout=60) == 1  # flock -n: the lock is held, no second collector
        assert first.poll() is None
        os.killpg(first.pid, signal.SIGKILL)  # the collector dies
        first.wait(timeout=30)
        assert wait_for(lambda: not group_alive(first.pid))  # and with it its hold on the lock
        dead = {p.name for p in (project / "data").rglob("*.jnl")}
        third = run_cron_job(cmd, env)  # the next cron tick starts it again, and it recovers the journal
        assert wait_for(lambda: any(p.stat().st_size > 512 for p in (project / "data").rglob("*.jnl")
                                    if p.name not in dead))
        os.killpg(third.pid, signal.SIGTERM)  # the shell dies of it; the collector stops cleanly
        third.wait(timeout=60)
        assert wait_for(lambda: "collected " in (project / "logs" / "collect.log").read_text())
        log = (project / "logs" / "collect.log").read_text()
        assert re.search(r"recovered \d+ samples from ", log), log
    finally:
        for p in (first, locals().get("third")):
            if p is not None and group_alive(p.pid):
                os.killpg(p.pid, signal.SIGKILL)
    df = read_samples(project / "data" / "p1", datetime(2020, 1, 1, tzinfo=timezone.utc),
                      datetime.now(timezone.utc) + timedelta(minutes=1), columns=["run_id"])
    assert df["run_id"].nunique() == 2 and len(df) > 0  # two runs, one after the other, both stored


@pytest.mark.slow
def test_cron_report_line_writes_the_current_phase_report(project, tmp_path):
    now = datetime.now(timezone.utc).replace(microsecond=0)
    start = now - timedelta(hours=1)
    history(load_profile(SIM_PROFILE), [], start.timestamp(), now.timestamp(), project / "data" / "p1", seed=4)
    plan = write_profile(tmp_path, f'''name = "cron test"
[[phase]]
id = "phase1-staging-canary"
profile = "{SIM_PROFILE}"
data = "data/p1"
start = "{start.isoformat()}"
''', "plan.toml")
    env, jobs = cron_file()
    env.update(PG=str(project), PLAN=str(plan), LOCKS=str(tmp_path))
    proc = run_cron_job(jobs[1][2], env)
    assert proc.wait(timeout=300) == 0  # cron's view: the line ran (the verdict is in the log)
    log = (project / "logs" / "report.log").read_text()
    assert "VERDICT: PENDING  (phase1-staging-canary" in log and log.rstrip().endswith("exit 12")
    assert list((project / "reports" / "phase1-staging-canary").glob("*/signoff.pdf"))
    acted = (project / "logs" / "act.log").read_text()  # then act, on the report just made: nothing to do
    assert "nothing calls for an action" in acted and acted.rstrip().endswith("exit 0"), acted


def _units(tmp_path):
    out = []
    for unit in sorted((DEPLOY / "systemd").iterdir()):
        dest = tmp_path / unit.name
        dest.write_text(unit.read_text().replace("/opt/phasegate", str(ROOT)))
        out.append(dest)
    return out


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze: apt-get install -y systemd")
def test_systemd_units_pass_systemd_analyze_verify(tmp_path):
    units = _units(tmp_path)
    assert [u.name for u in units] == ["phasegate-act.service", "phasegate-collect.service",
                                       "phasegate-report.service", "phasegate-report.timer"]
    res = subprocess.run(["systemd-analyze", "verify", *map(str, units)], capture_output=True, text=True, cwd=tmp_path)
    assert res.returncode == 0 and res.stderr == "", res.stderr
    collect = units[1].read_text()
    assert "\nRestart=on-failure\n" in collect and "\nRestartPreventExitStatus=2\n" in collect  # bad config: no loop
    assert "\nOnCalendar=hourly\n" in units[3].read_text()
    # Report, then act: ordered by the units (act wants nothing of its own timer).
    assert "\nWants=phasegate-act.service\n" in units[2].read_text()
    assert "\nAfter=phasegate-report.service\n" in units[0].read_text()
    # The check can fail: a misspelt key is reported.
    bad = tmp_path / "bad.service"
    bad.write_text(collect.replace("Restart=on-failure", "Restartt=on-failure"))
    res = subprocess.run(["systemd-analyze", "verify", str(bad)], capture_output=True, text=True, cwd=tmp_path)
    assert "Unknown key 'Restartt'" in res.stderr


def _exec_start(unit: Path) -> list:
    line = next(l for l in unit.read_text().splitlines() if l.startswith("ExecStart="))
    return shlex.split(line.removeprefix("ExecStart="))


def test_systemd_collector_command_stops_clean_on_sigterm(project, tmp_path, sim):
    """What systemd runs, as systemd stops it: SIGTERM → journal flushed, exit 0 (not restarted)."""
    srv = sim()
    argv = _exec_start(DEPLOY / "systemd" / "phasegate-collect.service")
    argv = [str(ROOT / ".venv/bin/phasegate") if a.endswith("/.venv/bin/phasegate") else a for a in argv]
    argv[argv.index("--plan") + 1] = str(drill_plan(tmp_path, url(srv)))
    proc = subprocess.Popen(argv, cwd=project, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert wait_for(lambda: any((project / "data").rglob("*.jnl")))
    time.sleep(1.5)  # let a few probe rounds land (not an assertion on time)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    n = int(re.search(r"collected (\d+) samples", out).group(1))
    df = read_samples(project / "data" / "p1", datetime(2020, 1, 1, tzinfo=timezone.utc),
                      datetime.now(timezone.utc) + timedelta(minutes=1), columns=["probe"])
    assert n > 0 and len(df) == n


@pytest.mark.slow
def test_the_units_as_written_serve_a_two_phase_drill_without_edits(project, tmp_path, sim):
    """The collector unit's and the report unit's commands, exactly as written (a clean environment,
    the deployment directory), through both phases of a drill: no edit between phases, never exit 2."""
    srv = sim()
    plan = drill_plan(tmp_path, url(srv), phases=2, duration="20s")
    (project / "profiles").mkdir()
    (project / "profiles" / "fault-lens-rollout.toml").write_text(plan.read_text())  # the path the units name

    def argv(unit):
        return [str(project / ".venv/bin/phasegate") if a.endswith("/.venv/bin/phasegate") else a
                for a in _exec_start(DEPLOY / "systemd" / unit)]

    clean = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "LANG": "C.UTF-8"}
    collector = subprocess.Popen(argv("phasegate-collect.service") + ["--recheck", "1s"], cwd=project, env=clean,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    report = argv("phasegate-report.service")
    codes = []
    try:
        for phase in ("phase1-staging-canary", "phase2-staging-full"):
            # Hourly reports while the phase runs: PENDING (or GO once complete), never bad input.
            while True:
                res = subprocess.run(report, cwd=project, env=clean, capture_output=True, text=True, timeout=300)
                codes.append(res.returncode)
                assert res.returncode != 2, res.stdout + res.stderr
                if res.returncode == 0 and "VERDICT: GO" in res.stdout:
                    break
                assert res.returncode in (0, 12, 13), res.stdout + res.stderr
                time.sleep(2)
            folder = Path(re.search(r"json +(\S+)/signoff.json", res.stdout).group(1))
            assert folder.parent.name == phase
            approved = subprocess.run([str(project / ".venv/bin/phasegate"), "approve", str(folder), "--by", "drill"],
                                      cwd=project, env=clean, capture_output=True, text=True)
            assert approved.returncode == 0, approved.stderr
        # Both phases approved: the collector says the rollout is complete and stops by itself.
        out, err = collector.communicate(timeout=120)
        assert collector.returncode == 0, err
        assert "collecting for Phase 1 [phase1-staging-canary]" in err and "collecting for Phase 2 [phase2-staging-full]" in err
        assert "rollout complete" in err
        idle = subprocess.run(report, cwd=project, env=clean, capture_output=True, text=True, timeout=300)
        assert idle.returncode == 0 and idle.stdout.startswith("no phase of drill in progress to report")
        act = argv("phasegate-act.service")
        assert "--execute" not in act  # the recipe is a dry run as written
        done = subprocess.run(act, cwd=project, env=clean, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0 and "nothing calls for an action" in done.stdout, done.stdout + done.stderr
    finally:
        if collector.poll() is None:
            os.killpg(collector.pid, signal.SIGKILL)
    assert list((project / "data" / "p1").rglob("*.parquet")) and list((project / "data" / "p2").rglob("*.parquet"))
    assert 2 not in codes
