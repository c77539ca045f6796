"""`phasegate simulate platform`: a Render-compatible API on loopback, for tests and drills.

It answers the endpoints phasegate uses in Render's documented shapes: cursor-paginated
`[{deploy, cursor}]` and `[{envVar, cursor}]` lists, one deploy by id, env vars set one at a time,
environment groups linked to services, deploy triggers answered 201 with the Deploy (or 202 with
none), and the service's deploy hook (`POST /deploy/<service>?key=...`). A deploy moves
created → build_in_progress → update_in_progress → live over `deploy_s`, and the deploy it
replaces becomes `deactivated`; until then the old one keeps serving. Over Render's documented
limits (deploy triggers: 10 a minute per service; other calls: 400 a minute per key) it answers
429 with Retry-After and the RateLimit-* headers.

Going live is what a redeploy does to the service: the simulator it drives (a `Model`) starts
answering with the new deploy's id and the variables the deploy was made with (a flag turned off
means 503 FEATURE_DISABLED from then on). Faults are scriptable (`fail_next`, a rate-limit burst,
a slow deploy, 202 answers) from Python or over `/_sim/*` on the same port, which is how a drill
injects a burst of 5xx into the service and clears it again.

As evidence it serves what Render would say of the service (`phasegate.simlogs`): `GET /v1/logs`
(request lines of every request the simulator answered, its error lines, each instance's
`[FeatureFlags]` startup line), `GET /v1/metrics/http-requests` and `http-latency`, and
`GET /v1/services/{id}/events`; `/_sim/platform` scripts a restart (`{"restart": {"startup":
"omit", "failed": true}}`) or the next deploy's startup fault (`{"startup_next": "flag_off"}`).
"""

from __future__ import annotations

import itertools
import json
import random
import string
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from . import simlogs
from .simulator import FIRST_DEPLOY, FLAGS, Fault, Model
from .window import iso, parse_duration

SERVICE = "srv-d5fr5hre5dus73d3gdn0"  # the seed's staging service
DEPLOY_LIMIT = (10, 60.0)  # deploy triggers per service per minute (Render's documented limit)
CALL_LIMIT = (400, 60.0)  # other calls per key per minute


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _id(prefix: str, rng: random.Random) -> str:
    return prefix + "".join(rng.choice(string.ascii_lowercase + string.digits) for _ in range(20))


@dataclass
class Service:
    id: str
    env: dict
    deploys: list = field(default_factory=list)  # newest first, as Render lists them
    hook_key: str = ""
    models: list = field(default_factory=list)  # the simulators this service's live deploy drives
    instances: list = field(default_factory=list)  # {id, deploy, started}, in start order
    applog: list = field(default_factory=list)  # app log lines the platform itself wrote (startup lines)
    events: list = field(default_factory=list)  # server_failed / server_restarted, as scripted
    startup_next: list = field(default_factory=list)  # startup faults of the next instances ("omit", "flag_off")


@dataclass
class Group:
    id: str
    name: str
    env: dict
    services: list


class _Limit:
    """A fixed window per key: (allowed, remaining, seconds to reset)."""

    def __init__(self, limit: int, per_s: float):
        self.limit, self.per_s, self.windows = limit, per_s, {}

    def take(self, key: str) -> tuple[bool, int, int]:
        now = time.monotonic()
        start, used = self.windows.get(key, (now, 0))
        if now - start >= self.per_s:
            start, used = now, 0
        ok = used < self.limit
        self.windows[key] = (start, used + 1 if ok else used)
        return ok, max(0, self.limit - used - (1 if ok else 0)), max(1, int(start + self.per_s - now + 0.999))


class PlatformSim(ThreadingHTTPServer):
    """The fake. `services[id]` holds each service's env and deploys; `seen` every request line,
    `writes` every write (method, path, body). `on_deploy(env)` hears each deploy going live."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, port: int = 0, key: str = "", service_id: str = SERVICE, env: dict | None = None,
                 deploy_s: float = 1.0, models=(), seed: int = 0, hook_key: str = "", on_deploy=None,
                 delay_s: float = 0.0, fail_writes=(), deploys=(), startup: str = "ok"):
        super().__init__(("127.0.0.1", port), _Handler)
        # How every instance starts (its [FeatureFlags] line), unless scripted otherwise.
        self.startup = simlogs.startup_fault(startup)
        self.key, self.deploy_s, self.delay_s = key, deploy_s, delay_s
        self.rng = random.Random(seed)
        self.lock = threading.RLock()
        self.seen, self.writes = [], []
        self.on_deploy, self.fail_writes = on_deploy, set(fail_writes)
        self.groups: dict[str, Group] = {}
        self.services: dict[str, Service] = {}
        self.fail_next: list[str] = []  # statuses the next deploys end in instead of live
        self.answer_202 = False  # trigger answers 202 without a body
        self.burst = 0  # the next N calls answer 429
        self.burst_retry_after = 1
        self.deploy_limit, self.call_limit = _Limit(*DEPLOY_LIMIT), _Limit(*CALL_LIMIT)
        self.sim = None  # the SimServer whose clock faults injected over /_sim/fault use
        self.owner_id = "tea-" + "".join(self.rng.choice(string.ascii_lowercase + string.digits) for _ in range(20))
        svc = self.add_service(service_id, dict(env or {}), models=models, hook_key=hook_key)
        if deploys:
            svc.deploys = [dict(d) for d in deploys]
        self._closing = threading.Event()
        threading.Thread(target=self._tick, daemon=True).start()
        threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()

    # -- state --------------------------------------------------------------------------------

    def add_service(self, service_id: str, env: dict, models=(), hook_key: str = "") -> Service:
        with self.lock:
            at = _now() - timedelta(days=3)
            first = {"id": FIRST_DEPLOY, "status": "live", "trigger": "manual", "createdAt": iso(at),
                     "updatedAt": iso(at + timedelta(minutes=4)), "finishedAt": iso(at + timedelta(minutes=4)),
                     "commit": {"id": "0a1b2c3d", "message": "Fault Lens V1 behind flags"}, "_env": dict(env)}
            svc = Service(service_id, dict(env), [first], hook_key or _id("", self.rng), list(models))
            self.services[service_id] = svc
            simlogs.start_instance(svc, FIRST_DEPLOY, svc.env, _now(), self.rng, self.startup)
            for m in svc.models:
                m.env, m.deployment = dict(env), FIRST_DEPLOY
            return svc

    def add_group(self, name: str, env: dict, services=None) -> Group:
        with self.lock:
            g = Group(_id("evg-", self.rng), name, dict(env), list(services or [self.default.id]))
            self.groups[g.id] = g
            return g

    @property
    def default(self) -> Service:
        return next(iter(self.services.values()))

    @property
    def env(self) -> dict:  # the default service's own variables
        return self.default.env

    @property
    def deploys(self) -> list:
        return self.default.deploys

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    @property
    def port(self) -> int:
        return self.server_address[1]

    def hook_url(self, service_id: str | None = None) -> str:
        svc = self.services[service_id] if service_id else self.default
        return f"{self.base}/deploy/{svc.id}?key={svc.hook_key}"

    def effective_env(self, svc: Service) -> dict:
        out = {}
        for g in self.groups.values():
            if svc.id in g.services:
                out.update(g.env)
        out.update(svc.env)
        return out

    def start_deploy(self, svc: Service, trigger: str) -> dict:
        with self.lock:
            now = _now()
            d = {"id": _id("dep-", self.rng), "status": "created", "trigger": trigger, "createdAt": iso(now),
                 "updatedAt": iso(now), "finishedAt": None,
                 "commit": {"id": "0a1b2c3d", "message": "Fault Lens V1 behind flags"},
                 "_env": self.effective_env(svc), "_t0": time.monotonic(),
                 "_ends": self.fail_next.pop(0) if self.fail_next else "live"}
            svc.deploys.insert(0, d)
            return d

    def _tick(self):
        while not self._closing.wait(0.05):
            with self.lock:
                for svc in self.services.values():
                    for d in svc.deploys:
                        if "_t0" in d:
                            self._advance(svc, d)

    def _advance(self, svc: Service, d: dict):
        age, total = time.monotonic() - d["_t0"], max(self.deploy_s, 0.0)
        ends = d["_ends"]
        if ends == "canceled":
            want = "canceled" if age >= total * 0.5 else "build_in_progress"
        elif ends == "build_failed":
            want = "build_failed" if age >= total * 0.6 else ("build_in_progress" if age > 0 else "created")
        else:
            want = "created" if age < total * 0.1 else "build_in_progress" if age < total * 0.6 else \
                "update_in_progress" if age < total else ends
        if want == d["status"]:
            return
        d["status"], d["updatedAt"] = want, iso(_now())
        if want in ("created", "build_in_progress", "update_in_progress"):
            return
        d["finishedAt"] = d["updatedAt"]
        del d["_t0"]
        if want != "live":
            return
        for old in svc.deploys:
            if old is not d and old["status"] == "live":
                old["status"], old["updatedAt"] = "deactivated", d["updatedAt"]
        for m in svc.models:  # the new instance serves from now on, with the deploy's variables
            m.env, m.deployment = dict(d["_env"]), d["id"]
        simlogs.start_instance(svc, d["id"], d["_env"], _now(), self.rng,
                               svc.startup_next.pop(0) if svc.startup_next else self.startup)
        if self.on_deploy:
            self.on_deploy(dict(d["_env"]))

    def inject(self, spec: dict) -> Fault:
        """A service fault from now on: {"kind": "server_error", "for": "60s", "probes": [...], "rate": 1}."""
        models = [m for s in self.services.values() for m in s.models]
        if not models or self.sim is None:
            raise ValueError("no simulated service is attached to this platform")
        t = time.monotonic() - self.sim.started
        dur = spec.get("for")
        f = Fault(str(spec.get("kind", "server_error")), start_s=t,
                  end_s=None if dur in (None, "") else t + parse_duration(str(dur)),
                  rate=float(spec.get("rate", 1.0)), probes=tuple(spec.get("probes") or ()))
        for m in models:
            with m.lock:
                m.faults.append(f)
        return f

    def restart(self, startup: str = "ok", failed: bool = False, service_id: str | None = None,
                ago_s: float = 0.0) -> dict:
        """The service's instance stops (a server_failed event when `failed`) and starts again
        (server_restarted), logging its startup line as `startup` says ("ok", "omit", "flag_off");
        `ago_s` back-dates it, as if it happened that long ago."""
        simlogs.startup_fault(startup)
        with self.lock:
            svc = self.services[service_id] if service_id else self.default
            live = next((d for d in svc.deploys if d["status"] == "live"), svc.deploys[-1])
            old = svc.instances[-1]["id"] if svc.instances else None
            now = _now() - timedelta(seconds=float(ago_s))
            if failed:
                svc.events.append({"id": _id("evt-", self.rng), "timestamp": simlogs.ts_text(now), "serviceId": svc.id,
                                   "type": "server_failed",
                                   "details": {"instanceId": old, "reason": {"nonZeroExit": 1}}})
            inst = simlogs.start_instance(svc, live["id"], live.get("_env") or svc.env, now + timedelta(seconds=1),
                                          self.rng, startup)
            svc.events.append({"id": _id("evt-", self.rng), "timestamp": simlogs.ts_text(now + timedelta(seconds=1)),
                               "serviceId": svc.id, "type": "server_restarted", "details": {"instanceId": inst["id"]}})
            return inst

    def clear(self) -> int:
        n = 0
        for m in {id(m): m for s in self.services.values() for m in s.models}.values():
            with m.lock:
                n += len(m.faults)
                m.faults.clear()
        return n

    def public(self, d: dict) -> dict:
        return {k: v for k, v in d.items() if not k.startswith("_")}

    def handle_error(self, request, client_address):
        pass  # a client that gave up at its deadline is part of the game

    def server_close(self):
        self._closing.set()
        super().server_close()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "render-sim/1.0"

    def log_message(self, *args):
        pass

    def do_GET(self):
        self._serve("GET")

    def do_POST(self):
        self._serve("POST")

    def do_PUT(self):
        self._serve("PUT")

    def _serve(self, method: str):
        srv: PlatformSim = self.server
        parts = urlsplit(self.path)
        q = parse_qs(parts.query)
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        srv.seen.append((f"{method} {self.path}" if method != "GET" else self.path, self.headers.get("Authorization")))
        if srv.delay_s:
            time.sleep(srv.delay_s)
        path = parts.path.rstrip("/").split("/")
        if path[1:2] == ["_sim"]:
            return self._control(method, path[2:], raw)
        try:
            body = json.loads(raw) if raw.strip() else {}
        except ValueError:
            return self.answer(400, {"message": "invalid JSON body"})
        with srv.lock:
            if path[1:2] == ["deploy"] and len(path) == 3:  # the deploy hook: its key is the credential
                svc = srv.services.get(path[2])
                if svc is None or q.get("key", [""])[0] != svc.hook_key:
                    return self.answer(404, {"message": "not found"})
                srv.writes.append((method, f"/deploy/{svc.id}", {}))
                return self._trigger(svc, "deploy_hook", hook=True)
            if self.headers.get("Authorization") != f"Bearer {srv.key}":
                return self.answer(401, {"message": "unauthorized"})
            if srv.burst > 0:
                srv.burst -= 1
                return self.answer(429, {"message": "rate limit exceeded"},
                                   {"Retry-After": str(srv.burst_retry_after), "Ratelimit-Limit": str(CALL_LIMIT[0]),
                                    "Ratelimit-Remaining": "0", "Ratelimit-Reset": str(srv.burst_retry_after)})
            is_trigger = method == "POST" and len(path) == 5 and path[4] == "deploys"
            if not is_trigger:
                ok, left, reset = srv.call_limit.take(srv.key)
                if not ok:
                    return self.answer(429, {"message": "rate limit exceeded"}, self._limits(CALL_LIMIT, 0, reset, True))
            if method != "GET":
                srv.writes.append((method, parts.path, body))
                if method in srv.fail_writes:
                    return self.answer(503, {"message": "try again later"})
            return self._api(method, path, q, body)

    def _api(self, method, path, q, body):
        srv: PlatformSim = self.server
        if path[1:2] != ["v1"]:
            return self.answer(404, {"message": "not found"})
        rest = path[2:]
        if rest == ["logs"] and method == "GET":
            return self.answer(*simlogs.logs_page(srv, q))
        if rest[:1] == ["metrics"] and len(rest) == 2 and rest[1] in ("http-requests", "http-latency") \
                and method == "GET":
            return self.answer(*simlogs.metrics(srv, rest[1], q))
        if rest[:1] == ["services"] and len(rest) == 2 and method == "GET":
            svc = srv.services.get(rest[1])
            if svc is None:
                return self.answer(404, {"message": "service not found"})
            return self.answer(200, {"id": svc.id, "name": svc.id, "ownerId": srv.owner_id, "type": "web_service",
                                     "suspended": "not_suspended"})
        if rest[:1] == ["services"] and len(rest) >= 3:
            svc = srv.services.get(rest[1])
            if svc is None:
                return self.answer(404, {"message": "service not found"})
            if rest[2] == "events" and len(rest) == 3 and method == "GET":
                try:
                    return self._page(simlogs.events_page(svc, q), q)
                except ValueError as exc:
                    return self.answer(400, {"message": str(exc)})
            if rest[2] == "deploys" and len(rest) == 3:
                if method == "POST":
                    return self._trigger(svc, "api")
                return self._page([{"deploy": srv.public(d)} for d in svc.deploys], q)
            if rest[2] == "deploys" and len(rest) == 4 and method == "GET":
                d = next((d for d in svc.deploys if d["id"] == rest[3]), None)
                return self.answer(200, srv.public(d)) if d else self.answer(404, {"message": "deploy not found"})
            if rest[2] == "env-vars" and len(rest) == 3 and method == "GET":
                return self._page([{"envVar": {"key": k, "value": v}} for k, v in svc.env.items()], q)
            if rest[2] == "env-vars" and len(rest) == 4 and method == "PUT":
                if not isinstance(body.get("value"), str):
                    return self.answer(400, {"message": "value must be a string"})
                svc.env[rest[3]] = body["value"]
                return self.answer(200, {"key": rest[3], "value": body["value"]})
        if rest[:1] == ["env-groups"]:
            if len(rest) == 1 and method == "GET":
                return self._page([{"envGroup": self._group(g, full=False)} for g in srv.groups.values()], q)
            g = srv.groups.get(rest[1]) if len(rest) >= 2 else None
            if g is None:
                return self.answer(404, {"message": "environment group not found"})
            if len(rest) == 2 and method == "GET":
                return self.answer(200, self._group(g, full=True))
            if len(rest) == 4 and rest[2] == "env-vars" and method == "PUT":
                g.env[rest[3]] = str(body.get("value"))
                return self.answer(200, {"key": rest[3], "value": g.env[rest[3]]})
        return self.answer(404, {"message": "not found"})

    def _group(self, g: Group, full: bool) -> dict:
        out = {"id": g.id, "name": g.name, "ownerId": "tea-drill",
               "serviceLinks": [{"id": s, "name": s, "type": "web_service"} for s in g.services],
               "createdAt": iso(_now()), "updatedAt": iso(_now())}
        if full:
            out["envVars"] = [{"key": k, "value": v} for k, v in g.env.items()]
        return out

    def _trigger(self, svc: Service, trigger: str, hook: bool = False):
        srv: PlatformSim = self.server
        ok, left, reset = srv.deploy_limit.take(svc.id)
        if not ok:
            return self.answer(429, {"message": "too many deploys"}, self._limits(DEPLOY_LIMIT, 0, reset, True))
        d = srv.start_deploy(svc, trigger)
        headers = self._limits(DEPLOY_LIMIT, left, reset, False)
        if hook:
            return self.answer(200, {"deploy": {"id": d["id"]}}, headers)
        if srv.answer_202:
            return self.answer(202, None, headers)
        return self.answer(201, srv.public(d), headers)

    @staticmethod
    def _limits(limit, left, reset, over) -> dict:
        h = {"Ratelimit-Limit": str(limit[0]), "Ratelimit-Remaining": str(left), "Ratelimit-Reset": str(reset)}
        if over:
            h["Retry-After"] = str(reset)
        return h

    def _page(self, items: list, q):
        limit = max(1, min(100, int((q.get("limit") or ["20"])[0] or 20)))
        cursor = (q.get("cursor") or [""])[0]
        start = int(cursor[1:]) + 1 if cursor[:1] == "c" and cursor[1:].isdigit() else 0
        page = [{**item, "cursor": f"c{i}"} for i, item in zip(itertools.count(start), items[start:start + limit])]
        return self.answer(200, page)

    def _control(self, method, rest, raw):
        srv: PlatformSim = self.server
        try:
            spec = json.loads(raw) if raw.strip() else {}
            if method == "POST" and rest == ["fault"]:
                f = srv.inject(spec)
                return self.answer(200, {"fault": f.kind, "from_s": round(f.start_s, 3), "until_s": f.end_s})
            if method == "POST" and rest == ["clear"]:
                return self.answer(200, {"cleared": srv.clear()})
            if method == "POST" and rest == ["platform"]:
                with srv.lock:
                    if "fail_next" in spec:
                        srv.fail_next.append(str(spec["fail_next"]))
                    if "rate_limit" in spec:
                        srv.burst, srv.burst_retry_after = int(spec["rate_limit"]), int(spec.get("retry_after", 1))
                    if "deploy_s" in spec:
                        srv.deploy_s = float(spec["deploy_s"])
                    if "answer_202" in spec:
                        srv.answer_202 = bool(spec["answer_202"])
                    if "startup_next" in spec:  # the next deploy's instance starts with this fault
                        srv.default.startup_next.append(simlogs.startup_fault(spec["startup_next"]))
                if "restart" in spec:
                    r = spec["restart"] if isinstance(spec["restart"], dict) else {}
                    inst = srv.restart(str(r.get("startup", "ok")), bool(r.get("failed", False)),
                                       ago_s=float(r.get("ago_s", 0.0)))
                    return self.answer(200, {"ok": True, "instance": inst["id"]})
                return self.answer(200, {"ok": True})
            if method == "GET" and rest == ["state"]:
                with srv.lock:
                    return self.answer(200, {s.id: {"env": s.env, "deploys": [srv.public(d) for d in s.deploys]}
                                             for s in srv.services.values()})
        except (ValueError, TypeError) as exc:
            return self.answer(400, {"message": str(exc)})
        return self.answer(404, {"message": "not found"})

    def answer(self, status, body, headers=None):
        data = b"" if body is None else json.dumps(body).encode()
        self.send_response(status)
        if body is not None:
            self.send_header("Content-Type", "application/json")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def start_platform(port: int = 0, key: str = "", service_port: int | None = None, scenario: str = "healthy",
                   deploy_s: float = 1.0, request_log=None, seed: int = 0, service_id: str = SERVICE,
                   services=(), hook_key: str = "", startup: str = "ok"):
    """The fake platform and, with `service_port`, the simulated service it deploys (one process):
    (platform, simulator or None). `startup`: how its instances start ("omit": no [FeatureFlags]
    line, "flag_off": the line with a flag off)."""
    from .simulator import start_server

    sim = start_server(service_port, scenario, request_log=request_log, seed=seed) if service_port is not None else None
    models = [sim.model] if sim else []
    plat = PlatformSim(port, key=key, service_id=service_id, env={name: "true" for name in FLAGS},
                       deploy_s=deploy_s, models=models, seed=seed, hook_key=hook_key, startup=startup)
    for extra in services:  # more services (e.g. production beside staging) running the same simulator
        plat.add_service(extra, {name: "true" for name in FLAGS}, models=models)
    plat.sim = sim
    return plat, sim
