"""Issue 25's whole rollout, unattended, on the shipped drill (profiles/drill-rollout.toml and
drill.toml, time compressed) against `phasegate simulate platform` in its own process, with only
the commands of the deploy/ units and the README:

Phase 1 GO → signed approval → act promotes (the deploy followed to live) → Phase 2 gets a 5xx
burst → NO-GO → acknowledged → act rolls back (flag off, deploy live, 503 verified) → a second act
does nothing → the fault is fixed and Phase 2 restarts → GO → … → Phase 4 approved: the rollout is
complete. Every report is rendered again at least once (in place while unapproved, as a revision
beside an approval); every approval verifies at the end; the only non-zero exit is the NO-GO
report, where a person had to act."""

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import PROFILES, ROOT, free_port as _free_port
from test_rollout import _key

PHASES = ("phase1-staging-canary", "phase2-staging-full", "phase3-production-canary", "phase4-production-full")
KEY, HOOK_KEY = "rnd_DRILLkey0123456789abcdef", "hookDRILL0123456789"
DURATION, WINDOW_S = "15s", 15
# What the report unit counts as success (PENDING, INCONCLUSIVE while evidence gathers).
REPORT_OK = tuple(int(c) for c in next(l for l in (ROOT / "deploy/systemd/phasegate-report.service").read_text().splitlines()
                                       if l.startswith("SuccessExitStatus=")).split("=")[1].split())



def _unit_argv(name: str) -> list:
    """A deploy/systemd unit's ExecStart, as written, run from the checkout's venv."""
    line = next(l for l in (ROOT / "deploy" / "systemd" / name).read_text().splitlines() if l.startswith("ExecStart="))
    argv = shlex.split(line.removeprefix("ExecStart="))
    return [sys.executable, "-m", "phasegate.cli", *argv[1:]]


class Drill:
    def __init__(self, root: Path, api_port: int, service_port: int, signers: Path):
        self.root, self.api = root, f"http://127.0.0.1:{api_port}"
        self.env = {**os.environ, "RENDER_API_KEY": KEY,
                    "RENDER_DEPLOY_HOOK_URL": f"{self.api}/deploy/srv-d5fr5hre5dus73d3gdn0?key={HOOK_KEY}"}
        self.env.pop("PHASEGATE_WEBHOOK_URL", None)
        self.codes = []  # (command, exit status) of everything run
        profiles = root / "profiles"
        profiles.mkdir()
        # The shipped drill, pointed at this test's ports, its phases 20 s each, signatures required.
        drill = (PROFILES / "drill.toml").read_text().replace('extends = "simulator.toml"',
                                                               f'extends = "{PROFILES / "simulator.toml"}"')
        (profiles / "drill.toml").write_text(drill.replace("127.0.0.1:8765", f"127.0.0.1:{service_port}")
                                             .replace("127.0.0.1:8766", f"127.0.0.1:{api_port}"))
        plan = (PROFILES / "drill-rollout.toml").read_text().replace('duration = "1m"', f'duration = "{DURATION}"')
        plan = f'require_signature = true\nallowed_signers = "{signers}"\n' + plan
        (profiles / "fault-lens-rollout.toml").write_text(plan)  # the path the units name
        self.plan = "profiles/fault-lens-rollout.toml"

    def run(self, *args, argv=None, ok=(0,), timeout=300):
        cmd = argv or [sys.executable, "-m", "phasegate.cli", *map(str, args)]
        res = subprocess.run(cmd, cwd=self.root, env=self.env, capture_output=True, text=True, timeout=timeout)
        self.codes.append((" ".join(map(str, cmd[3:6])), res.returncode))
        assert res.returncode in ok, f"{cmd[3:]} exited {res.returncode}:\n{res.stdout}\n{res.stderr}"
        return res

    def hourly(self, ok=(0, *REPORT_OK)):
        """What the report unit and, after it, the act unit run (a dry run)."""
        rep = self.run(argv=_unit_argv("phasegate-report.service"), ok=ok)
        if rep.returncode in REPORT_OK:
            self.codes[-1] = (self.codes[-1][0], 0)  # the unit succeeds: waiting, not a failure
        acted = self.run(argv=_unit_argv("phasegate-act.service"))
        assert "EXECUTING" not in acted.stdout  # as written the act unit never changes anything
        return rep, acted

    def folder(self, res) -> Path:
        return self.root / re.search(r"json +(\S+)/signoff.json", res.stdout).group(1)

    def sim(self, what: str, body: dict | None = None):
        req = urllib.request.Request(f"{self.api}/_sim/{what}", data=json.dumps(body or {}).encode(),
                                     method="POST" if what != "state" else "GET")
        return json.loads(urllib.request.urlopen(req, timeout=10).read())

    def state(self):
        return self.sim("state")["srv-d5fr5hre5dus73d3gdn0"]

    def until_go(self):
        """Hourly runs until the phase's window is complete and GO (the first once it may be)."""
        time.sleep(WINDOW_S)  # the phase has just started: its window cannot be complete before
        for _ in range(40):
            rep, acted = self.hourly()
            if rep.returncode == 0 and rep.stdout.startswith("VERDICT: GO"):
                return rep, acted
            assert rep.returncode != 13 or "[PASS] hard window_complete" not in rep.stdout, rep.stdout  # not GO: stop
            time.sleep(2)
        raise AssertionError(f"no GO: {rep.stdout}")

    def sign_off(self, phase: str, key: Path, again: bool = False):
        """GO (rendered again in place first, with `again`) → signed approval → rendered again: a
        revision beside the approved folder, which is left alone."""
        rep, acted = self.until_go()
        folder = self.folder(rep)
        assert folder.parent.name == phase
        assert "waiting: the GO report" in acted.stdout and "--key SSH_KEY" in acted.stdout  # exit 0: waiting
        if again:
            same = self.run("report", "--plan", self.plan, "--phase", phase)
            assert self.folder(same) == folder  # not approved yet: the same folder, rewritten
        self.run("approve", folder, "--by", "rita@example.org", "--key", key)
        revision = self.run("report", "--plan", self.plan, "--phase", phase, "--formats", "json")
        assert self.folder(revision).name == folder.name + ".r2"
        return folder

    def promote(self):
        deploys = len(self.state()["deploys"])
        res = self.run("act", "--plan", self.plan, "--execute", "--by", "oncall-anna")
        assert "EXECUTING: promote" in res.stdout and re.search(r"trigger a deploy: done \(deploy dep-\w+ live after", res.stdout)
        assert "verify list answers 200: done" in res.stdout
        assert len(self.state()["deploys"]) == deploys + 1
        return res


@pytest.mark.slow
def test_the_whole_rollout_runs_unattended_on_the_drill(tmp_path):
    key, signers = _key(tmp_path)
    api_port, service_port = _free_port(), _free_port()
    d = Drill(tmp_path, api_port, service_port, signers)
    platform = subprocess.Popen([sys.executable, "-m", "phasegate.cli", "simulate", "platform", "--port", str(api_port),
                                 "--service-port", str(service_port), "--deploy-time", "1s"],
                                cwd=tmp_path, env={**d.env, "RENDER_DEPLOY_HOOK_KEY": HOOK_KEY},
                                stderr=subprocess.PIPE, text=True, start_new_session=True)
    assert platform.stderr.readline().startswith("render fake on ")
    collector = subprocess.Popen(_unit_argv("phasegate-collect.service") + ["--recheck", "5s"], cwd=tmp_path,
                                 env=d.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                 start_new_session=True)
    try:
        # Phase 1: an interim report while the window runs, then the sign-off.
        time.sleep(3)
        first, _ = d.hourly()
        assert first.returncode in (12, 13), first.stdout
        approved = [d.sign_off(PHASES[0], key, again=True)]
        d.promote()

        # Phase 2: a burst of 5xx on the list endpoint → NO-GO.
        time.sleep(2)
        d.sim("fault", {"kind": "server_error", "for": "8s", "probes": ["list"]})
        for _ in range(20):
            rep, acted = d.hourly(ok=(0, 10, 12, 13))
            if rep.returncode == 10:
                break
            time.sleep(1)
        assert rep.returncode == 10 and "hard requirement(s) failed: no_5xx" in rep.stdout, rep.stdout
        assert "DRY RUN" in acted.stdout and "rollback" in acted.stdout  # proposed, not done
        nogo = d.folder(rep)
        refused = d.run("act", "--plan", d.plan, "--execute", ok=(2,))
        assert "is not acknowledged" in refused.stderr and "--key SSH_KEY" in refused.stderr
        d.run("approve", nogo, "--acknowledge", "--by", "rita@example.org", "--key", key)
        before = len(d.state()["deploys"])
        rolled = d.run("act", "--plan", d.plan, "--execute", "--by", "oncall-anna")
        assert "EXECUTING: rollback" in rolled.stdout
        assert "set FAULT_LENS_V1_ENABLED=false: done" in rolled.stdout
        assert re.search(r"trigger a deploy: done \(deploy dep-\w+ live after", rolled.stdout)  # through the deploy hook
        assert "verify list answers 503: done" in rolled.stdout
        state = d.state()
        assert state["env"]["FAULT_LENS_V1_ENABLED"] == "false" and state["deploys"][0]["trigger"] == "deploy_hook"
        assert state["deploys"][0]["status"] == "live" and state["deploys"][1]["status"] == "deactivated"
        twice = d.run("act", "--plan", d.plan, "--execute", "--by", "oncall-anna")
        assert "was rolled back at" in twice.stdout and "nothing more to do by machine" in twice.stdout
        assert len(d.state()["deploys"]) == before + 1  # one rollback deploy, never two
        # The hourly job renders the acknowledged NO-GO again: a revision beside it.
        again, _ = d.hourly(ok=(10,))
        assert d.folder(again).name == nogo.name + ".r2"
        st = d.run("status", "--plan", d.plan, ok=(10,))
        assert "rolled back at" in st.stdout and "--restart --execute" in st.stdout.splitlines()[-1]
        approved.append(nogo)
        # The cause is fixed; a person restarts the phase: its promotion again, a new window.
        d.sim("clear")
        restart = d.run("act", "--plan", d.plan, "--restart", "--execute", "--by", "oncall-anna")
        assert "EXECUTING: restart" in restart.stdout and "verify list answers 200: done" in restart.stdout
        assert d.state()["env"]["FAULT_LENS_V1_ENABLED"] == "true"
        time.sleep(2)
        after = d.run(argv=_unit_argv("phasegate-act.service"))  # the old window's NO-GO is behind the restart
        assert "rollback" not in after.stdout, after.stdout
        approved.append(d.sign_off(PHASES[1], key))
        d.promote()

        # Phases 3 and 4: clean.
        for phase in PHASES[2:]:
            time.sleep(2)
            approved.append(d.sign_off(phase, key))
            if phase != PHASES[-1]:
                d.promote()
        done = d.run("status", "--plan", d.plan)
        assert done.stdout.splitlines()[-1] == "NEXT: rollout complete: every phase has an approved GO report"
        phases = [line for line in done.stdout.splitlines() if re.match(r"  \d\. ", line)]
        assert len(phases) == 4 and all("GO, approved by rita@example.org" in line for line in phases), done.stdout
        idle, _ = d.hourly()
        assert idle.stdout.startswith("no phase of Fault Lens V1 rollout (drill) in progress to report")
        out, err = collector.communicate(timeout=120)  # the collector stops by itself
        assert collector.returncode == 0 and "rollout complete" in err, err
        # The reports a reviewer reads say what phasegate itself did.
        phase2 = json.loads((approved[2] / "signoff.json").read_text())
        assert phase2["verdict"] == "GO" and phase2["mode"] == "drill"
        assert phase2["started_by"]["kind"] == "restart" and phase2["started_by"]["by"] == "oncall-anna"
        assert "This window began after the restart by phasegate act (by oncall-anna)" in \
            (approved[2] / "signoff.html").read_text()
        phase3 = json.loads((approved[3] / "signoff.json").read_text())
        assert phase3["started_by"]["text"].startswith("promotion by phasegate act (by oncall-anna), verified ")
        assert phase3["started_by"]["deploys"] and all(c["passed"] is not False for c in phase3["criteria"])
    finally:
        for proc in (collector, platform):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=30)
    # Every approval and acknowledgement verifies, signed by a listed key.
    for folder in approved:
        v = d.run("verify", folder, "--allowed-signers", signers)
        assert "signed, key checked against the allowed signers" in v.stdout, v.stdout
    nonzero = [(cmd, code) for cmd, code in d.codes if code != 0]
    # Only where a person had to act: the NO-GO reports, the refusal before the acknowledgement,
    # and status of the rolled-back phase (the report unit's PENDING counted as the unit does).
    assert {code for _cmd, code in nonzero} <= {2, 10}, nonzero
    assert [c for c in nonzero if c[1] == 2] == [("act --plan profiles/fault-lens-rollout.toml", 2)], nonzero
    for path in tmp_path.rglob("*"):
        if path.is_file() and path.suffix in (".json", ".html", ".ipynb", ".parquet", ".jnl", ".pdf", ".log"):
            data = path.read_bytes()
            assert KEY.encode() not in data and HOOK_KEY.encode() not in data, path
