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


def run_cron_job(cmd: str, env: dict, **kw):
    return subprocess.Popen(["/bin/sh", "-c", cmd], env={**os.environ, **env}, start_new_session=True, **kw)


def test_cron_collector_line_restarts_a_dead_collector_and_never_runs_two(project, sim, tmp_path):
    srv = sim()
    prof = fast_profile(tmp_path, url(srv))
    env, jobs = cron_file()
    env.update(PG=str(project), COLLECT_PROFILE=str(prof), COLLECT_DATA=str(project / "data"), LOCKS=str(tmp_path))
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
    df = read_samples(project / "data", datetime(2020, 1, 1, tzinfo=timezone.utc),
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
    assert [u.name for u in units] == ["phasegate-collect.service", "phasegate-report.service", "phasegate-report.timer"]
    res = subprocess.run(["systemd-analyze", "verify", *map(str, units)], capture_output=True, text=True, cwd=tmp_path)
    assert res.returncode == 0 and res.stderr == "", res.stderr
    collect = units[0].read_text()
    assert "\nRestart=on-failure\n" in collect
    assert "\nOnCalendar=hourly\n" in units[2].read_text()
    # The check can fail: a misspelt key is reported.
    bad = tmp_path / "bad.service"
    bad.write_text(collect.replace("Restart=on-failure", "Restartt=on-failure"))
    res = subprocess.run(["systemd-analyze", "verify", str(bad)], capture_output=True, text=True, cwd=tmp_path)
    assert "Unknown key 'Restartt'" in res.stderr


def _exec_start(unit: Path) -> list:
    line = next(l for l in unit.read_text().splitlines() if l.startswith("ExecStart="))
    return shlex.split(line.removeprefix("ExecStart="))


def test_systemd_collector_command_stops_clean_on_sigterm(tmp_path, sim):
    """What systemd runs, as systemd stops it: SIGTERM → journal flushed, exit 0 (not restarted)."""
    srv = sim()
    argv = _exec_start(DEPLOY / "systemd" / "phasegate-collect.service")
    argv = [str(ROOT / ".venv/bin/phasegate") if a.endswith("/.venv/bin/phasegate") else a for a in argv]
    argv[argv.index("--profile") + 1] = str(fast_profile(tmp_path, url(srv)))
    argv[argv.index("--data") + 1] = str(tmp_path / "data")
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert wait_for(lambda: any((tmp_path / "data").rglob("*.jnl")))
    time.sleep(1.5)  # let a few probe rounds land (not an assertion on time)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    n = int(re.search(r"collected (\d+) samples", out).group(1))
    df = read_samples(tmp_path / "data", datetime(2020, 1, 1, tzinfo=timezone.utc),
                      datetime.now(timezone.utc) + timedelta(minutes=1), columns=["probe"])
    assert n > 0 and len(df) == n
