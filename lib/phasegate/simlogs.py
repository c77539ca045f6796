"""What `phasegate simulate platform` says of its service as Render would: logs, HTTP metrics and
service events, all from the simulator's own request log (the ground truth), so a test can check
phasegate's counts exactly against what was served.

- Each instance start (the first one, every deploy going live, every restart) logs the service's
  startup line, `[FeatureFlags] NAME=true ...` with the variables it started with; a startup fault
  omits the line or logs a flag off.
- Every request the simulator answered is a `type=request` log line in Render's format
  (`[GET]200 host/path clientIP=... requestID=... responseTimeMS=... userAgent=...`); a 500 also
  logs an `error` app line, a 503 FEATURE_DISABLED a `warning` app line, each naming the request.
- `/v1/metrics/http-requests` and `/v1/metrics/http-latency` are computed from the same requests
  per resolution step; a range of more than MAX_POINTS steps is refused (the client pages).
- Events: deploy_started / deploy_ended from the deploys, server_failed / server_restarted from
  scripted restarts, newest first under a cursor.
"""

from __future__ import annotations

import bisect
import math
import re
from datetime import datetime, timezone

from .simulator import FLAGS
from .window import parse_time

MAX_POINTS = 100  # values per series in one metrics answer
LOG_LIMIT = (20, 100)  # Render's default and largest page of logs
STARTUP = "[FeatureFlags]"
STARTUP_FAULTS = ("ok", "omit", "flag_off")  # an instance logs its line, leaves it out, or logs a flag off


def startup_fault(value) -> str:
    """`value` as a startup fault, or ValueError naming the choices."""
    if value not in STARTUP_FAULTS:
        raise ValueError(f"startup must be one of {', '.join(STARTUP_FAULTS)}, got {value!r}")
    return value


def ts_text(t: float | datetime) -> str:
    dt = t if isinstance(t, datetime) else datetime.fromtimestamp(t, timezone.utc)
    return dt.astimezone(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def startup_line(env: dict, startup: str = "ok") -> str | None:
    """The service's startup line, as the seed's operator searches for it; None when omitted."""
    if startup == "omit":
        return None
    values = {n: str(env.get(n, "true")).lower() for n in FLAGS}
    if startup == "flag_off":
        values[FLAGS[0]] = "false"
    return f"{STARTUP} " + " ".join(f"{k}={v}" for k, v in values.items())


def start_instance(svc, deploy_id: str, env: dict, at: datetime, rng, startup: str = "ok") -> dict:
    """A new instance of `svc` starts at `at`, logging its startup line (or not, by the fault)."""
    inst = {"id": f"{svc.id}-{''.join(rng.choice('abcdefghijklmnopqrstuvwxyz0123456789') for _ in range(5))}",
            "deploy": deploy_id, "started": at.timestamp()}
    bisect.insort(svc.instances, inst, key=lambda i: i["started"])  # a back-dated restart goes in its place
    line = startup_line(env, startup)
    if line is not None:
        svc.applog.append({"ts": at.timestamp() + 0.2, "level": "info", "message": line, "instance": inst["id"]})
    return inst


# -- logs ---------------------------------------------------------------------------------------


def _records(srv, svc) -> list:
    sim = srv.sim
    if sim is None or not any(m is sim.model for m in svc.models):
        return []
    with sim._log_lock:
        return [r for r in sim.records if r["status"] is not None]


def _instance_at(svc, t: float) -> str | None:
    starts = [i["started"] for i in svc.instances]
    k = bisect.bisect_right(starts, t) - 1
    return svc.instances[k]["id"] if k >= 0 else (svc.instances[0]["id"] if svc.instances else None)


def _host(srv) -> str:
    return f"127.0.0.1:{srv.sim.port}" if srv.sim is not None else "127.0.0.1"


def all_logs(srv, svc) -> list[dict]:
    """Every log entry of the service as (ts, {id, message, timestamp, labels}) pairs."""
    out = []
    host = _host(srv)

    def add(ts, lid, message, labels):
        out.append((ts, {"id": lid, "message": message, "timestamp": ts_text(ts),
                         "labels": [{"name": k, "value": v} for k, v in labels.items() if v is not None]}))
    for r in _records(srv, svc):
        inst = _instance_at(svc, r["ts"])
        rid = f"{r['seq']:08x}-rndr"
        path = r["path"]
        ua = (r.get("user_agent") or "-").replace('"', "'")
        add(r["ts"], f"{svc.id}-req-{r['seq']}",
            f'[{r["method"]}]{r["status"]} {host}{path} clientIP="127.0.0.1" requestID="{rid}" '
            f'responseTimeMS={int(round(r["latency_ms"]))} responseBytes=0 userAgent="{ua}"',
            {"resource": svc.id, "instance": inst, "type": "request", "level": "info", "method": r["method"],
             "statusCode": str(r["status"]), "path": path.split("?", 1)[0], "host": host})
        if r["status"] == 500:
            add(r["ts"] + 1e-6, f"{svc.id}-app-{r['seq']}",
                f"ERROR unhandled exception in {r['method']} {path.split('?', 1)[0]} requestID={rid}",
                {"resource": svc.id, "instance": inst, "type": "app", "level": "error"})
        elif r["status"] == 503 and r.get("error_code") == "FEATURE_DISABLED":
            add(r["ts"] + 1e-6, f"{svc.id}-app-{r['seq']}",
                f"WARNING {STARTUP} FEATURE_DISABLED {r['method']} {path.split('?', 1)[0]} requestID={rid}",
                {"resource": svc.id, "instance": inst, "type": "app", "level": "warning"})
    for i, e in enumerate(svc.applog):
        add(e["ts"], f"{svc.id}-log-{i}", e["message"],
            {"resource": svc.id, "instance": e["instance"], "type": "app", "level": e["level"]})
    return out


def _matcher(values: list[str], anywhere: bool = False):
    """Render's filters: any of the values, each literal with `*` wildcards, or a /regular
    expression/; `anywhere` (the text filter) matches inside the message."""
    tests = []
    for v in values:
        if len(v) > 1 and v.startswith("/") and v.endswith("/"):
            tests.append(re.compile(v[1:-1]).search)
        else:
            pat = ".*".join(re.escape(part) for part in v.split("*"))
            tests.append(re.compile(pat).search if anywhere else re.compile(pat + r"\Z").match)
    return lambda s: s is not None and any(t(s) for t in tests)


def logs_page(srv, q: dict) -> tuple[int, dict]:
    """GET /v1/logs: (status, body)."""
    owner, resources = (q.get("ownerId") or [""])[0], q.get("resource") or []
    if not owner or not resources:
        return 400, {"message": "ownerId and resource are required"}
    if owner != srv.owner_id:
        return 404, {"message": "owner not found"}
    try:
        end = parse_time((q.get("endTime") or [ts_text(datetime.now(timezone.utc))])[0], name="endTime").timestamp()
        start = parse_time(q["startTime"][0], name="startTime").timestamp() if q.get("startTime") else end - 3600
        limit = int((q.get("limit") or [str(LOG_LIMIT[0])])[0])
    except (ValueError, KeyError) as exc:
        return 400, {"message": f"invalid parameter: {exc}"}
    if not 1 <= limit <= LOG_LIMIT[1]:
        return 400, {"message": f"limit must be between 1 and {LOG_LIMIT[1]}"}
    direction = (q.get("direction") or ["backward"])[0]
    if direction not in ("forward", "backward"):
        return 400, {"message": "direction must be forward or backward"}
    label_filters = {name: _matcher(q[name]) for name in ("type", "level", "statusCode", "method", "path", "host",
                                                           "instance") if q.get(name)}
    text = _matcher(q["text"], anywhere=True) if q.get("text") else None
    found = []
    for r in resources:
        svc = srv.services.get(r)
        if svc is None:
            continue
        for ts, entry in all_logs(srv, svc):
            if not start <= ts <= end:
                continue
            labels = {lab["name"]: lab["value"] for lab in entry["labels"]}
            if any(not ok(labels.get(name)) for name, ok in label_filters.items()):
                continue
            if text is not None and not text(entry["message"]):
                continue
            found.append((ts, entry))
    found.sort(key=lambda p: (p[0], p[1]["id"]), reverse=direction == "backward")
    page, more = found[:limit], len(found) > limit
    body = {"hasMore": more, "logs": [e for _ts, e in page]}
    if more:
        last = page[-1][0]
        body["nextStartTime"], body["nextEndTime"] = (ts_text(last), ts_text(end)) if direction == "forward" \
            else (ts_text(start), ts_text(last))
    return 200, body


# -- metrics ------------------------------------------------------------------------------------


def _range(q: dict) -> tuple[float, float, int]:
    end = parse_time((q.get("endTime") or [ts_text(datetime.now(timezone.utc))])[0], name="endTime").timestamp()
    start = parse_time(q["startTime"][0], name="startTime").timestamp() if q.get("startTime") else end - 3600
    res = int((q.get("resolutionSeconds") or ["60"])[0])
    if res < 1 or end <= start:
        raise ValueError("resolutionSeconds must be positive and endTime after startTime")
    if math.ceil((end - start) / res) > MAX_POINTS:
        raise ValueError(f"too many data points: at most {MAX_POINTS} per series (range / resolutionSeconds)")
    return start, end, res


def _quantile(values: list[float], q: float) -> float:
    v = sorted(values)
    h = (len(v) - 1) * q
    lo = math.floor(h)
    return v[lo] + (v[min(lo + 1, len(v) - 1)] - v[lo]) * (h - lo)


def metrics(srv, kind: str, q: dict) -> tuple[int, object]:
    """GET /v1/metrics/{http-requests,http-latency}: (status, [{labels, values, unit}])."""
    resources = q.get("resource") or []
    if not resources:
        return 400, {"message": "resource is required"}
    try:
        start, end, res = _range(q)
        quantile = float((q.get("quantile") or ["0.95"])[0])
    except (ValueError, KeyError) as exc:
        return 400, {"message": str(exc)}
    svc = srv.services.get(resources[0])
    if svc is None:
        return 404, {"message": "resource not found"}
    path_ok = _matcher(q["path"]) if q.get("path") else None
    by = (q.get("aggregateBy") or [""])[0]
    steps = math.ceil((end - start) / res)
    buckets: dict = {}
    for r in _records(srv, svc):
        if not start <= r["ts"] < end or (path_ok and not path_ok(r["path"].split("?", 1)[0])):
            continue
        key = str(r["status"]) if by == "statusCode" else (_host(srv) if by == "host" else "")
        buckets.setdefault(key, {}).setdefault(int((r["ts"] - start) // res), []).append(r["latency_ms"])
    out = []
    for key, per in sorted(buckets.items()):
        labels = [{"field": "resource", "value": svc.id}]
        if by:
            labels.append({"field": by, "value": key})
        if kind == "http-requests":
            values = [{"timestamp": ts_text(start + k * res), "value": len(per.get(k, ()))} for k in range(steps)]
            out.append({"labels": labels, "values": values, "unit": "count"})
        else:
            labels.append({"field": "quantile", "value": f"{quantile:g}"})
            values = [{"timestamp": ts_text(start + k * res), "value": round(_quantile(per[k], quantile), 3)}
                      for k in sorted(per)]
            out.append({"labels": labels, "values": values, "unit": "ms"})
    if kind == "http-latency" and len(out) > 1:  # latency is one series over all requests
        merged = {}
        for per in buckets.values():
            for k, v in per.items():
                merged.setdefault(k, []).extend(v)
        out = [{"labels": [{"field": "resource", "value": svc.id}, {"field": "quantile", "value": f"{quantile:g}"}],
                "values": [{"timestamp": ts_text(start + k * res), "value": round(_quantile(merged[k], quantile), 3)}
                           for k in sorted(merged)], "unit": "ms"}]
    return 200, out


# -- events -------------------------------------------------------------------------------------

_ENDED = {"live": "succeeded", "deactivated": "succeeded", "build_failed": "failed", "update_failed": "failed",
          "pre_deploy_failed": "failed", "canceled": "canceled"}


def all_events(svc) -> list[dict]:
    out = []
    for d in svc.deploys:
        out.append({"id": f"evt-{d['id']}-s", "timestamp": d["createdAt"], "serviceId": svc.id, "type": "deploy_started",
                    "details": {"deployId": d["id"], "trigger": d.get("trigger")}})
        if d.get("finishedAt"):
            out.append({"id": f"evt-{d['id']}-e", "timestamp": d["finishedAt"], "serviceId": svc.id,
                        "type": "deploy_ended", "details": {"deployId": d["id"],
                                                            "deployStatus": _ENDED.get(d["status"], d["status"])}})
    out += [dict(e) for e in svc.events]
    out.sort(key=lambda e: (e["timestamp"], e["id"]), reverse=True)
    return out


def events_page(svc, q: dict) -> list[dict]:
    start = parse_time(q["startTime"][0], name="startTime") if q.get("startTime") else None
    end = parse_time(q["endTime"][0], name="endTime") if q.get("endTime") else None
    types = set(q.get("type") or ())
    out = []
    for e in all_events(svc):
        t = parse_time(e["timestamp"], name="timestamp")
        if (start and t < start) or (end and t > end) or (types and e["type"] not in types):
            continue
        out.append({"event": e})
    return out
