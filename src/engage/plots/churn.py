"""Churn model plots as matplotlib Figures (no pyplot state): ROC, PR, calibration, gain, SHAP."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from sklearn.metrics import precision_recall_curve, roc_auc_score, roc_curve


def _fig(title: str) -> tuple[Figure, object]:
    fig = Figure(figsize=(6, 4.5), layout="constrained")
    ax = fig.add_subplot()
    ax.set_title(title)
    return fig, ax


def roc_figure(y, scores: Mapping[str, np.ndarray]) -> Figure:
    fig, ax = _fig("ROC (out-of-time test)")
    for name, p in scores.items():
        fpr, tpr, _ = roc_curve(y, p)
        ax.plot(fpr, tpr, label=f"{name} (AUC {roc_auc_score(y, p):.3f})")
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=0.8)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.legend()
    return fig


def pr_figure(y, scores: Mapping[str, np.ndarray]) -> Figure:
    fig, ax = _fig("Precision-recall (out-of-time test)")
    for name, p in scores.items():
        pr, rc, _ = precision_recall_curve(y, p)
        ax.plot(rc, pr, label=name)
    ax.axhline(np.mean(y), ls="--", c="grey", lw=0.8, label="base rate")
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.legend()
    return fig


def calibration_figure(y, scores: Mapping[str, np.ndarray], n_bins: int = 10) -> Figure:
    fig, ax = _fig("Calibration: predicted vs observed churn")
    y = np.asarray(y, float)
    for name, p in scores.items():
        p = np.asarray(p, float)
        bins = np.array_split(np.argsort(p), n_bins)
        ax.plot([p[b].mean() for b in bins], [y[b].mean() for b in bins], marker="o", label=name)
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=0.8)
    ax.set_xlabel("predicted probability")
    ax.set_ylabel("observed churn rate")
    ax.legend()
    return fig


def gain_lift_figure(y, scores: Mapping[str, np.ndarray]) -> Figure:
    fig, ax = _fig("Cumulative gain")
    y = np.asarray(y, float)
    for name, p in scores.items():
        order = np.argsort(-np.asarray(p, float), kind="stable")
        gain = np.cumsum(y[order]) / y.sum()
        ax.plot(np.arange(1, len(y) + 1) / len(y), gain, label=name)
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=0.8, label="random")
    ax.set_xlabel("share of users contacted (riskiest first)")
    ax.set_ylabel("share of churners reached")
    ax.legend()
    return fig


def risk_decile_figure(y, p) -> Figure:
    fig, ax = _fig("Churn rate by risk decile")
    y, p = np.asarray(y, float), np.asarray(p, float)
    bins = np.array_split(np.argsort(-p, kind="stable"), 10)
    ax.bar(range(1, 11), [y[b].mean() for b in bins], color="tab:red")
    ax.axhline(y.mean(), ls="--", c="grey", label="overall")
    ax.set_xlabel("risk decile (1 = riskiest)")
    ax.set_ylabel("observed churn rate")
    ax.legend()
    return fig


def shap_summary_figure(contrib: pd.DataFrame, X: pd.DataFrame, max_display: int = 15) -> Figure:
    cols = [c for c in contrib.columns if c != "bias"]
    top = contrib[cols].abs().mean().sort_values(ascending=False).index[:max_display][::-1]
    fig = Figure(figsize=(7, 0.35 * len(top) + 1.5), layout="constrained")
    ax = fig.add_subplot()
    rng = np.random.default_rng(0)
    for i, f in enumerate(top):
        c = contrib[f].to_numpy()
        x = pd.to_numeric(X[f], errors="coerce").to_numpy(dtype=float) if f in X else np.full(len(c), np.nan)
        ok = np.isfinite(x)
        colour = np.full(len(c), 0.5)
        if ok.any():
            ranks = pd.Series(x[ok]).rank(pct=True).to_numpy()
            colour[ok] = ranks
        ax.scatter(c, i + rng.uniform(-0.3, 0.3, len(c)), c=colour, cmap="coolwarm", s=4, alpha=0.6)
    ax.set_yticks(range(len(top)), list(top))
    ax.axvline(0, c="grey", lw=0.8)
    ax.set_xlabel("contribution to churn log-odds (SHAP); colour = feature value (blue low, red high)")
    ax.set_title("What drives churn risk")
    return fig


def dependence_figures(contrib: pd.DataFrame, X: pd.DataFrame, features: Sequence[str]) -> dict[str, Figure]:
    out = {}
    for f in features:
        if f not in X or not pd.api.types.is_numeric_dtype(X[f]):
            continue
        fig, ax = _fig(f"Dependence: {f}")
        ax.scatter(X[f], contrib[f], s=4, alpha=0.4)
        ax.axhline(0, c="grey", lw=0.8)
        ax.set_xlabel(f)
        ax.set_ylabel("contribution to churn log-odds")
        out[f] = fig
    return out
