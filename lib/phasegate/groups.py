"""Grouped statistics on integer codes: the pieces that make a 500-yacht fleet one pass.

Every grouping (probe, tenant, timeline bucket, deployment id) works on the small integer codes
of a categorical column. numpy's stable sort is a radix sort for 8- and 16-bit integers, so
grouping is one cheap pass, and each group's values are then sorted where they lie.
"""

from __future__ import annotations

import os
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import pandas as pd


def group_codes(col: pd.Series) -> np.ndarray:
    """Integer codes of a categorical column (missing values are -1)."""
    return col.cat.codes.to_numpy() if isinstance(col.dtype, pd.CategoricalDtype) else \
        pd.factorize(col, use_na_sentinel=True)[0]


def group_names(col: pd.Series) -> list:
    """The value each code of `group_codes(col)` stands for, in code order."""
    return list(col.cat.categories) if isinstance(col.dtype, pd.CategoricalDtype) else list(pd.unique(col.dropna()))


def epoch_us(ts: pd.Series) -> np.ndarray:
    """UTC microseconds since the epoch, without a Timestamp object per row: a read-only view of
    the column when it is stored in microseconds (as the store reads it), else a converted copy."""
    arr = ts.array
    if getattr(arr, "unit", None) != "us":
        arr = ts.dt.as_unit("us").array
    return arr.asi8


def sorted_groups(codes: np.ndarray | None, values: np.ndarray, n_groups: int):
    """(values sorted within each group, each group's start, each group's count); codes < 0 and
    NaN values dropped (`codes` None: every row in the one group). One stable radix sort of the
    small group codes, then numpy's SIMD sort of each group's contiguous slice: several times
    faster than an argsort of every value."""
    drop = np.isnan(values) if codes is None else (codes < 0) | np.isnan(values)
    if n_groups == 1:
        v = values[~drop]
        v.sort()  # in place: the selection is already a copy
        return v, np.zeros(1, np.int64), np.array([len(v)])
    # Dropped rows go to one more group after the last, so nothing is compacted first; numpy
    # radix-sorts 8- and 16-bit integers (stable): keep the group codes that small.
    small = np.int8 if n_groups < 127 else np.int16 if n_groups < 32767 else np.int64
    c = np.where(drop, n_groups, codes).astype(small)
    v = values[np.argsort(c, kind="stable")]
    counts = np.bincount(c, minlength=n_groups + 1)[:n_groups]
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    for s, n in zip(starts[counts > 1], counts[counts > 1]):
        v[s:s + n].sort()
    return v, starts, counts


class NumpyThreads:
    """Worker threads for pure-numpy jobs (sorts, gathers, bincounts), so the caller's thread
    works on meanwhile. The one place we use threads: numpy releases the GIL in these and imports
    nothing, whereas general code run from two threads can race on a module's first import
    ("partially initialized module"). Only the caller's thread ever imports."""

    def __init__(self):
        self._pool = ThreadPoolExecutor(max_workers=os.cpu_count() or 1)

    def submit(self, fn, *args) -> Future:
        return self._pool.submit(fn, *args)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._pool.shutdown(wait=True, cancel_futures=True)


def series_order(probe: np.ndarray, tenant: np.ndarray, bad: np.ndarray, values: np.ndarray, n_probes: int,
                 n_tenants: int, qs=(0.5, 0.95, 0.99)):
    """One radix sort of the rows by (tenant, probe), rows being in time order, gives both: per
    probe code, how often `bad` changes between consecutive rows of the same (probe, tenant)
    series; and per tenant code, `grouped_percentiles` of `values` at `qs`."""
    key = tenant + 1  # no tenant (-1) is block 0
    key *= n_probes
    key += probe
    if (n_tenants + 1) * n_probes <= 32767:
        key = key.astype(np.int16)  # a radix sort (numpy's stable sort of 16-bit integers)
    order = np.argsort(key, kind="stable")  # stable keeps time order within each series
    g, b = key[order], bad[order]
    del key
    # Transitions are few: count them by probe at their positions, not over every row.
    at = np.flatnonzero((b[1:] != b[:-1]) & (g[1:] == g[:-1])) + 1
    flips = np.bincount(g[at].astype(np.int64) % n_probes, minlength=n_probes)
    # Each tenant's rows are one block of the sorted keys; NaN sorts last within its block.
    bounds = np.searchsorted(g, (np.arange(n_tenants + 2) * n_probes).astype(g.dtype))
    del g, b
    v = values[order]
    del order
    starts, rows = bounds[1:-1], np.diff(bounds)[1:]
    for s, n in zip(starts, rows):
        if n > 1:
            v[s:s + n].sort()
    nans = np.bincount(tenant[np.isnan(values)] + 1, minlength=n_tenants + 1)[1:]
    return flips, grouped_percentiles(None, v, n_tenants, qs, (v, starts, rows - nans))


def grouped_percentiles(codes: np.ndarray, values: np.ndarray, n_groups: int, qs, grouped=None) -> np.ndarray:
    """numpy's linear-interpolation percentiles of `values` within each group code (NaN where a
    group has no value). Shape: (n_groups, len(qs)). `grouped`: sorted_groups' result, if at hand."""
    v, starts, counts = grouped or sorted_groups(codes, values, n_groups)
    out = np.full((n_groups, len(qs)), np.nan)
    has = counts > 0
    for j, q in enumerate(qs):
        out[has, j] = _at_quantile(v, starts[has], counts[has], q)
    return out


def sorted_percentiles(sorted_x: np.ndarray, qs) -> list[float]:
    """np.percentile(sorted_x, qs) of values already sorted: two lookups each, no copy."""
    n = np.array([len(sorted_x)])
    return [float(_at_quantile(sorted_x, np.zeros(1, np.int64), n, q / 100)[0]) for q in qs]


def _at_quantile(v: np.ndarray, starts: np.ndarray, counts: np.ndarray, q: float) -> np.ndarray:
    # numpy's "linear" method to the last bit: index (n - 1) q, and its lerp, which counts back
    # from the upper value when the fraction is >= 0.5.
    pos = (counts - 1) * q
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, counts - 1)
    t = pos - lo
    a, b = v[starts + lo], v[starts + hi]
    diff = b - a
    return np.where(t >= 0.5, b - diff * (1 - t), a + diff * t)


def group_extreme(out: np.ndarray, codes: np.ndarray, values: np.ndarray, ufunc) -> None:
    """out[c] = ufunc over values of group c, via one stable sort and reduceat (ufunc.at is slow)."""
    order = np.argsort(codes, kind="stable")
    c, v = codes[order], values[order]
    starts = np.flatnonzero(np.concatenate([[True], c[1:] != c[:-1]]))
    out[c[starts]] = ufunc(out[c[starts]], ufunc.reduceat(v, starts))


class MergedRuns:
    """The sorted union of sorted runs, read by rank without building it: the overall latencies
    are the probes' already-sorted groups, so their order statistics need no sort of their own.
    Indexing (an int, an integer array or the whole slice) gives what indexing
    `np.sort(np.concatenate(runs))` would; each rank is a binary search over the values."""

    def __init__(self, runs: list):
        self.runs = [r for r in runs if len(r)]
        self.n = sum(len(r) for r in self.runs)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i):
        if isinstance(i, slice):
            if i.indices(self.n) != (0, self.n, 1):
                raise IndexError("MergedRuns: only the whole slice")
            return self
        if isinstance(i, np.ndarray):
            return np.array([self[int(k)] for k in i.reshape(-1)], dtype=float).reshape(i.shape)
        k = int(i) + self.n if i < 0 else int(i)
        if not 0 <= k < self.n:
            raise IndexError(f"rank {i} of {self.n}")
        # The smallest value with more than k values at or below it, searched over the float64
        # values in the integer order of their bits (monotone for non-NaN floats; runs hold no NaN).
        lo, hi = _sortable(min(r[0] for r in self.runs)), _sortable(max(r[-1] for r in self.runs))
        while lo < hi:
            mid = (lo + hi) // 2
            x = _float(mid)
            if sum(int(np.searchsorted(r, x, side="right")) for r in self.runs) > k:
                hi = mid
            else:
                lo = mid + 1
        x = _float(lo)
        for r in self.runs:  # the element itself (0.0 and -0.0 compare equal, but print apart)
            j = int(np.searchsorted(r, x, side="left"))
            if j < len(r) and r[j] == x:
                return r[j]
        return x


def _sortable(x) -> int:
    b = int(np.float64(x).view(np.int64))
    return b ^ 0x7FFFFFFFFFFFFFFF if b < 0 else b


def _float(k: int) -> np.float64:
    b = k ^ 0x7FFFFFFFFFFFFFFF if k < 0 else k
    return np.int64(b).view(np.float64)
