"""`make soak`: the long reliability runs of issue 4, printed as a table for docs/RELIABILITY.md.

  A. mixed faults at >= 50 probes/s for --mixed-minutes: outcomes against the simulator's log
  B. --kills SIGKILLs of a collector at random moments, each followed by a restart
  C. --load-minutes of collection at >= 200 probes/s: RSS, file descriptors, journal backlog
"""

import argparse
import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from conftest import fast_profile, url, write_profile  # noqa: E402
from test_collect import kill_and_restart  # noqa: E402
from test_reliability import check_mixed, mixed_run  # noqa: E402

from phasegate.collector import Collector  # noqa: E402
from phasegate.profile import load_profile  # noqa: E402
from phasegate.simulator import start_server  # noqa: E402


def mixed(minutes: float) -> list[str]:
    with tempfile.TemporaryDirectory() as d:
        stats, df, entries, timeout_s = mixed_run(Path(d), seconds=minutes * 60, tenants=18)
        compared, mismatched = check_mixed(df, entries, timeout_s)
    rate = len(df) / (minutes * 60)
    outcomes = ", ".join(f"{k} {v}" for k, v in sorted(Counter(df["outcome"]).items()))
    return [f"| mixed faults, {minutes:g} min | {len(df):,} samples at {rate:.1f}/s; {compared:,} compared with the "
            f"request log; {len(mismatched)} mismatched; collector stopped: no | {outcomes} |"]


def kills(n: int) -> list[str]:
    rng = random.Random(7)
    lost = dups = rows = before = 0
    for _ in range(n):
        with tempfile.TemporaryDirectory() as d:
            d = Path(d)
            log = d / "requests.jsonl"
            srv = start_server(0, request_log=log)
            try:
                profile = fast_profile(d, url(srv), interval="0.25s", timeout="0.2s")
                lo, du, ro, be = kill_and_restart(profile, d / "data", log, rng.uniform(1.5, 6.0))
            finally:
                srv.shutdown()
                srv.server_close()
            lost, dups, rows, before = lost + len(lo), dups + du, rows + ro, before + be
    return [f"| SIGKILL + restart x{n} | {before:,} samples recorded before a kill (read with the collector frozen); {lost} of them lost; "
            f"{dups} stored twice; every data dir reopened | {rows:,} rows kept |"]


def _rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def load(minutes: float, tenants: int = 50) -> list[str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sim = subprocess.Popen([sys.executable, "-m", "phasegate.cli", "simulate", "serve", "--port", str(port)],
                           stderr=subprocess.PIPE, text=True)
    sim.stderr.readline()
    samples_rss, fds, backlog = [], [], []
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        names = ", ".join(f'"y{i}"' for i in range(tenants))
        probes = "".join(f'\n[[probes]]\nname = "{n}"\npath = "/v1/actions/{n}?yacht={{tenant}}"\n'
                         for n in ("health", "list", "suggestions"))
        probes += '\n[[probes]]\nname = "execute"\nmethod = "POST"\npath = "/v1/actions/execute?yacht={tenant}"\n'
        profile = write_profile(d, f'[target]\nname = "load"\nbase_url = "http://127.0.0.1:{port}"\n'
                                   f'interval = "1s"\ntimeout = "0.9s"\ntenants = [{names}]\n{probes}')
        c = Collector(load_profile(profile), d / "data", until_ts=time.time() + minutes * 60, compact_every_s=60,
                      workers=128)
        t = threading.Thread(target=c.run)
        t0 = time.time()
        t.start()
        while t.is_alive():
            t.join(10)
            samples_rss.append(_rss_kb())
            fds.append(len(os.listdir("/proc/self/fd")))
            backlog.append(len(list((d / "data" / "journal").glob("*.jnl"))))
        elapsed = time.time() - t0
        s = c.stats
    sim.terminate()
    warm = samples_rss[len(samples_rss) // 4:] or samples_rss
    return [f"| load, {minutes:g} min, {tenants * 4} jobs/s | {s.samples:,} samples at {s.samples / elapsed:.1f}/s, "
            f"{s.errors} not ok ({dict((k, v) for k, v in s.by_outcome.items() if k != 'ok')}), "
            f"{s.missed_slots} missed slots | RSS after warm-up {min(warm) / 1024:.0f}-{max(warm) / 1024:.0f} MiB; "
            f"fds {min(fds)}-{max(fds)}; journal segments on disk {min(backlog)}-{max(backlog)} |"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mixed-minutes", type=float, default=10)
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--load-minutes", type=float, default=15)
    a = ap.parse_args()
    rows = ["| run | result | detail |", "|---|---|---|"]
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    if a.kills:
        rows += kills(a.kills)
        print(rows[-1], flush=True)
    if a.mixed_minutes:
        rows += mixed(a.mixed_minutes)
        print(rows[-1], flush=True)
    if a.load_minutes:
        rows += load(a.load_minutes)
        print(rows[-1], flush=True)
    print(f"\nsoak started {started}, {os.cpu_count()} cores")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
