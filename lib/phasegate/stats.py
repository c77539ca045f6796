"""Honest uncertainty: exact bounds for rates, distribution-free intervals for percentiles,
and the canary-vs-baseline tests. Pure functions of arrays and counts."""

from __future__ import annotations

import math

import numpy as np

# scipy.stats costs ~0.6 s to import, paid by every report's kernel; only the canary-vs-baseline
# tests need it, so they import it themselves. The rest uses scipy.special, imported where it is
# called: validating a profile needs only `n_for_quantile`, and the CLI process (which loads the
# profile before the kernel starts) would otherwise pay ~0.15 s for scipy.special.


def rate_upper(k: int, n: int, confidence: float = 0.95) -> float | None:
    """Exact one-sided upper bound of a binomial rate (Clopper-Pearson); k = 0 gives 1 - alpha^(1/n)."""
    if n <= 0:
        return None
    if k >= n:
        return 1.0
    alpha = 1.0 - confidence
    if k == 0:
        return 1.0 - alpha ** (1.0 / n)
    from scipy import special

    return float(special.betaincinv(k + 1, n - k, confidence))


def n_for_rate(k: int, threshold: float, confidence: float = 0.95, limit: int = 10**9) -> int | None:
    """The smallest n whose upper bound with k errors is below threshold (None if unreachable)."""
    if threshold <= 0 or threshold >= 1:
        return None
    lo, hi = max(k + 1, 1), max(k + 1, 1)
    while rate_upper(k, hi, confidence) >= threshold:
        hi *= 2
        if hi > limit:
            return None
    while lo < hi:
        mid = (lo + hi) // 2
        if rate_upper(k, mid, confidence) < threshold:
            hi = mid
        else:
            lo = mid + 1
    return lo


def binom_ppf(q: float, n: int, p: float) -> int:
    """The smallest k with P(Binomial(n, p) <= k) >= q: scipy.stats.binom.ppf, from scipy.special."""
    from scipy import special

    k = math.ceil(float(special.bdtrik(q, n, p)))
    k = min(max(k, 0), n)
    below = max(k - 1, 0)
    return below if special.bdtr(below, n, p) >= q else k


def quantile_upper_rank(n: int, p: float, confidence: float = 0.95) -> int | None:
    """1-based rank r with P(X_(r) >= q_p) >= confidence, or None when n is too small."""
    if n <= 0:
        return None
    r = binom_ppf(confidence, n, p) + 1
    return r if r <= n else None


def quantile_interval(sorted_x: np.ndarray, p: float, confidence: float = 0.95):
    """Two-sided distribution-free interval for the p-quantile from order statistics, or None."""
    ranks = quantile_interval_ranks(len(sorted_x), p, confidence)
    return None if ranks is None else (float(sorted_x[ranks[0] - 1]), float(sorted_x[ranks[1] - 1]))


def quantile_interval_ranks(n: int, p: float, confidence: float = 0.95) -> tuple[int, int] | None:
    """The 1-based ranks (lo, hi) of `quantile_interval`'s order statistics, or None when n is too small."""
    if n <= 0:
        return None
    a = (1.0 - confidence) / 2
    lo = binom_ppf(a, n, p)  # rank lo (1-based) is X_(lo); 0 means unbounded below
    hi = binom_ppf(1 - a, n, p) + 1
    return None if lo < 1 or hi > n else (lo, hi)


def n_for_quantile(p: float, confidence: float = 0.95) -> int:
    """The smallest n for which the one-sided upper bound of the p-quantile exists."""
    return math.ceil(math.log(1.0 - confidence) / math.log(p))


def mann_whitney_greater(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """U of x against y and the one-sided p-value that x tends to be larger (normal
    approximation with tie correction and continuity correction, as scipy's 'asymptotic')."""
    from scipy import special
    from scipy.stats import rankdata

    x, y = np.asarray(x, float), np.asarray(y, float)
    n1, n2 = len(x), len(y)
    ranks = rankdata(np.concatenate([x, y]))
    u1 = ranks[:n1].sum() - n1 * (n1 + 1) / 2.0
    _, counts = np.unique(ranks, return_counts=True)
    n = n1 + n2
    tie = (counts ** 3 - counts).sum() / (n * (n - 1)) if n > 1 else 0.0
    sigma = math.sqrt(n1 * n2 / 12.0 * ((n + 1) - tie))
    if sigma == 0:
        return float(u1), 1.0
    z = (u1 - n1 * n2 / 2.0 - 0.5) / sigma
    return float(u1), float(0.5 * special.erfc(z / math.sqrt(2.0)))  # the normal's upper tail


def hodges_lehmann(x: np.ndarray, y: np.ndarray, max_each: int = 2000, seed: int = 0) -> float:
    """Median of all pairwise differences x - y (a subsample of each past max_each, seeded)."""
    rng = np.random.default_rng(seed)
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) > max_each:
        x = rng.choice(x, max_each, replace=False)
    if len(y) > max_each:
        y = rng.choice(y, max_each, replace=False)
    return float(np.median(np.subtract.outer(x, y)))


def fisher_greater(k1: int, n1: int, k2: int, n2: int) -> float:
    """One-sided p-value that the first error rate exceeds the second (Fisher's exact test)."""
    from scipy.stats import fisher_exact

    return float(fisher_exact([[k1, n1 - k1], [k2, n2 - k2]], alternative="greater")[1])
