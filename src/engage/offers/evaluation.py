"""Off-policy value of a target policy from logged (arm, reward, propensity): IPS, SNIPS, DR.

The target policy is a DataFrame of probabilities, one column per arm and one row per logged
decision (rows sum to 1). Each estimate comes with a seeded bootstrap 95% confidence interval
(rows resampled with replacement; for DR the outcome model's predictions are held fixed, so fit it
on other rows than the ones evaluated). ``compare_policies`` lays several policies and all three
estimators side by side; ``single_arm_policy`` and ``uniform_policy`` are the baselines a learned
policy is judged against; ``true_value`` and ``oracle_value`` give exact values when the true
expected reward per arm is known (simulations). ``offers.training.fit_offers`` runs exactly these.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

import numpy as np
import pandas as pd

from engage import schemas as s

__all__ = [
    "MAX_WEIGHT",
    "MIN_ESS_SHARE",
    "VALUE_COLUMNS",
    "Estimate",
    "WeightDiagnostics",
    "bootstrap_difference",
    "bootstrap_mean",
    "compare_policies",
    "doubly_robust",
    "ips",
    "oracle_value",
    "overlap_warning",
    "single_arm_policy",
    "snips",
    "true_value",
    "uniform_policy",
    "weight_diagnostics",
]

ArrayLike: TypeAlias = Sequence[Any] | np.ndarray | pd.Series
VALUE_COLUMNS: tuple[str, ...] = ("policy", "estimator", "value", "ci_low", "ci_high")


@dataclass(frozen=True)
class Estimate:
    """A policy value and its bootstrap 95% confidence interval."""

    value: float
    ci_low: float
    ci_high: float


_COMPACT_FROM = 50_000
"""Above this many rows the bootstrap resamples counts of distinct values (or of the rows off the
most common value) instead of row indices: the same distribution, far less work when the terms
repeat (rewards, weights and conversions take few values). Smaller inputs keep the row draws."""
_BLOCK = 4_000_000  # random draws per block of replicates (bounds memory)


def _boot(
    per_row: np.ndarray, n_boot: int, seed: int, ratio_den: np.ndarray | None = None, alpha: float = 0.05
) -> Estimate:
    """Mean (or ratio of sums) of per-row terms, with a percentile bootstrap interval."""
    if n_boot < 1:
        raise ValueError("n_boot must be at least 1")
    rng = np.random.default_rng(seed)
    n = len(per_row)
    stats = np.empty(n_boot)
    if n > _COMPACT_FROM:  # same bootstrap distribution, at the cost of the distinct values
        num, den = _replicate_sums(per_row, ratio_den, n_boot, rng)
        stats = num / n if ratio_den is None else num / np.where(den > 0, den, np.nan)
    else:
        chunk = max(1, 2_000_000 // max(n, 1))  # bound memory: resample in blocks of replicates
        for start in range(0, n_boot, chunk):
            size = min(chunk, n_boot - start)
            idx = rng.integers(0, n, size=(size, n))
            if ratio_den is None:
                stats[start : start + size] = per_row[idx].mean(axis=1)
            else:
                den_ = ratio_den[idx].sum(axis=1)
                stats[start : start + size] = per_row[idx].sum(axis=1) / np.where(den_ > 0, den_, np.nan)
    if ratio_den is None:
        value = float(per_row.mean())
    else:
        value = float(per_row.sum() / ratio_den.sum()) if ratio_den.sum() > 0 else float("nan")
    lo, hi = np.nanquantile(stats, [alpha / 2, 1 - alpha / 2])
    return Estimate(value, float(lo), float(hi))


def _replicate_sums(
    num: np.ndarray, den: np.ndarray | None, n_boot: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Sums of ``num`` (and ``den``) over ``n_boot`` resamples of all rows with replacement.

    Few distinct (num, den) values: each replicate is a multinomial draw of their counts. Otherwise
    the rows off the most common value are resampled: how many of them a replicate holds is
    binomial, which of them uniform; the rest contribute the common value. Both are exact.
    """
    n = len(num)
    codes, u_num = pd.factorize(num)  # hashing, not sorting: linear in the rows
    if den is None:
        u_den = np.zeros(len(u_num))
    else:
        den_codes, den_values = pd.factorize(den)
        codes, pairs = pd.factorize(codes.astype(np.int64) * len(den_values) + den_codes)
        u_num, u_den = u_num[pairs // len(den_values)], den_values[pairs % len(den_values)]
    counts = np.bincount(codes, minlength=len(u_num))
    values = u_num
    sums_num, sums_den = np.empty(n_boot), np.empty(n_boot)
    if len(values) <= 2_000:
        block = max(1, _BLOCK // len(values))
        for start in range(0, n_boot, block):
            draws = rng.multinomial(n, counts / n, size=min(block, n_boot - start)).astype(float)
            sums_num[start : start + len(draws)] = draws @ u_num
            sums_den[start : start + len(draws)] = draws @ u_den
        return sums_num, sums_den
    common = int(np.argmax(counts))
    rest = np.flatnonzero(codes != common)
    rest_num, rest_den = u_num[codes[rest]], u_den[codes[rest]]
    taken = rng.binomial(n, len(rest) / n, size=n_boot)
    start = 0
    while start < n_boot:
        stop = start + 1 + int(np.searchsorted(np.cumsum(taken[start + 1 :]), _BLOCK - taken[start]))
        stop = min(stop, n_boot)
        m = taken[start:stop]
        idx = rng.integers(0, len(rest), size=int(m.sum()))
        ends = np.concatenate([[0], np.cumsum(m)])
        parts = ((sums_num, rest_num),) if den is None else ((sums_num, rest_num), (sums_den, rest_den))
        for total, part in parts:
            running = np.concatenate([[0.0], np.cumsum(part[idx])])
            total[start:stop] = running[ends[1:]] - running[ends[:-1]]
        start = stop
    sums_num += (n - taken) * u_num[common]
    if den is None:
        sums_den[:] = 0.0
    else:
        sums_den += (n - taken) * u_den[common]
    return sums_num, sums_den


def bootstrap_mean(values: ArrayLike, *, n_boot: int = 500, seed: int = 0) -> Estimate:
    """The mean of ``values`` with the same percentile bootstrap interval as the estimators."""
    v = np.asarray(values, dtype=float)
    if len(v) == 0:
        return Estimate(float("nan"), float("nan"), float("nan"))
    return _boot(v, n_boot, seed)


def bootstrap_difference(
    treated: ArrayLike, control: ArrayLike, *, n_boot: int = 500, seed: int = 0, alpha: float = 0.05
) -> Estimate:
    """mean(treated) - mean(control) with a percentile bootstrap interval (each group resampled).

    NaN (value and interval) when either group is empty.
    """
    if n_boot < 1:
        raise ValueError("n_boot must be at least 1")
    t, c = np.asarray(treated, dtype=float), np.asarray(control, dtype=float)
    if len(t) == 0 or len(c) == 0:
        return Estimate(float("nan"), float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    diff = _replicate_sums(t, None, n_boot, rng)[0] / len(t) - _replicate_sums(c, None, n_boot, rng)[0] / len(
        c
    )
    lo, hi = np.quantile(diff, [alpha / 2, 1 - alpha / 2])
    return Estimate(float(t.mean() - c.mean()), float(lo), float(hi))


def _check(
    arm: ArrayLike, reward: ArrayLike, propensity: ArrayLike, target: pd.DataFrame
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    arm_ = np.asarray(arm).astype(str)
    r = np.asarray(reward, dtype=float)
    p = np.asarray(propensity, dtype=float)
    if not (len(arm_) == len(r) == len(p) == len(target)):
        raise ValueError(
            f"arm, reward, propensity and target differ in length: "
            f"{len(arm_)}, {len(r)}, {len(p)}, {len(target)}"
        )
    if len(arm_) == 0:
        raise ValueError("no logged rows to evaluate")
    if np.isnan(r).any():
        raise ValueError(f"reward: row {int(np.flatnonzero(np.isnan(r))[0]) + 1} is missing")
    bad = np.isnan(p) | (p <= 0) | (p > 1)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"propensity: row {row + 1} is {p[row]!r}; a logged arm needs a probability in (0, 1]"
        )
    return arm_, r, p


def _weights(arm: np.ndarray, propensity: np.ndarray, target: pd.DataFrame) -> np.ndarray:
    """pi_target(logged arm | x) / pi_logging(logged arm | x); 0 for arms the target never plays."""
    codes, names = pd.factorize(arm)  # look up each distinct arm once, not every row
    j = pd.Index(target.columns.astype(str)).get_indexer(pd.Index(names))[codes]
    t = target.to_numpy(dtype=float)
    pi = np.where(j >= 0, t[np.arange(len(j)), np.maximum(j, 0)], 0.0)
    return pi / propensity


def ips(
    arm: ArrayLike,
    reward: ArrayLike,
    propensity: ArrayLike,
    target: pd.DataFrame,
    *,
    n_boot: int = 500,
    seed: int = 0,
) -> Estimate:
    """Inverse propensity scoring: mean of w * reward. Unbiased; high variance with small propensities."""
    a, r, p = _check(arm, reward, propensity, target)
    return _boot(_weights(a, p, target) * r, n_boot, seed)


def snips(
    arm: ArrayLike,
    reward: ArrayLike,
    propensity: ArrayLike,
    target: pd.DataFrame,
    *,
    n_boot: int = 500,
    seed: int = 0,
) -> Estimate:
    """Self-normalized IPS: sum(w * reward) / sum(w). Slightly biased, much steadier than IPS."""
    a, r, p = _check(arm, reward, propensity, target)
    w = _weights(a, p, target)
    return _boot(w * r, n_boot, seed, ratio_den=w)


def doubly_robust(
    arm: ArrayLike,
    reward: ArrayLike,
    propensity: ArrayLike,
    target: pd.DataFrame,
    q_hat: pd.DataFrame,
    *,
    n_boot: int = 500,
    seed: int = 0,
) -> Estimate:
    """Doubly robust: model value sum_a pi(a|x) q(x, a) plus the IPS-weighted residual of the logged arm.

    ``q_hat`` holds the predicted expected reward per arm (same columns as ``target``). Unbiased when
    either the propensities or the outcome model are right.
    """
    a, r, p = _check(arm, reward, propensity, target)
    missing = [c for c in target.columns if c not in q_hat.columns]
    if missing:
        raise KeyError(f"q_hat: no predicted reward for arm(s) {', '.join(map(str, missing))}")
    if len(q_hat) != len(target):
        raise ValueError(f"q_hat has {len(q_hat)} rows but target has {len(target)}")
    q = q_hat[list(target.columns)].to_numpy(dtype=float)
    codes, names = pd.factorize(a)
    j = pd.Index(target.columns.astype(str)).get_indexer(pd.Index(names))[codes]
    q_logged = np.where(j >= 0, q[np.arange(len(j)), np.maximum(j, 0)], 0.0)
    direct = (target.to_numpy(dtype=float) * q).sum(axis=1)
    per_row = direct + _weights(a, p, target) * (r - q_logged)
    return _boot(per_row, n_boot, seed)


def compare_policies(
    arm: ArrayLike,
    reward: ArrayLike,
    propensity: ArrayLike,
    targets: Mapping[str, pd.DataFrame],
    q_hat: pd.DataFrame,
    *,
    n_boot: int = 500,
    seed: int = 0,
) -> pd.DataFrame:
    """Tidy table (policy, estimator, value, ci_low, ci_high): IPS, SNIPS and DR for every target policy.

    The same bootstrap seed for every policy, so the intervals are comparable.
    """
    rows = []
    for name, target in targets.items():
        for estimator, fn in (("ips", ips), ("snips", snips)):
            est = fn(arm, reward, propensity, target, n_boot=n_boot, seed=seed)
            rows.append((name, estimator, est.value, est.ci_low, est.ci_high))
        est = doubly_robust(arm, reward, propensity, target, q_hat, n_boot=n_boot, seed=seed)
        rows.append((name, "dr", est.value, est.ci_low, est.ci_high))
    return pd.DataFrame(rows, columns=list(VALUE_COLUMNS))


MIN_ESS_SHARE = 0.05
"""An estimate whose effective sample size is below this share of the logged rows is flagged."""
MAX_WEIGHT = 100.0
"""An estimate whose largest importance weight exceeds this is flagged (a logged probability under
1% for an arm the target plays for sure: one row can swing the value)."""


@dataclass(frozen=True)
class WeightDiagnostics:
    """How well the logged rows cover a target policy: Kish's effective sample size of the weights
    (sum w)^2 / sum w^2, the largest weight, the logged rows, and the rows with a non-zero weight."""

    rows: int
    ess: float
    max_weight: float
    matched: int


def weight_diagnostics(arm: ArrayLike, propensity: ArrayLike, target: pd.DataFrame) -> WeightDiagnostics:
    """Importance-weight diagnostics of ``target`` on logged (arm, propensity) rows."""
    a, _, p = _check(arm, np.zeros(len(target)), propensity, target)
    w = _weights(a, p, target)
    square = float((w**2).sum())
    ess = float(w.sum() ** 2 / square) if square > 0 else 0.0
    return WeightDiagnostics(rows=len(w), ess=ess, max_weight=float(w.max()), matched=int((w > 0).sum()))


def overlap_warning(
    policy: str,
    diag: WeightDiagnostics,
    *,
    min_ess_share: float = MIN_ESS_SHARE,
    max_weight: float = MAX_WEIGHT,
) -> str | None:
    """A plain-words warning when the logged rows cover ``policy`` too thinly to trust its estimate."""
    problems = []
    if diag.ess < min_ess_share * diag.rows:
        problems.append(
            f"effective sample size {diag.ess:,.0f} is under {min_ess_share:.0%} of {diag.rows:,} rows"
        )
    if diag.max_weight > max_weight:
        problems.append(f"largest importance weight {diag.max_weight:,.1f} exceeds {max_weight:,.0f}")
    if not problems:
        return None
    return (
        f"{policy}: overlap too thin to trust the off-policy estimate ({'; '.join(problems)}); "
        "the logging policy rarely chose what this policy would"
    )


def single_arm_policy(allowed: pd.DataFrame, arm: str) -> pd.DataFrame:
    """Send ``arm`` wherever it is allowed, else nothing (`none`); `none` itself is sent to every row."""
    probs = pd.DataFrame(0.0, index=allowed.index, columns=allowed.columns)
    can = allowed[arm].to_numpy(dtype=bool) if arm in allowed else np.zeros(len(allowed), bool)
    probs[arm] = can.astype(float)
    probs[s.CONTROL_ARM] = (~can).astype(float) if arm != s.CONTROL_ARM else 1.0
    return probs


def uniform_policy(allowed: pd.DataFrame) -> pd.DataFrame:
    """Uniform random over the allowed arms of each row."""
    ok = allowed.astype(float)
    return ok.div(ok.sum(axis=1), axis=0)


def true_value(target: pd.DataFrame, true_reward: pd.DataFrame) -> float:
    """Exact value of a policy given the true expected reward per (row, arm)."""
    arms = list(target.columns)
    return float((target[arms] * true_reward[arms]).sum(axis=1).mean())


def oracle_value(true_reward: pd.DataFrame, allowed: pd.DataFrame | None = None) -> float:
    """Value of the policy that knows the true rewards and plays the best allowed arm of each row."""
    best = true_reward if allowed is None else true_reward.where(allowed.astype(bool), -np.inf)
    return float(best.max(axis=1).mean())
