"""How much of the simulator's oracle AUC any model of the observable history can reach.

    .venv/bin/python benchmarks/churn_bound.py --data DIR [--every-days 14]

DIR holds ``engage simulate`` output (events, users, states parquet). The churn table is built as
``engage train churn`` builds it, split out of time the same way, and on its test rows this prints:

- ``oracle_auc``: the simulator's true P(no event in 30 days), which reads the hidden state
  (alive or churned, engagement level, activity and drift class);
- ``filter_auc``: a Bayes forward filter that knows the simulator's exact parameters but sees only
  what a model sees, each user's daily session counts (plus signup date and consent flags), and
  scores P(no event in 30 days) with the simulator's own no-event tables. Opens, purchases and
  campaign effects on engagement are left out, so this is a near-bound, not an exact one;
- ``model_auc``: the churn model as ``engage train churn`` fits it (``ChurnModel.from_config``)
  on the same split.

If the model's AUC is at or above ``filter_auc``, the remaining gap to ``oracle_auc`` is
structural: it is the value of the hidden state, which no feature recovers.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import polars as pl
from scipy.special import gammaln
from sklearn.metrics import roc_auc_score

from engage import schemas as s
from engage.config import load_config
from engage.datasets import _sim_model as m
from engage.models.churn import ChurnModel, out_of_time_split
from engage.training.churn import build_churn_table, feature_columns, oracle_scores

START = pd.Timestamp("2024-01-01", tz="UTC")  # engage simulate's default start
CAMPAIGN_EVERY_DAYS = 7


def filter_scores(events: pl.DataFrame, users: pl.DataFrame, test: pd.DataFrame, horizon: int) -> np.ndarray:
    """P(no event in ``horizon`` days) per test row from the forward filter over session counts."""
    days = int((events[s.TS].max() - START).days) + 1  # type: ignore[operator]
    ids = users[s.USER_ID].to_list()
    index = {u: i for i, u in enumerate(ids)}
    n = len(ids)
    signup = ((users["signup_ts"].to_pandas() - START).dt.total_seconds() // 86400).to_numpy().astype(int)
    code = np.zeros(n, dtype=int)
    for bit, ch in enumerate(s.CHANNELS):
        if f"consent_{ch}" in users.columns:
            code |= users[f"consent_{ch}"].to_numpy().astype(int) << bit
    sessions = events.filter(pl.col(s.EVENT_TYPE) == "session_start").select(s.USER_ID, s.TS).to_pandas()
    counts = np.zeros((days, n), dtype=np.int16)
    day = ((sessions[s.TS] - START).dt.total_seconds() // 86400).astype(int).to_numpy()
    np.add.at(counts, (day, sessions[s.USER_ID].map(index).to_numpy()), 1)

    k, n_act, n_drift = m.N_LEVELS, len(m.ACTIVITY), len(m.DRIFT_UP)
    trans = np.stack([m.transition_matrix(d) for d in range(n_drift)])
    level_p = np.linspace(0.5, 1.5, k)
    prior_pre = np.concatenate([0.75 * level_p / level_p.sum(), [0.25]])  # users there before day 0
    prior_new = np.zeros(k + 1)
    prior_new[int(0.4 * k) : k] = 1.0 / (k - int(0.4 * k))  # users who sign up during the run
    types = m.ACTIVITY_P[:, None] * m.DRIFT_P[None, :]
    post = np.zeros((n, n_act, n_drift, k + 1))
    post[signup < 0] = types[None, :, :, None] * prior_pre
    campaigns = {t for t in range(days) if t % CAMPAIGN_EVERY_DAYS == 0 and t + 7 <= days}
    arms = [(s.CONTROL_ARM, s.CONTROL_ARM), *m.DEFAULT_MESSAGES]
    n_codes = 1 << len(s.CHANNELS)
    snap = {int((d - START).days): d for d in pd.to_datetime(test[s.AS_OF].unique(), utc=True)}
    start_dow = START.weekday()
    out: dict[pd.Timestamp, np.ndarray] = {}
    levels = np.arange(k)[None, :]
    for t in range(days):
        joined = signup == t
        post[joined] = types[None, :, :, None] * prior_new
        dow = (start_dow + t) % 7
        rate = m.session_rate(levels, m.ACTIVITY[:, None], dow)  # (A, K)
        if t in snap:
            offsets = tuple(o for o in range(1, horizon) if (t + o) in campaigns)
            rest = m.no_event_tables(
                horizon_days=horizon,
                first_dow=dow,
                campaign_offsets=offsets,
                arms=arms,
                consent_codes=n_codes,
                campaign_every_days=CAMPAIGN_EVERY_DAYS,
            )
            day0 = np.ones((n_act, n_codes, k + 1))
            day0[:, :, :k] = np.exp(-rate)[:, None, :]
            if t in campaigns:
                hours = horizon * 24.0 - m.CAMPAIGN_HOUR
                day0 *= m.campaign_no_event(arms, n_codes, m.conversion_in_window(hours, CAMPAIGN_EVERY_DAYS))
            table = np.einsum("acs,adcs->adcs", day0, rest)[:, :, code, :].transpose(2, 0, 1, 3)
            out[snap[t]] = np.einsum("nads,nads->n", post, table)
        c = counts[t].astype(float)[:, None, None]
        emission = np.zeros((n, n_act, 1, k + 1))
        emission[:, :, 0, :k] = np.exp(c * np.log(rate)[None] - rate[None] - gammaln(c + 1))
        emission[:, :, 0, k] = (counts[t] == 0)[:, None]  # churned users make no sessions
        post = np.einsum("nads,dsr->nadr", post * emission, trans)
        total = post.sum(axis=(1, 2, 3), keepdims=True)
        post /= np.where(total > 0, total, 1.0)
    scores = np.full(len(test), np.nan)
    as_of = pd.to_datetime(test[s.AS_OF], utc=True)
    for date, values in out.items():
        rows = (as_of == date).to_numpy()
        scores[rows] = values[test.loc[rows, s.USER_ID].map(index).to_numpy()]
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, required=True, help="engage simulate output folder")
    parser.add_argument("--every-days", type=int, default=14, help="labels.every_days for the snapshots")
    args = parser.parse_args()
    config = load_config(overrides={"labels.every_days": args.every_days})
    events = pl.read_parquet(args.data / "events.parquet")
    users = pl.read_parquet(args.data / "users.parquet")
    states = pl.read_parquet(args.data / "states.parquet")
    table = build_churn_table(events, config, users=users)
    train, calib, test = out_of_time_split(table, validation_snapshots=config.churn.validation_snapshots)
    columns = feature_columns(table)
    model = ChurnModel.from_config(config.churn, seed=config.seed).fit(
        train[columns], train[s.LABEL], X_calib=calib[columns], y_calib=calib[s.LABEL]
    )
    fitted = model.predict_proba(test[columns])[:, 1]
    horizon = config.labels.horizon_days
    y = test[s.LABEL].to_numpy()
    oracle = oracle_scores(test, states, horizon)
    bound = filter_scores(events, users, test, horizon)
    if oracle is None:
        raise SystemExit(f"{args.data}: states has no p_inactive_{horizon}d column")
    ok = ~np.isnan(oracle) & ~np.isnan(bound)
    print(f"test rows: {len(test):,} ({ok.sum():,} scored)")
    for label, values in (
        ("oracle_auc (hidden state)", oracle),
        ("filter_auc (session history, exact model)", bound),
        ("model_auc (ChurnModel.from_config)", fitted),
    ):
        print(f"{label + ':':44}{roc_auc_score(y[ok], values[ok]):.4f}")


if __name__ == "__main__":
    main()
