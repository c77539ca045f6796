"""The collector: every probe on its own schedule, every attempt one stored row."""

from __future__ import annotations

import hashlib
import heapq
import logging
import os
import random
import signal
import sys
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone

from .errors import ProfileError
from .probe import run_command, run_probe
from .profile import Check, Probe, Profile
from .redact import printable
from .objstore import Location
from .store import SampleWriter

log = logging.getLogger(__name__)


@dataclass
class CollectStats:
    run_id: str
    samples: int = 0
    by_outcome: Counter = field(default_factory=Counter)
    last: dict = field(default_factory=dict)
    missed_slots: int = 0
    recovered: list = field(default_factory=list)
    store_pending: int = 0
    store_dropped: int = 0
    store_error: str | None = None
    lag_ms: list = field(default_factory=list)  # start of each probe minus its scheduled time (last 100k)
    platform_reads: int = 0  # reads of the hosting platform's API ([platform]); failed ones counted apart
    platform_failed: int = 0
    platform_note: str | None = None

    @property
    def errors(self) -> int:
        return self.samples - self.by_outcome.get("ok", 0)


def new_run_id() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + f"-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """'K/N' -> (K, N) with 1 <= K <= N; None for None."""
    if text is None:
        return None
    k, sep, n = str(text).partition("/")
    if not sep or not k.isdigit() or not n.isdigit() or not 1 <= int(k) <= int(n) <= 10_000:
        raise ProfileError(f"--shard must be K/N with 1 <= K <= N (e.g. 2/4), got {text!r}")
    return int(k), int(n)


def shard_of(tenant: str | None, n: int) -> int:
    """The shard (1..n) that probes `tenant`: a stable hash of its id, the same on every machine
    and Python (unlike hash()). Probes without a tenant go to shard 1."""
    if tenant is None:
        return 1
    return int.from_bytes(hashlib.sha256(tenant.encode()).digest()[:8], "big") % n + 1


def probe_jobs(profile: Profile, shard: tuple[int, int] | None = None) -> list[tuple[Probe, str | None]]:
    """(probe, tenant) pairs: a probe mentioning {tenant} runs once per tenant; with `shard`
    (K, N), only the pairs of shard K, so N collectors share a fleet without overlap."""
    jobs = []
    for p in profile.probes:
        templated = "{tenant}" in p.path or any("{tenant}" in v for v in (*p.headers.values(), *profile.target.headers.values()))
        if templated and profile.target.tenants:
            jobs.extend((p, t) for t in profile.target.tenants)
        else:
            jobs.append((p, None))
    if shard is not None:
        jobs = [(p, t) for p, t in jobs if shard_of(t, shard[1]) == shard[0]]
    return jobs


class Collector:
    """Runs until `until_ts` (epoch seconds) or `stop()`; flushes everything on the way out."""

    def __init__(self, profile: Profile, data_dir, *, until_ts: float | None = None,
                 compact_every_s: float = 60.0,
                 workers: int | None = None, progress=None, seed: int | None = None,
                 shard: tuple[int, int] | None = None):
        profile.target.require_auth()
        self.profile = profile
        self.location = Location(data_dir, profile.storage)
        self.location.check()  # bad credentials are bad input now, not an upload failing every minute
        self.data_dir = self.location.local
        self.until_ts = until_ts
        self.compact_every_s = compact_every_s
        self.shard = None if shard is None else f"{shard[0]}/{shard[1]}"
        self.jobs = probe_jobs(profile, shard)
        if shard is None or shard[0] == 1:  # acceptance commands run once, on shard 1
            self.jobs += [(c, None) for c in profile.checks]
        if not self.jobs:
            raise ProfileError(f"shard {self.shard} has nothing to probe (the fleet has fewer tenants than shards)")
        self.secrets = profile.secret_values()  # read once: the hot path only scrubs with them
        self.workers = workers or min(64, max(4, len(self.jobs) * 2))
        self.progress = progress
        self.rng = random.Random(seed)
        self.stats = CollectStats(run_id=new_run_id())
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._evidence_hour: dict = {}

    def stop(self, *_args) -> None:
        self._stop.set()

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGINT, self.stop)
        signal.signal(signal.SIGTERM, self.stop)

    def _interval(self, probe: Probe) -> float:
        return probe.interval_s or self.profile.target.interval_s

    def _one(self, writer: SampleWriter, probe: Probe, tenant, keep_evidence: bool, due: float) -> None:
        lag_ms = (time.monotonic() - due) * 1000.0
        if isinstance(probe, Check):
            row = run_command(probe, self.profile.target.name, self.profile.target.base_url, secrets=self.secrets,
                              keep_evidence=keep_evidence, run_id=self.stats.run_id)
        else:
            row = run_probe(self.profile.target, probe, tenant=tenant, secrets=self.secrets,
                            keep_evidence=keep_evidence, run_id=self.stats.run_id)
        row["shard"] = self.shard
        writer.append(row)
        with self._lock:
            if len(self.stats.lag_ms) >= 100_000:
                del self.stats.lag_ms[:50_000]
            self.stats.lag_ms.append(lag_ms)
            self.stats.samples += 1
            self.stats.by_outcome[row["outcome"]] += 1
            key = probe.name if tenant is None else f"{probe.name}[{tenant}]"
            self.stats.last[key] = row["status"] if row["outcome"] in ("ok", "http_error", "assertion_failed") else row["outcome"]
            self.stats.store_pending, self.stats.store_dropped = writer.pending, writer.dropped
            self.stats.store_error = writer.last_error

    def _wants_evidence(self, probe: Probe, tenant, now: float) -> bool:
        hour = int(now // 3600)
        key = (probe.name, tenant)
        if self._evidence_hour.get(key) == hour:
            return False
        self._evidence_hour[key] = hour
        return True

    def run(self) -> CollectStats:
        writer = SampleWriter(self.data_dir, self.stats.run_id, compact_every_s=self.compact_every_s,
                              upload=self.location.push if self.location.remote else None)
        self.stats.recovered = writer.recovered
        start = time.monotonic()
        wall0 = time.time()
        heap = []
        for i, (probe, _tenant) in enumerate(self.jobs):
            # Jittered start spreads probes over the first interval instead of a burst.
            heapq.heappush(heap, (start + self.rng.uniform(0, min(self._interval(probe), 5.0)), i))
        ticker = threading.Thread(target=self._report_progress, args=(start,), daemon=True)
        if self.progress:
            ticker.start()
        platform = threading.Thread(target=self._poll_platform, daemon=True, name="platform")
        if self.profile.platform is not None:
            platform.start()
        try:
            with ThreadPoolExecutor(self.workers, thread_name_prefix="probe") as pool:
                while not self._stop.is_set():
                    due, i = heap[0]
                    if self.until_ts is not None and wall0 + (due - start) >= self.until_ts:
                        break
                    wait = due - time.monotonic()
                    if wait > 0:
                        if self._stop.wait(min(wait, 0.5)):
                            break
                        continue
                    heapq.heappop(heap)
                    probe, tenant = self.jobs[i]
                    pool.submit(self._one, writer, probe, tenant, self._wants_evidence(probe, tenant, time.time()), due)
                    interval = self._interval(probe)
                    nxt = due + interval
                    now = time.monotonic()
                    if nxt < now:  # fell behind (suspended, overloaded): skip, and say so
                        skipped = int((now - nxt) // interval) + 1
                        self.stats.missed_slots += skipped
                        nxt += skipped * interval
                    heapq.heappush(heap, (nxt, i))
        finally:
            self._stop.set()
            writer.close(wait_s=5.0)  # a disk that is full right now gets a few seconds to recover
            self.stats.store_pending, self.stats.store_dropped = writer.pending, writer.dropped
        if platform.is_alive():
            platform.join(timeout=self.profile.platform.timeout_s * 2 + 1)
        if self.progress:
            ticker.join(timeout=2)
            self.progress(self.stats, time.monotonic() - start, final=True)
        return self.stats

    def _poll_platform(self) -> None:
        """Deploys and flags from the hosting platform every `platform.interval`, beside the probes:
        a flag turned off shows with the time of the read that saw it."""
        from .errors import DataError
        from .evidence import pull_evidence
        from .platform import pull_platform
        from .window import Window

        src = self.profile.platform
        if not os.environ.get(src.api_key_env):
            self.stats.platform_note = f"${src.api_key_env} is not set: {src.kind} deploys and flags not read"
            log.warning("platform: %s", self.stats.platform_note)
            return
        since = time.time() - src.interval_s  # Render's logs from shortly before the collection began
        while not self._stop.is_set():
            try:
                res = pull_platform(src, self.data_dir, self.profile.target.name)
                with self._lock:
                    self.stats.platform_reads += 1
                    self.stats.platform_failed += res.failed
                for note in res.notes:
                    log.warning("platform: %s", note)
                if src.evidence:
                    ev = pull_evidence(src, self.data_dir, self.profile.target.name,
                                       Window(datetime.fromtimestamp(since, timezone.utc),
                                              datetime.fromtimestamp(time.time() + 86400, timezone.utc)))
                    with self._lock:
                        self.stats.platform_failed += len(ev.failed)
                    for note in ev.notes + ev.failed:
                        log.warning("platform: Render evidence: %s", note)
            except (DataError, OSError) as exc:  # a full disk: say so, try again next time
                with self._lock:
                    self.stats.platform_failed += 1
                log.warning("platform: read not stored: %s", exc)
            if self._stop.wait(src.interval_s):
                return

    def _report_progress(self, start: float) -> None:
        while not self._stop.wait(1.0):
            with self._lock:
                self.progress(self.stats, time.monotonic() - start, final=False)


def terminal_progress(stats: CollectStats, elapsed: float, final: bool, stream=sys.stderr) -> None:
    """One status line: samples, errors by kind, last status per probe."""
    errs = ", ".join(f"{k} {v}" for k, v in sorted(stats.by_outcome.items()) if k != "ok") or "none"
    last = " ".join(f"{k}={v}" for k, v in sorted(stats.last.items()))
    line = printable(f"[{elapsed:6.0f}s] samples {stats.samples}  errors: {errs}  last: {last}")
    if stats.store_error or stats.store_dropped:
        line += (f"  STORE ERROR: {stats.store_error or 'recovered'}; {stats.store_pending} waiting, "
                 f"{stats.store_dropped} dropped")
    if stream.isatty() and not final:
        stream.write("\r\x1b[K" + line)
    elif final or int(elapsed) % 10 == 0 or stats.store_error:
        stream.write(("\n" if stream.isatty() else "") + line + "\n")
    stream.flush()
