"""The structured result of judging a window: one CriterionResult per criterion and the Decision
derived from them. Rendering reads this (as signoff.json) and never recomputes it."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class CriterionResult:
    id: str
    kind: str
    passed: bool | None
    measured: float | int | None
    threshold: float | int | None
    detail: str
    n: int | None = None
    unit: str = ""
    runbook: dict | None = None
    bound: float | None = None  # one-sided upper confidence bound of `measured`
    interval: list | None = None  # two-sided confidence interval of `measured`
    dry_run: bool = False
    first: str | None = None  # when the failure was first and last seen (ISO 8601), where it is a time
    last: str | None = None
    title: str = ""
    state: str = ""  # passed, failed, pending (the window is still open), inconclusive
    groups: list | None = None  # a per-group criterion's failing groups (tenants, probes, routes)

    def settle(self) -> None:
        """The state from `passed`, unless the evaluator set one (window_complete: pending)."""
        self.state = self.state or {True: "passed", False: "failed", None: "inconclusive"}[self.passed]


@dataclass
class Decision:
    verdict: str
    reason: str
    criteria: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"verdict": self.verdict, "reason": self.reason, "criteria": [asdict(c) for c in self.criteria]}
