"""Aggregates as steps, asked in rounds.

Each aggregate is a generator that yields the queries it needs (a `Q`, or a list of `Q`s and
other such generators, answered together) and returns its figures. `drive` runs any number of
them side by side: every query pending in a round is handed to the engine at once. DuckDB answers
them one after the other (each already uses every core); Spark answers a round in one job
(`SparkConnection.batch`), so an analysis costs as many Spark jobs as its longest chain of
dependent queries, not one per query. Statements that only define something (a temporary view or
table, a registered frame) are run at once by the step itself, under a name of its own.
A `Shared` request is answered together with the others of its round that name the same
function and table (the order statistics of every grouping from one pass over the window).
"""

from __future__ import annotations

import functools
import inspect
import itertools
from dataclasses import dataclass


@dataclass(frozen=True)
class Q:
    """A query a step waits for: its rows as tuples (`as_="rows"`) or a pandas frame (`"df"`)."""

    sql: str
    params: tuple | list | None = None
    as_: str = "rows"


@dataclass(frozen=True, eq=False)
class Shared:
    """A request answered with the others of its round that name the same `fn` and `table`:
    `fn(con, table, [item, ...])` is a generator of steps returning their answers, in order."""

    fn: object
    table: str
    item: object


def steps(fn):
    """`fn(con, ...)` a generator of steps; the decorated call runs it to its figures, and
    `.steps(con, ...)` is the generator itself, to run beside others."""

    @functools.wraps(fn)
    def run(con, *args, **kw):
        return drive(con, fn(con, *args, **kw))

    run.steps = fn
    return run


_NAMES = itertools.count(1)


def unique(prefix: str) -> str:
    """A temporary table's name no other step running beside this one uses."""
    return f"{prefix}_{next(_NAMES)}"


class _Task:
    __slots__ = ("gen", "parent", "slot", "values", "pending", "many", "fan")

    def __init__(self, gen, parent=None, slot=None, fan=None):
        self.gen, self.parent, self.slot, self.fan = gen, parent, slot, fan


def drive(con, gen):
    """Run a generator of steps (and every generator it yields) to its return value, one engine
    round per set of queries that can be asked together."""
    root = _Task(gen)
    ready = [(root, None)]
    while True:
        asked, shared = [], {}
        while ready or shared:
            if not ready:  # every step of the round has asked: start the shared requests
                for (fn, table), askers in shared.items():
                    ready.append((_Task(fn(con, table, [x for _t, _i, x in askers]),
                                        fan=[(t, i) for t, i, _x in askers]), None))
                shared = {}
                continue
            task, value = ready.pop()
            try:
                item = task.gen.send(value)
            except StopIteration as stop:
                if task.fan is not None:  # a Shared function: each asker gets its own answer
                    for (asker, slot), answer in zip(task.fan, stop.value):
                        _fill(asker, slot, answer, ready)
                elif task.parent is None:
                    return stop.value
                else:
                    _fill(task.parent, task.slot, stop.value, ready)
                continue
            task.many = isinstance(item, (list, tuple))
            items = list(item) if task.many else [item]
            task.values, task.pending = [None] * len(items), len(items)
            if not items:
                ready.append((task, []))
            for i, it in enumerate(items):
                if isinstance(it, Q):
                    asked.append((task, i, it))
                elif isinstance(it, Shared):
                    shared.setdefault((it.fn, it.table), []).append((task, i, it.item))
                elif inspect.isgenerator(it):
                    ready.append((_Task(it, task, i), None))
                else:
                    raise TypeError(f"a step yields queries or steps, not {type(it).__name__}")
        if not asked:
            raise RuntimeError("steps wait on each other: no query left to ask")
        answers = ask(con, [q for _t, _i, q in asked])
        for (task, i, _q), answer in zip(asked, answers):
            _fill(task, i, answer, ready)


def _fill(task: _Task, slot: int, value, ready: list) -> None:
    task.values[slot] = value
    task.pending -= 1
    if task.pending == 0:
        ready.append((task, task.values if task.many else task.values[0]))


def ask(con, queries: list[Q]) -> list:
    """The answers to one round's queries, in order."""
    if not queries:
        return []
    if hasattr(con, "batch"):
        return con.batch(queries)
    out = []
    for q in queries:
        res = con.execute(q.sql, q.params)
        out.append(res.df() if q.as_ == "df" else res.fetchall())
    return out
