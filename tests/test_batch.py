"""Issue 30: aggregates asked in rounds (`phasegate.batch`). Steps run side by side give the same
figures as each run alone, in as many engine rounds as their longest chain of dependent queries
(on Spark a round is one job); and the order a round's answers are put in after the collect is
DuckDB's own ORDER BY, nulls, descending keys and appended keys included."""

import random

import duckdb
import pytest

from phasegate.batch import Q, ask, drive, steps

from test_stats import _engine, _frame


class Rounds:
    """A DuckDB connection that answers through `batch`, as Spark does, and counts its rounds."""

    def __init__(self, con):
        self.con, self.rounds = con, []

    def batch(self, queries):
        self.rounds.append(len(queries))
        return ask(self.con, queries)

    def __getattr__(self, name):  # execute (definitions), register, unregister
        return getattr(self.con, name)


def test_steps_side_by_side_equal_each_alone_in_as_many_rounds_as_the_longest_chain():
    from phasegate import analysis

    con = _engine(_frame(1))
    alone = (analysis.group_stats(con, "s", "probe", 0.95, total=True), analysis.tenant_stats(con, 0.95),
             analysis.flags(con, "s"), analysis.transitions(con))
    rec = Rounds(con)

    def together():
        return (yield [analysis.group_stats.steps(rec, "s", "probe", 0.95, total=True),
                       analysis.tenant_stats.steps(rec, 0.95), analysis.flags.steps(rec, "s"),
                       analysis.transitions.steps(rec), Q("SELECT count(*) FROM s")])

    *side_by_side, ((n,),) = drive(rec, together())
    assert tuple(side_by_side) == alone
    assert n == len(_frame(1))
    # Round 1: every step's first queries (the counts; the tenants' are two; the failing series);
    # round 2: one histogram for the order statistics of all three groupings (per probe, in total,
    # per tenant), the tenants' worst probe and the failing series in time order; round 3: each
    # grouping's values at its ranks.
    assert rec.rounds == [6, 3, 3]


def test_a_step_that_waits_on_nothing_is_refused_rather_than_hanging():
    @steps
    def odd(con):
        yield 42

    with pytest.raises(TypeError, match="not int"):
        odd(duckdb.connect())


ROWS = [(1, "b", None, 2.5), (2, None, 3, 1.0), (3, "a", 3, None), (4, "b", 1, 2.5), (5, "a", None, 0.5),
        (6, None, 1, 1.0), (7, "c", 3, 2.5)]


@pytest.mark.parametrize("order", [
    "ORDER BY k, id", "ORDER BY k DESC, id DESC", "ORDER BY 2, 3 DESC, 1", "ORDER BY n NULLS FIRST, id",
    "ORDER BY n DESC NULLS FIRST, k, id", "ORDER BY x, k DESC, id", "ORDER BY id % 3, id DESC",
])
def test_rows_ordered_after_the_collect_are_in_duckdbs_order(order):
    """Spark's batch drops a query's ORDER BY (a global sort is a job of its own) and orders the
    collected rows itself: a key not selected is appended and dropped again. (Every order here is
    total: DuckDB's order of ties is its own.)"""
    from phasegate.spark import _in_order, _unordered

    con = duckdb.connect()
    con.execute("CREATE TABLE t (id INTEGER, k VARCHAR, n INTEGER, x DOUBLE)")
    con.executemany("INSERT INTO t VALUES (?, ?, ?, ?)", ROWS)
    sql = f"SELECT id, k, n FROM t {order}"
    want = con.execute(sql).fetchall()
    plain, keys, extra = _unordered(sql)
    assert "ORDER BY" not in plain.upper()
    rows = con.execute(plain).fetchall()
    random.Random(7).shuffle(rows)
    assert _in_order(rows, keys, extra) == want
