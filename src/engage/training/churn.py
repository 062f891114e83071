"""Training orchestration: data -> snapshots -> models -> metrics, plots and the MLflow record.

Pure steps (``fit_churn``) are separated from the tracked run (``train_churn``) so that a notebook
can fit and look without MLflow, and a job gets the full record with one call.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
import polars as pl

from engage import schemas as s
from engage import tracking
from engage.config import EngageConfig
from engage.evaluation.classification import classification_metrics
from engage.evaluation.delong import auc_differences
from engage.events import fingerprint
from engage.explain import ReasonExplainer, global_drivers
from engage.features import feature_descriptions
from engage.labels import build_training_table, check_sufficiency
from engage.models.bundle import ChurnBundle
from engage.models.churn import ChurnModel, LogisticBaseline, RecencyBaseline, out_of_time_split
from engage.plots import churn as churn_plots
from engage.training.registry import Dataset, record_and_promote
from engage.training.value import add_btyd_features, fit_value

__all__ = [
    "ChurnFit",
    "ChurnTrainingResult",
    "btyd_scores",
    "build_churn_table",
    "champion_gate",
    "feature_columns",
    "fit_churn",
    "oracle_scores",
    "snapshot_range",
    "train_churn",
]

Progress = Callable[[int, int], None]
ID_COLUMNS = (s.USER_ID, s.AS_OF, s.LABEL)


def snapshot_range(events: pl.DataFrame, config: EngageConfig) -> tuple[datetime, datetime]:
    """Default snapshot dates: from one period after the first event day to one horizon before the last.

    Later snapshots would have labels that read past the end of the log.
    """
    first = events[s.TS].min()
    last = events[s.TS].max()
    if not isinstance(first, datetime) or not isinstance(last, datetime):
        raise ValueError("no events: cannot place snapshot dates")
    first_day = first.replace(hour=0, minute=0, second=0, microsecond=0)
    start = first_day + timedelta(days=config.labels.every_days)
    end = last - timedelta(days=config.labels.horizon_days + config.labels.lead_days)
    if end < start:
        raise ValueError(
            f"the log spans {first:%Y-%m-%d} .. {last:%Y-%m-%d}: too short for one "
            f"{config.labels.every_days}-day period of history plus a "
            f"{config.labels.horizon_days}-day label horizon"
        )
    return start, end


@dataclass
class ChurnFit:
    """Everything a churn fit produced, before anything is tracked."""

    bundle: ChurnBundle
    metrics: dict[str, float]
    drivers: pd.DataFrame
    figures: dict[str, Any]
    test: pd.DataFrame
    test_probability: np.ndarray
    split_dates: dict[str, list[str]] = field(default_factory=dict)


def feature_columns(table: pd.DataFrame) -> list[str]:
    return [c for c in table.columns if c not in ID_COLUMNS]


def fit_churn(
    table: pd.DataFrame,
    config: EngageConfig,
    *,
    descriptions: dict[str, str],
    states: pl.DataFrame | None = None,
    events: pl.DataFrame | None = None,
) -> ChurnFit:
    """Out-of-time split, LightGBM + calibration, baselines, metrics, reasons and plots.

    With ``events``, a BG/NBD baseline (1 - P(alive), fitted on purchases before each test date)
    is scored too (``oot_auc_btyd``); with the simulator's ``states``, the oracle AUC.
    """
    train, calib, test = out_of_time_split(table, validation_snapshots=config.churn.validation_snapshots)
    columns = feature_columns(table)
    cc = config.churn
    model = ChurnModel.from_config(cc, seed=config.seed).fit(
        train[columns], train[s.LABEL], X_calib=calib[columns], y_calib=calib[s.LABEL]
    )
    logreg = LogisticBaseline().fit(train[columns], train[s.LABEL])
    recency = RecencyBaseline().fit(train[columns], train[s.LABEL])

    y_test = test[s.LABEL].to_numpy()
    scores = {
        "lightgbm": model.predict_proba(test[columns])[:, 1],
        "logreg": logreg.predict_proba(test[columns])[:, 1],
        "recency": recency.predict_proba(test[columns])[:, 1],
    }
    metrics = classification_metrics(y_test, scores["lightgbm"])
    metrics |= classification_metrics(y_test, scores["logreg"], suffix="_logreg")
    metrics |= classification_metrics(y_test, scores["recency"], suffix="_recency")
    metrics |= {
        "rows_train": float(len(train)),
        "rows_calib": float(len(calib)),
        "rows_test": float(len(test)),
        "base_rate_train": float(train[s.LABEL].mean()),
        "base_rate_test": float(y_test.mean()),
        "best_iteration": float(model.best_iteration_),
    }
    if events is not None:
        btyd = btyd_scores(events, test, kind=config.value.model, horizon_days=config.labels.horizon_days)
        if btyd is not None:
            scores["btyd"] = btyd
            metrics |= classification_metrics(y_test, btyd, suffix="_btyd")
    metrics |= auc_differences(y_test, scores)
    oracle = oracle_scores(test, states, config.labels.horizon_days)
    if oracle is not None:
        from sklearn.metrics import roc_auc_score

        known = ~np.isnan(oracle)
        metrics["oracle_auc"] = float(roc_auc_score(y_test[known], oracle[known]))
        metrics["oot_auc_on_oracle_rows"] = float(roc_auc_score(y_test[known], scores["lightgbm"][known]))

    explainer = ReasonExplainer(descriptions=descriptions, top_k=cc.reasons_top_k).fit(train[columns])
    contributions = model.contributions(test[columns])
    drivers = global_drivers(contributions, test[columns], test[s.LABEL])
    bundle = ChurnBundle(
        model=model,
        explainer=explainer,
        feature_names=columns,
        thresholds=cc.risk_bands,
        metadata={"trained_through": str(test[s.AS_OF].max())},
        value=None if events is None else fit_value(events, table, config),
    )
    top = [f for f in drivers["feature"].head(3) if f in columns]
    figures = {
        "roc": churn_plots.roc_figure(y_test, scores),
        "precision_recall": churn_plots.pr_figure(y_test, scores),
        "calibration": churn_plots.calibration_figure(y_test, scores),
        "gain_lift": churn_plots.gain_lift_figure(y_test, scores),
        "risk_deciles": churn_plots.risk_decile_figure(y_test, scores["lightgbm"]),
        "shap_summary": churn_plots.shap_summary_figure(contributions, test[columns]),
    }
    for name, figure in churn_plots.dependence_figures(contributions, test[columns], top).items():
        figures[f"dependence_{name}"] = figure
    return ChurnFit(
        bundle=bundle,
        metrics=metrics,
        drivers=drivers,
        figures=figures,
        test=test,
        test_probability=scores["lightgbm"],
        split_dates={
            name: sorted({str(d)[:10] for d in part[s.AS_OF]})
            for name, part in (("train", train), ("calibration", calib), ("test", test))
        },
    )


def oracle_scores(test: pd.DataFrame, states: pl.DataFrame | None, horizon_days: int) -> np.ndarray | None:
    """The simulator's true churn probability for each test row (NaN where unknown), if given."""
    column = f"p_inactive_{horizon_days}d"
    if states is None or column not in states.columns:
        return None
    truth = states.select(
        pl.col(s.USER_ID), pl.col(s.TS).alias(s.AS_OF), pl.col(column).alias("__oracle")
    ).to_pandas()
    keys = test[[s.USER_ID, s.AS_OF]].copy()
    keys[s.AS_OF] = pd.to_datetime(keys[s.AS_OF], utc=True)
    truth[s.AS_OF] = pd.to_datetime(truth[s.AS_OF], utc=True)
    joined = keys.merge(truth, on=[s.USER_ID, s.AS_OF], how="left")
    values = joined["__oracle"].to_numpy(dtype=float)
    return None if np.isnan(values).all() else values


def btyd_scores(
    events: pl.DataFrame,
    test: pd.DataFrame,
    *,
    kind: str = "mbgnbd",
    horizon_days: float = 30.0,
    score: str = "no_purchase",
) -> np.ndarray | None:
    """BTYD churn baseline per test row from a ``kind`` model (``mbgnbd``/``bgnbd``) fitted on
    purchases before that row's as_of: P(no purchase in ``horizon_days``) (``score="no_purchase"``)
    or 1 - P(alive) (``score="p_alive"``, which ranks slow live buyers as safe).

    Users with no purchase before as_of are outside the BTYD population; they get the highest
    churn score seen (a user who never bought is the likeliest to be gone). None when too few buyers.
    """
    from engage.models.btyd import P_ALIVE
    from engage.models.btyd_snapshots import NO_PURCHASE, snapshot_btyd

    purchases = events.filter(pl.col(s.EVENT_TYPE) == "purchase").select(s.USER_ID, s.TS).to_pandas()
    found = snapshot_btyd(purchases, test[[s.USER_ID, s.AS_OF]], kind=kind, horizon_days=horizon_days)
    alive = found[P_ALIVE].to_numpy(dtype=float)
    out = found[NO_PURCHASE].to_numpy(dtype=float) if score == "no_purchase" else 1.0 - alive
    if np.isnan(out).all():
        return None
    return np.where(np.isnan(out), np.nanmax(out), out)


@dataclass
class ChurnTrainingResult:
    """What a tracked churn training run left behind."""

    run_id: str
    model_uri: str
    version: str | None
    promoted: bool
    metrics: dict[str, float]
    drivers: pd.DataFrame
    fit: ChurnFit


def build_churn_table(
    events: pl.DataFrame,
    config: EngageConfig,
    *,
    users: pl.DataFrame | None = None,
    exposures: pl.DataFrame | None = None,
    progress: Progress | None = None,
) -> pd.DataFrame:
    """The stacked snapshot table over the default date range, checked for sufficiency."""
    start, end = snapshot_range(events, config)
    table = build_training_table(
        events,
        start,
        end,
        feature_config=config.features,
        label_config=config.labels,
        users=users,
        exposures=exposures,
        engine=config.features.engine,
        progress=progress,
    )
    check_sufficiency(table, config.labels)
    return add_btyd_features(table, events, config) if config.churn.btyd_features else table


def train_churn(
    events: pl.DataFrame,
    config: EngageConfig,
    *,
    users: pl.DataFrame | None = None,
    exposures: pl.DataFrame | None = None,
    states: pl.DataFrame | None = None,
    run_name: str = "churn",
    progress: Progress | None = None,
    table: pd.DataFrame | None = None,
) -> ChurnTrainingResult:
    """Build snapshots, fit, log everything to MLflow, register, and apply the champion gate."""
    if table is None:
        table = build_churn_table(events, config, users=users, exposures=exposures, progress=progress)
    descriptions = feature_descriptions(config.features)
    fit = fit_churn(table, config, descriptions=descriptions, states=states, events=events)
    table_stamp = {
        "rows": len(table),
        "users": table[s.USER_ID].nunique(),
        "snapshots": table[s.AS_OF].nunique(),
        **{f"{k}_dates": ",".join(v) for k, v in fit.split_dates.items()},
    }
    data_stamp = fingerprint(events)
    done = record_and_promote(
        fit.bundle,
        config,
        kind="churn",
        model_name=config.tracking.churn_model_name,
        run_name=run_name,
        input_example=fit.test[fit.bundle.feature_names].head(5),
        metrics=fit.metrics,
        gate=lambda name: champion_gate(
            name, fit.test, fit.test_probability, margin=config.churn.promote_margin
        ),
        fingerprints={"data": data_stamp, "table": table_stamp},
        figures=fit.figures,
        frames={"drivers.csv": fit.drivers},
        datasets=[Dataset(table, name="churn_table", source=None, digest=str(data_stamp["sha256"]))],
    )
    return ChurnTrainingResult(
        run_id=done.run_id,
        model_uri=done.model_uri,
        version=done.version,
        promoted=done.promoted,
        metrics=fit.metrics,
        drivers=fit.drivers,
        fit=fit,
    )


def champion_gate(
    model_name: str, test: pd.DataFrame, challenger_probability: np.ndarray, *, margin: float
) -> tuple[bool, dict[str, float]]:
    """Promote when the challenger's AUC beats the current champion's on the same rows by ``margin``.

    The champion is re-scored on this run's validation rows, so both are judged on the same data.
    A champion that cannot score these rows (features changed) is not replaced automatically.
    """
    from sklearn.metrics import roc_auc_score

    y = test[s.LABEL].to_numpy()
    challenger_auc = float(roc_auc_score(y, challenger_probability))
    if tracking.alias_version(model_name, tracking.CHAMPION) is None:
        return True, {"gate_challenger_auc": challenger_auc, "gate_promoted": 1.0, "gate_no_champion": 1.0}
    try:
        champion = tracking.load_estimator(f"models:/{model_name}@{tracking.CHAMPION}")
        if not isinstance(champion, ChurnBundle):
            raise TypeError(f"the {model_name} champion holds a {type(champion).__name__}")
        champion_auc = float(roc_auc_score(y, champion.churn_probability(test)))
    except Exception:  # an incompatible champion must not crash training
        return False, {
            "gate_challenger_auc": challenger_auc,
            "gate_promoted": 0.0,
            "gate_champion_failed": 1.0,
        }
    promoted = challenger_auc > champion_auc + margin
    return promoted, {
        "gate_challenger_auc": challenger_auc,
        "gate_champion_auc": champion_auc,
        "gate_margin": margin,
        "gate_promoted": float(promoted),
    }
