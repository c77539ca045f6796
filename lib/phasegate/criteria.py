"""Decision criteria: an Analysis in, a structured result out, the verdict derived from it.

Each criterion yields {id, kind, passed, measured, threshold, detail, n}; `passed` is None
when the evidence cannot support a decision either way. Rendering reads this result
and never recomputes it.
"""

from __future__ import annotations

from .analysis import Analysis
from .platform_criteria import _flags_at_startup, _render_errors, _render_health, _render_latency
from .profile import Profile
from .result import CriterionResult, Decision  # noqa: F401 - the structured result, as callers import it
from .rules import Criterion
from .stats import n_for_quantile, n_for_rate, rate_upper
from .window import format_duration, iso, parse_time

VERDICTS = ("GO", "NO-GO", "REVIEW", "PENDING", "INCONCLUSIVE")


def _window_complete(c: Criterion, a: Analysis, p: Profile) -> CriterionResult:
    """Not failed while the window is open (pending: nothing to judge yet), and inconclusive when a
    window that has ended is shorter than required: either way the evidence does not cover it."""
    need = p.criteria.duration_s
    got = a.elapsed_s
    ok = got >= need
    left = "" if ok else f"; {format_duration(need - got)} to go"
    r = CriterionResult(c.id, c.kind, True if ok else None, round(got / 3600, 3), round(need / 3600, 3),
                        f"{format_duration(got)} of the required {format_duration(need)} observed{left}", unit="h")
    if not ok:
        r.state = "pending" if a.now < a.window.end else "inconclusive"
    return r


def _combined(a: Analysis, key: str) -> tuple[int, int, str]:
    """A count over probes and real traffic together, with each source's share in words."""
    k, n = a.overall[key], a.overall["samples"]
    parts = [f"probes {k} of {n}"]
    # Real traffic counts once: from the request logs when imported, else from Prometheus.
    sources = [("traffic", a.traffic), ("Render request logs", (a.render or {}).get("traffic")),
               ("prometheus", a.prometheus)]
    counted = False
    for name, src in sources:
        if not src:
            continue
        t = src["overall"]
        where = ", ".join(f"{r} {s[key]}" for r, s in src["routes"].items() if s[key])
        parts.append(f"{name} {t[key]} of {t['samples']}" + (f" ({where})" if where else "")
                     + ("" if not counted else ", shown, not added: the logs already count this traffic"))
        if not counted:
            k, n = k + t[key], n + t["samples"]
            counted = True
    own = (a.render or {}).get("probes_logged")
    if own and own["requests"] and key in own:
        parts.append(f"Render logged the probes' own {own['requests']} requests ({own[key]} {key.replace('http_', '')}), "
                     "counted above as probes")
    return k, n, "; ".join(parts)


def _sources_named(a: Analysis) -> bool:
    return bool(a.traffic or a.prometheus or (a.render or {}).get("traffic") or (a.render or {}).get("probes_logged"))


def _no_5xx(c: Criterion, a: Analysis, p: Profile) -> CriterionResult:
    n5, n, by_source = _combined(a, "http_5xx")
    where = ", ".join(f"{name} {s['http_5xx']}" for name, s in a.probes.items() if s["http_5xx"])
    detail = (f"{n5} of {n} samples answered 5xx (503 FEATURE_DISABLED is judged separately)"
              + (f": {where}" if where else "") + (f" [{by_source}]" if _sources_named(a) else ""))
    if a.tenants:
        hit = [r for r in a.tenants["rows"] if r["http_5xx"]]
        if hit:
            detail += f"; on {len(hit)} of {a.tenants['count']} tenants: " + ", ".join(
                f"{r['tenant']} {r['http_5xx']}" for r in hit[:8]) + (" …" if len(hit) > 8 else "")
    ub = rate_upper(n5, n, p.criteria.confidence)
    if ub is not None:
        detail += f"; 5xx rate ≤ {ub:.4%} at {p.criteria.confidence:.0%} confidence"
    first, last = a.occurrences.get("five") or (None, None)
    if first:
        detail += f"; first 5xx {first}, last {last}"
    return CriterionResult(c.id, c.kind, n5 <= c.threshold, n5, c.threshold, detail, n=n, bound=ub,
                           first=first, last=last)


def _no_feature_disabled(c: Criterion, a: Analysis, p: Profile) -> CriterionResult:
    fd, n = a.overall["feature_disabled"], a.overall["samples"]
    off = a.flags["off_samples"]
    obs = a.flags["observations"]
    measured = fd + a.flags["off_observations"]
    parts = [f"{fd} responses 503 FEATURE_DISABLED"]
    if obs:
        parts.append(f"flags seen off in {a.flags['off_observations']} of {obs} observations"
                     + (f" ({', '.join(f'{k} {v}' for k, v in off.items())})" if off else ""))
    else:
        parts.append("flags never observed")
    pf = (a.platform or {}).get("flags")
    if pf:
        obs += pf["observations"]
        measured += pf["off_observations"]
        turned = [ch for ch in pf["changes"] if ch["value"] is not True]
        parts.append(f"platform env: off in {pf['off_observations']} of {pf['observations']} reads"
                     + (": " + ", ".join(f"{ch['flag']}={str(ch['value']).lower()} at {ch['ts']}" for ch in turned[:4])
                        if turned else ""))
    users = ((a.render or {}).get("traffic") or {}).get("overall")
    if users:
        measured += users["feature_disabled"]
        obs += users["samples"]
        parts.append(f"Render request logs: {users['feature_disabled']} of {users['samples']} real users' requests "
                     "answered 503 FEATURE_DISABLED")
    if measured > c.threshold:
        passed = False
    elif not obs:
        passed = None
    else:
        passed = True
    ub = rate_upper(fd, n, p.criteria.confidence)
    first, last = a.occurrences.get("disabled") or (None, None)
    if first:
        parts.append(f"first FEATURE_DISABLED {first}, last {last}")
    return CriterionResult(c.id, c.kind, passed, measured, c.threshold, "; ".join(parts), n=n, bound=ub,
                           first=first, last=last)


def _no_rollback(c: Criterion, a: Analysis, p: Profile) -> CriterionResult:
    d = a.deployments
    rb = d["rollbacks"]
    prb = (a.platform or {}).get("rollbacks", [])
    if rb:
        detail = "; ".join(f"{r['ts']}: back to {r['to']} from {r['from']}" for r in rb)
    elif d["ids"]:
        detail = f"{len(d['ids'])} deployment id(s) seen, none returned to an earlier one: " + \
                 " → ".join(s["id"] for s in d["sequence"])
    else:
        detail = "no deployment id observed"
    if prb:
        detail += "; platform: " + ", ".join(f"rollback deploy {r['id']} started {r['started']}" for r in prb)
    seen = bool(d["ids"]) or bool(a.platform and a.platform["reads"])
    passed = None if not seen else not (rb or prb)
    times = sorted([r["ts"] for r in rb] + [r["started"] for r in prb if r.get("started")])
    return CriterionResult(c.id, c.kind, passed, len(rb) + len(prb), 0, detail, n=sum(i["samples"] for i in d["ids"]),
                           first=times[0] if times else None, last=times[-1] if times else None)


def _service_healthy(c: Criterion, a: Analysis, p: Profile) -> CriterionResult:
    h = a.health
    if not h["samples"]:
        return CriterionResult(c.id, c.kind, None, None, 0, "no health probe ran in the window", n=0)
    loaded = "" if h["min_loaded"] is None else f"; handlers loaded min {h['min_loaded']}/{h['handlers_total']}"
    detail = f"{h['unhealthy']} of {h['samples']} health probes got no healthy answer{loaded}"
    if h["unhealthy"]:
        why = [f"{k} {v}" for k, v in h["failed_by_outcome"].items()]
        if h["degraded"]:
            why.append(f"answered but not healthy {h['degraded']}")
        detail += f" ({', '.join(why)}); first {h['first_unhealthy']}, last {h['last_unhealthy']}"
    if a.render:
        detail += "; " + _render_health(a.render)
    return CriterionResult(c.id, c.kind, h["unhealthy"] == 0, h["unhealthy"], 0, detail, n=h["samples"],
                           first=h["first_unhealthy"], last=h["last_unhealthy"])


def _execute_p99(c: Criterion, a: Analysis, p: Profile) -> CriterionResult:
    r = _probes_p99(c, a, p)
    r.detail += _render_latency(a)
    return r


def _probes_p99(c: Criterion, a: Analysis, p: Profile) -> CriterionResult:
    s = a.probes.get(c.probe or "")
    conf = p.criteria.confidence
    if not s or s["p99_ms"] is None:
        why = (f"none of {s['samples']} {c.probe} samples succeeded ({s['errors']} errors): no latency to rank; "
               "the failures are judged by the error and 5xx criteria") if s else f"no samples of probe {c.probe}"
        return CriterionResult(c.id, c.kind, None, None, c.threshold, why, n=0, unit="ms")
    n, p99, ub = s["latency_n"], s["p99_ms"], s.get("p99_upper_ms")
    need = max(c.min_samples, n_for_quantile(0.99, conf))
    base = dict(n=n, unit="ms", bound=ub, interval=s.get("p99_ci_ms"))
    if p99 >= c.threshold:
        return CriterionResult(c.id, c.kind, False, p99, c.threshold,
                               f"P99 {p99 / 1000:.3f} s over {n} successful {c.probe} samples (max {s['max_ms'] / 1000:.3f} s)",
                               **base)
    if n < need or ub is None:
        return CriterionResult(c.id, c.kind, None, p99, c.threshold,
                               f"P99 of {c.probe} from {n} samples; at least {need} needed for a "
                               f"{conf:.0%} upper bound (never a pass on the maximum of {n})", **base)
    if p.criteria.rate_mode == "bound" and ub >= c.threshold:
        return CriterionResult(c.id, c.kind, None, p99, c.threshold,
                               f"P99 {p99 / 1000:.3f} s but its {conf:.0%} upper bound {ub / 1000:.3f} s is not below "
                               f"{c.threshold / 1000:g} s over {n} samples", **base)
    return CriterionResult(c.id, c.kind, True, p99, c.threshold,
                           f"P99 {p99 / 1000:.3f} s (≤ {ub / 1000:.3f} s at {conf:.0%}) over {n} successful {c.probe} "
                           f"samples (max {s['max_ms'] / 1000:.3f} s)", **base)


def _error_rate(c: Criterion, a: Analysis, p: Profile) -> CriterionResult:
    o = a.overall
    k, n, by_source = _combined(a, "errors")
    rate = k / n
    conf = p.criteria.confidence
    ub = rate_upper(k, n, conf)
    kinds = ", ".join(f"{name} {v}" for name, v in o["outcome_counts"].items() if name not in ("ok", "assertion_failed"))
    detail = (f"{k} errors in {n} samples = {rate:.4%}; upper bound {ub:.4%} at {conf:.0%}"
              + (f" ({kinds})" if kinds else "") + (f" [{by_source}]" if _sources_named(a) else ""))
    flaky = [name for name, q in a.quality.items() if q["flapping"]]
    if flaky:
        detail += f"; flapping: {', '.join(flaky)}"
    if rate >= c.threshold:
        passed = False
    elif p.criteria.rate_mode == "observed" or ub < c.threshold:
        passed = True
    else:
        passed = None
        need = n_for_rate(k, c.threshold, conf)
        detail += (f"; the bound is not below {c.threshold:.2%}: n ≥ {need} needed"
                   f" ({need - n} more clean samples)" if need else "; no sample count can settle it")
    first, last = a.occurrences.get("bad") or (None, None)
    return CriterionResult(c.id, c.kind, passed, round(rate, 6), c.threshold, detail, n=n, unit="ratio", bound=ub,
                           first=first, last=last)


def _no_regression(c: Criterion, a: Analysis, p: Profile) -> CriterionResult:
    """Canary against baseline: a significant slowdown or error increase beyond the allowance fails."""
    alpha = 1.0 - p.criteria.confidence
    worse, lines, n = [], [], 0
    for probe, cmp in a.baseline["probes"].items():
        n += cmp["n_canary"]
        lat_bad = cmp["p_latency"] is not None and cmp["p_latency"] < alpha and cmp["rel_shift"] > c.threshold
        err_bad = cmp["p_errors"] is not None and cmp["p_errors"] < alpha and \
            cmp["err_canary"] > cmp["err_base"] + c.threshold * max(cmp["err_base"], 0.001)
        if lat_bad or err_bad:
            worse.append(probe)
        lines.append(f"{probe}: median shift {cmp['hl_shift_ms']:+.1f} ms ({cmp['rel_shift']:+.1%}), "
                     f"p={cmp['p_latency']:.3g}, p99 ×{cmp['p99_ratio']:.2f}, errors {cmp['err_canary']:.3%} vs "
                     f"{cmp['err_base']:.3%} (p={cmp['p_errors']:.3g})")
    measured = max((cmp["rel_shift"] for cmp in a.baseline["probes"].values()), default=None)
    detail = ("regressed: " + ", ".join(worse) + " — " if worse else "") + "; ".join(lines)
    return CriterionResult(c.id, c.kind, not worse if a.baseline["probes"] else None,
                           None if measured is None else round(measured, 4), c.threshold, detail, n=n, unit="ratio")


def _tenant_error_rate(c: Criterion, a: Analysis, p: Profile) -> CriterionResult:
    """No tenant (yacht) at or above the threshold: a fleet average can hide two broken yachts."""
    rows, thr, conf = a.tenants["rows"], c.threshold, p.criteria.confidence
    over = [r for r in rows if r["error_rate"] >= thr]
    worst = rows[0]
    n = sum(r["samples"] for r in rows)

    def one(r):
        return f"{r['tenant']} {r['error_rate']:.2%} ({r['errors']} of {r['samples']}" + \
            (f", most on {r['worst_probe']}" if r["worst_probe"] else "") + ")"
    if over:
        rest = rows[len(over)] if len(rows) > len(over) else None
        detail = (f"{len(over)} of {len(rows)} tenants at or above {thr:.2%}: " + ", ".join(one(r) for r in over[:10])
                  + (f" and {len(over) - 10} more" if len(over) > 10 else "")
                  + (f"; next worst {one(rest)}" if rest else ""))
        return CriterionResult(c.id, c.kind, False, round(worst["error_rate"], 6), thr, detail, n=n, unit="ratio",
                               bound=worst["rate_upper"])
    detail = f"all {len(rows)} tenants below {thr:.2%}; worst {one(worst)}, upper bound {worst['rate_upper']:.3%} at {conf:.0%}"
    unsettled = [r for r in rows if r["rate_upper"] is not None and r["rate_upper"] >= thr]
    if p.criteria.rate_mode == "bound" and unsettled:
        need = max((n_for_rate(r["errors"], thr, conf) or 0) for r in unsettled)
        detail += (f"; {len(unsettled)} tenant(s) with too few samples for an upper bound below {thr:.2%} "
                   f"(e.g. {unsettled[0]['tenant']}: {unsettled[0]['samples']}; about {need} each needed)")
        return CriterionResult(c.id, c.kind, None, round(worst["error_rate"], 6), thr, detail, n=n, unit="ratio",
                               bound=max(r["rate_upper"] for r in unsettled))
    return CriterionResult(c.id, c.kind, True, round(worst["error_rate"], 6), thr, detail, n=n, unit="ratio",
                           bound=worst["rate_upper"])


def _no_anomalies(c: Criterion, a: Analysis, p: Profile) -> CriterionResult:
    fails = a.anomalies["assertion_failures"]
    deploys = (a.platform or {}).get("deploys", [])
    unexpected = [d for d in deploys if not d.get("by_act")]
    own = {d["id"] for d in deploys if d.get("by_act")} | {x["deployment_id"] for x in a.actions
                                                            if x.get("step") == "act.deploy" and x.get("deployment_id")}
    # A change the probes saw to a deploy phasegate act made is expected too.
    seq = a.deployments["sequence"]
    changes = sum(1 for s in seq[1:] if s["id"] not in own)
    parts = []
    moved = [(seq[i - 1]["id"], s_["id"], s_["from"]) for i, s_ in enumerate(seq) if i and s_["id"] not in own]
    if changes:
        parts.append(f"{changes} deployment change(s): " + "; ".join(f"{x} → {y} at {t}" for x, y, t in moved[:4])
                     + " — confirm who deployed it and why (the platform's deploy list); a phase judges one "
                       "deployment, so an intended deploy starts the phase's window again")
    for dep in unexpected[:4]:
        parts.append(f"unexpected deployment {dep['id']}: started {dep['started'] or 'before the window'}, "
                     f"finished {dep['finished'] or 'not yet'}" + (f" ({dep['status']})" if dep["status"] else "")
                     + (f", trigger {dep['trigger']}" if dep["trigger"] else ""))
    parts += [f"{g['probe']}: {g['message']} ×{g['count']}" for g in fails[:8]]
    for dep in [d for d in deploys if d.get("by_act")][:4]:
        parts.append(f"expected deployment {dep['id']}: {dep['by_act']['text']}, started {dep['started'] or 'before the window'}")
    measured = changes + len(unexpected) + sum(g["count"] for g in fails)
    detail = "; ".join(parts) if parts else "no unexpected deployment, no drift from the baseline"
    times = sorted([t for _x, _y, t in moved if t] + [d["started"] or d["finished"] for d in unexpected
                                                       if d["started"] or d["finished"]]
                   + [g["first"] for g in fails if g.get("first")] + [g["last"] for g in fails if g.get("last")])
    return CriterionResult(c.id, c.kind, measured <= (c.threshold or 0), measured, c.threshold or 0, detail,
                           n=a.overall["samples"], first=times[0] if times and measured else None,
                           last=times[-1] if times and measured else None)


_UNITS = {"error_rate": "ratio", "availability": "ratio", "p50_ms": "ms", "p95_ms": "ms", "p99_ms": "ms", "max_ms": "ms"}


def _judge_group(c: Criterion, st: dict, conf: float, rate_mode: str) -> tuple[bool | None, float | None, float | None, str]:
    """(passed, measured, bound, why) of one group of a metric criterion, by the honest rules:
    counts are exact; a rate passes only when its bound is on the right side of the threshold; a
    percentile passes only on an order-statistic bound with enough samples, never on a maximum."""
    m, thr, over = c.metric, c.threshold, c.op == "max"
    n, k = st["n"], st["k"]
    if n < c.min_samples:
        return None, None, None, f"{n} samples, {c.min_samples} needed"
    if m in ("error_rate", "availability"):
        if not n:
            return None, None, None, "no samples"
        rate = k / n
        value = rate if m == "error_rate" else 1 - rate
        up = rate_upper(k, n, conf)
        bound = up if m == "error_rate" else 1 - up  # the pessimistic side
        bad = value >= thr if over else value <= thr
        if bad:
            return False, value, bound, f"{value:.4%} ({k} of {n})"
        good = rate_mode == "observed" or (bound < thr if over else bound > thr)
        if good:
            return True, value, bound, f"{value:.4%} ({k} of {n}), bound {bound:.4%}"
        need = n_for_rate(k, thr if m == "error_rate" else 1 - thr, conf)
        return None, value, bound, f"{value:.4%} ({k} of {n}), bound {bound:.4%} not past {thr:.4%}" + \
            (f": n ≥ {need} needed" if need else "")
    if m in ("p50_ms", "p95_ms", "p99_ms"):
        value, bound = st.get("value"), st.get("bound")
        if value is None:
            return None, None, None, "no successful samples to rank"
        if (value >= thr) if over else (value <= thr):
            return False, value, bound, f"{m[:3].upper()} {value:,.1f} ms over {st['latency_n']} samples"
        if bound is None:
            q = int(m[1:3]) / 100
            need = n_for_quantile(q if over else 1 - q, conf)
            return None, value, None, f"{m[:3].upper()} {value:,.1f} ms from {st['latency_n']} samples: {need} needed for a bound"
        if (bound < thr) if over else (bound > thr):
            return True, value, bound, f"{m[:3].upper()} {value:,.1f} ms (bound {bound:,.1f})"
        return None, value, bound, f"{m[:3].upper()} {value:,.1f} ms but its bound {bound:,.1f} is not past {thr:g}"
    value = st["max_ms"] if m == "max_ms" else k
    if value is None:
        return None, None, None, "no successful samples"
    ok = value <= thr if over else value >= thr
    return ok, value, None, f"{value:,}" + ("" if m == "max_ms" else f" of {n}")


def _metric(c: Criterion, a: Analysis, p: Profile) -> CriterionResult:
    """A criterion written as data: every group must hold; the failing ones are named."""
    got = a.custom.get(c.id, {})
    # A group no sample fell in is no evidence (without `per` the query still answers one empty
    # row): a filter that matches nothing — a typo — is undecided, never a pass on 0 of 0.
    groups = {g: st for g, st in got.get("groups", {}).items() if st["n"] > 0}
    unit = _UNITS.get(c.metric, "")
    sel = ", ".join(f"{k}={'|'.join(map(str, v))}" for k, v in c.where) or "all probe samples"
    if not groups:
        return CriterionResult(c.id, c.kind, None, None, c.threshold, f"no samples match {sel}", n=0, unit=unit)
    judged = {g: _judge_group(c, st, p.criteria.confidence, p.criteria.rate_mode) for g, st in groups.items()}
    failed = [g for g, j in judged.items() if j[0] is False]
    open_ = [g for g, j in judged.items() if j[0] is None]
    n = sum(st["n"] for st in groups.values())
    vals = [j[1] for j in judged.values() if j[1] is not None]
    worst = (max(vals) if c.op == "max" else min(vals)) if vals else None
    bounds = [j[2] for j in judged.values() if j[2] is not None]
    bound = (max(bounds) if c.op == "max" else min(bounds)) if bounds else None
    cmp = "≤" if c.op == "max" else "≥"
    head = f"{c.metric} {cmp} {c.threshold:g} over {sel}"
    if c.per:
        if failed:
            detail = f"{head}: {len(failed)} of {len(groups)} {c.per}s fail: " + "; ".join(
                f"{g}: {judged[g][3]}" for g in failed[:20]) + (" …" if len(failed) > 20 else "")
        elif open_:
            detail = f"{head}: {len(open_)} of {len(groups)} {c.per}s undecided: " + "; ".join(
                f"{g}: {judged[g][3]}" for g in open_[:10])
        else:
            detail = f"{head}: all {len(groups)} {c.per}s hold"
    else:
        detail = f"{head}: {next(iter(judged.values()))[3]}"
    passed = False if failed else (None if open_ else True)
    return CriterionResult(c.id, c.kind, passed, None if worst is None else round(worst, 6), c.threshold, detail,
                           n=n, unit=unit, bound=bound, groups=failed if failed else None)


def _promql(c: Criterion, a: Analysis, p: Profile) -> CriterionResult:
    """A PromQL query's values over the window, per series aggregated (max, last or sum), against
    max or min: every series must hold. The values are the stored ones: a re-run needs no Prometheus."""
    got = a.custom.get(c.id, {})
    series = got.get("series", {})
    if not series:
        return CriterionResult(c.id, c.kind, None, None, c.threshold,
                               f"no values stored for {c.promql!r} (Prometheus not reached, or no series)", n=0)
    agg = {"max": max, "sum": sum, "last": lambda v: v[-1]}[c.aggregate]
    per = {labels: agg([v for _t, v in pts]) for labels, pts in series.items()}
    bad = {lab: v for lab, v in per.items() if (v > c.threshold if c.op == "max" else v < c.threshold)}
    worst = max(per.values()) if c.op == "max" else min(per.values())
    cmp = "≤" if c.op == "max" else "≥"
    shown = "; ".join(f"{lab} {v:g}" for lab, v in list((bad or per).items())[:6])
    detail = (f"{c.aggregate}({c.promql}) {cmp} {c.threshold:g} over {len(per)} series: "
              + (f"{len(bad)} fail: " if bad else "") + shown)
    first = min((t for pts in series.values() for t, v in pts
                 if (v > c.threshold if c.op == "max" else v < c.threshold)), default=None) if bad else None
    return CriterionResult(c.id, c.kind, not bad, worst, c.threshold, detail,
                           n=sum(len(v) for v in series.values()), first=first)


def _cert_expiry(c: Criterion, a: Analysis, p: Profile) -> CriterionResult:
    """The earliest server certificate expiry seen must lie `threshold` days or more past the
    window's end: a certificate expiring mid-rollout is a classic failed phase."""
    t = a.tls
    versions = ", ".join(f"{v} ×{n:,}" for v, n in t["versions"].items())
    if t["earliest_expiry"] is None:
        return CriterionResult(c.id, c.kind, None, None, c.threshold, f"no certificate expiry read ({versions})",
                               n=t["samples"], unit="days")
    exp = parse_time(t["earliest_expiry"], name="cert_expiry")
    days = (exp - a.window.end).total_seconds() / 86400.0
    when = "after" if days >= 0 else "before"
    detail = (f"earliest certificate expiry {t['earliest_expiry']}: {abs(days):.1f} days {when} the window's end "
              f"(needs {c.threshold:g}); {versions}")
    return CriterionResult(c.id, c.kind, days >= c.threshold, round(days, 2), c.threshold, detail, n=t["samples"],
                           unit="days")


EVALUATORS = {
    "window_complete": _window_complete, "no_5xx": _no_5xx, "no_feature_disabled": _no_feature_disabled,
    "no_rollback": _no_rollback, "service_healthy": _service_healthy, "execute_p99": _execute_p99,
    "error_rate": _error_rate, "no_anomalies": _no_anomalies, "no_regression": _no_regression,
    "tenant_error_rate": _tenant_error_rate, "cert_expiry": _cert_expiry, "flags_at_startup": _flags_at_startup,
    "render_errors": _render_errors,
}


def evaluate(profile: Profile, a: Analysis) -> Decision:
    results = []
    for c in profile.criteria.items:
        if not c.enabled or (c.id == "no_regression" and a.baseline is None) \
                or (c.id == "tenant_error_rate" and a.tenants is None) or (c.id == "cert_expiry" and a.tls is None) \
                or (c.id in ("flags_at_startup", "render_errors") and a.render is None):
            continue
        r = (_promql if c.promql else _metric)(c, a, profile) if c.custom else EVALUATORS[c.id](c, a, profile)
        r.dry_run = c.dry_run
        r.title = c.title
        r.settle()
        if r.passed is False and c.runbook and c.runbook in profile.runbook:
            step = profile.runbook[c.runbook]
            r.runbook = {"id": step.id, "title": step.title, "steps": list(step.steps),
                         "actions": describe(step.machine)}
        results.append(r)
    verdict, reason = decide(results, a)
    return Decision(verdict, reason, results)


def decide(results: list[CriterionResult], a: Analysis) -> tuple[str, str]:
    """The verdict, by PRODUCT.md's rules, and one sentence saying why. Dry-run criteria are shown
    in the report but never move the verdict."""
    results = [r for r in results if not r.dry_run]
    hard_failed = [r.id for r in results if r.kind == "hard" and r.passed is False and r.id != "window_complete"]
    if hard_failed:
        return "NO-GO", f"hard requirement(s) failed: {', '.join(hard_failed)}"
    soft_failed = [r.id for r in results if r.kind == "soft" and r.passed is False]
    if soft_failed:
        so_far = " so far" if a.now < a.window.end else ""  # a closed window is the whole evidence
        return "REVIEW", f"every hard requirement holds{so_far}; soft target(s) missed: {', '.join(soft_failed)}"
    complete = next((r for r in results if r.id == "window_complete"), None)
    if complete is not None and complete.passed is not True:
        if a.now < a.window.end:
            return "PENDING", f"window still open ({complete.detail}); nothing has failed so far"
        return "INCONCLUSIVE", f"the window ended before the required duration ({complete.detail})"
    thin = [r.id for r in results if r.passed is None and r.id != "window_complete"]
    cov = a.coverage
    stopped = [sh["shard"] for sh in cov.get("shards") or () if sh["stopped"]]
    if stopped:
        return "INCONCLUSIVE", (f"collector shard(s) {', '.join(stopped)} stopped: part of the fleet went unmonitored "
                                f"for longer than {format_duration(cov['max_gap_s'])}")
    if not cov["sufficient"]:
        return "INCONCLUSIVE", (f"monitoring coverage too thin: {cov['ratio']:.1%} of expected samples "
                                f"(need {cov['min_coverage']:.0%}), longest gap {format_duration(cov['longest_gap_s'])} "
                                f"from {cov['longest_gap_start']} (allowed {format_duration(cov['max_gap_s'])})")
    if thin:
        return "INCONCLUSIVE", f"too little evidence to decide: {', '.join(thin)}"
    return "GO", f"all {len(results)} criteria hold over {iso(a.window.start)} .. {iso(a.observed_end)}"


def describe(m) -> list[str]:
    """Machine steps (a runbook scenario's or a phase's promotion) in words, in the order `act` runs them."""
    out = [f"set {k}={v} on the platform" for k, v in m.set_env]
    if m.deploy:
        how = f" through the deploy hook (${m.deploy_hook_env})" if m.deploy_hook_env else ""
        out.append(f"trigger a deploy{how} and follow it until live (within {format_duration(m.deploy_within_s)})")
    if m.verify:
        codes = "/".join(map(str, m.verify.expect_status))
        out.append(f"verify: the {m.verify.probe} probe answers {codes} within {format_duration(m.verify.within_s)}")
    return out
