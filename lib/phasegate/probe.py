"""One probe attempt: a bounded HTTP exchange, classified into a sample row.

`run_probe` never raises for anything the target does: every failure is a row with an
`outcome`. It speaks HTTP through http.client on a socket it owns so that every read
is bounded by the *remaining* total deadline (requests' timeout is per read, which a
slow-drip body defeats) and so that latency splits into phases like blackbox_exporter's.
`evaluate` classifies a response and is shared with the simulator's history generator.
"""

from __future__ import annotations

import base64
import http.client
import io
import itertools
import json
import os
import signal
import socket
import ssl
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit, urlunsplit

from .network import Tls, context as tls_context, peer_facts, proxy_for, tls_failure
from .profile import Assertion, Probe, Target
from .rules import ERROR_OUTCOMES, OUTCOMES  # noqa: F401 - the outcome vocabulary, as callers import it
from .redact import Secret, capped, redact_headers, redact_text, redact_url, scrub_row

EVIDENCE_BODY_CHARS = 2048
_CHUNK = 65536


@dataclass
class Exchange:
    """What came back over the wire, or how the exchange failed."""

    status: int | None = None
    headers: dict = field(default_factory=dict)
    body: bytes = b""
    outcome: str | None = None
    error: str | None = None
    phases: dict = field(default_factory=dict)
    tls_version: str | None = None  # as negotiated, e.g. TLSv1.3
    cert_expiry: float | None = None  # the server certificate's notAfter, epoch seconds


class _Deadline:
    def __init__(self, timeout_s: float):
        self.t0 = time.monotonic()
        self.at = self.t0 + timeout_s
        self.mark = self.t0

    def remaining(self) -> float:
        left = self.at - time.monotonic()
        if left <= 0:
            raise socket.timeout("total deadline reached")
        return left

    def lap(self) -> float:
        now = time.monotonic()
        ms, self.mark = (now - self.mark) * 1000.0, now
        return ms


class _Wire:
    """The probe's connection as http.client sees it: every send and every receive — the status
    line and each header byte included — consults the one deadline, so a server dripping its
    headers a byte at a time is cut off when the deadline passes. TLS runs through an SSLObject
    over this same wire, so the handshake's reads are bounded by it too."""

    def __init__(self, sock: socket.socket, dl: _Deadline):
        self.sock, self.dl, self.tls = sock, dl, None

    def start_tls(self, ctx: ssl.SSLContext, server_name: str) -> None:
        """TLS over this wire (after a proxy's CONNECT, when there is one)."""
        self._in, self._out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = ctx.wrap_bio(self._in, self._out, server_hostname=server_name)
        self._tls_io(self.tls.do_handshake)

    def tunnel(self, host: str, port: int, auth: str | None) -> None:
        """HTTP CONNECT through a proxy to host:port; the proxy's answer read under the deadline."""
        lines = [f"CONNECT {host}:{port} HTTP/1.1", f"Host: {host}:{port}"]
        if auth:
            lines.append("Proxy-Authorization: " + (auth.reveal() if isinstance(auth, Secret) else auth))
        self.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        resp = http.client.HTTPResponse(self, method="CONNECT")
        resp.begin()
        if resp.status != 200:
            raise _ProxyRefused(f"the proxy answered CONNECT with {resp.status} {resp.reason}")

    def _send(self, data) -> None:
        view = memoryview(data)
        while view:
            self.sock.settimeout(self.dl.remaining())
            view = view[self.sock.send(view):]

    def _tls_io(self, op, *args):
        while True:
            try:
                result = op(*args)
                self._send(self._out.read())
                return result
            except ssl.SSLWantReadError:
                self._send(self._out.read())
                self.sock.settimeout(self.dl.remaining())
                data = self.sock.recv(_CHUNK)
                self._in.write(data) if data else self._in.write_eof()

    def sendall(self, data) -> None:
        if self.tls is None:
            return self._send(data)
        view = memoryview(data)
        while view:
            view = view[self._tls_io(self.tls.write, view):]

    def recv_into(self, buf) -> int:
        if self.tls is None:
            self.sock.settimeout(self.dl.remaining())
            return self.sock.recv_into(buf)
        try:
            data = self._tls_io(self.tls.read, len(buf))
        except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
            return 0  # closed, with or without close_notify: the end of the body, as ssl sockets say it
        buf[:len(data)] = data
        return len(data)

    def makefile(self, *_args, **_kw):
        return io.BufferedReader(_WireReader(self), _CHUNK)

    def close(self) -> None:
        # http.client closes its connection while the response body may still be read (a socket
        # counts its open files before closing): the exchange closes the socket when it is done.
        pass


class _WireReader(io.RawIOBase):
    def __init__(self, wire: _Wire):
        self.wire = wire

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:
        return self.wire.recv_into(buf)


class _ProxyRefused(OSError):
    """The proxy would not open the tunnel."""


def _proxy_auth(proxy) -> str | None:
    """Basic credentials from the proxy URL's userinfo (never stored: the URL is redacted)."""
    if not proxy.username:
        return None
    user, password = unquote(proxy.username), unquote(proxy.password or "")
    return Secret("Basic " + base64.b64encode(f"{user}:{password}".encode()).decode())


def exchange(url: str, method: str, headers: dict, body: bytes | None, timeout_s: float,
             max_body: int, verify_tls: bool = True, *, tls: Tls | None = None, proxy_url: str | None = None,
             no_proxy: str | None = None) -> Exchange:
    """One HTTP request on a fresh connection, every socket call bounded by the deadline; through
    the proxy `network.proxy_for` picks (the profile's, else the environment's), if any."""
    ex = Exchange()
    dl = _Deadline(timeout_s)
    sock = None
    tls = tls or Tls(insecure_skip_verify=not verify_tls)
    try:
        parts = urlsplit(url)
        https = parts.scheme == "https"
        host, port = parts.hostname, parts.port or (443 if https else 80)
        via = proxy_for(url, proxy_url, no_proxy)
        hop = urlsplit(via) if via else None
        first = (hop.hostname, hop.port or 80) if hop else (host, port)
        infos = socket.getaddrinfo(*first, type=socket.SOCK_STREAM)
        ex.phases["dns_ms"] = dl.lap()
        family, stype, proto, _, addr = infos[0]
        sock = socket.socket(family, stype, proto)
        sock.settimeout(dl.remaining())
        try:
            sock.connect(addr)
        except ConnectionRefusedError:
            raise ConnectionRefusedError(f"proxy {first[0]}:{first[1]}" if hop else "") from None
        ex.phases["connect_ms"] = dl.lap()
        wire = _Wire(sock, dl)
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        headers = dict(headers)
        if hop and https:
            wire.tunnel(host, port, _proxy_auth(hop))
            ex.phases["proxy_ms"] = dl.lap()  # the proxy's own share, apart from the server's
        elif hop:
            target = urlunsplit((parts.scheme, parts.netloc, target.split("?")[0], parts.query, ""))
            if _proxy_auth(hop):
                headers["Proxy-Authorization"] = _proxy_auth(hop)
        if https:
            wire.start_tls(tls_context(tls), tls.server_name or host)
            ex.phases["tls_ms"] = dl.lap()
            ex.tls_version, ex.cert_expiry = peer_facts(wire.tls)
        conn = http.client.HTTPConnection(host, port)
        conn.sock = wire
        conn.request(method, target, body=body, headers=headers)
        resp = conn.getresponse()
        ex.phases["processing_ms"] = dl.lap()
        ex.status = resp.status
        ex.headers = {k.lower(): v for k, v in resp.getheaders()}
        chunks, size = [], 0
        while True:
            chunk = resp.read1(_CHUNK)
            if not chunk:
                break
            size += len(chunk)
            if size > max_body:
                ex.outcome, ex.error = "body_too_large", f"body exceeds {max_body} bytes"
                break
            chunks.append(chunk)
            dl.remaining()
        ex.body = b"".join(chunks)
        ex.phases["transfer_ms"] = dl.lap()
    except (socket.timeout, TimeoutError):
        ex.outcome, ex.error = "timeout", f"no complete response within {timeout_s:g}s"
    except socket.gaierror as exc:
        ex.outcome, ex.error = "dns_error", f"cannot resolve host: {exc.strerror or exc}"
    except (ssl.SSLError, ssl.CertificateError) as exc:
        ex.outcome, ex.error = "tls_error", tls_failure(exc)
    except ConnectionRefusedError as exc:
        ex.outcome, ex.error = "connection_error", "connection refused" + (f" ({exc.args[0]})" if exc.args and exc.args[0] else "")
    except _ProxyRefused as exc:
        ex.outcome, ex.error = "connection_error", str(exc)
    except (ConnectionResetError, BrokenPipeError, http.client.RemoteDisconnected) as exc:
        ex.outcome, ex.error = "connection_error", f"connection reset or closed: {type(exc).__name__}"
        if ex.tls_version is not None and ex.status is None and ex.phases.get("processing_ms") is None:
            # TLS 1.3 finishes the handshake before the server judges a client certificate: a
            # server that then hangs up without its alert most likely wanted one.
            ex.outcome, ex.error = "tls_error", ("TLS: the server closed the connection right after the handshake "
                                                 "(does it require a client certificate? target.tls cert_file/key_file)")
    except http.client.IncompleteRead as exc:
        ex.outcome, ex.error = "connection_error", f"body cut short after {len(exc.partial)} bytes"
    except http.client.HTTPException as exc:
        ex.outcome, ex.error = "protocol_error", f"malformed HTTP response: {type(exc).__name__}"
    except OSError as exc:
        ex.outcome, ex.error = "connection_error", f"{type(exc).__name__}: {exc.strerror or exc}"
    finally:
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass
    ex.phases["latency_ms"] = (time.monotonic() - dl.t0) * 1000.0
    return ex


# -- classification --------------------------------------------------------------------

_MISSING = object()


def json_path(doc, path: str):
    """Resolve 'a.b[].c' (a '[]' segment maps over a list); _MISSING when absent."""
    cur = doc
    segments = path.split(".") if path else []
    for i, seg in enumerate(segments):
        if seg.endswith("[]"):
            seg = seg[:-2]
            lst = cur.get(seg, _MISSING) if isinstance(cur, dict) else _MISSING
            if not isinstance(lst, list):
                return _MISSING
            rest = ".".join(segments[i + 1:])
            vals = [json_path(item, rest) for item in lst]
            return [v for v in vals if v is not _MISSING]
        if isinstance(cur, dict) and seg in cur:
            cur = cur[seg]
        elif isinstance(cur, list) and seg.isdigit() and int(seg) < len(cur):
            cur = cur[int(seg)]
        else:
            return _MISSING
    return cur


def _check(a: Assertion, doc) -> str | None:
    """None when the assertion holds, else a message that groups well (no volatile values)."""
    val = json_path(doc, a.path)
    if a.equals is not None:
        return None if val == a.equals else f"{a.path} != {a.equals!r} (got {val if val is not _MISSING else 'nothing'!r})"
    if a.length is not None:
        n = len(val) if isinstance(val, (list, dict, str)) else None
        return None if n == a.length else f"len({a.path}) != {a.length} (got {n})"
    if a.contains is not None:
        return None if isinstance(val, list) and a.contains in val else f"{a.path} lacks {a.contains!r}"
    return None if isinstance(val, list) and a.excludes not in val else f"{a.path} contains {a.excludes!r}"


def _extract(spec: str, doc, headers: dict):
    if spec.startswith("header:"):
        return headers.get(spec[7:].lower())
    if doc is None:
        return None
    if spec.startswith("len:"):
        val = json_path(doc, spec[4:])
        return len(val) if isinstance(val, (list, dict)) else None
    val = json_path(doc, spec)
    return None if val is _MISSING or isinstance(val, (list, dict)) else val


def evaluate(probe: Probe, status: int, headers: dict, body: bytes) -> dict:
    """Classify a complete response: outcome, error code, extracted values, failures."""
    out = {"outcome": "ok", "error_code": None, "assertion_failures": [], "flags": None, "error": None}
    doc, parse_error = None, None
    if body:
        try:
            doc = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            parse_error = f"body is not JSON: {exc}"
        except RecursionError:  # 200,000 '[': no parser recursion, a classified body
            parse_error = "body is not JSON we read: nested deeper than the parser's depth limit"
    for col, spec in probe.extract.items():
        val = _extract(spec, doc, headers)
        out[col] = None if val is None else (capped(str(val)) if col in ("deployment_id", "health_status") else _as_int(val))
    if probe.flags and doc is not None:
        flags = {name: json_path(doc, spec) for name, spec in probe.flags.items()}
        out["flags"] = json.dumps({k: (None if v is _MISSING else _flag_value(v)) for k, v in flags.items()})
    if status not in probe.expect_status:
        code = json_path(doc, probe.error_code_path) if doc is not None else _MISSING
        out["error_code"] = None if code is _MISSING or isinstance(code, (dict, list)) else capped(str(code))
        out["outcome"], out["error"] = "http_error", f"unexpected status {status}"
        return out
    # Malformed JSON matters when the probe reads the body or the server claims it is JSON.
    claims_json = "json" in headers.get("content-type", "")
    if parse_error and (probe.asserts or probe.extract or probe.flags or claims_json):
        out["outcome"], out["error"] = "invalid_body", parse_error
        return out
    failures = [capped(msg) for a in probe.asserts if (msg := _check(a, doc)) is not None]
    if failures:
        out["outcome"], out["assertion_failures"] = "assertion_failed", failures
    return out


def _flag_value(v):
    """A flag as observed: true/false/null/numbers as they are, anything else as capped text."""
    return v if v is None or isinstance(v, (bool, int, float)) else capped(v if isinstance(v, str) else json.dumps(v))


def _as_int(val):
    """An integer that fits its int32 column, else None (a count of 1e300 is no count)."""
    try:
        n = int(val)
    except (TypeError, ValueError, OverflowError):
        return None
    return n if -2**31 <= n < 2**31 else None


def render(template: str, tenant: str | None) -> str:
    return template.replace("{tenant}", tenant) if tenant is not None else template


_ID_PREFIX = uuid.uuid4().hex[:8]
_ID_COUNTER = itertools.count(1)


def next_request_id() -> str:
    """Unique per process (a random prefix) and sequential within it: as traceable as a random id,
    and ~1 byte per sample on disk instead of ~10."""
    return f"{_ID_PREFIX}-{next(_ID_COUNTER):x}"


def join_url(base_url: str, path: str) -> str:
    """The probe's path under the base URL's path, their queries merged (base first):
    'http://h/api?v=1' + '/list?domain=faults' -> 'http://h/api/list?v=1&domain=faults'."""
    base = urlsplit(base_url)
    rel = urlsplit(path)
    query = "&".join(q for q in (base.query, rel.query) if q)
    return urlunsplit((base.scheme, base.netloc, base.path.rstrip("/") + rel.path, query, ""))


def run_probe(target: Target, probe: Probe, *, tenant: str | None = None, secrets=(),
              keep_evidence: bool = False, run_id: str = "", now=None) -> dict:
    """Probe once; always returns a sample row (failures are rows, not exceptions)."""
    url = join_url(target.base_url, render(probe.path, tenant))
    # X-Request-Id lets a sample be matched to the server's own log line.
    request_id = next_request_id()
    headers = {"User-Agent": "phasegate/0.1", "Accept": "application/json", "Connection": "close",
               "X-Request-Id": request_id}
    headers.update({k: render(v, tenant) for k, v in target.headers.items()})
    headers.update({k: render(v, tenant) for k, v in probe.headers.items()})
    auth = target.auth_value()
    if auth and target.auth_header:
        headers[target.auth_header] = auth
    body = None
    if probe.body is not None:
        body = json.dumps(probe.body).encode()
        headers["Content-Type"] = "application/json"
    ts = now or time.time()
    ex = exchange(url, probe.method, headers, body, probe.timeout_s or target.timeout_s,
                  target.max_body_bytes, tls=target.tls, proxy_url=target.proxy_url, no_proxy=target.no_proxy)
    row = {
        "ts": ts, "run_id": run_id, "request_id": request_id, "source": "probe", "target": target.name, "tenant": tenant,
        "probe": probe.name, "method": probe.method, "url": redact_url(url), "status": ex.status,
        "bytes": len(ex.body), "assertion_failures": [], "simulated": False,
        **{k: ex.phases.get(k) for k in ("latency_ms", "dns_ms", "connect_ms", "proxy_ms", "tls_ms", "processing_ms",
                                         "transfer_ms")},
        "tls_version": ex.tls_version, "cert_expiry": ex.cert_expiry,
    }
    if ex.outcome is None:
        row.update(evaluate(probe, ex.status, ex.headers, ex.body))
    else:
        row.update(outcome=ex.outcome, error=ex.error, error_code=None)
    if row.get("error"):
        row["error"] = capped(redact_text(row["error"], secrets))
    scrub_row(row, secrets)
    if keep_evidence or row["outcome"] != "ok":
        row["evidence"] = evidence_json(ex.status, ex.headers, ex.body, target.evidence_headers, secrets)
    return row


def run_command(check, target_name: str, base_url: str, *, secrets=(), keep_evidence: bool = False,
                run_id: str = "") -> dict:
    """Run an acceptance command once; always returns a sample row, like `run_probe`. Its duration
    is the latency; exit 0 is ok, another exit `command_failed`, the timeout `timeout` (its whole
    process group is killed), a command that cannot start `command_error`. The tail of its output,
    redacted, is the evidence. It gets PATH, PHASEGATE_BASE_URL (the target, which --base-url may
    have moved) and the variables its `env` names, nothing else."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PHASEGATE_BASE_URL": base_url,
           **{k: os.environ[k] for k in check.env if k in os.environ}}
    ts, t0 = time.time(), time.monotonic()
    code, out, outcome, error = None, b"", "ok", None
    try:
        proc = subprocess.Popen(list(check.command), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            out, _ = proc.communicate(timeout=check.timeout_s)
            code = proc.returncode
            if code != 0:
                outcome, error = "command_failed", f"exit status {code}"
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
            outcome, error = "timeout", f"did not finish within {check.timeout_s:g}s (killed)"
    except OSError as exc:
        outcome, error = "command_error", f"cannot run {check.command[0]}: {exc.strerror or exc}"
    latency = (time.monotonic() - t0) * 1000.0
    tail = out[-EVIDENCE_BODY_CHARS * 4:].decode("utf-8", "replace")[-EVIDENCE_BODY_CHARS:]
    row = {"ts": ts, "run_id": run_id, "request_id": next_request_id(), "source": "check", "target": target_name,
           "tenant": None, "probe": check.name, "method": "EXEC",
           "url": capped(redact_text(" ".join(check.command), secrets)), "status": None, "outcome": outcome,
           "error": None if error is None else capped(redact_text(error, secrets)),
           "error_code": None if code is None else f"exit {code}", "latency_ms": latency, "bytes": len(out),
           "assertion_failures": [], "simulated": False}
    if keep_evidence or outcome != "ok":
        row["evidence"] = json.dumps({"command": [redact_text(a, secrets) for a in check.command], "exit_status": code,
                                      "output_tail": redact_text(tail, secrets), "output_bytes": len(out)}, sort_keys=True)
    return row


def evidence_json(status, headers: dict, body: bytes, keep_headers, secrets=()) -> str:
    """The raw response as a reviewer re-checks it: redacted and truncated."""
    text = body[: EVIDENCE_BODY_CHARS * 4].decode("utf-8", "replace")
    return json.dumps({
        "status": status,
        "headers": {k: capped(redact_text(capped(v, 4 * EVIDENCE_BODY_CHARS), secrets))
                    for k, v in redact_headers(headers, keep_headers).items()},
        "body": redact_text(text[:EVIDENCE_BODY_CHARS], secrets),
        "body_bytes": len(body),
        "truncated": len(text) > EVIDENCE_BODY_CHARS or len(body) > EVIDENCE_BODY_CHARS * 4,
    }, sort_keys=True)
