"""`make demo`: simulator → live collection → 24 h synthetic history → check → report."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path.cwd()
DATA = ROOT / "data" / "demo"
PROFILE = ROOT / "profiles" / "simulator.toml"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(*args) -> int:
    print(f"\n$ phasegate {' '.join(map(str, args))}", flush=True)
    return subprocess.call([sys.executable, "-m", "phasegate.cli", *map(str, args)])


def main() -> int:
    collect_s = os.environ.get("PHASEGATE_DEMO_COLLECT", "30s")
    shutil.rmtree(DATA, ignore_errors=True)
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    sim = subprocess.Popen([sys.executable, "-m", "phasegate.cli", "simulate", "serve", "--port", str(port),
                            "--request-log", str(ROOT / "data" / "demo-requests.jsonl")])
    try:
        time.sleep(1.0)
        # The history ends where live collection begins, so the window holds both.
        _run("simulate", "history", "--hours", "24", "--end", "now", "--data", DATA, "--seed", "1")
        if _run("collect", "--profile", PROFILE, "--base-url", base, "--data", DATA, "--for", collect_s) != 0:
            return 1
        _run("check", "--profile", PROFILE, "--base-url", base)
    finally:
        sim.terminate()
        sim.wait(timeout=10)
    return report_step()


def report_step() -> int:
    from .store import read_samples
    from .window import utcnow

    now = utcnow()
    df = read_samples(DATA, now.replace(year=now.year - 1), now)
    print(f"\ndemo dataset: {len(df)} samples in {DATA}, outcomes: {df['outcome'].value_counts().to_dict()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
