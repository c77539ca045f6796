"""Per-row facts of a window's samples, and the probe statistics counted from them per group.

`Rows` is computed once per window; every grouping (overall, probe, tenant, timeline bucket,
hour) then counts it by integer group codes in one bincount, and ranks latencies from one
grouped sort (`groups.sorted_groups`), instead of filtering the frame once per group.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import pandas as pd

from .groups import group_codes, group_names, sorted_groups, sorted_percentiles
from .probe import ERROR_OUTCOMES
from .stats import quantile_interval, quantile_upper_rank


@dataclass(frozen=True)
class Rows:
    """Per-row facts that every grouping (overall, probe, tenant, timeline bucket) counts:
    computed once per window, then tallied by integer group codes."""
    bad: np.ndarray          # an error outcome
    lat: np.ndarray          # answered_latency: successful responses only
    status: np.ndarray       # NO_STATUS where no HTTP answer
    outcome: np.ndarray      # codes into outcome_names
    outcome_names: list
    kinds: np.ndarray        # one bit per kind in KINDS, for tally()
    probe: np.ndarray        # int32 codes into probe_names (every grouping needs them)
    probe_names: list
    tenant: np.ndarray       # int32 codes into tenant_names, -1 where a sample has no tenant
    tenant_names: list
    # Tallies already made, by the identity of their codes (held here, so the id is not reused):
    # the probe grouping is counted for the statistics, coverage and flapping alike.
    _tallies: dict = field(default_factory=dict, compare=False, repr=False)

    # "five": 5xx other than FEATURE_DISABLED (those are judged by their own criterion).
    KINDS = ("bad", "five", "disabled", "assertion", "timeout")

    @classmethod
    def of(cls, df: pd.DataFrame) -> "Rows":
        # Narrow integers: ten million rows of these are live for the whole analysis.
        oc, names = group_codes(df["outcome"]).astype(np.int16), group_names(df["outcome"])
        status = df["status"].to_numpy(dtype=np.int32, na_value=NO_STATUS)
        disabled = (df["error_code"] == "FEATURE_DISABLED").fillna(False).to_numpy(dtype=bool)

        def outcome_in(values) -> np.ndarray:
            return np.array([n in values for n in names] + [False])[oc]  # code -1 (missing) picks the False

        masks = {"bad": outcome_in(ERROR_OUTCOMES), "five": (status >= 500) & (status <= 599) & ~disabled,
                 "disabled": disabled, "assertion": outcome_in({"assertion_failed"}), "timeout": outcome_in({"timeout"})}
        kinds = np.zeros(len(df), np.uint8)
        for bit, name in enumerate(cls.KINDS):  # the masks themselves are not kept: kinds holds them
            kinds |= masks[name].astype(np.uint8) << bit
        return cls(bad=masks["bad"], lat=answered_latency(df, masks["bad"]), status=status, outcome=oc, outcome_names=names,
                   kinds=kinds, probe=group_codes(df["probe"]).astype(np.int32), probe_names=group_names(df["probe"]),
                   tenant=group_codes(df["tenant"]).astype(np.int32) if "tenant" in df else np.full(len(df), -1, np.int32),
                   tenant_names=group_names(df["tenant"]) if "tenant" in df else [])

    def tally(self, codes: np.ndarray | None, n_groups: int) -> dict[str, np.ndarray]:
        """Rows ("n") and rows of each kind per group code, codes < 0 not counted (`codes` None:
        all rows, one group): one bincount over code*32 + the kind bits instead of one pass per kind."""
        seen = self._tallies.get(id(codes))
        if seen is not None and seen[0] is codes and seen[1] == n_groups:
            return seen[2]
        if codes is None:  # the overall figures: no key to build
            t = np.bincount(self.kinds, minlength=32).reshape(1, 32)
        else:
            key = codes.astype(np.int64)  # a copy, then in place: one new array, not three
            key *= 32
            key += self.kinds
            if (codes < 0).any():
                key = key[codes >= 0]
            t = np.bincount(key, minlength=32 * n_groups).reshape(n_groups, 32)
        bits = np.arange(32)
        out = {"n": t.sum(axis=1), **{name: t[:, (bits >> i & 1) == 1].sum(axis=1) for i, name in enumerate(self.KINDS)}}
        self._tallies[id(codes)] = (codes, n_groups, out)
        return out

    @cached_property
    def status_codes(self) -> tuple[list, np.ndarray]:
        """`_status_codes` of the status column, computed once."""
        return _status_codes(self.status)


NO_STATUS = np.iinfo(np.int32).min


def _status_codes(status: np.ndarray) -> tuple[list, np.ndarray]:
    """(the statuses, ascending, with None first for "no answer"; each row's index into them)."""
    answered = status != NO_STATUS
    seen = status[answered]
    lo, hi = (int(seen.min()), int(seen.max())) if len(seen) else (0, -1)
    if 0 <= lo and hi < 1000:  # HTTP's three digits: index by value, no sort
        return [None, *range(hi + 1)], np.where(answered, status + 1, 0)
    # Odd values from imported logs: compact them (NO_STATUS is the smallest int32, so it sorts first).
    values, codes = np.unique(status, return_inverse=True)
    return [None if v == NO_STATUS else int(v) for v in values], codes.reshape(-1)


def answered_latency(df: pd.DataFrame, bad: np.ndarray | None = None) -> np.ndarray:
    """latency_ms of successful responses (an expected status, not an error outcome), NaN elsewhere.
    A timeout has no latency to rank, and a fast 503 must not make a latency target look met:
    failures are judged by the error and 5xx criteria. `bad`: the error-outcome mask, if at hand."""
    # One new array, written in place: on a 10 M-row window every fresh 80 MB costs kernel time.
    lat = df["latency_ms"].to_numpy(dtype=float, na_value=np.nan, copy=True)
    lat[df["status"].isna().to_numpy()] = np.nan
    if bad is None:
        bad = df["outcome"].isin(list(ERROR_OUTCOMES)).to_numpy(dtype=bool)
    lat[bad] = np.nan
    return lat


def latencies(df: pd.DataFrame) -> np.ndarray:
    """The successful responses' latencies alone."""
    lat = answered_latency(df)
    return lat[~np.isnan(lat)]


def grouped_probe_stats(rows: Rows, codes: np.ndarray | None, n_groups: int, confidence: float = 0.95,
                        grouped=None) -> list[dict]:
    """`probe_stats` of every group code at once (`codes` None: all rows, one group): counts by
    bincount, latencies from one grouped sort (`grouped`: sorted_groups' result, if at hand)."""
    t = rows.tally(codes, n_groups)
    n, errors, five, disabled, assertion = t["n"], t["bad"], t["five"], t["disabled"], t["assertion"]
    statuses, scode = rows.status_codes
    width, k = len(statuses), len(rows.outcome_names) + 1
    if codes is None:  # the overall figures: no keys to build
        by_status = np.bincount(scode, minlength=width).reshape(1, width)
        by_outcome = np.bincount(rows.outcome + 1, minlength=k).reshape(1, k)[:, 1:]
    else:
        key = codes * width
        key += scode
        by_status = np.bincount(key, minlength=n_groups * width).reshape(n_groups, width)
        np.multiply(codes, k, out=key)
        key += rows.outcome
        key += 1
        by_outcome = np.bincount(key, minlength=n_groups * k).reshape(n_groups, k)[:, 1:]
        del key
    v, starts, counts = grouped or sorted_groups(codes, rows.lat, n_groups)
    out = []
    for i in range(n_groups):
        lat = v[starts[i]:starts[i] + counts[i]]
        pct = sorted_percentiles(lat, (50, 95, 99)) if len(lat) else [None] * 3
        up = quantile_upper_rank(len(lat), 0.99, confidence)
        out.append({
            "samples": int(n[i]),
            "status_counts": {str(s): int(c) for s, c in zip(statuses, by_status[i]) if c and s is not None},
            "outcome_counts": {name: int(by_outcome[i, j]) for j, name in sorted(enumerate(rows.outcome_names),
                                                                                 key=lambda x: x[1]) if by_outcome[i, j]},
            "errors": int(errors[i]),
            "error_rate": float(errors[i] / n[i]) if n[i] else None,
            "http_5xx": int(five[i]), "feature_disabled": int(disabled[i]), "assertion_failed": int(assertion[i]),
            "latency_n": int(len(lat)),
            "p50_ms": round_ms(pct[0]), "p95_ms": round_ms(pct[1]), "p99_ms": round_ms(pct[2]),
            "max_ms": round_ms(lat[-1]) if len(lat) else None,
            **{f"p{q}_ci_ms": round_pair(quantile_interval(lat, q / 100, confidence)) for q in (50, 95, 99)},
            "p99_upper_ms": None if up is None else round_ms(lat[up - 1]),
        })
    return out


def probe_stats(df: pd.DataFrame, confidence: float = 0.95) -> dict:
    """samples, counts by status and outcome, errors, 5xx, FEATURE_DISABLED, latency percentiles
    with distribution-free confidence intervals (None where n is too small for one)."""
    return grouped_probe_stats(Rows.of(df), None, 1, confidence)[0]


def round_pair(ci):
    """A (low, high) interval rounded like round_ms, or None."""
    return None if ci is None else [round_ms(ci[0]), round_ms(ci[1])]


def round_ms(x):
    """Milliseconds to the microsecond, as every figure in signoff.json is reported."""
    return None if x is None else round(float(x), 3)
