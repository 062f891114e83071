"""The population's activity rhythms as a mixture: what a user with little history is shrunk toward.

A user's hour-of-week activity is modelled as drawn from one of ``K`` rhythm profiles (a mixture of
multinomials fitted by EM on every user's counts). A user's prior is the posterior-weighted mix of
the profiles given their own counts: three visits at 20:00 already say "an evening person", where
the population's average profile would say "any time". Fitting is seeded; nothing here reads files.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

ALPHA = 0.5
"""Pseudo-count added to every hour of every profile in the M-step (no hour has probability 0)."""


def fit_mixture(
    counts: NDArray[np.float64],
    smoothed: NDArray[np.float64],
    k: int,
    *,
    iterations: int,
    seed: int,
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """EM for a `k`-profile mixture: (profiles (k, 168) rows summing to 1, weights (k,)).

    The E-step scores each user's raw `counts`; the M-step averages their `smoothed` counts, so
    the profiles come out smooth. Users without activity carry no information and are skipped.
    """
    active = counts.sum(axis=1) > 0
    raw, smooth = counts[active], smoothed[active]
    width = counts.shape[1]
    if raw.shape[0] == 0:
        return np.full((1, width), 1.0 / width), np.ones(1)
    k = max(1, min(k, raw.shape[0]))
    resp = np.random.default_rng(seed).dirichlet(np.ones(k), raw.shape[0])
    profiles, weights = np.full((k, width), 1.0 / width), np.full(k, 1.0 / k)
    for _ in range(iterations):
        profiles = resp.T @ smooth + ALPHA
        profiles /= profiles.sum(axis=1, keepdims=True)
        weights = resp.mean(axis=0) + 1e-12
        resp = posterior(raw, profiles, weights)
    return profiles, weights / weights.sum()


def posterior(
    counts: NDArray[np.float64], profiles: NDArray[np.float64], weights: NDArray[np.float64]
) -> NDArray[np.float64]:
    """(n, k): P(profile | counts) for each user (the prior weights without activity)."""
    log = np.log(weights)[None, :] + counts @ np.log(profiles).T
    log -= log.max(axis=1, keepdims=True)
    out = np.exp(log)
    return np.asarray(out / out.sum(axis=1, keepdims=True))


def user_priors(
    counts: NDArray[np.float64], profiles: NDArray[np.float64], weights: NDArray[np.float64]
) -> NDArray[np.float64]:
    """(n, 168): each user's prior profile, the posterior-weighted mix of the mixture's profiles."""
    return np.asarray(posterior(counts, profiles, weights) @ profiles)
