"""Off-policy value of a target policy from logged (arm, reward, propensity): IPS, SNIPS, DR.

Each estimate comes with a seeded bootstrap 95% confidence interval.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class Estimate:
    value: float
    ci_low: float
    ci_high: float


def _boot(per_row: np.ndarray, n_boot: int, seed: int, ratio_den: np.ndarray | None = None) -> Estimate:
    rng = np.random.default_rng(seed)
    n = len(per_row)
    idx = rng.integers(0, n, size=(n_boot, n))
    if ratio_den is None:
        value = float(per_row.mean())
        stats = per_row[idx].mean(axis=1)
    else:
        value = float(per_row.sum() / ratio_den.sum())
        stats = per_row[idx].sum(axis=1) / ratio_den[idx].sum(axis=1)
    lo, hi = np.quantile(stats, [0.025, 0.975])
    return Estimate(value, float(lo), float(hi))


def _weights(arm, propensity, target: pd.DataFrame) -> np.ndarray:
    cols = pd.Index(target.columns)
    j = cols.get_indexer(np.asarray(arm).astype(str))
    pi = np.where(j >= 0, target.to_numpy()[np.arange(len(j)), np.maximum(j, 0)], 0.0)
    return pi / np.clip(np.asarray(propensity, float), 1e-6, None)


def ips(arm, reward, propensity, target: pd.DataFrame, *, n_boot: int = 500, seed: int = 0) -> Estimate:
    return _boot(_weights(arm, propensity, target) * np.asarray(reward, float), n_boot, seed)


def snips(arm, reward, propensity, target: pd.DataFrame, *, n_boot: int = 500, seed: int = 0) -> Estimate:
    w = _weights(arm, propensity, target)
    return _boot(w * np.asarray(reward, float), n_boot, seed, ratio_den=w)


def doubly_robust(
    arm, reward, propensity, target: pd.DataFrame, q_hat: pd.DataFrame, *, n_boot: int = 500, seed: int = 0
) -> Estimate:
    q = q_hat.reindex(columns=target.columns).to_numpy(dtype=float)
    j = pd.Index(target.columns).get_indexer(np.asarray(arm).astype(str))
    q_logged = q[np.arange(len(j)), np.maximum(j, 0)]
    direct = (target.to_numpy() * q).sum(axis=1)
    per_row = direct + _weights(arm, propensity, target) * (np.asarray(reward, float) - q_logged)
    return _boot(per_row, n_boot, seed)
