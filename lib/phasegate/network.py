"""How a target is reached: TLS trust and client certificates, proxies, and what the TLS
handshake tells about the service's certificate.

`[target.tls]` takes blackbox_exporter's `tls_config` keys (`ca_file`, `cert_file`, `key_file`,
`server_name`, `min_version`, `insecure_skip_verify`), plus `key_password_env` (the *name* of the
variable holding an encrypted key's passphrase). Files are checked on load: one unreadable, or a
key that does not match its certificate, is one line naming the key. `proxy_url` / `no_proxy` in
`[target]` override `HTTPS_PROXY`, `HTTP_PROXY` and `NO_PROXY` (either case), which are honoured
by default, as requests does.
"""

from __future__ import annotations

import os
import ssl
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urlsplit

VERSIONS = {"TLS1.2": ssl.TLSVersion.TLSv1_2, "TLS1.3": ssl.TLSVersion.TLSv1_3}


@dataclass(frozen=True)
class Tls:
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    key_password_env: str | None = None
    server_name: str | None = None  # the name sent as SNI and checked against the certificate
    min_version: str | None = None  # TLS1.2 or TLS1.3
    insecure_skip_verify: bool = False  # said on page 1 of every report when set


@dataclass(frozen=True)
class Route:
    """How an API call (Render, Prometheus) leaves the machine: the profile's `[target]` proxy
    settings and its CA, when set (the target's client certificate and SNI name stay the target's).
    Unset, requests takes HTTPS_PROXY / NO_PROXY / REQUESTS_CA_BUNDLE from the environment."""

    proxy_url: str | None = None
    no_proxy: str | None = None
    ca_file: str | None = None  # trusted beside the system's store


def load_tls(r, base: Path, verify_tls: bool) -> Tls:
    """[target.tls] from a config reader (`phasegate.config._Reader`), its paths relative to the
    profile's folder, every file tried now."""
    def path(key):
        value = r.take(key, (str,))
        if value is None:
            return None
        p = Path(value) if Path(value).is_absolute() else base / value
        try:
            p.read_bytes()
        except OSError as exc:
            r.fail(f"target.tls.{key}", f"cannot read {p}: {exc.strerror or exc}")
        return str(p)

    tls = Tls(ca_file=path("ca_file"), cert_file=path("cert_file"), key_file=path("key_file"),
              key_password_env=r.take("key_password_env", (str,)), server_name=r.take("server_name", (str,)),
              min_version=r.take("min_version", (str,)),
              insecure_skip_verify=r.take("insecure_skip_verify", (bool,), not verify_tls))
    if tls.min_version is not None and tls.min_version not in VERSIONS:
        r.fail("target.tls.min_version", f"must be one of {', '.join(VERSIONS)}, got {tls.min_version!r}")
    if bool(tls.cert_file) != bool(tls.key_file):
        r.fail("target.tls.key_file" if tls.cert_file else "target.tls.cert_file",
               "cert_file and key_file go together (a client certificate and its key)")
    if tls.ca_file:
        try:
            ssl.create_default_context(cafile=tls.ca_file)
        except ssl.SSLError as exc:
            r.fail("target.tls.ca_file", f"{tls.ca_file} holds no PEM certificate ({exc.reason or exc})")
    if tls.cert_file:
        try:
            ssl.create_default_context().load_cert_chain(tls.cert_file, tls.key_file, password=_password(tls))
        except ssl.SSLError as exc:
            why = "does not match target.tls.cert_file" if "mismatch" in str(exc).lower() else \
                f"cannot be loaded with target.tls.cert_file ({exc.reason or exc})"
            r.fail("target.tls.key_file", why)
    return tls


def _password(tls: Tls):
    if not tls.key_password_env:
        return None
    return lambda: os.environ.get(tls.key_password_env, "")


_LOCK = threading.Lock()
_CONTEXTS: dict[Tls, ssl.SSLContext] = {}


def context(tls: Tls) -> ssl.SSLContext:
    """One context per TLS setting, built once: loading a CA store costs ~30 ms, and a burst of
    first probes building it in parallel would eat each other's deadlines."""
    with _LOCK:
        if tls not in _CONTEXTS:
            ctx = ssl.create_default_context(cafile=tls.ca_file) if tls.ca_file else ssl.create_default_context()
            if tls.insecure_skip_verify:
                ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
            if tls.min_version:
                ctx.minimum_version = VERSIONS[tls.min_version]
            if tls.cert_file:
                ctx.load_cert_chain(tls.cert_file, tls.key_file, password=_password(tls))
            _CONTEXTS[tls] = ctx
        return _CONTEXTS[tls]


# -- what the handshake says ---------------------------------------------------------------------

_VERIFY = {10: "certificate expired", 9: "certificate not yet valid", 18: "unknown CA (self-signed certificate)",
           19: "unknown CA (self-signed certificate in the chain)", 20: "unknown CA (issuer not trusted)",
           21: "unknown CA (cannot verify the first certificate)", 62: "host name mismatch",
           64: "IP address mismatch"}


def tls_failure(exc: Exception) -> str:
    """A TLS failure in words a reviewer reads: expired, unknown CA, host name mismatch, handshake."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        what = _VERIFY.get(exc.verify_code, "certificate rejected")
        return f"TLS: {what} ({exc.verify_message})"
    reason = getattr(exc, "reason", None) or str(exc)
    if "CERTIFICATE_REQUIRED" in str(reason).upper():
        return "TLS: the server requires a client certificate (target.tls cert_file/key_file)"
    if "VERSION" in str(reason).upper():
        return f"TLS: no protocol version both sides accept ({reason})"
    return f"TLS handshake failed: {reason}"


def peer_facts(tls_object) -> tuple[str | None, float | None]:
    """(the negotiated TLS version, the server certificate's expiry as epoch seconds). Python
    3.11 exposes only the leaf certificate of the presented chain: its notAfter is the one read."""
    version = tls_object.version()
    der = tls_object.getpeercert(binary_form=True)
    if not der:
        return version, None
    try:
        from cryptography import x509

        cert = x509.load_der_x509_certificate(der)
        return version, cert.not_valid_after_utc.timestamp()
    except (ImportError, ValueError):
        return version, None


def utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, timezone.utc)


# -- proxies ---------------------------------------------------------------------------------


def proxy_for(url: str, proxy_url: str | None = None, no_proxy: str | None = None) -> str | None:
    """The proxy a request to `url` goes through, or None: the profile's `proxy_url` (with its
    `no_proxy`), else HTTPS_PROXY / HTTP_PROXY and NO_PROXY from the environment, either case."""
    parts = urlsplit(url)
    if proxy_url is None:
        name = "https_proxy" if parts.scheme == "https" else "http_proxy"
        proxy_url = os.environ.get(name) or os.environ.get(name.upper()) or None
        if no_proxy is None:
            no_proxy = os.environ.get("no_proxy") or os.environ.get("NO_PROXY")
    if not proxy_url or _bypassed(parts.hostname or "", parts.port, no_proxy or ""):
        return None
    return proxy_url


def _bypassed(host: str, port: int | None, no_proxy: str) -> bool:
    host = host.lower().strip("[]")
    for entry in (e.strip().lower() for e in no_proxy.split(",")):
        if not entry:
            continue
        if entry == "*":
            return True
        name, _, eport = entry.partition(":") if entry.count(":") == 1 else (entry, "", "")
        if eport and port is not None and str(port) != eport:
            continue
        name = name.lstrip(".").strip("[]")
        if host == name or host.endswith("." + name):
            return True
    return False
