"""Churn model plots as matplotlib Figures (no pyplot global state, Agg-safe).

Curve figures take ``scores: {model name: probabilities}`` so LightGBM, logistic regression and the
recency rule are compared on one chart. SHAP figures read ``ChurnModel.contributions`` (LightGBM
``pred_contrib``, identical to TreeExplainer values) and the raw feature values of the same rows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

from engage.evaluation.classification import lift_table

ArrayLike = Sequence[float] | np.ndarray | pd.Series
Scores = Mapping[str, ArrayLike]


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


def _top_features(contrib: pd.DataFrame, max_display: int) -> list[str]:
    cols = [c for c in contrib.columns if c != "bias"]
    return list(contrib[cols].abs().mean().sort_values(ascending=False).index[:max_display])


def shap_summary_figure(
    contrib: pd.DataFrame, X: pd.DataFrame, max_display: int = 15, seed: int = 0
) -> Figure:
    """Beeswarm: one row per top feature, each dot a user at its contribution, coloured by value rank.

    Most important feature on top; colour blue = low value, red = high, grey = missing or string.
    """
    if len(contrib) != len(X):
        raise ValueError(f"contributions have {len(contrib)} rows, features have {len(X)}")
    top = _top_features(contrib, max_display)[::-1]
    fig = Figure(figsize=(7.5, 0.4 * len(top) + 1.6), layout="constrained")
    ax = fig.add_subplot()
    rng = np.random.default_rng(seed)
    scatter = None
    for i, f in enumerate(top):
        c = contrib[f].to_numpy(dtype=float)
        x = (
            pd.to_numeric(X[f], errors="coerce").to_numpy(dtype=float, na_value=np.nan)
            if f in X.columns
            else np.full(len(c), np.nan)
        )
        ok = np.isfinite(x)
        jitter = rng.uniform(-0.3, 0.3, len(c))
        if (~ok).any():
            ax.scatter(c[~ok], i + jitter[~ok], c="lightgrey", s=4, alpha=0.6, rasterized=True)
        if ok.any():
            colour = pd.Series(x[ok]).rank(pct=True).to_numpy()
            scatter = ax.scatter(
                c[ok],
                i + jitter[ok],
                c=colour,
                cmap="coolwarm",
                vmin=0,
                vmax=1,
                s=4,
                alpha=0.7,
                rasterized=True,
            )
    ax.set_yticks(range(len(top)), top)
    ax.axvline(0, c="grey", lw=0.8)
    ax.set_xlabel("contribution to churn log-odds (SHAP value)")
    ax.set_title("What drives churn risk (right = more risk)")
    if scatter is not None:
        bar = fig.colorbar(scatter, ax=ax, ticks=[0, 1], aspect=40)
        bar.ax.set_yticklabels(["low", "high"])
        bar.set_label("feature value")
    return fig


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
