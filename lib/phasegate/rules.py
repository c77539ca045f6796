"""A profile's decision criteria and runbook: the seed's criteria, criteria written as data
(`[criteria.ID]` tables), and runbook scenarios with the machine steps `phasegate act` carries out.
Validated on load like every profile section (`phasegate.config`)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from .config import _Reader
from .errors import ProfileError

# What a sample's `outcome` may say (the probe's, the acceptance commands', the platform's).
OUTCOMES = ("ok", "http_error", "timeout", "connection_error", "tls_error", "dns_error",
            "protocol_error", "invalid_body", "body_too_large", "assertion_failed",
            "command_failed", "command_error")  # the last two: acceptance commands ([[checks]])
# Outcomes that count against the error rate: the service or the network failed us.
ERROR_OUTCOMES = frozenset(OUTCOMES) - {"ok", "assertion_failed"}

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,79}$")  # a criterion id, a phase name: safe as a folder name

CRITERIA_IDS = (
    "window_complete",
    "no_5xx",
    "no_feature_disabled",
    "no_rollback",
    "service_healthy",
    "execute_p99",
    "error_rate",
    "no_anomalies",
    "no_regression",
    "tenant_error_rate",
    "cert_expiry",
    "flags_at_startup",
    "render_errors",
)
_HARD = {"window_complete", "no_5xx", "no_feature_disabled", "no_rollback", "service_healthy", "flags_at_startup"}
_THRESHOLDS = {"no_5xx": 0.0, "no_feature_disabled": 0.0, "execute_p99": 10000.0, "error_rate": 0.01,
               "no_regression": 0.10, "tenant_error_rate": 0.01, "cert_expiry": 14.0, "render_errors": 0.0,
               "flags_at_startup": 0.0}
TITLES = {
    "window_complete": "Monitoring window ran its full duration",
    "no_5xx": "No HTTP 5xx errors",
    "no_feature_disabled": "Feature flags on: no 503 FEATURE_DISABLED",
    "no_rollback": "No rollback to an earlier deployment",
    "service_healthy": "Service healthy in every health check",
    "execute_p99": "Execute endpoint P99 latency under target",
    "error_rate": "Overall error rate under target",
    "no_anomalies": "No anomalies: deployments, action counts, signed action",
    "no_regression": "No regression against the baseline",
    "tenant_error_rate": "No tenant's error rate over target",
    "cert_expiry": "Server certificate valid well past the window",
    "flags_at_startup": "Flags confirmed at startup: every instance logged them on",
    "render_errors": "No error log lines or failed instances on Render",
}
# What a criterion written as data can measure, and over what (criteria.py says how each is judged).
METRICS = ("samples", "errors", "error_rate", "availability", "http_5xx", "status_count", "feature_disabled",
           "timeouts", "assertion_failures", "p50_ms", "p95_ms", "p99_ms", "max_ms")
WHERE_KEYS = ("probe", "tenant", "source", "route", "status", "outcome")
SOURCES = ("probes", "traffic", "prometheus", "render")  # render: real users' requests in Render's logs
PER = ("tenant", "probe", "route")
# The seed's criteria that are one metric with a threshold, in the same form; the others
# (window_complete, no_rollback, service_healthy, no_anomalies, no_regression) keep their own logic.
BUILTIN_METRICS = {"no_5xx": "http_5xx", "no_feature_disabled": "feature_disabled", "error_rate": "error_rate",
                   "execute_p99": "p99_ms", "tenant_error_rate": "error_rate"}


@dataclass(frozen=True)
class Criterion:
    id: str
    kind: str
    threshold: float | None = None
    enabled: bool = True
    runbook: str | None = None
    probe: str | None = None
    min_samples: int = 0
    dry_run: bool = False  # evaluated and shown, never moves the verdict
    title: str = ""  # plain words shown beside the id wherever it appears
    # A criterion written as data: `metric` over the samples `where` selects, `op` "max" or "min"
    # against `threshold`, each `per` group on its own; or a PromQL query aggregated over the window.
    metric: str | None = None
    where: tuple = ()  # ((key, (value, ...)), ...)
    op: str = "max"
    per: str | None = None
    promql: str | None = None
    aggregate: str = "max"

    @property
    def custom(self) -> bool:
        return self.id not in CRITERIA_IDS

    def filters(self) -> dict:
        return {k: v for k, v in self.where}


@dataclass(frozen=True)
class Verify:
    """After acting: the probe must answer one of these statuses within `within_s`."""

    probe: str
    expect_status: tuple[int, ...]
    within_s: float = 600.0


@dataclass(frozen=True)
class MachineSteps:
    """What `phasegate act` does through the platform: set environment variables, trigger a
    deploy, then verify with a probe. Empty: nothing to do by machine."""

    set_env: tuple[tuple[str, str], ...] = ()
    deploy: bool = False
    verify: Verify | None = None
    deploy_hook_env: str | None = None  # trigger through the service's deploy hook, its URL in this variable
    deploy_within_s: float = 900.0  # how long the deploy may take to go live
    override_group: bool = False  # set_env may shadow a variable kept in an environment group

    def __bool__(self) -> bool:
        return bool(self.set_env or self.deploy or self.verify)


@dataclass(frozen=True)
class RunbookStep:
    id: str
    title: str
    steps: tuple[str, ...] = ()
    machine: MachineSteps = MachineSteps()  # set_env / deploy / verify beside the prose steps


@dataclass(frozen=True)
class Criteria:
    duration_s: float = 86400.0
    confidence: float = 0.95
    rate_mode: str = "bound"  # "bound": a rate passes when its upper bound is below the threshold
    min_coverage: float = 0.9
    max_gap_s: float = 1800.0
    items: tuple[Criterion, ...] = ()

    def get(self, cid: str) -> Criterion | None:
        return next((c for c in self.items if c.id == cid and c.enabled), None)


def _runbook(src, table, probe_names) -> dict:
    out = {}
    for sid, body in table.items():
        r = _Reader(src, body, f"runbook.{sid}")
        out[sid] = RunbookStep(id=sid, title=r.take("title", (str,), required=True), steps=r.str_list("steps"),
                               machine=machine_steps(r, f"runbook.{sid}", probe_names))
        r.done()
    return out


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def machine_steps(r: "_Reader", where: str, probe_names) -> MachineSteps:
    """set_env = {NAME = "value"}, deploy = true, verify = {probe, expect_status, within} of a runbook
    scenario or a plan phase's promotion."""
    env = r.take("set_env", (dict,), {})
    for k, v in env.items():
        if not _ENV_NAME.fullmatch(k):
            r.fail(f"{where}.set_env", f"{k!r} is not an environment variable name")
        if not isinstance(v, str):
            r.fail(f"{where}.set_env.{k}", f"must be a string (as the platform stores it), got {type(v).__name__}")
    verify = None
    table = r.take("verify", (dict,), None)
    if table is not None:
        v = _Reader(r.src, table, f"{where}.verify")
        probe = v.take("probe", (str,), required=True)
        if probe not in probe_names:
            v.fail(f"{where}.verify.probe", f"unknown probe {probe!r}; known: {', '.join(sorted(probe_names))}")
        codes = v.take("expect_status", (list,), required=True)
        if not codes or not all(isinstance(c, int) and not isinstance(c, bool) and 100 <= c <= 599 for c in codes):
            v.fail(f"{where}.verify.expect_status", f"must be a list of HTTP statuses, got {codes!r}")
        verify = Verify(probe=probe, expect_status=tuple(codes), within_s=v.duration("within", 600.0))
        v.done()
    deploy = r.take("deploy", (bool,), False)
    hook = r.take("deploy_hook_env", (str,), None) or None  # "": through the API (overrides an extended profile's hook)
    if hook is not None and not _ENV_NAME.fullmatch(hook):
        r.fail(f"{where}.deploy_hook_env", "must name an environment variable (the hook URL is a secret: never in a profile)")
    if hook is not None and not deploy:
        r.fail(f"{where}.deploy_hook_env", "needs deploy = true")
    return MachineSteps(set_env=tuple(sorted(env.items())), deploy=deploy, verify=verify, deploy_hook_env=hook,
                        deploy_within_s=r.duration("deploy_within", 900.0),
                        override_group=r.take("override_group", (bool,), False))


def _criteria(src, table, probe_names: set, runbook_ids: set) -> Criteria:
    r = _Reader(src, table, "criteria")
    duration = r.duration("duration", 86400.0)
    min_cov = r.take("min_coverage", (int, float), 0.9)
    if not 0 <= min_cov <= 1:
        r.fail("criteria.min_coverage", f"must be between 0 and 1, got {min_cov!r}")
    max_gap = r.duration("max_gap", 1800.0)
    confidence = r.take("confidence", (float,), 0.95)
    if not 0.5 <= confidence < 1:
        r.fail("criteria.confidence", f"must be in [0.5, 1), got {confidence!r}")
    rate_mode = r.take("rate_mode", (str,), "bound")
    if rate_mode not in ("bound", "observed"):
        r.fail("criteria.rate_mode", f"must be bound or observed, got {rate_mode!r}")
    items = []
    for cid in CRITERIA_IDS:
        cr = _Reader(src, r.take(cid, (dict,), {}), f"criteria.{cid}")
        _builtin_form(cr, cid)
        kind = cr.take("kind", (str,), "hard" if cid in _HARD else "soft")
        if kind not in ("hard", "soft"):
            cr.fail(f"criteria.{cid}.kind", f"must be hard or soft, got {kind!r}")
        threshold = cr.take("threshold", (int, float), _THRESHOLDS.get(cid))
        if threshold is not None and threshold < 0:
            cr.fail(f"criteria.{cid}.threshold", f"must not be negative, got {threshold!r}")
        runbook = cr.take("runbook", (str,))
        if runbook is not None and runbook not in runbook_ids:
            cr.fail(f"criteria.{cid}.runbook", f"names no [runbook.{runbook}] section")
        probe = cr.take("probe", (str,))
        if probe is not None and probe not in probe_names:
            cr.fail(f"criteria.{cid}.probe", f"names no probe called {probe!r}")
        if cid == "execute_p99" and probe is None and "execute" in probe_names:
            probe = "execute"
        items.append(Criterion(
            id=cid, kind=kind, threshold=None if threshold is None else float(threshold),
            enabled=cr.take("enabled", (bool,), True), runbook=runbook, probe=probe,
            min_samples=cr.take("min_samples", (int,), 100 if cid == "execute_p99" else 0),
            dry_run=cr.take("dry_run", (bool,), False), title=cr.take("title", (str,), TITLES[cid]),
        ))
        cr.done()
    for cid in sorted(k for k, v in r.table.items() if isinstance(v, dict)):
        items.append(_custom(src, cid, r.table.pop(cid), probe_names, runbook_ids, confidence))
    r.done()
    return Criteria(duration_s=duration, min_coverage=float(min_cov), max_gap_s=max_gap, confidence=confidence,
                    rate_mode=rate_mode, items=tuple(items))


class _Anything(set):
    def __contains__(self, _item) -> bool:
        return True


def _builtin_form(cr: _Reader, cid: str) -> None:
    """A seed criterion written in the data form (`metric = "http_5xx"`, `max = 0`): the metric must
    be its own and `max` is its threshold."""
    metric = cr.take("metric", (str,))
    if metric is not None and metric != BUILTIN_METRICS.get(cid):
        cr.fail(f"criteria.{cid}.metric", f"is {BUILTIN_METRICS[cid]!r} for this built-in criterion, got {metric!r}"
                if cid in BUILTIN_METRICS else "this built-in criterion has its own logic, not a metric")
    if "max" in cr.table:
        if "threshold" in cr.table:
            cr.fail(f"criteria.{cid}.max", "give max or threshold, not both")
        cr.table["threshold"] = cr.table.pop("max")
    where = cr.table.pop("where", None)
    if where is not None:
        if cid != "execute_p99" or not isinstance(where, dict) or set(where) != {"probe"}:
            cr.fail(f"criteria.{cid}.where", "only execute_p99 takes a where, and only { probe = ... }")
        cr.table["probe"] = where["probe"]
    per = cr.table.pop("per", None)
    if per is not None and not (cid == "tenant_error_rate" and per == "tenant"):
        cr.fail(f"criteria.{cid}.per", "only tenant_error_rate is per group (per = \"tenant\")")


def _custom(src, cid, table, probe_names: set, runbook_ids: set, confidence: float) -> Criterion:
    """A criterion defined in the profile: one line naming the file and dotted key for each mistake."""
    from .stats import n_for_quantile

    where_key = f"criteria.{cid}"
    if not NAME.match(cid):
        raise ProfileError(f"{src}: {where_key}: a criterion id is letters, digits, '.', '_' or '-'")
    cr = _Reader(src, table, where_key)
    promql = cr.take("promql", (str,))
    metric = cr.take("metric", (str,))
    if promql is None and metric is None:
        cr.fail(where_key, "unknown criterion: a new one needs metric = ... (or promql = ...); built in are "
                + ", ".join(CRITERIA_IDS))
    if promql is not None and metric is not None:
        cr.fail(f"{where_key}.promql", "give metric or promql, not both")
    if metric is not None and metric not in METRICS:
        cr.fail(f"{where_key}.metric", f"unknown metric {metric!r}; one of {', '.join(METRICS)}")
    aggregate = cr.take("aggregate", (str,), "max")
    if aggregate not in ("max", "last", "sum"):
        cr.fail(f"{where_key}.aggregate", f"must be max, last or sum, got {aggregate!r}")
    bounds = {k: cr.table.pop(k) for k in ("max", "min") if k in cr.table}
    if len(bounds) != 1:
        cr.fail(where_key, "needs exactly one of max or min" + (" (not both)" if len(bounds) == 2 else ""))
    (op, threshold), = bounds.items()
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
        cr.fail(f"{where_key}.{op}", f"must be a number, got {threshold!r}")
    enabled = cr.take("enabled", (bool,), True)
    if not enabled:  # turned off (say, by a profile that extends this one): its names need not exist
        probe_names, runbook_ids = _Anything(), _Anything()
    where = cr.take("where", (dict,), {})
    parsed = []
    for k, v in where.items():
        if k not in WHERE_KEYS:
            cr.fail(f"{where_key}.where.{k}", f"unknown filter; one of {', '.join(WHERE_KEYS)}")
        values = tuple(v) if isinstance(v, list) else (v,)
        kinds = (int,) if k == "status" else (str,)
        if not values or not all(isinstance(x, kinds) and not isinstance(x, bool) for x in values):
            cr.fail(f"{where_key}.where.{k}", f"must be {'a status code' if k == 'status' else 'a string'} or a list of them")
        bad = {"probe": [x for x in values if x not in probe_names],
               "source": [x for x in values if x not in SOURCES],
               "outcome": [x for x in values if x not in OUTCOMES]}.get(k, [])
        if bad:
            known = {"probe": sorted(probe_names), "source": SOURCES, "outcome": OUTCOMES}[k]
            cr.fail(f"{where_key}.where.{k}", f"names no {k} {bad[0]!r}; known: {', '.join(known)}")
        parsed.append((k, values))
    per = cr.take("per", (str,))
    if per is not None and per not in PER:
        cr.fail(f"{where_key}.per", f"must be one of {', '.join(PER)}, got {per!r}")
    given = cr.take("min_samples", (int,), None)
    min_samples = given or 0
    if min_samples < 0:
        cr.fail(f"{where_key}.min_samples", f"must not be negative, got {min_samples}")
    if metric in ("p50_ms", "p95_ms", "p99_ms"):
        q = int(metric[1:3]) / 100
        need = n_for_quantile(q if op == "max" else 1 - q, confidence)
        min_samples = need if given is None else min_samples  # by default: what a bound needs
        if min_samples < need:
            cr.fail(f"{where_key}.min_samples", f"must be at least {need} for a {confidence:.0%} bound on "
                    f"{metric} (got {min_samples}): fewer samples cannot give one")
    runbook = cr.take("runbook", (str,))
    if runbook is not None and runbook not in runbook_ids:
        cr.fail(f"{where_key}.runbook", f"names no [runbook.{runbook}] section")
    kind = cr.take("kind", (str,), "soft")
    if kind not in ("hard", "soft"):
        cr.fail(f"{where_key}.kind", f"must be hard or soft, got {kind!r}")
    c = Criterion(id=cid, kind=kind, threshold=float(threshold), enabled=enabled,
                  runbook=runbook, min_samples=min_samples, dry_run=cr.take("dry_run", (bool,), False),
                  title=cr.take("title", (str,), cid), metric=metric, where=tuple(parsed), op=op, per=per,
                  promql=promql, aggregate=aggregate)
    cr.done()
    return c
