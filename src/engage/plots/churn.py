"""Churn model plots as matplotlib Figures (no pyplot global state, Agg-safe).

Curve figures take ``scores: {model name: probabilities}`` so LightGBM, logistic regression and the
recency rule are compared on one chart. SHAP figures read ``ChurnModel.contributions`` (LightGBM
``pred_contrib``, identical to TreeExplainer values) and the raw feature values of the same rows;
the summary (beeswarm) is drawn by ``shap`` itself.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TypeAlias

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

from engage.evaluation.classification import lift_table

ArrayLike: TypeAlias = Sequence[float] | np.ndarray | pd.Series
Scores: TypeAlias = Mapping[str, ArrayLike]


def _fig(title: str, size: tuple[float, float] = (6, 4.5)) -> tuple[Figure, Axes]:
    fig = Figure(figsize=size, layout="constrained")
    ax = fig.add_subplot()
    ax.set_title(title)
    return fig, ax


def _check(y: ArrayLike, scores: Scores) -> np.ndarray:
    y_arr = np.asarray(y, dtype=float)
    if not scores:
        raise ValueError("no model scores to plot")
    for name, p in scores.items():
        if len(np.asarray(p)) != len(y_arr):
            raise ValueError(f"scores of {name!r} have {len(np.asarray(p))} rows, labels have {len(y_arr)}")
    return y_arr


def roc_figure(y: ArrayLike, scores: Scores) -> Figure:
    """ROC curves of several models on the out-of-time test, AUC in the legend."""
    y_arr = _check(y, scores)
    fig, ax = _fig("ROC (out-of-time test)")
    for name, p in scores.items():
        fpr, tpr, _ = roc_curve(y_arr, p)
        ax.plot(fpr, tpr, label=f"{name} (AUC {roc_auc_score(y_arr, p):.3f})")
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=0.8, label="random")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.legend(loc="lower right")
    return fig


def pr_figure(y: ArrayLike, scores: Scores) -> Figure:
    """Precision-recall curves of several models, average precision in the legend."""
    y_arr = _check(y, scores)
    fig, ax = _fig("Precision-recall (out-of-time test)")
    for name, p in scores.items():
        precision, recall, _ = precision_recall_curve(y_arr, p)
        ax.plot(recall, precision, label=f"{name} (AP {average_precision_score(y_arr, p):.3f})")
    ax.axhline(float(np.mean(y_arr)), ls="--", c="grey", lw=0.8, label="base rate")
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_ylim(0, 1.02)
    ax.legend(loc="upper right")
    return fig


def calibration_figure(y: ArrayLike, scores: Scores, n_bins: int = 10) -> Figure:
    """Reliability diagram: mean predicted vs observed churn in equal-frequency bins."""
    y_arr = _check(y, scores)
    fig, ax = _fig("Calibration: predicted vs observed churn")
    for name, p in scores.items():
        p_arr = np.asarray(p, dtype=float)
        bins = [b for b in np.array_split(np.argsort(p_arr, kind="stable"), n_bins) if len(b)]
        ax.plot([p_arr[b].mean() for b in bins], [y_arr[b].mean() for b in bins], marker="o", label=name)
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=0.8, label="perfect")
    ax.set_xlabel("mean predicted probability")
    ax.set_ylabel("observed churn rate")
    ax.legend(loc="upper left")
    return fig


def gain_lift_figure(y: ArrayLike, scores: Scores) -> Figure:
    """Cumulative gain (left) and cumulative lift by decile (right) for several models."""
    y_arr = _check(y, scores)
    fig = Figure(figsize=(11, 4.5), layout="constrained")
    gain_ax, lift_ax = fig.subplots(1, 2)
    share = np.arange(1, len(y_arr) + 1) / len(y_arr)
    for name, p in scores.items():
        order = np.argsort(-np.asarray(p, dtype=float), kind="stable")
        gain_ax.plot(share, np.cumsum(y_arr[order]) / max(y_arr.sum(), 1), label=name)
        table = lift_table(y_arr, p)
        lift_ax.plot(table["decile"] * 10, table["cumulative_lift"], marker="o", label=name)
    gain_ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=0.8, label="random")
    gain_ax.set_title("Cumulative gain")
    gain_ax.set_xlabel("share of users contacted (riskiest first)")
    gain_ax.set_ylabel("share of churners reached")
    gain_ax.legend(loc="lower right")
    lift_ax.axhline(1, ls="--", c="grey", lw=0.8)
    lift_ax.set_title("Cumulative lift")
    lift_ax.set_xlabel("% of users contacted (riskiest first)")
    lift_ax.set_ylabel("churn rate / overall churn rate")
    lift_ax.legend(loc="upper right")
    return fig


def risk_decile_figure(y: ArrayLike, p: ArrayLike) -> Figure:
    """Observed churn rate by predicted-risk decile (1 = riskiest), with mean prediction marked."""
    y_arr = np.asarray(y, dtype=float)
    table = lift_table(y_arr, p)
    fig, ax = _fig("Churn rate by risk decile")
    ax.bar(table["decile"], table["churn_rate"], color="tab:red", alpha=0.8, label="observed")
    ax.plot(table["decile"], table["mean_score"], "ko", ms=4, label="mean predicted")
    ax.axhline(float(y_arr.mean()), ls="--", c="grey", label="overall")
    ax.set_xticks(table["decile"].tolist())
    ax.set_xlabel("risk decile (1 = riskiest)")
    ax.set_ylabel("churn rate")
    ax.legend(loc="upper right")
    return fig


def shap_summary_figure(
    contrib: pd.DataFrame, X: pd.DataFrame, max_display: int = 15, seed: int = 0
) -> Figure:
    """SHAP's beeswarm summary, drawn by ``shap`` from the contributions LightGBM already computed.

    ``contrib`` is ``ChurnModel.contributions`` (``pred_contrib``, the same numbers TreeExplainer
    gives, without a second pass over the trees); ``X`` holds the same rows' raw feature values,
    which colour the dots (blue = low, red = high, grey = missing or a string feature). One row per
    feature, the ``max_display`` most important (mean |SHAP value|), the most important on top.
    """
    import shap  # heavy: imported only when a summary is drawn

    if len(contrib) != len(X):
        raise ValueError(f"contributions have {len(contrib)} rows, features have {len(X)}")
    columns = [c for c in contrib.columns if c != "bias"]
    data = pd.DataFrame(
        {c: _plot_values(X[c]) if c in X.columns else np.full(len(X), np.nan) for c in columns}, index=X.index
    )
    explanation = shap.Explanation(
        values=contrib[columns].to_numpy(dtype=float),
        base_values=contrib["bias"].to_numpy(dtype=float) if "bias" in contrib.columns else None,
        data=data,
        feature_names=columns,
    )
    fig = Figure(figsize=(8, 0.4 * min(len(columns), max_display) + 1.6), layout="constrained")
    ax = fig.add_subplot()
    state = np.random.get_state()  # shap jitters the dots with numpy's global generator
    np.random.seed(seed)
    try:
        shap.plots.beeswarm(
            explanation,
            max_display=max_display,
            ax=ax,
            show=False,
            plot_size=None,
            group_remaining_features=False,
            color_bar_label="feature value",
        )
    finally:
        np.random.set_state(state)
    ax.set_xlabel("contribution to churn log-odds (SHAP value)")
    ax.set_title("What drives churn risk (right = more risk)")
    return fig


def _plot_values(values: pd.Series) -> np.ndarray:
    """Numbers as float (NaN for missing); anything else as strings, which shap draws grey."""
    if pd.api.types.is_bool_dtype(values) or pd.api.types.is_numeric_dtype(values):
        return values.astype(float).to_numpy(dtype=float, na_value=np.nan)
    return values.astype("string").fillna("(missing)").to_numpy(dtype=object)


def dependence_figures(contrib: pd.DataFrame, X: pd.DataFrame, features: Sequence[str]) -> dict[str, Figure]:
    """One SHAP dependence plot per feature: value vs contribution (strings: one column per category)."""
    if len(contrib) != len(X):
        raise ValueError(f"contributions have {len(contrib)} rows, features have {len(X)}")
    out: dict[str, Figure] = {}
    for f in features:
        if f not in X.columns or f not in contrib.columns:
            continue
        fig, ax = _fig(f"Dependence: {f}")
        c = contrib[f].to_numpy(dtype=float)
        if pd.api.types.is_numeric_dtype(X[f]):
            x = X[f].to_numpy(dtype=float, na_value=np.nan)
            ok = np.isfinite(x)
            ax.scatter(x[ok], c[ok], s=4, alpha=0.4, rasterized=True)
            if (~ok).any():
                ax.text(0.01, 0.98, f"{int((~ok).sum()):,} missing", transform=ax.transAxes, va="top")
            ax.set_xlabel(f)
        else:
            labels = X[f].astype("string").fillna("(missing)").to_numpy()
            cats = sorted(set(labels.tolist()))
            pos = {k: i for i, k in enumerate(cats)}
            jitter = np.random.default_rng(0).uniform(-0.25, 0.25, len(c))
            ax.scatter(np.array([pos[v] for v in labels]) + jitter, c, s=4, alpha=0.4, rasterized=True)
            ax.set_xticks(range(len(cats)), cats, rotation=30, ha="right")
        ax.axhline(0, c="grey", lw=0.8)
        ax.set_ylabel("contribution to churn log-odds")
        out[f] = fig
    return out
