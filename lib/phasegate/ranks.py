"""Exact order statistics of successful latencies in bounded memory, and numpy's "linear"
percentile from them: engine-neutral SQL (DuckDB, and Spark through `phasegate.spark`)."""

from __future__ import annotations

import bisect
import itertools
import math

import pandas as pd

from .batch import Q, Shared, steps, unique

QS = (0.5, 0.95, 0.99)  # the percentiles of every table and the timeline


_FINE = 256  # buckets per doubling of latency, the finest any grouping uses


def _shift(groups: int) -> int:
    """How many bits coarser than the finest a grouping's buckets are: 256 per doubling for a few
    groups, where a bucket holds a fraction of a percent of a group's values; fewer for many
    groups, where a finer histogram costs more than the sort it saves (500 tenants of a 10 M-sample
    window: 909 k cells at 256, 66 k at 16; the order statistics in 0.69 s against 0.34 s, the
    same values). Coarser buckets are the finest shifted right: floor(x * 16) = floor(x * 256) >> 4
    exactly, as scaling by a power of two is exact in floating point."""
    shift = 0
    while shift < 4 and (_FINE >> shift) * groups > 4096:
        shift += 1
    return shift


@steps
def order_statistics(con, table: str, key: str | None, where: str, wanted: dict):
    """{group: {rank: value}}: the rank-th smallest successful latency (1-based) of each group of
    `key` (None: one group, keyed None) among the rows `where` holds, for the ranks asked
    ({group: ranks}), exactly and in bounded memory. Answered with every other grouping of the
    same table asked in the same round (`_ranks_of`)."""
    return (yield Shared(_ranks_of, table, (key, where, wanted)))


def _ranks_of(con, table: str, asks: list):
    """The order statistics of several groupings of one table, in two passes over it whatever
    their number. A grouped quantile holds every value of every group at once (100 M samples did
    not fit in 1 GB); this counts each group's values per narrow latency bucket (every grouping
    in one pass, as grouping sets), finds the bucket each rank falls in, picks the values of those
    buckets in the second pass and sorts only them."""
    asks = [(key, where, [(g, int(r)) for g, ranks in wanted.items() for r in set(ranks)], _shift(len(wanted)))
            for key, where, wanted in asks]
    live = [i for i, a in enumerate(asks) if a[2]]
    out: list = [{} for _ in asks]
    if not live:
        return out
    keys = ", ".join(f"CASE WHEN ({asks[i][1]}) THEN {asks[i][0] or '0'} END AS k{i}" for i in live)
    any_where = " OR ".join(f"({asks[i][1]})" for i in live)
    coarse = ", ".join(f"b >> {asks[i][3]} AS b{i}" for i in live)
    src = f"""(SELECT *, {coarse} FROM (SELECT {keys}, CAST(floor(log2(greatest(lat, 1e-6)) * {_FINE}) AS INTEGER) AS b, lat
        FROM {table} WHERE lat IS NOT NULL AND ({any_where})))"""
    cols = ", ".join(f"k{i}, b{i}" for i in live)
    hist = yield Q(f"SELECT {cols}, count(*) FROM {src} GROUP BY GROUPING SETS ({', '.join(f'(k{i}, b{i})' for i in live)})")
    cells: dict = {i: {} for i in live}  # a row of grouping set i has k{i} (the others are NULL)
    for row in hist:
        for j, i in enumerate(live):
            if row[2 * j] is not None:
                cells[i].setdefault(row[2 * j], []).append((row[2 * j + 1], row[-1]))
                break
    for by_group in cells.values():
        for g, counts in by_group.items():
            counts.sort()
            by_group[g] = [(b, n) for (b, _c), n in zip(counts, itertools.accumulate(c for _b, c in counts))]
    picks, fine = {}, set()
    for i in live:
        key, _where, pairs, shift = asks[i]
        picks[i] = [(g if key else 0, r) + _cell(cells[i].get(g if key else 0, ()), r) for g, r in pairs]
        fine |= {f for _g, _r, b, _k in picks[i] if b is not None for f in range(b << shift, (b + 1) << shift)}
    values, frames = unique("ranked_values"), {i: unique("rank_at") for i in live}
    try:  # every frame registered is unregistered, even when a later one fails
        for i in live:
            con.register(frames[i], pd.DataFrame([p for p in picks[i] if p[2] is not None], columns=["g", "r", "b", "k"]))
        con.execute(f"""CREATE OR REPLACE TEMP TABLE {values} AS SELECT {', '.join(f'k{i}, b{i}' for i in live)}, lat
            FROM {src} WHERE b IN ({', '.join(map(str, sorted(fine))) or 'NULL'})""")
        rows = yield [Q(f"""SELECT {'g' if asks[i][0] else 'NULL'}, a.r, v.vals[a.k] FROM {frames[i]} a JOIN (
                SELECT g, b, list_sort(list(lat)) AS vals FROM (SELECT k{i} AS g, b{i} AS b, lat FROM {values} WHERE k{i} IS NOT NULL)
                SEMI JOIN (SELECT DISTINCT g, b FROM {frames[i]}) USING (g, b) GROUP BY ALL) v USING (g, b)""") for i in live]
    finally:
        for name in frames.values():
            con.unregister(name)
        con.execute(f"DROP TABLE IF EXISTS {values}")
    for i, got in zip(live, rows):
        for g, r, v in got:
            out[i].setdefault(g, {})[r] = v
    return out


def _cell(cells: list, rank: int) -> tuple:
    """(bucket, position in it) of the rank-th smallest value, from a group's (bucket, values so
    far) cells in bucket order; (None, None) past its last value."""
    at = bisect.bisect_left(cells, rank, key=lambda cell: cell[1])
    if at == len(cells):
        return None, None
    return cells[at][0], rank - (cells[at - 1][1] if at else 0)


def linear_percentile(at: dict, n: int, q: float) -> float:
    """numpy's "linear" percentile of n sorted values from the two order statistics around it
    (`at`: rank -> value), with numpy's lerp (from the nearer end)."""
    h = (n - 1) * q
    lo = math.floor(h)
    a, b, t = at[lo + 1], at[min(lo + 2, n)], h - lo
    d = b - a
    return b - d * (1 - t) if t >= 0.5 else a + d * t


def percentile_ranks(n: int, qs=QS) -> list:
    """The ranks `linear_percentile` needs."""
    out = []
    for q in qs:
        lo = math.floor((n - 1) * q)
        out += [lo + 1, min(lo + 2, n)]
    return out
