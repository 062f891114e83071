"""Buy-'til-you-die baselines: BG/NBD (purchase counts, P(alive)) and Gamma-Gamma (spend).

BG/NBD (Fader, Hardie & Lee 2005, "Counting your customers the easy way") models each customer
as buying at a Poisson rate lambda ~ Gamma(r, alpha) until dropping out, which happens after any
repeat purchase with probability p ~ Beta(a, b). From a customer's (frequency, recency, T) it gives
P(alive) — so ``1 - p_alive`` is a churn baseline — and the expected number of purchases in a
future window; both also serve as features for the churn model.

Gamma-Gamma (Fader, Hardie & Lee 2005, "RFM and CLV") models the mean spend per transaction of
customers with repeat purchases, assuming spend is independent of frequency.

Everything here is pure: summaries are computed from a DataFrame and a calibration end given as
parameters, fits use scipy's optimizer on a log-likelihood written with ``gammaln``/``logaddexp``
so large frequencies do not overflow.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, datetime
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike, NDArray
from scipy import optimize, special
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted

FREQUENCY = "frequency"
RECENCY = "recency"
T_COL = "T"
MONETARY_VALUE = "monetary_value"

_UNIT_DAYS: dict[str, float] = {"D": 1.0, "W": 7.0}

FloatArray = NDArray[np.float64]


# --- RFM summary -----------------------------------------------------------------------------


def _as_pandas(frame: Any) -> pd.DataFrame:
    """Accept a pandas or polars DataFrame (polars is converted) so callers need not care."""
    if isinstance(frame, pd.DataFrame):
        return frame
    to_pandas = getattr(frame, "to_pandas", None)
    if callable(to_pandas):
        return to_pandas()
    raise TypeError(f"expected a pandas or polars DataFrame, got {type(frame).__name__}")


def _day_floor(ts: pd.Series, calibration_end: Any) -> tuple[pd.Series, pd.Timestamp]:
    """Timestamps and the calibration end floored to calendar days, in the same time zone."""
    ts = pd.to_datetime(ts)
    end = pd.Timestamp(calibration_end)
    tz = getattr(ts.dt, "tz", None)
    if tz is not None and end.tzinfo is None:
        end = end.tz_localize(tz)
    elif tz is None and end.tzinfo is not None:
        end = end.tz_convert("UTC").tz_localize(None)
    elif tz is not None:
        end = end.tz_convert(tz)
    return ts.dt.floor("D"), end.floor("D")


def rfm_summary(
    transactions: Any,
    user_col: str,
    ts_col: str,
    calibration_end: str | date | datetime | pd.Timestamp,
    unit: str = "W",
    amount_col: str | None = None,
) -> pd.DataFrame:
    """Per-user frequency, recency and T (and mean repeat spend) up to ``calibration_end``.

    Time is counted at calendar-day resolution, as in the BTYD literature: several transactions
    on one day are one purchase day. ``frequency`` is the number of repeat purchase days (purchase
    days minus one), ``recency`` the time from the first to the last purchase day and ``T`` the
    time from the first purchase day to ``calibration_end`` (inclusive: transactions on that day
    count), both in ``unit`` ("D" days or "W" weeks). Users whose first purchase is after
    ``calibration_end`` are left out. With ``amount_col``, ``monetary_value`` is the mean of the
    per-day spend over the repeat purchase days (0 for users without repeat purchases) — the input
    Gamma-Gamma expects. Rows are sorted by user, one per user, ``user_col`` as a column.
    """
    if unit not in _UNIT_DAYS:
        raise ValueError(f"unit must be one of {sorted(_UNIT_DAYS)}, got {unit!r}")
    frame = _as_pandas(transactions)
    needed = [user_col, ts_col] + ([amount_col] if amount_col is not None else [])
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        raise KeyError(f"rfm_summary: missing column(s) {missing}; have {list(frame.columns)}")
    days, end = _day_floor(frame[ts_col], calibration_end)
    if days.isna().any():
        row = int(days.isna().to_numpy().argmax()) + 1
        raise ValueError(f"rfm_summary: column {ts_col!r} has a missing timestamp (row {row})")
    data = pd.DataFrame({user_col: frame[user_col].to_numpy(), "_day": days.array})
    if amount_col is not None:
        data["_amount"] = pd.to_numeric(frame[amount_col]).to_numpy(dtype=float)
    data = data[(data["_day"] <= end).to_numpy()]
    per_day = data.groupby([user_col, "_day"], sort=True, observed=True)
    daily = per_day["_amount"].sum().reset_index() if amount_col is not None else per_day.size().reset_index()
    grouped = daily.groupby(user_col, sort=True, observed=True)["_day"]
    first, last, n_days = grouped.min(), grouped.max(), grouped.size()
    scale = pd.Timedelta(days=_UNIT_DAYS[unit])
    out = pd.DataFrame(
        {
            FREQUENCY: (n_days - 1).astype(float),
            RECENCY: (last - first) / scale,
            T_COL: (end - first) / scale,
        }
    )
    if amount_col is not None:
        is_repeat = daily["_day"] != daily[user_col].map(first)
        repeat_mean = (
            daily[is_repeat.to_numpy()].groupby(user_col, sort=True, observed=True)["_amount"].mean()
        )
        out[MONETARY_VALUE] = repeat_mean.reindex(out.index).fillna(0.0)
    out.index.name = user_col
    return out.reset_index()


# --- helpers ---------------------------------------------------------------------------------


def _as_float_array(name: str, values: ArrayLike) -> FloatArray:
    arr = np.asarray(values, dtype=float)
    if arr.ndim != 1:
        arr = arr.reshape(-1)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return arr


def _check_rft(frequency: ArrayLike, recency: ArrayLike, T: ArrayLike) -> tuple[FloatArray, ...]:
    """Validate (frequency, recency, T) as the BG/NBD needs them and return float arrays."""
    x = _as_float_array("frequency", frequency)
    t_x = _as_float_array("recency", recency)
    big_t = _as_float_array("T", T)
    if not (len(x) == len(t_x) == len(big_t)):
        raise ValueError(f"frequency, recency and T differ in length: {len(x)}, {len(t_x)}, {len(big_t)}")
    if np.any(x < 0) or np.any(x != np.round(x)):
        raise ValueError("frequency must be non-negative whole numbers (repeat purchase counts)")
    if np.any(t_x < 0) or np.any(t_x > big_t + 1e-9):
        raise ValueError("recency must lie in [0, T]")
    if np.any((x == 0) & (t_x != 0)):
        raise ValueError("recency must be 0 when frequency is 0")
    return x, t_x, big_t


def _fit_log_params(
    neg_ll: Callable[[FloatArray], float], start: FloatArray, maxiter: int
) -> tuple[FloatArray, float, bool]:
    """Minimise a negative log-likelihood over log-parameters (keeps parameters positive)."""
    result = optimize.minimize(
        neg_ll, start, method="Nelder-Mead", options={"maxiter": maxiter, "xatol": 1e-7, "fatol": 1e-9}
    )
    polished = optimize.minimize(neg_ll, result.x, method="BFGS", options={"maxiter": maxiter, "gtol": 1e-6})
    best = polished if polished.fun <= result.fun and np.all(np.isfinite(polished.x)) else result
    return np.exp(best.x), float(best.fun), bool(best.success or result.success)


LogLikelihood = Callable[[ArrayLike, ArrayLike, ArrayLike, ArrayLike], FloatArray]


def _fit_counts(
    log_likelihood: LogLikelihood,
    frequency: ArrayLike,
    recency: ArrayLike,
    T: ArrayLike,
    weights: ArrayLike | None,
    penalizer: float,
    maxiter: int,
    name: str,
) -> tuple[dict[str, float], float, int, bool]:
    """Maximum likelihood (r, alpha, a, b) of a BG/NBD-family model: the fit BG/NBD and MBG/NBD share.

    Identical (x, t_x, T) rows collapse to one weighted row (many (0, 0, T) customers), and
    ``penalizer * sum(params**2)`` is added to the negative mean log-likelihood. Returns the
    parameters, the maximised log-likelihood, the number of customers and whether it converged.
    """
    if penalizer < 0:
        raise ValueError(f"penalizer must be >= 0, got {penalizer}")
    x, t_x, big_t = _check_rft(frequency, recency, T)
    if len(x) == 0:
        raise ValueError(f"cannot fit {name} on zero customers")
    w = np.ones_like(x) if weights is None else _as_float_array("weights", weights)
    if len(w) != len(x) or np.any(w < 0):
        raise ValueError("weights must be non-negative and as long as frequency")
    keys = np.stack([x, t_x, big_t], axis=1)
    uniq, inverse = np.unique(keys, axis=0, return_inverse=True)
    uw = np.bincount(inverse.reshape(-1), weights=w, minlength=len(uniq))
    total = uw.sum()

    def neg_ll(log_params: FloatArray) -> float:
        params = np.exp(log_params)
        ll = log_likelihood(params, uniq[:, 0], uniq[:, 1], uniq[:, 2])
        value = -float(np.dot(uw, ll)) / total + penalizer * float(np.sum(params**2))
        return value if np.isfinite(value) else 1e300

    scale = max(float(np.mean(big_t)), 1e-9)
    start = np.log(np.array([1.0, scale, 1.0, 1.0]))
    params, fun, converged = _fit_log_params(neg_ll, start, maxiter)
    named = dict(zip(("r", "alpha", "a", "b"), (float(p) for p in params), strict=True))
    return named, -fun * total, round(total), converged


# --- BG/NBD ----------------------------------------------------------------------------------


def bgnbd_log_likelihood(
    params: ArrayLike, frequency: ArrayLike, recency: ArrayLike, T: ArrayLike
) -> FloatArray:
    """Per-customer BG/NBD log-likelihood for params (r, alpha, a, b); stable for large frequency."""
    r, alpha, a, b = (float(v) for v in np.asarray(params, dtype=float))
    x = np.asarray(frequency, dtype=float)
    t_x = np.asarray(recency, dtype=float)
    big_t = np.asarray(T, dtype=float)
    a1 = special.gammaln(r + x) - special.gammaln(r) + r * np.log(alpha)
    a2 = special.betaln(a, b + x) - special.betaln(a, b)
    a3 = -(r + x) * np.log(alpha + big_t)
    with np.errstate(divide="ignore", invalid="ignore"):
        a4 = np.where(
            x > 0,
            np.log(a) - np.log(np.maximum(b + x - 1, 1e-300)) - (r + x) * np.log(alpha + t_x),
            -np.inf,
        )
    return a1 + a2 + np.logaddexp(a3, a4)


class BGNBD(BaseEstimator):
    """BG/NBD repeat-purchase model fitted by maximum likelihood (scikit-learn style).

    ``fit(frequency, recency, T)`` sets ``params_`` = {"r", "alpha", "a", "b"}, the maximised
    ``log_likelihood_`` and ``n_customers_``. ``penalizer`` adds ``penalizer * sum(params**2)`` to
    the negative mean log-likelihood (0 = plain maximum likelihood, as in the paper).
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
    ) -> BGNBD:
        """Fit (r, alpha, a, b); ``weights`` counts customers sharing one (x, t_x, T) row."""
        fit = _fit_counts(
            bgnbd_log_likelihood, frequency, recency, T, weights, self.penalizer, self.maxiter, "BG/NBD"
        )
        self.params_, self.log_likelihood_, self.n_customers_, self.converged_ = fit
        return self

    def _params(self) -> tuple[float, float, float, float]:
        params = self.params_
        return params["r"], params["alpha"], params["a"], params["b"]

    def _log_dropout_odds(self, x: FloatArray, t_x: FloatArray, big_t: FloatArray) -> FloatArray:
        """log of a/(b+x-1) * ((alpha+T)/(alpha+t_x))^(r+x) for x > 0, -inf for x = 0."""
        r, alpha, a, b = self._params()
        with np.errstate(divide="ignore", invalid="ignore"):
            odds = (
                np.log(a)
                - np.log(np.maximum(b + x - 1, 1e-300))
                + (r + x) * (np.log(alpha + big_t) - np.log(alpha + t_x))
            )
        return np.where(x > 0, odds, -np.inf)

    def p_alive(self, frequency: ArrayLike, recency: ArrayLike, T: ArrayLike) -> FloatArray:
        """P(customer still active at T | x, t_x, T); 1 for customers without repeat purchases."""
        check_is_fitted(self, "params_")
        x, t_x, big_t = _check_rft(frequency, recency, T)
        return np.exp(-np.logaddexp(0.0, self._log_dropout_odds(x, t_x, big_t)))

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
        hyp = special.hyp2f1(r + x, b + x, a + b + x - 1, z)
        ratio = np.exp((r + x) * (np.log(alpha + big_t) - np.log(alpha + big_t + horizon)))
        numer = (a + b + x - 1) / (a - 1) * (1 - ratio * hyp)
        return numer * self.p_alive(x, t_x, big_t)

    def expected_purchases_new(self, t: float | ArrayLike) -> FloatArray:
        """Expected repeat purchases in (0, t] for a randomly chosen new customer, E[X(t)]."""
        check_is_fitted(self, "params_")
        r, alpha, a, b = self._params()
        horizon = np.asarray(t, dtype=float)
        hyp = special.hyp2f1(r, b, a + b - 1, horizon / (alpha + horizon))
        return (a + b - 1) / (a - 1) * (1 - (alpha / (alpha + horizon)) ** r * hyp)


def simulate_bgnbd(
    n_customers: int,
    T: float | ArrayLike,
    r: float,
    alpha: float,
    a: float,
    b: float,
    seed: int,
    horizon: float = 0.0,
) -> pd.DataFrame:
    """Draw customers from a BG/NBD with known parameters (for tests and benchmarks).

    Each customer makes a first purchase at time 0, then buys at a Poisson rate until dropping
    out (probability p after each repeat purchase). Returns frequency, recency and T over (0, T]
    and ``holdout`` = purchases in (T, T + horizon].
    """
    rng = np.random.default_rng(seed)
    big_t = np.broadcast_to(np.asarray(T, dtype=float), (n_customers,)).copy()
    lam = rng.gamma(shape=r, scale=1.0 / alpha, size=n_customers)
    p = rng.beta(a, b, size=n_customers)
    end = big_t + horizon
    now = np.zeros(n_customers)
    x = np.zeros(n_customers)
    t_x = np.zeros(n_customers)
    holdout = np.zeros(n_customers)
    active = lam > 0
    while np.any(active):
        idx = np.flatnonzero(active)
        now[idx] += rng.exponential(1.0 / lam[idx])
        bought = now[idx] <= end[idx]
        idx_b = idx[bought]
        in_cal = now[idx_b] <= big_t[idx_b]
        x[idx_b[in_cal]] += 1
        t_x[idx_b[in_cal]] = now[idx_b[in_cal]]
        holdout[idx_b[~in_cal]] += 1
        active[idx[~bought]] = False
        dies = rng.random(len(idx_b)) < p[idx_b]
        active[idx_b[dies]] = False
    return pd.DataFrame({FREQUENCY: x, RECENCY: t_x, T_COL: big_t, "holdout": holdout})


# --- Gamma-Gamma -----------------------------------------------------------------------------


def gamma_gamma_log_likelihood(
    params: ArrayLike, frequency: ArrayLike, monetary_value: ArrayLike
) -> FloatArray:
    """Per-customer Gamma-Gamma log-likelihood of mean spend ``monetary_value`` over x purchases."""
    p, q, v = (float(val) for val in np.asarray(params, dtype=float))
    x = np.asarray(frequency, dtype=float)
    m = np.asarray(monetary_value, dtype=float)
    return (
        special.gammaln(p * x + q)
        - special.gammaln(p * x)
        - special.gammaln(q)
        + q * np.log(v)
        + (p * x - 1) * np.log(m)
        + p * x * np.log(x)
        - (p * x + q) * np.log(v + x * m)
    )


class GammaGamma(BaseEstimator):
    """Gamma-Gamma spend model: per-transaction spend ~ Gamma(p, nu), nu ~ Gamma(q, v).

    Fitted on customers with at least one repeat purchase (frequency > 0) and positive mean
    spend; ``params_`` = {"p", "q", "v"}. ``conditional_expected_spend`` shrinks each customer's
    observed mean towards the population mean, more so for customers with few purchases.
    """

    def __init__(self, *, penalizer: float = 0.0, maxiter: int = 4000) -> None:
        self.penalizer = penalizer
        self.maxiter = maxiter

    def fit(self, frequency: ArrayLike, monetary_value: ArrayLike) -> GammaGamma:
        """Fit (p, q, v) on the rows with frequency > 0 and monetary_value > 0."""
        if self.penalizer < 0:
            raise ValueError(f"penalizer must be >= 0, got {self.penalizer}")
        x = _as_float_array("frequency", frequency)
        m = _as_float_array("monetary_value", monetary_value)
        if len(x) != len(m):
            raise ValueError(f"frequency and monetary_value differ in length: {len(x)}, {len(m)}")
        keep = (x > 0) & (m > 0)
        if not np.any(keep):
            raise ValueError("Gamma-Gamma needs customers with frequency > 0 and monetary_value > 0")
        x, m = x[keep], m[keep]

        def neg_ll(log_params: FloatArray) -> float:
            params = np.exp(log_params)
            ll = gamma_gamma_log_likelihood(params, x, m)
            value = -float(np.mean(ll)) + self.penalizer * float(np.sum(params**2))
            return value if np.isfinite(value) else 1e300

        start = np.log(np.array([1.0, 1.0, max(float(np.mean(m)), 1e-9)]))
        params, fun, converged = _fit_log_params(neg_ll, start, self.maxiter)
        self.params_ = dict(zip(("p", "q", "v"), (float(val) for val in params), strict=True))
        self.log_likelihood_ = -fun * len(x)
        self.n_customers_ = len(x)
        self.converged_ = converged
        return self

    def conditional_expected_spend(self, frequency: ArrayLike, monetary_value: ArrayLike) -> FloatArray:
        """E[mean spend per transaction | x, observed mean]; population mean where x = 0."""
        check_is_fitted(self, "params_")
        p, q, v = self.params_["p"], self.params_["q"], self.params_["v"]
        if q <= 1:
            raise ValueError(f"fitted q = {q:.3f} <= 1: the population mean spend is undefined")
        x = _as_float_array("frequency", frequency)
        m = _as_float_array("monetary_value", monetary_value)
        if len(x) != len(m):
            raise ValueError(f"frequency and monetary_value differ in length: {len(x)}, {len(m)}")
        return p * (v + x * m) / (p * x + q - 1)


# --- churn baseline and features -------------------------------------------------------------

P_ALIVE = "btyd_p_alive"
CHURN_BASELINE = "btyd_churn_probability"


def expected_purchases_column(horizon: float, unit: str = "W") -> str:
    """Deterministic feature name for the expected purchases in the next ``horizon`` units."""
    return f"btyd_expected_purchases_{horizon:g}{unit.lower()}"


def btyd_features(
    transactions: Any,
    user_col: str,
    ts_col: str,
    as_of: str | date | datetime | pd.Timestamp,
    model: BGNBD,
    horizons: tuple[float, ...] = (4.0,),
    unit: str = "W",
) -> pd.DataFrame:
    """Point-in-time BG/NBD features per user as of ``as_of`` from a fitted ``model``.

    Uses only transactions with ``ts < as_of`` (the point-in-time rule), so events at or after
    ``as_of`` cannot change the result. Returns ``user_col``, frequency, recency, T,
    ``btyd_p_alive``, ``btyd_churn_probability`` (= 1 - P(alive), the churn baseline) and one
    ``btyd_expected_purchases_<h><unit>`` column per horizon. Users with no purchase before
    ``as_of`` are absent: the caller decides how to fill them.
    """
    frame = _as_pandas(transactions)
    if ts_col not in frame.columns:
        raise KeyError(f"btyd_features: missing column {ts_col!r}; have {list(frame.columns)}")
    ts = pd.to_datetime(frame[ts_col])
    cutoff = pd.Timestamp(as_of)
    if ts.dt.tz is not None and cutoff.tzinfo is None:
        cutoff = cutoff.tz_localize(ts.dt.tz)
    elif ts.dt.tz is None and cutoff.tzinfo is not None:
        cutoff = cutoff.tz_convert("UTC").tz_localize(None)
    before = frame[(ts < cutoff).to_numpy()]
    out = rfm_summary(before, user_col, ts_col, cutoff, unit=unit)
    x, t_x, big_t = out[FREQUENCY], out[RECENCY], out[T_COL]
    alive = model.p_alive(x, t_x, big_t)
    out[P_ALIVE] = alive
    out[CHURN_BASELINE] = 1.0 - alive
    for horizon in horizons:
        out[expected_purchases_column(horizon, unit)] = model.expected_purchases(horizon, x, t_x, big_t)
    return out
