"""A stand-in for the seed's backend: one latency/error model, served live or as history.

`Model.respond` decides what a request gets at a time into the scenario. `start_server`
answers real HTTP on 127.0.0.1 with it (and logs each request as ground truth);
`history.history` replays the same model over a window.
"""

from __future__ import annotations

import itertools
import json
import math
import random
import select
import socket
import ssl
import struct
import threading
import time
import tomllib
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from .errors import ScenarioError, WindowError
from .redact import redact_url
from .window import parse_duration

SIGNED_ACTION = "create_work_order_from_fault"
FAULT_ACTIONS = [
    "view_fault_details", "acknowledge_fault", "add_fault_note", "attach_fault_photo",
    "assign_fault", "update_fault_severity", "link_fault_to_equipment", "close_fault",
    "reopen_fault", "escalate_fault", "export_fault_report", SIGNED_ACTION,
]
FLAGS = ("FAULT_LENS_V1_ENABLED", "FAULT_LENS_SUGGESTIONS_ENABLED", "FAULT_LENS_SIGNED_ACTIONS_ENABLED")
FIRST_DEPLOY, NEXT_DEPLOY = "dep-d5t1t6ngi27c73cllsr0", "dep-d6a2k8pqr31c73abcd10"
# Median latency (ms) and lognormal sigma per endpoint.
LATENCY = {"health": (12.0, 0.3), "list": (35.0, 0.35), "suggestions": (55.0, 0.4),
           "execute": (250.0, 0.5), "other": (5.0, 0.2)}
RECORDS_KEPT = 500_000  # requests remembered in memory for the platform fake (the file log keeps all)
TRANSPORT_FAULTS = ("hang", "reset", "slow_drip", "oversized")
FAULT_KINDS = ("server_error", "latency_scale", "flags_off", "handler_loss", "deploy", "slow_execute", "count_drift",
               "signed_leak", "malformed_json", "echo_auth", "outage", "command_failed", *TRANSPORT_FAULTS)


@dataclass
class Fault:
    kind: str
    start_s: float = 0.0
    end_s: float | None = None
    every_s: float | None = None
    rate: float = 1.0
    count: int | None = None
    probes: tuple = ()
    params: dict = field(default_factory=dict)
    used: int = 0
    tenants: tuple = ()  # only these tenants (yachts) see the fault; empty: all of them

    def active(self, t: float, endpoint: str, tenant: str | None = None) -> bool:
        if t < self.start_s or (self.end_s is not None and t >= self.end_s):
            return False
        if self.probes and endpoint not in self.probes:
            return False
        if self.tenants and tenant not in self.tenants:
            return False
        if self.every_s:  # periodic: active for the first `burst_s` of every period
            burst = self.params.get("burst_s", self.every_s / 10)
            return (t - self.start_s) % self.every_s < burst
        return True

    def active_in(self, t, endpoint: str, tenant):
        """`active` for arrays of times and tenants at once (numpy), as synthetic history draws them."""
        import numpy as np

        if self.probes and endpoint not in self.probes:
            return np.zeros(len(t), dtype=bool)
        on = t >= self.start_s
        if self.end_s is not None:
            on &= t < self.end_s
        if self.tenants:
            on &= np.isin(tenant, list(self.tenants))
        if self.every_s:
            on &= (t - self.start_s) % self.every_s < self.params.get("burst_s", self.every_s / 10)
        return on


@dataclass
class SimResponse:
    status: int | None
    body: bytes
    headers: dict
    latency_s: float
    transport: str | None = None
    faults: tuple = ()


def tenant_of(path: str, headers) -> str | None:
    """The yacht a request is for: a `yacht` or `tenant` query parameter, else an X-Yacht-Id or
    X-Tenant-Id header (the ways a profile can template `{tenant}`)."""
    query = parse_qs(urlsplit(path).query)
    for name in ("yacht", "tenant", "yacht_id"):
        if query.get(name):
            return query[name][0]
    lower = {k.lower(): v for k, v in (headers or {}).items()}
    return lower.get("x-yacht-id") or lower.get("x-tenant-id")


def endpoint_of(path: str) -> str:
    for name in ("health", "suggestions", "list", "execute"):
        if f"/{name}" in path:
            return name
    return "other"


class Model:
    def __init__(self, faults: list[Fault], seed: int = 0):
        self.faults = faults
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        # What the platform's live deploy runs with (`phasegate simulate platform` sets both when a
        # deploy goes live): its flag variables ({name: "true"/"false"}) and its deploy id.
        self.env: dict = {}
        self.deployment: str | None = None

    def flag_on(self, name: str) -> bool:
        value = self.env.get(name)
        return value is None or str(value).strip().lower() in ("true", "1", "yes", "on", "enabled")

    def _hit(self, f: Fault, t: float, endpoint: str, tenant: str | None) -> bool:
        if not f.active(t, endpoint, tenant):
            return False
        if f.count is not None and f.used >= f.count:
            return False
        if f.rate < 1.0 and self.rng.random() >= f.rate:
            return False
        f.used += 1
        return True

    def respond(self, endpoint: str, t: float, headers: dict | None = None, tenant: str | None = None) -> SimResponse:
        with self.lock:
            hits = [f for f in self.faults if self._hit(f, t, endpoint, tenant)]
            median, sigma = LATENCY.get(endpoint, LATENCY["other"])
            latency = median / 1000.0 * math.exp(self.rng.gauss(0, sigma))
            jitter = self.rng.random()
        kinds = {f.kind: f for f in hits}
        deploy = self.deployment or FIRST_DEPLOY
        for f in self.faults:  # the latest deploy fault that has started wins
            if f.kind == "deploy" and f.active(t, endpoint, tenant) and not f.probes:
                deploy = f.params.get("deployment", NEXT_DEPLOY)
        out_headers = {"Content-Type": "application/json", "X-Deployment-Id": deploy}
        names = tuple(sorted(kinds))
        for kind in TRANSPORT_FAULTS:
            if kind in kinds:
                return SimResponse(None, b"", out_headers, latency, transport=kind, faults=names)
        if "outage" in kinds:
            return SimResponse(None, b"", out_headers, 0.0, transport="outage", faults=names)
        if "latency_scale" in kinds:  # e.g. a canary 30 % slower than its baseline
            latency *= kinds["latency_scale"].params.get("factor", 1.3)
        if "slow_execute" in kinds and endpoint == "execute":
            lo, hi = kinds["slow_execute"].params.get("latency_s", (12.0, 15.0))
            latency = lo + (hi - lo) * jitter
        off = "flags_off" in kinds
        flags = {name: not off and self.flag_on(name) for name in FLAGS}
        # The master flag gates every endpoint; suggestions has its own flag too.
        flags_on = flags[FLAGS[0]] and (endpoint != "suggestions" or flags[FLAGS[1]])
        if "server_error" in kinds:
            return self._json(500, {"error": {"code": "INTERNAL_ERROR", "message": "unhandled exception"}},
                              out_headers, latency, names)
        if endpoint == "health":
            loaded = 3 if "handler_loss" in kinds else 4
            body = {"status": "healthy" if loaded == 4 else "degraded", "handlers_loaded": loaded,
                    "handlers_total": 4, "deployment_id": deploy,
                    "feature_flags": flags}
        elif endpoint == "other":
            return self._json(404, {"error": {"code": "NOT_FOUND"}}, out_headers, latency, names)
        elif not flags_on:
            return self._json(503, {"error": {"code": "FEATURE_DISABLED", "message": "Fault Lens is disabled"}},
                              out_headers, latency, names)
        elif endpoint in ("list", "suggestions"):
            actions = list(FAULT_ACTIONS)
            if endpoint == "suggestions" and "signed_leak" not in kinds:
                actions.remove(SIGNED_ACTION)
            if "count_drift" in kinds:
                actions = actions[2:]
            body = {"domain": "faults", "total": len(actions),
                    "actions": [{"action_id": a, "variant": "SIGNED" if a == SIGNED_ACTION else "READ"}
                                for a in actions]}
        else:
            body = {"status": "success", "action": "view_fault_details", "result": {"fault_id": "canary-probe"}}
            if "echo_auth" in kinds:
                body["request_headers"] = dict(headers or {})
        if "malformed_json" in kinds:
            return SimResponse(200, b'{"status": "healthy", "actions": [', out_headers, latency, faults=names)
        return self._json(200, body, out_headers, latency, names)

    @staticmethod
    def _json(status, body, headers, latency, names) -> SimResponse:
        return SimResponse(status, json.dumps(body).encode(), headers, latency, faults=names)


# -- scenarios and fault schedules -----------------------------------------------------

SCENARIOS = ("healthy", "server-errors", "flags-off", "handler-loss", "deploy-change", "rollback",
             "slow-execute", "count-drift", "signed-leak", "malformed-json", "hang", "reset",
             "slow-drip", "oversized")


def scenario_faults(name: str, span_s: float = 60.0) -> list[Fault]:
    """A named scenario over a span (a history's length, or a live server's cycle)."""
    if name not in SCENARIOS:
        raise ScenarioError(f"unknown scenario {name!r}; choose one of: {', '.join(SCENARIOS)}")
    simple = {"flags-off": "flags_off", "handler-loss": "handler_loss", "count-drift": "count_drift",
              "signed-leak": "signed_leak", "malformed-json": "malformed_json", "hang": "hang",
              "reset": "reset", "slow-drip": "slow_drip", "oversized": "oversized"}
    if name == "healthy":
        return []
    if name in simple:
        return [Fault(simple[name])]
    if name == "server-errors":
        return [Fault("server_error", every_s=span_s / 6, rate=0.5, params={"burst_s": span_s / 60})]
    if name == "slow-execute":
        return [Fault("slow_execute", rate=0.05, probes=("execute",))]
    if name == "deploy-change":
        return [Fault("deploy", start_s=span_s / 2, params={"deployment": NEXT_DEPLOY})]
    # rollback: a new deployment, then back to the first one.
    return [Fault("deploy", start_s=span_s * 0.3, end_s=span_s * 0.6, params={"deployment": NEXT_DEPLOY})]


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def load_schedule(path) -> list[Fault]:
    """A TOML fault schedule: [[fault]] kind, at, for, every, burst, rate, count, probes, tenants,
    deployment."""
    try:
        with open(path, "rb") as fh:
            raw = tomllib.load(fh)
    except FileNotFoundError:
        raise ScenarioError(f"fault schedule not found: {path}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ScenarioError(f"{path}: not valid TOML: {exc}") from None
    extra = set(raw) - {"fault"}
    if extra:
        raise ScenarioError(f"{path}: {sorted(extra)[0]}: unknown key")
    faults = []
    allowed = {"kind", "at", "for", "every", "burst", "rate", "count", "probes", "deployment", "latency_s", "factor",
               "tenants"}
    for i, t in enumerate(raw.get("fault", [])):
        where = f"{path}: fault[{i}]"
        if not isinstance(t, dict):
            raise ScenarioError(f"{where}: must be a table")
        bad = set(t) - allowed
        if bad:
            raise ScenarioError(f"{where}.{sorted(bad)[0]}: unknown key")
        kind = t.get("kind")
        if kind not in FAULT_KINDS:
            raise ScenarioError(f"{where}.kind: must be one of {', '.join(FAULT_KINDS)}, got {kind!r}")
        try:
            start = parse_duration(t["at"]) if t.get("at") not in (None, 0, "0") else 0.0
            length = parse_duration(t["for"]) if "for" in t else None
            every = parse_duration(t["every"]) if "every" in t else None
            params = {"burst_s": parse_duration(t["burst"])} if "burst" in t else {}
        except WindowError as exc:
            raise ScenarioError(f"{where}: {exc}") from None
        rate = t.get("rate", 1.0)
        if not isinstance(rate, (int, float)) or not 0 < rate <= 1:
            raise ScenarioError(f"{where}.rate: must be in (0, 1], got {rate!r}")
        if "deployment" in t:
            params["deployment"] = str(t["deployment"])
        if "latency_s" in t:
            lat = t["latency_s"]
            if not (isinstance(lat, list) and len(lat) == 2 and all(_number(x) and x >= 0 for x in lat)
                    and lat[0] <= lat[1]):
                raise ScenarioError(f"{where}.latency_s: must be [low, high] in seconds, got {lat!r}")
            params["latency_s"] = (float(lat[0]), float(lat[1]))
        if "factor" in t:
            if not _number(t["factor"]) or t["factor"] <= 0:
                raise ScenarioError(f"{where}.factor: must be a positive number, got {t['factor']!r}")
            params["factor"] = float(t["factor"])
        count = t.get("count")
        if count is not None and (not isinstance(count, int) or isinstance(count, bool) or count < 1):
            raise ScenarioError(f"{where}.count: must be a positive whole number, got {count!r}")
        probes = t.get("probes", [])
        if not isinstance(probes, list) or not all(isinstance(x, str) for x in probes):
            raise ScenarioError(f"{where}.probes: must be a list of probe names")
        tenants = t.get("tenants", [])
        if not isinstance(tenants, list) or not all(isinstance(x, str) for x in tenants):
            raise ScenarioError(f"{where}.tenants: must be a list of tenant names")
        faults.append(Fault(kind, start_s=start, end_s=None if length is None else start + length,
                            every_s=every, rate=float(rate), count=t.get("count"),
                            probes=tuple(t.get("probes", ())), params=params, tenants=tuple(tenants)))
    return faults


# -- live server -----------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "fault-lens-sim/1.0"

    def log_message(self, *args):  # the request log replaces the stderr chatter
        pass

    def do_GET(self):
        self._answer()

    def do_POST(self):
        self._answer()

    def _answer(self):
        srv = self.server
        t0 = time.monotonic()
        if self.path == "/metrics":  # what a real Prometheus scrapes; not itself counted
            body = srv.metrics_text()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(min(length, 1 << 20))
        endpoint = endpoint_of(self.path)
        headers = dict(self.headers)
        resp = srv.model.respond(endpoint, t0 - srv.started, headers, tenant_of(self.path, headers))
        status = resp.status
        logged = False
        try:
            if resp.transport == "reset" or resp.transport == "outage":
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.close_connection = True
            elif resp.transport == "hang":
                self._wait_for_close(srv.hang_s)
            elif resp.transport in ("slow_drip", "oversized"):
                status = 200
                self._stream(resp.transport)
            else:
                time.sleep(resp.latency_s)
                # Logged (and counted in /metrics) before the answer leaves: a client that has its
                # answer finds it in the log and the counters, never a moment later.
                srv.log_request_line(t0, self.command, self.path, status, (time.monotonic() - t0) * 1000.0,
                                     resp.faults, self.headers.get("X-Request-Id"), self.headers.get("User-Agent"),
                                     _error_code(resp.body) if status and status >= 500 else None)
                logged = True
                self.send_response(status)
                for k, v in resp.headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(resp.body)))
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(resp.body)
                self.close_connection = True
        except (BrokenPipeError, ConnectionResetError):
            pass
        if not logged:
            srv.log_request_line(t0, self.command, self.path, status if resp.transport not in ("reset", "hang", "outage") else None,
                             (time.monotonic() - t0) * 1000.0, resp.faults, self.headers.get("X-Request-Id"),
                             self.headers.get("User-Agent"))

    def _wait_for_close(self, limit_s: float):
        end = time.monotonic() + limit_s
        while time.monotonic() < end and not self.server.closing.is_set():
            r, _, _ = select.select([self.connection], [], [], 0.2)
            if r and not self.connection.recv(1024):
                return
        self.close_connection = True

    def _stream(self, kind: str):
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        size = 64 * 1024 * 1024 if kind == "oversized" else 100_000
        self.send_header("Content-Length", str(size))
        self.end_headers()
        self.close_connection = True
        sent, end = 0, time.monotonic() + self.server.hang_s
        chunk = b" " * 65536
        while sent < size and time.monotonic() < end and not self.server.closing.is_set():
            if kind == "oversized":
                self.wfile.write(chunk)
                sent += len(chunk)
            else:
                self.wfile.write(b" ")
                self.wfile.flush()
                sent += 1
                time.sleep(0.2)


def _error_code(body: bytes) -> str | None:
    try:
        return json.loads(body)["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return None


class SimServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256  # the default 5 drops SYNs under a burst of probes

    def __init__(self, port: int, model: Model, request_log=None, hang_s: float = 60.0, tls=None):
        super().__init__(("127.0.0.1", port), _Handler)
        if tls:  # (certfile, keyfile): serve HTTPS, e.g. with a self-signed certificate
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(*tls)
            self.socket = ctx.wrap_socket(self.socket, server_side=True, do_handshake_on_connect=False)
        self.model = model
        self.started = time.monotonic()
        self.hang_s = hang_s
        self.closing = threading.Event()
        self._log_lock = threading.Lock()
        self._metrics()
        self._log = open(request_log, "a", buffering=1) if request_log else None
        # The same ground truth in memory, for `phasegate simulate platform`'s logs and metrics:
        # what Render itself would have seen of these requests.
        self.records: deque = deque(maxlen=RECORDS_KEPT)
        self._record_seq = itertools.count(1)

    @property
    def port(self) -> int:
        return self.server_address[1]

    def handle_error(self, request, client_address):
        # A client that hangs up or refuses our certificate is part of the game, not a server bug.
        import sys
        exc = sys.exc_info()[1]
        if not isinstance(exc, (OSError, ssl.SSLError)):
            super().handle_error(request, client_address)

    def _metrics(self):
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.registry = CollectorRegistry()
        self.requests_total = Counter("http_requests", "Requests answered, by route and status",
                                      ["method", "route", "status"], registry=self.registry)
        self.duration = Histogram("http_request_duration_seconds", "Time to answer a request",
                                  ["method", "route"], registry=self.registry,
                                  buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15, 30))
        # Series exist at 0 from the start, so a scraper sees the first error as an increase.
        for route, method in (("/v1/actions/health", "GET"), ("/v1/actions/list", "GET"),
                              ("/v1/actions/suggestions", "GET"), ("/v1/actions/execute", "POST")):
            self.duration.labels(method, route)
            for status in ("200", "500", "503"):
                self.requests_total.labels(method, route, status)

    def metrics_text(self) -> bytes:
        from prometheus_client import generate_latest
        return generate_latest(self.registry)

    def log_request_line(self, t0, method, path, status, latency_ms, faults, request_id=None, user_agent=None,
                         error_code=None):
        if status is not None:  # the same truth the request log tells, as Prometheus metrics
            route = path.split("?", 1)[0]
            self.requests_total.labels(method, route, str(status)).inc()
            self.duration.labels(method, route).observe(latency_ms / 1000.0)
        wall = time.time() - (time.monotonic() - t0)
        rec = {"ts": round(wall, 6), "method": method, "path": redact_url(path), "status": status,
               "latency_ms": round(latency_ms, 3), "faults": list(faults), "request_id": request_id}
        with self._log_lock:
            self.records.append({**rec, "user_agent": user_agent, "error_code": error_code, "seq": next(self._record_seq)})
            if self._log is not None:
                self._log.write(json.dumps(rec) + "\n")

    def server_close(self):
        self.closing.set()
        super().server_close()
        if self._log:
            self._log.close()


def start_server(port: int = 0, scenario: str = "healthy", schedule=None, request_log=None,
                 seed: int = 0, span_s: float = 60.0, hang_s: float = 60.0, tls=None) -> SimServer:
    """Start a simulator in a background thread; `server.shutdown()` stops it."""
    faults = load_schedule(schedule) if schedule else scenario_faults(scenario, span_s)
    srv = SimServer(port, Model(faults, seed), request_log, hang_s, tls)
    threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
    return srv
