"""MBG/NBD (Batislam, Denizel & Filiztekin 2007): BG/NBD without the frequency-0 artefact.

BG/NBD lets a customer drop out only after a repeat purchase, so anyone who never repeated is
certainly alive (P(alive) = 1) and one-time buyers — most churners — get the lowest churn score.
MBG/NBD also lets a customer drop out right after the first purchase (with the same probability p
~ Beta(a, b)), so ``P(alive | x=0) = 1 / (1 + a/b * ((alpha+T)/alpha)^r) < 1`` and falls with T:
a one-time buyer seen long ago is likely gone. Purchases follow a Poisson rate lambda ~
Gamma(r, alpha) while alive, as in BG/NBD. Fitted by maximum likelihood with scipy, like
:class:`engage.models.btyd.BGNBD`, with the same inputs (frequency, recency, T).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike
from scipy import special
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted

from engage.models.btyd import FloatArray, _check_rft, _fit_counts

__all__ = ["MBGNBD", "mbgnbd_log_likelihood"]


def mbgnbd_log_likelihood(
    params: ArrayLike, frequency: ArrayLike, recency: ArrayLike, T: ArrayLike
) -> FloatArray:
    """Per-customer MBG/NBD log-likelihood for params (r, alpha, a, b).

    L = B(a, b+x+1)/B(a, b) * Gamma(r+x) alpha^r / Gamma(r)
        * [(alpha+T)^-(r+x) + a/(b+x) * (alpha+t_x)^-(r+x)]   (the second term also at x = 0).
    """
    r, alpha, a, b = (float(v) for v in np.asarray(params, dtype=float))
    x = np.asarray(frequency, dtype=float)
    t_x = np.asarray(recency, dtype=float)
    big_t = np.asarray(T, dtype=float)
    a1 = special.gammaln(r + x) - special.gammaln(r) + r * np.log(alpha)
    a2 = special.betaln(a, b + x + 1) - special.betaln(a, b)
    a3 = -(r + x) * np.log(alpha + big_t)
    a4 = np.log(a) - np.log(b + x) - (r + x) * np.log(alpha + t_x)
    return a1 + a2 + np.logaddexp(a3, a4)


class MBGNBD(BaseEstimator):
    """MBG/NBD repeat-purchase model fitted by maximum likelihood (scikit-learn style).

    ``fit(frequency, recency, T)`` sets ``params_`` = {"r", "alpha", "a", "b"}, the maximised
    ``log_likelihood_``, ``n_customers_`` and ``converged_``; ``penalizer`` adds
    ``penalizer * sum(params**2)`` to the negative mean log-likelihood (0 = plain maximum likelihood).
    """

    def __init__(self, *, penalizer: float = 0.0, maxiter: int = 4000) -> None:
        self.penalizer = penalizer
        self.maxiter = maxiter

    def fit(
        self,
        frequency: ArrayLike,
        recency: ArrayLike,
        T: ArrayLike,
        weights: ArrayLike | None = None,
    ) -> MBGNBD:
        """Fit (r, alpha, a, b); ``weights`` counts customers sharing one (x, t_x, T) row."""
        fit = _fit_counts(
            mbgnbd_log_likelihood, frequency, recency, T, weights, self.penalizer, self.maxiter, "MBG/NBD"
        )
        self.params_, self.log_likelihood_, self.n_customers_, self.converged_ = fit
        return self

    def _params(self) -> tuple[float, float, float, float]:
        params = self.params_
        return params["r"], params["alpha"], params["a"], params["b"]

    def p_alive(self, frequency: ArrayLike, recency: ArrayLike, T: ArrayLike) -> FloatArray:
        """P(customer still active at T | x, t_x, T); below 1 also for customers without repeats."""
        check_is_fitted(self, "params_")
        r, alpha, a, b = self._params()
        x, t_x, big_t = _check_rft(frequency, recency, T)
        log_odds = np.log(a) - np.log(b + x) + (r + x) * (np.log(alpha + big_t) - np.log(alpha + t_x))
        return np.exp(-np.logaddexp(0.0, log_odds))

    def expected_purchases(
        self, t: float | ArrayLike, frequency: ArrayLike, recency: ArrayLike, T: ArrayLike
    ) -> FloatArray:
        """Expected number of purchases in (T, T + t] given each customer's (x, t_x, T)."""
        check_is_fitted(self, "params_")
        r, alpha, a, b = self._params()
        x, t_x, big_t = _check_rft(frequency, recency, T)
        horizon = np.broadcast_to(np.asarray(t, dtype=float), x.shape)
        if np.any(horizon < 0):
            raise ValueError("t (future window length) must be >= 0")
        z = horizon / (alpha + big_t + horizon)
        hyp = special.hyp2f1(r + x, b + x + 1, a + b + x, z)
        ratio = np.exp((r + x) * (np.log(alpha + big_t) - np.log(alpha + big_t + horizon)))
        numer = (a + b + x) / (a - 1) * (1 - ratio * hyp)
        return numer * self.p_alive(x, t_x, big_t)

    def expected_purchases_new(self, t: float | ArrayLike) -> FloatArray:
        """Expected repeat purchases in (0, t] for a randomly chosen new customer, E[X(t)]."""
        check_is_fitted(self, "params_")
        r, alpha, a, b = self._params()
        horizon = np.asarray(t, dtype=float)
        hyp = special.hyp2f1(r, b + 1, a + b, horizon / (alpha + horizon))
        return b / (a - 1) * (1 - (alpha / (alpha + horizon)) ** r * hyp)
