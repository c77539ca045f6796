"""The one-shot health check: one probe round, the seed's CANARY HEALTH CHECK block."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone

from .collector import new_run_id, probe_jobs
from .probe import run_probe
from .profile import Profile
from .redact import one_line, printable
from .objstore import writing
from .store import SampleWriter

RULE = "=" * 80


@dataclass(frozen=True)
class CheckResult:
    healthy: bool
    text: str
    rows: tuple


def run_check(profile: Profile, data_dir=None) -> CheckResult:
    profile.target.require_auth()
    run_id = new_run_id()
    jobs = probe_jobs(profile)
    secrets = profile.secret_values()
    with ThreadPoolExecutor(max(1, min(16, len(jobs)))) as pool:
        rows = list(pool.map(lambda j: run_probe(profile.target, j[0], tenant=j[1], secrets=secrets,
                                                 keep_evidence=True, run_id=run_id), jobs))
    if data_dir is not None:
        with writing(data_dir, profile.storage) as local:
            writer = SampleWriter(local, run_id)
            for row in rows:
                writer.append(row)
            writer.close()
    # Health probes by what the profile extracts, so one that failed (timeout, TLS, refused) and
    # extracted nothing still reads as the unhealthy health probe it is.
    health = {p.name for p in profile.probes if {"handlers_total", "handlers_loaded", "health_status"} & set(p.extract)}
    return summarize(rows, health, {p.name for p in profile.probes if p.flags})


def _status_text(row) -> str:
    if row["status"] is None:
        return f"{row['outcome'].upper()} ({one_line(row.get('error') or 'no response')})"
    text = f"{row['status']}"
    if row["outcome"] == "ok" or row["status"] == 200:
        text += " OK"
    if row.get("error_code"):
        text += f" {one_line(row['error_code'])}"
    return text


def summarize(rows: list[dict], health_probes=frozenset(), flag_probes=frozenset()) -> CheckResult:
    now = datetime.now(timezone.utc).isoformat()
    lines = [RULE, "CANARY HEALTH CHECK", f"Timestamp: {now}", RULE, ""]
    health = [r for r in rows if r.get("probe") in health_probes or r.get("handlers_total") is not None
              or r.get("health_status") is not None]
    health_ok = all(r["outcome"] == "ok" and r.get("handlers_loaded") == r.get("handlers_total") for r in health)
    lines.append("1. Service Health")
    if not health:
        lines.append("   ❔ NO HEALTH PROBE in this profile")
    for r in health:
        state = "✅ HEALTHY" if r["outcome"] == "ok" and r.get("handlers_loaded") == r.get("handlers_total") else "❌ UNHEALTHY"
        lines.append(f"   {state}" + ("" if r["outcome"] == "ok" else f" ({_status_text(r)})"))
        if r.get("handlers_total") is not None:
            lines.append(f"   Handlers Loaded: {r.get('handlers_loaded')}/{r.get('handlers_total')}")
    flags = {}
    for r in rows:
        if r.get("flags"):
            flags.update(json.loads(r["flags"]))
    disabled = [r for r in rows if r.get("error_code") == "FEATURE_DISABLED"]
    flags_ok = bool(flags) and all(v is True for v in flags.values()) and not disabled
    lines += ["", "2. Feature Flags"]
    if flags or disabled:
        lines.append("   ✅ FLAGS ON" if flags_ok else "   ❌ FLAGS OFF")
        for name, value in flags.items():
            lines.append(f"   - {one_line(name)}: {one_line(json.dumps(value))}")
        if disabled:
            lines.append(f"   - 503 FEATURE_DISABLED from: {', '.join(sorted({r['probe'] for r in disabled}))}")
    else:
        blind = sorted({r["probe"] for r in rows if r.get("probe") in flag_probes and r["outcome"] != "ok"})
        lines.append(f"   ❔ NOT OBSERVED ({', '.join(blind)} failed: the flags it reads are unknown)" if blind
                     else "   ❔ NOT OBSERVED (no probe extracts flags)")
        flags_ok = not blind
    lines += ["", "3. Endpoint Availability"]
    for r in rows:
        if r in health:
            continue
        mark = "✅" if r["outcome"] == "ok" else "❌"
        label = r["url"].split("://", 1)[-1].split("/", 1)[-1].split("?")[0]
        label = "/" + label.rsplit("/", 1)[-1] if "/" in label else "/" + label
        tenant = f" [{r['tenant']}]" if r.get("tenant") else ""
        extra = f" ({r['item_count']} actions)" if r.get("item_count") is not None else ""
        fails = f" — {one_line('; '.join(r['assertion_failures']))}" if r.get("assertion_failures") else ""
        lines.append(f"   {label}{tenant}: {mark} {_status_text(r)}{extra}{fails}")
    healthy = health_ok and flags_ok and all(r["outcome"] == "ok" for r in rows)
    lines += ["", RULE, f"OVERALL: {'✅ CANARY HEALTHY' if healthy else '❌ CANARY UNHEALTHY'}", RULE]
    return CheckResult(healthy=healthy, text=printable("\n".join(lines)), rows=tuple(rows))
