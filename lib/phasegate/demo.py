"""`make demo`: simulator → live collection → 24 h synthetic history → check → report."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

from .window import iso, utcnow

ROOT = Path.cwd()
DATA = ROOT / "data" / "demo"
PROFILE = ROOT / "profiles" / "simulator.toml"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(port: int, proc, limit_s: float = 20.0) -> None:
    end = time.monotonic() + limit_s
    while time.monotonic() < end and proc.poll() is None:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"demo: the simulator did not start on 127.0.0.1:{port}")


def _run(*args) -> int:
    print(f"\n$ phasegate {' '.join(map(str, args))}", flush=True)
    return subprocess.call([sys.executable, "-m", "phasegate.cli", *map(str, args)])


def main() -> int:
    collect_s = os.environ.get("PHASEGATE_DEMO_COLLECT", "30s")
    shutil.rmtree(DATA, ignore_errors=True)
    DATA.mkdir(parents=True)
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    sim = subprocess.Popen([sys.executable, "-m", "phasegate.cli", "simulate", "serve", "--port", str(port),
                            "--request-log", str(ROOT / "data" / "demo-requests.jsonl")])
    try:
        _wait_for(port, sim)
        # The history ends where live collection begins, so the window holds both.
        _run("simulate", "history", "--hours", "24", "--end", "now", "--data", DATA, "--seed", "1")
        if _run("collect", "--profile", PROFILE, "--base-url", base, "--data", DATA, "--for", collect_s) != 0:
            return 1
        _run("check", "--profile", PROFILE, "--base-url", base)
    finally:
        sim.terminate()
        sim.wait(timeout=10)
    end = utcnow()
    code = _run("report", "--profile", PROFILE, "--data", DATA, "--phase", "phase1-staging-canary",
                "--start", iso(end - timedelta(hours=24)), "--end", iso(end), "--out", ROOT / "reports" / "demo")
    # The report's exit status is its verdict (0 GO, 10-13 otherwise); the demo succeeded if it rendered.
    if code not in (0, 10, 11, 12, 13):
        return code
    # Under reports/demo/, never where a rollout plan looks: a demo is simulated data with the
    # simulator's profile, and can never complete a plan phase.
    print("\ndemo done: the four files above are under reports/demo/phase1-staging-canary/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
