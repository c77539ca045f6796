"""The HTTP client of phasegate's API calls: Render's API, Prometheus, the webhooks.

They go through requests, with what every Python operator expects of it there: proxies from
`HTTPS_PROXY`/`HTTP_PROXY`/`NO_PROXY` (either case), extra trust from `REQUESTS_CA_BUNDLE` (or
`CURL_CA_BUNDLE`) on top of the system's store and `SSL_CERT_FILE`, and urllib3's `Retry` for
reads, honouring a 429's or 503's `Retry-After`. The probes keep their own socket-level exchange
(`probe.exchange`: latency phases, the target's TLS settings).

requests' timeout bounds each socket operation, not the exchange: a server that sends a header
byte every half second never trips it, and holds the caller for hours. The total deadline is kept
here: a watchdog timer, armed when an attempt starts and disarmed between attempts, shuts the
attempt's socket down when `timeout_s` has passed, which ends any read blocked on it at once.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from functools import lru_cache

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import InvalidHeader, MaxRetryError
from urllib3.util.retry import Retry

from .network import Route, proxy_for, tls_failure
from .probe import Exchange

_CHUNK = 65536
_attempt = threading.local()  # this thread's attempt: its connection, timer, and whether it fired


def _arm(conn, timeout_s: float) -> None:
    _disarm()
    timer = threading.Timer(timeout_s, _fire, (conn,))
    timer.daemon = True
    _attempt.conn, _attempt.timer, _attempt.fresh = conn, timer, False
    timer.start()


def _disarm() -> None:
    timer = getattr(_attempt, "timer", None)
    if timer is not None:
        timer.cancel()
    _attempt.timer, _attempt.conn = None, None


def _fire(conn) -> None:
    conn.deadline_passed = True  # read by `fetch` once the blocked call returns
    sock = getattr(conn, "sock", None)
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # already closed: nothing is blocked on it


class _Watched:
    """A urllib3 connection whose attempt is under the watchdog: armed by the first of connect()
    (https: the handshake comes first) and request(), re-armed by a request on a kept connection."""

    def connect(self):
        if getattr(_attempt, "timeout_s", None) is not None and getattr(_attempt, "timer", None) is None:
            _arm(self, _attempt.timeout_s)
            _attempt.fresh = True
        return super().connect()

    def request(self, *args, **kw):
        if getattr(_attempt, "timeout_s", None) is not None and (
                getattr(_attempt, "timer", None) is None or not (_attempt.fresh and _attempt.conn is self)):
            _arm(self, _attempt.timeout_s)
        _attempt.fresh = False
        return super().request(*args, **kw)


class _HTTPConnection(_Watched, HTTPConnection):
    pass


class _HTTPSConnection(_Watched, HTTPSConnection):
    pass


class _HTTPPool(HTTPConnectionPool):
    ConnectionCls = _HTTPConnection


class _HTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _HTTPSConnection


_POOLS = {"http": _HTTPPool, "https": _HTTPSPool}


class Retrying(Retry):
    """urllib3's Retry with the wait it slept on each retry recorded (`waited`), a lenient
    Retry-After (seconds, fractional or not, or an HTTP date; anything else: the backoff), and a
    budget: a wait that would end past `budget_end` (monotonic seconds) is not waited on, and the
    last answer is returned as it is, the refusal noted in `waited`."""

    def __init__(self, *args, waited: list | None = None, budget_end: float | None = None, **kw):
        super().__init__(*args, **kw)
        self.waited = [] if waited is None else waited
        self.budget_end = budget_end

    def new(self, **kw):
        r = super().new(**kw)
        r.waited, r.budget_end = self.waited, self.budget_end
        return r

    def parse_retry_after(self, retry_after: str) -> float:
        try:
            return max(0.0, float(retry_after))
        except ValueError:
            pass
        try:
            return super().parse_retry_after(retry_after)
        except InvalidHeader:
            return None  # get_retry_after's None: the backoff applies

    def _wait(self, response) -> tuple[float, bool]:
        after = self.get_retry_after(response) if response is not None else None
        return (after, True) if after is not None else (self.get_backoff_time(), False)

    def increment(self, method=None, url=None, response=None, error=None, _pool=None, _stacktrace=None):
        new = super().increment(method, url, response, error, _pool, _stacktrace)
        if response is not None and self.budget_end is not None:
            wait, _ = new._wait(response)
            if time.monotonic() + wait > self.budget_end:
                self.waited.append({"status": response.status, "wait_s": wait, "waited": False})
                raise MaxRetryError(_pool, url, "past the retry budget")
        return new

    def sleep(self, response=None) -> None:
        _disarm()  # the wait between attempts is not an attempt's time
        wait, after = self._wait(response)
        self.waited.append({"status": getattr(response, "status", None), "wait_s": wait, "waited": True,
                            "retry_after": after})
        super().sleep(response)


class _Adapter(HTTPAdapter):
    def __init__(self, ca_file: str | None = None, **kw):
        self.ca_file = ca_file
        super().__init__(**kw)

    def init_poolmanager(self, *args, **kw):
        super().init_poolmanager(*args, ssl_context=_context(self.ca_file), **kw)
        self.poolmanager.pool_classes_by_scheme = _POOLS

    def proxy_manager_for(self, proxy, **kw):
        manager = super().proxy_manager_for(proxy, **kw)
        manager.pool_classes_by_scheme = _POOLS
        return manager


@lru_cache(maxsize=8)
def _context(ca_file: str | None = None) -> ssl.SSLContext:
    """The system's trust (and SSL_CERT_FILE), plus `ca_file`, built once per file: requests adds
    REQUESTS_CA_BUNDLE to it."""
    ctx = ssl.create_default_context()
    if ca_file:
        ctx.load_verify_locations(ca_file)
    return ctx


def session(retries: Retrying | int = 0, route: Route | None = None) -> requests.Session:
    """A requests.Session for API calls: the environment's proxies and CA bundle (the route's
    proxy settings over them, its CA beside them), `retries` for its reads, every attempt under
    the watchdog `fetch` arms."""
    s = requests.Session()
    adapter = _Adapter(ca_file=route.ca_file if route else None, max_retries=retries)
    s.mount("http://", adapter)
    s.mount("https://", adapter)
    s.headers["User-Agent"] = "phasegate"
    return s


def reads(tries: int, statuses, budget_s: float | None, methods=("GET",)) -> Retrying:
    """The Retry of an idempotent read: up to `tries` sends in all, again on `statuses` only
    (never after a timeout or a broken connection: the deadline is the caller's), after the
    answer's Retry-After, else urllib3's backoff: the first retry at once, then 0.5 s, 1 s, 2 s,
    ... (at most 10 s), each plus up to 0.25 s of jitter. Within `budget_s` of waiting in all."""
    return Retrying(total=tries - 1, connect=0, read=0, other=0, redirect=0, status=tries - 1,
                    status_forcelist=tuple(statuses), allowed_methods=frozenset(methods), backoff_factor=0.25,
                    backoff_jitter=0.25, backoff_max=10.0, respect_retry_after_header=True, raise_on_status=False,
                    raise_on_redirect=False, budget_end=None if budget_s is None else time.monotonic() + budget_s)


def fetch(url: str, method: str, headers: dict, body: bytes | None, timeout_s: float, max_body: int,
          retries: Retrying | None = None, route: Route | None = None) -> Exchange:
    """One API call, each attempt within `timeout_s` whole (headers, body and all), its failure an
    outcome like a probe's (timeout, dns_error, tls_error, connection_error, protocol_error,
    body_too_large). Redirects are answers, not followed. A route with a proxy_url or no_proxy
    decides the proxy as the probes' does (`network.proxy_for`); else requests reads the environment."""
    ex = Exchange()
    t0 = time.monotonic()
    _attempt.timeout_s, _attempt.timer = timeout_s, None
    s = session(retries if retries is not None else 0, route)
    proxies = None
    if route is not None and (route.proxy_url is not None or route.no_proxy is not None):
        via = proxy_for(url, route.proxy_url, route.no_proxy)
        proxies = {"http": via, "https": via}  # None: direct (requests drops a None over the environment's)
    resp = None
    try:
        resp = s.request(method, url, headers=headers, data=body, timeout=(timeout_s, timeout_s), stream=True,
                         allow_redirects=False, proxies=proxies)
        ex.status = resp.status_code
        ex.headers = {k.lower(): v for k, v in resp.headers.items()}
        chunks, size = [], 0
        for chunk in resp.raw.stream(_CHUNK, decode_content=True):
            size += len(chunk)
            if size > max_body:
                ex.outcome, ex.error = "body_too_large", f"body exceeds {max_body} bytes"
                break
            chunks.append(chunk)
        ex.body = b"".join(chunks)
    except Exception as exc:  # noqa: BLE001 - translated at this edge into an outcome, as the probe's are
        ex.outcome, ex.error = _classify(exc, timeout_s)
    finally:
        conn = getattr(_attempt, "conn", None)
        _disarm()
        _attempt.timeout_s = None  # a session used outside `fetch` runs unwatched, as requests does
        if conn is not None and getattr(conn, "deadline_passed", False):
            ex.status, ex.body = None, b""
            ex.outcome, ex.error = "timeout", f"no complete response within {timeout_s:g}s"
        if resp is not None:
            resp.close()
        s.close()
    ex.phases["latency_ms"] = (time.monotonic() - t0) * 1000.0
    return ex


def _causes(exc):
    """The exception and everything it wraps (requests wraps urllib3's, which wraps the socket's)."""
    seen = []
    todo = [exc]
    while todo:
        e = todo.pop()
        if not isinstance(e, BaseException) or any(e is s for s in seen):
            continue  # (urllib3 gives some errors a reason that is a string)
        seen.append(e)
        todo += [getattr(e, "reason", None), e.__cause__, e.__context__]
        todo += [a for a in getattr(e, "args", ()) if isinstance(a, BaseException)]
    return seen


def _classify(exc: Exception, timeout_s: float) -> tuple[str, str]:
    chain = _causes(exc)
    kinds = tuple(type(e) for e in chain)

    def has(*types):
        return next((e for e in chain if isinstance(e, types)), None)

    if has(requests.Timeout, socket.timeout, TimeoutError):
        return "timeout", f"no complete response within {timeout_s:g}s"
    if has(socket.gaierror):
        return "dns_error", f"cannot resolve host: {has(socket.gaierror).strerror or has(socket.gaierror)}"
    tls = has(ssl.SSLError, ssl.CertificateError)
    if tls is not None:
        return "tls_error", tls_failure(tls)
    if isinstance(exc, requests.exceptions.ProxyError):
        tunnel = next((str(e) for e in chain if "Tunnel connection failed" in str(e)), None)
        return "connection_error", (f"the proxy refused the tunnel ({tunnel.split(': ', 1)[-1]})" if tunnel
                                    else "cannot reach the proxy")
    if has(ConnectionRefusedError):
        return "connection_error", "connection refused"
    if isinstance(exc, requests.exceptions.ChunkedEncodingError):
        return "connection_error", "body cut short"
    if isinstance(exc, (requests.exceptions.InvalidHeader, requests.exceptions.InvalidURL,
                        requests.exceptions.InvalidSchema, requests.exceptions.MissingSchema)):
        return "protocol_error", f"bad request or answer: {type(exc).__name__}"
    if has(ConnectionResetError, BrokenPipeError):
        return "connection_error", "connection reset or closed"
    name = next((k.__name__ for k in kinds if k.__module__.startswith("http.client")), type(exc).__name__)
    return "connection_error", f"connection failed: {name}"
