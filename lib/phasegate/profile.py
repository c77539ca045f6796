"""Profiles: the target, its probes and the phase's decision criteria, from TOML.

Every section is a frozen dataclass with defaults. Loading checks each key against
the dataclass it fills and names the file and dotted key in every message, so a typo
in a profile can never silently turn a criterion off.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit

from .config import _Reader
from .errors import ProfileError
from .network import Route, Tls, load_tls
from .objstore import Storage
from .redact import MASK, Secret, is_secret_header, is_secret_name, redact_text, redact_url
# The criteria and runbook sections live in `rules`; imported here, where a profile is put together.
from .rules import (CRITERIA_IDS, NAME, Criteria, Criterion, MachineSteps, RunbookStep, Verify,  # noqa: F401
                    _criteria, _runbook, machine_steps)

EXTRACT_COLUMNS = ("handlers_loaded", "handlers_total", "item_count", "deployment_id", "health_status")
_PHASE = NAME
_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD")


@dataclass(frozen=True)
class Assertion:
    """One check on the JSON body; exactly one of equals/length/contains/excludes."""

    path: str
    equals: Any = None
    length: int | None = None
    contains: Any = None
    excludes: Any = None


@dataclass(frozen=True)
class Probe:
    name: str
    path: str
    method: str = "GET"
    body: Any = None
    expect_status: tuple[int, ...] = (200,)
    error_code_path: str = "error.code"
    headers: dict = field(default_factory=dict)
    interval_s: float | None = None
    timeout_s: float | None = None
    asserts: tuple[Assertion, ...] = ()
    extract: dict = field(default_factory=dict)
    flags: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Check:
    """An acceptance command run as a probe: exit 0 is ok, anything else (or the timeout) a failure."""

    name: str
    command: tuple[str, ...]
    interval_s: float = 300.0
    timeout_s: float = 60.0
    env: tuple[str, ...] = ()  # names of environment variables passed to it (nothing else is, but PATH)


@dataclass(frozen=True)
class Target:
    name: str
    base_url: str
    interval_s: float = 30.0
    timeout_s: float = 10.0
    max_body_bytes: int = 1_048_576
    headers: dict = field(default_factory=dict)
    auth_header: str | None = None
    auth_env: str | None = None
    auth_scheme: str = ""
    auth_optional: bool = False  # probe without the header when auth_env is unset (else refuse to start)
    tenants: tuple[str, ...] = ()
    evidence_headers: tuple[str, ...] = ("content-type", "x-deployment-id", "retry-after")
    verify_tls: bool = True
    tls: Tls = field(default_factory=Tls)  # [target.tls]: trust, client certificate, SNI, min version
    proxy_url: str | None = None  # overrides HTTPS_PROXY / HTTP_PROXY
    no_proxy: str | None = None  # overrides NO_PROXY

    def require_auth(self) -> None:
        """Refuse to probe without the token the profile names: a canary answering 401 to a
        collector that forgot its token would be blamed for it."""
        if self.auth_env and not self.auth_optional and not os.environ.get(self.auth_env):
            raise ProfileError(f"${self.auth_env} is not set or empty: target.auth_env names it as the source of the "
                               f"{self.auth_header} header; export it, or set auth_optional = true in [target]")

    def auth_value(self) -> str | None:
        """The auth header's value, read from the environment at probe time only."""
        if not self.auth_env:
            return None
        token = os.environ.get(self.auth_env)
        if not token:
            return None
        return Secret(f"{self.auth_scheme} {token}".strip() if self.auth_scheme else token)


@dataclass(frozen=True)
class PromSource:
    """A Prometheus server holding the service's real request counters."""

    url: str
    metric: str = "http_requests_total"
    histogram: str = "http_request_duration_seconds"
    token_env: str | None = None
    timeout_s: float = 10.0
    route: Route = Route()  # the target's proxy and CA, for this API's calls too


@dataclass(frozen=True)
class PlatformSource:
    """The hosting platform's API (Render): deployments and environment-variable flags.
    Only the key's environment variable *name* is configured; its value is read per request."""

    service_id: str
    kind: str = "render"
    api_url: str = "https://api.render.com/v1"
    api_key_env: str = "RENDER_API_KEY"
    flags: tuple[str, ...] = ()  # env vars read as on/off flags (default: the probes' flag names)
    timeout_s: float = 10.0
    enabled: bool = True
    interval_s: float = 300.0  # how often a running collector reads it
    retry_s: float = 60.0  # how long a read may keep retrying a 429/5xx (Retry-After honoured within it)
    route: Route = Route()  # the target's proxy and CA, for this API's calls too
    # Render as evidence: the service's logs, HTTP metrics and events over the window.
    evidence: bool = True
    owner_id: str = ""  # the workspace the logs belong to; looked up from the service when empty
    startup_line: str = "[FeatureFlags]"  # what each instance logs at startup, with the flags it runs with
    log_levels: tuple[str, ...] = ("error", "warning")  # app log levels pulled as evidence
    metrics_resolution_s: float = 60.0
    latency_quantile: float = 0.99
    latency_path: str = "/v1/actions/execute"
    evidence_delay_s: float = 60.0  # how far behind now a pull stops: Render's logs arrive with a delay


@dataclass(frozen=True)
class Profile:
    path: str
    target: Target
    probes: tuple[Probe, ...]
    criteria: Criteria
    runbook: dict = field(default_factory=dict)
    phases: tuple[str, ...] = ()
    prometheus: PromSource | None = None
    platform: PlatformSource | None = None
    checks: tuple[Check, ...] = ()
    storage: Storage = field(default_factory=Storage)
    engine: str = "duckdb"  # or spark://HOST:PORT: where the analysis runs ([engine] url)
    # The profile as resolved (after `extends`, plan overrides and --base-url), secrets masked:
    # what signoff.json shows, and what its hash (`sha256`) is computed over.
    resolved: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def sha256(self) -> str:
        """The resolved profile's hash: canonical JSON (sorted keys, no spaces) of `resolved`.
        Anyone can recompute it from signoff.json's copy."""
        return hashlib.sha256(canonical_json(self.resolved).encode()).hexdigest()

    def probe(self, name: str) -> Probe:
        return next(p for p in self.probes if p.name == name)

    def check_phase(self, phase) -> None:
        """A phase name is a safe folder name, and one of `phases` when the profile lists them."""
        if not isinstance(phase, str) or not _PHASE.match(phase):
            raise ProfileError(f"phase name must be letters, digits, '.', '_' or '-' (got {phase!r})")
        if self.phases and phase not in self.phases:
            raise ProfileError(f"unknown phase {phase!r} for {self.path}; known: {', '.join(self.phases)}")

    def secret_values(self) -> list[str]:
        """Values that must never be written anywhere (scrubbed from bodies and logs): the auth
        token, and secret-named headers and query parameters written into the profile."""
        out = []
        token = os.environ.get(self.target.auth_env) if self.target.auth_env else None
        if token:
            out.append(token)
        for headers in (self.target.headers, *(p.headers for p in self.probes)):
            out += [v for k, v in headers.items() if is_secret_header(k)]
        # Secret-named query parameters of the base URL (profile or --base-url) and the probe paths,
        # and a password in the base URL: a service that echoes its request must not store them.
        for u in (self.target.base_url, *(p.path for p in self.probes)):
            parts = urlsplit(u)
            values = [v for k, v in parse_qsl(parts.query, keep_blank_values=True) if is_secret_name(k)]
            out += values + [quote(v, safe="") for v in values]  # as echoed, decoded or not
            if parts.password:
                out.append(parts.password)
        out += self.storage.secret_values()
        return [v for v in out if v]


# -- loading ---------------------------------------------------------------------------


def _read_toml(path: Path, seen: tuple = ()) -> dict:
    if path in seen:
        raise ProfileError(f"{path}: extends: cycle through {path.name}")
    try:
        if path.exists() and not path.is_file() and not path.is_dir():
            # A FIFO or device would block the read (and `check` with it) forever.
            raise ProfileError(f"profile is not a regular file: {path}")
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ProfileError(f"profile not found: {path}") from None
    except IsADirectoryError:
        raise ProfileError(f"profile is a directory, not a file: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ProfileError(f"{path}: not valid TOML: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ProfileError(f"{path}: cannot read: {exc}") from None
    base = data.pop("extends", None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise ProfileError(f"{path}: extends: must be a string, got {type(base).__name__}")
    return _merge(_read_toml(path.parent / base, seen + (path,)), data)


# Keys that say the same thing two ways (a seed criterion's `threshold` is its `max`; execute_p99's
# `probe` is its `where`): an override in one form replaces the base's in the other.
_SAME = {"threshold": "max", "max": "threshold", "probe": "where", "where": "probe"}


def _merge(base: dict, over: dict) -> dict:
    """Tables merge key by key; anything else (probes list included) is replaced."""
    out = dict(base)
    for k in over:
        if k in _SAME and _SAME[k] not in over:
            out.pop(_SAME[k], None)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_profile(path: str | os.PathLike, base_url: str | None = None) -> Profile:
    """Read and validate a profile; `base_url` overrides the target's (e.g. a simulator port)."""
    return build_profile(_read_toml(Path(path)), str(path), base_url)


def canonical_json(doc) -> str:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def _masked(value, key: str = ""):
    """A copy of a profile table safe to write anywhere: secret-named headers and query values,
    bearer tokens and URL passwords masked."""
    if isinstance(value, dict):
        return {k: (MASK if key == "headers" and is_secret_header(k) else _masked(v, k)) for k, v in value.items()}
    if isinstance(value, list):
        return [_masked(v, key) for v in value]
    if isinstance(value, str):
        return redact_text(value)
    return value


def build_profile(raw: dict, src: str = "<profile>", base_url: str | None = None) -> Profile:
    """Validate an already-parsed profile table; `src` names it in messages."""
    resolved = _masked(copy.deepcopy(raw))
    if base_url and isinstance(resolved.get("target"), dict):
        resolved["target"]["base_url"] = redact_url(base_url)
    top = _Reader(src, raw, "")
    target = _target(src, top.take("target", (dict,), required=True), base_url)
    probe_tables = top.take("probes", (list,), required=True)
    if not probe_tables:
        top.fail("probes", "needs at least one probe")
    probes = tuple(_probe(src, t, f"probes[{i}]", target) for i, t in enumerate(probe_tables))
    names = [pr.name for pr in probes]
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup:
        top.fail("probes", f"probe name {dup!r} is used twice")
    runbook = _runbook(src, top.take("runbook", (dict,), {}), {p.name for p in probes})
    checks = tuple(_check(src, t, f"checks[{i}]") for i, t in enumerate(top.take("checks", (list,), [])))
    for c in checks:
        if c.name in names:
            top.fail("checks", f"check name {c.name!r} is also a probe's name")
        names.append(c.name)
    criteria = _criteria(src, top.take("criteria", (dict,), {}), set(names), set(runbook))
    phases = top.str_list("phases")
    prom = top.take("prometheus", (dict,), None)
    plat = top.take("platform", (dict,), None)
    storage = _storage(src, top.take("storage", (dict,), {}))
    engine = _engine(src, top.take("engine", (dict,), {}))
    top.done()
    if prom is None:
        needs = next((c.id for c in criteria.items if c.promql and c.enabled), None)
        if needs:
            top.fail(f"criteria.{needs}.promql", "needs a [prometheus] section (its url) to query")
    flag_names = tuple(dict.fromkeys(f for pr in probes for f in pr.flags))
    route = Route(target.proxy_url, target.no_proxy, target.tls.ca_file if target.tls else None)
    platform = None if plat is None else replace(_platform(src, plat, flag_names), route=route)
    return Profile(path=src, target=target, probes=probes, criteria=criteria, runbook=runbook, phases=phases,
                   prometheus=None if prom is None else replace(_prometheus(src, prom), route=route),
                   platform=platform if platform is not None and platform.enabled else None, resolved=resolved,
                   checks=checks, storage=storage, engine=engine)


def _engine(src, table) -> str:
    r = _Reader(src, table, "engine")
    url = r.take("url", (str,), "duckdb")
    r.done()
    return check_engine(url, lambda problem: r.fail("engine.url", problem))


def check_engine(url: str, fail) -> str:
    """duckdb, or a Spark standalone master spark://HOST:PORT; else `fail(problem)`."""
    if url != "duckdb" and not re.fullmatch(r"spark://[A-Za-z0-9.\-\[\]:]+:\d{1,5}", url):
        fail(f"must be duckdb or spark://HOST:PORT (a Spark standalone master), got {url!r}")
    return url


def _storage(src, table) -> Storage:
    r = _Reader(src, table, "storage")
    endpoint = r.take("endpoint", (str,))
    if endpoint is not None:
        _url_parts(r, "storage.endpoint", endpoint)
    s = Storage(endpoint=endpoint, region=r.take("region", (str,)),
                access_key_env=r.take("access_key_env", (str,), "AWS_ACCESS_KEY_ID"),
                secret_key_env=r.take("secret_key_env", (str,), "AWS_SECRET_ACCESS_KEY"),
                cache_dir=r.take("cache_dir", (str,)))
    for key in ("access_key_env", "secret_key_env"):
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", getattr(s, key)):
            r.fail(f"storage.{key}", "must name an environment variable (the credential itself never goes in a profile)")
    r.done()
    return s


def _check(src, table, where) -> Check:
    r = _Reader(src, table, where)
    name = r.take("name", (str,), required=True)
    command = r.str_list("command")
    if not command:
        r.fail(f"{where}.command", "is required: the program and its arguments, as a list of strings")
    env = r.str_list("env")
    bad = next((e for e in env if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", e)), None)
    if bad is not None:
        r.fail(f"{where}.env", f"must name environment variables (their values are read when it runs), got {bad!r}")
    c = Check(name=name, command=command, interval_s=r.duration("interval", 300.0), timeout_s=r.duration("timeout", 60.0),
              env=env)
    if c.timeout_s >= c.interval_s:
        r.fail(f"{where}.timeout", f"must be below {where}.interval ({c.timeout_s:g}s >= {c.interval_s:g}s)")
    r.done()
    return c


def _platform(src, table, flag_names) -> PlatformSource:
    r = _Reader(src, table, "platform")
    kind = r.take("kind", (str,), "render")
    if kind != "render":
        r.fail("platform.kind", f"must be render (the only platform adapter), got {kind!r}")
    url = r.take("api_url", (str,), "https://api.render.com/v1")
    _url_parts(r, "platform.api_url", url)
    service = r.take("service_id", (str,), required=True)
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", service):
        r.fail("platform.service_id", f"must be a service id like srv-..., got {service!r}")
    key_env = r.take("api_key_env", (str,), "RENDER_API_KEY")
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key_env):
        r.fail("platform.api_key_env", "must name an environment variable (the key itself never goes in a profile)")
    p = PlatformSource(service_id=service, kind=kind, api_url=url.rstrip("/"), api_key_env=key_env,
                       flags=r.str_list("flags", flag_names), timeout_s=r.duration("timeout", 10.0),
                       enabled=r.take("enabled", (bool,), True), interval_s=r.duration("interval", 300.0),
                       retry_s=r.duration("retry", 60.0), evidence=r.take("evidence", (bool,), True),
                       owner_id=r.take("owner_id", (str,), ""), startup_line=r.take("startup_line", (str,), "[FeatureFlags]"),
                       log_levels=r.str_list("log_levels", ("error", "warning")),
                       metrics_resolution_s=r.duration("metrics_resolution", 60.0),
                       latency_quantile=r.take("latency_quantile", (int, float), 0.99),
                       latency_path=r.take("latency_path", (str,), "/v1/actions/execute"),
                       evidence_delay_s=0.0 if r.table.get("evidence_delay") in (0, "0", "0s")
                       else r.duration("evidence_delay", 60.0))
    r.table.pop("evidence_delay", None)  # "0s" (pull up to now) is allowed here: no other duration may be 0
    if not 0 < p.latency_quantile < 1:
        r.fail("platform.latency_quantile", f"must be between 0 and 1, got {p.latency_quantile!r}")
    if p.metrics_resolution_s < 1 or p.metrics_resolution_s != int(p.metrics_resolution_s):
        r.fail("platform.metrics_resolution", "must be a whole number of seconds, at least 1s")
    if p.owner_id and not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", p.owner_id):
        r.fail("platform.owner_id", f"must be a workspace id like tea-..., got {p.owner_id!r}")
    if not p.startup_line.strip():
        r.fail("platform.startup_line", "must not be empty")
    if p.timeout_s >= p.interval_s:
        r.fail("platform.timeout", f"must be below platform.interval ({p.timeout_s:g}s >= {p.interval_s:g}s)")
    r.done()
    return p


def _prometheus(src, table) -> PromSource:
    r = _Reader(src, table, "prometheus")
    url = r.take("url", (str,), required=True)
    _url_parts(r, "prometheus.url", url)
    p = PromSource(url=url.rstrip("/"), metric=r.take("metric", (str,), "http_requests_total"),
                   histogram=r.take("histogram", (str,), "http_request_duration_seconds"),
                   token_env=r.take("token_env", (str,)), timeout_s=r.duration("timeout", 10.0))
    for key in ("metric", "histogram"):
        if not re.fullmatch(r"[a-zA-Z_:][a-zA-Z0-9_:]*", getattr(p, key)):
            r.fail(f"prometheus.{key}", f"must be a Prometheus metric name, got {getattr(p, key)!r}")
    r.done()
    return p


def _url_parts(r: "_Reader", key: str, url: str):
    """An http(s) URL with a host and a valid port, or one line naming the key."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a port out of range
    except ValueError as exc:
        r.fail(key, f"is not a valid URL ({exc}): {url!r}")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        r.fail(key, f"must be an http(s) URL, got {url!r}")
    return parts


def _target(src, table, base_url) -> Target:
    r = _Reader(src, table, "target")
    name = r.take("name", (str,), required=True)
    url = base_url or r.take("base_url", (str,), required=True)
    if base_url:
        r.take("base_url", (str,))
    key = "--base-url" if base_url else "target.base_url"
    parts = _url_parts(r, key, url)
    if parts.fragment:
        r.fail(key, f"must not have a #fragment (probe paths go after the path, queries are merged), got {url!r}")
    interval = r.duration("interval", 30.0)
    timeout = r.duration("timeout", 10.0)
    if timeout >= interval:
        r.fail("target.timeout", f"must be below target.interval ({timeout:g}s >= {interval:g}s)")
    max_body = r.take("max_body_bytes", (int,), 1_048_576)
    if max_body < 1024:
        r.fail("target.max_body_bytes", "must be at least 1024")
    t = Target(
        name=name,
        base_url=url.rstrip("/"),
        interval_s=interval,
        timeout_s=timeout,
        max_body_bytes=max_body,
        headers=r.str_table("headers"),
        auth_header=r.take("auth_header", (str,)),
        auth_env=r.take("auth_env", (str,)),
        auth_scheme=r.take("auth_scheme", (str,), ""),
        auth_optional=r.take("auth_optional", (bool,), False),
        tenants=r.str_list("tenants"),
        evidence_headers=tuple(h.lower() for h in r.str_list("evidence_headers", Target.evidence_headers)),
        verify_tls=r.take("verify_tls", (bool,), True),
        proxy_url=r.take("proxy_url", (str,)),
        no_proxy=r.take("no_proxy", (str,)),
    )
    if t.proxy_url is not None:
        _url_parts(r, "target.proxy_url", t.proxy_url)
    tr = _Reader(src, r.take("tls", (dict,), {}), "target.tls")
    t = replace(t, tls=load_tls(tr, Path(), t.verify_tls))  # paths relative to the working directory, as checks'
    tr.done()
    if bool(t.auth_header) != bool(t.auth_env):
        r.fail("target.auth_env", "auth_header and auth_env go together (the env var holds the value)")
    r.done()
    return t


def _probe(src, table, where, target: Target) -> Probe:
    r = _Reader(src, table, where)
    name = r.take("name", (str,), required=True)
    path = r.take("path", (str,), required=True)
    if not path.startswith("/"):
        r.fail(f"{where}.path", f"must start with '/', got {path!r}")
    method = r.take("method", (str,), "GET").upper()
    if method not in _METHODS:
        r.fail(f"{where}.method", f"must be one of {', '.join(_METHODS)}, got {method!r}")
    body = r.take("body", (dict, list), None)
    expect = r.take("expect_status", (list, int), [200])
    expect = [expect] if isinstance(expect, int) else expect
    if not expect or not all(isinstance(s, int) and not isinstance(s, bool) and 100 <= s <= 599 for s in expect):
        r.fail(f"{where}.expect_status", "must be a list of HTTP status codes (100-599)")
    interval = r.duration("interval", None)
    timeout = r.duration("timeout", None)
    if (timeout or target.timeout_s) >= (interval or target.interval_s):
        r.fail(f"{where}.timeout", "must be below the probe's interval")
    asserts = tuple(
        _assertion(src, a, f"{where}.assert[{i}]") for i, a in enumerate(r.take("assert", (list,), []))
    )
    extract_tbl = r.take("extract", (dict,), {})
    er = _Reader(src, extract_tbl, f"{where}.extract")
    flags = er.str_table("flags")
    extract = {}
    for col in EXTRACT_COLUMNS:
        spec = er.take(col, (str,))
        if spec is not None:
            extract[col] = spec
    er.done()
    p = Probe(
        name=name, path=path, method=method, body=body, expect_status=tuple(expect),
        error_code_path=r.take("error_code_path", (str,), "error.code"),
        headers=r.str_table("headers"), interval_s=interval, timeout_s=timeout,
        asserts=asserts, extract=extract, flags=flags,
    )
    r.done()
    return p


def _assertion(src, table, where) -> Assertion:
    r = _Reader(src, table, where)
    path = r.take("path", (str,), required=True)
    kinds = {k: r.table.pop(k) for k in ("equals", "length", "contains", "excludes") if k in r.table}
    r.done()
    if len(kinds) != 1:
        r.fail(where, "needs exactly one of equals, length, contains, excludes")
    if "length" in kinds and (not isinstance(kinds["length"], int) or isinstance(kinds["length"], bool)):
        r.fail(f"{where}.length", f"must be an integer, got {kinds['length']!r}")
    return Assertion(path=path, **kinds)
