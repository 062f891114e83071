"""Judge the decision log: measured lift vs holdout and off-policy value of the serving and other policies.

Input is ``offers.outcomes.decision_outcomes`` (one row per logged decision with what followed), as
pandas. Lift per group comes from ``evaluation.lift``; off-policy values from
``offers.evaluation`` (IPS, SNIPS, DR; no second estimator here) on the rows whose propensity was
logged, with the reward ``offers.training`` trains on (conversion value minus message cost). The
serving policy is judged on its own rows (its value is the mean reward of treated decisions, the
holdout's that of held-out ones); `none` for everyone and any candidate policy (probabilities per
arm for each logged row, e.g. ``candidate_policy``) off-policy, each with Kish's effective sample
size, its largest importance weight and a warning when the overlap is too thin: an effective sample
size under ``offers.evaluation.MIN_ESS_SHARE`` (5%) of the rows or a weight over ``MAX_WEIGHT``
(100). DR's outcome model is the mean reward per logged arm (as ``engage evaluate policy``'s): it
needs no features, and DR stays unbiased with the logged propensities. Pure.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from engage import schemas as s
from engage.config import EngageConfig
from engage.evaluation.lift import HOLDOUT, RISK_BAND, lift_vs_holdout, with_risk_band
from engage.models.bundle import OfferBundle
from engage.models.uplift import expected_gain
from engage.offers.catalog import Catalog
from engage.offers.evaluation import (
    MAX_WEIGHT,
    MIN_ESS_SHARE,
    VALUE_COLUMNS,
    WeightDiagnostics,
    bootstrap_mean,
    compare_policies,
    overlap_warning,
    single_arm_policy,
    weight_diagnostics,
)
from engage.offers.training import rewards, served_policy

__all__ = ["OVERLAP_COLUMNS", "Judgement", "candidate_policy", "judge_decisions", "loggable_rows"]

OVERLAP_COLUMNS: tuple[str, ...] = ("policy", "rows", "ess", "max_weight", "matched")
SERVING, HELD_OUT, NONE = "serving", "holdout", "none"


@dataclass(frozen=True)
class Judgement:
    """What ``judge_decisions`` found: lift tables, policy values with their overlap, warnings, notes."""

    rows: int
    skipped_lines: int
    lift_overall: pd.DataFrame
    lift_by_message: pd.DataFrame | None
    lift_by_band: pd.DataFrame
    values: pd.DataFrame
    overlap: pd.DataFrame
    warnings: tuple[str, ...]
    notes: tuple[str, ...]

    def summary(self) -> dict[str, Any]:
        """The machine-readable summary (``summary.json``): plain JSON types, NaN as null."""
        overall = {
            row["metric"]: {k: row[k] for k in ("lift", "ci_low", "ci_high", "treated_n", "holdout_n")}
            for row in _records(self.lift_overall)
        }
        overlap = self.overlap.set_index("policy")
        return {
            "rows": self.rows,
            "skipped_lines": self.skipped_lines,
            "overall_lift": overall,
            "per_message": _records(self.lift_by_message) if self.lift_by_message is not None else [],
            "per_risk_band": _records(self.lift_by_band),
            "policies": _records(self.values.merge(self.overlap, on="policy", how="left")),
            "ess": {p: _plain(v) for p, v in overlap["ess"].items()},
            "max_weight": {p: _plain(v) for p, v in overlap["max_weight"].items()},
            "warnings": list(self.warnings),
            "notes": list(self.notes),
        }


def _plain(value: Any) -> Any:
    """numpy scalars as Python ones; NaN and infinities as None (JSON has no NaN)."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    return [{str(k): _plain(v) for k, v in row.items()} for row in frame.to_dict("records")]


def loggable_rows(decisions: pd.DataFrame) -> np.ndarray:
    """Rows usable off-policy: a logged message and a propensity in (0, 1]."""
    p = pd.to_numeric(decisions.get(s.PROPENSITY), errors="coerce")
    if p is None:
        return np.zeros(len(decisions), dtype=bool)
    ok = p.notna() & (p > 0) & (p <= 1) & decisions[s.MESSAGE_ID].notna()
    return ok.to_numpy(dtype=bool)


def candidate_policy(
    bundle: OfferBundle, features: pd.DataFrame, catalog: Catalog, config: EngageConfig
) -> pd.DataFrame:
    """The probabilities a candidate offers model's policy gives each row (the serving policy's rules,
    no holdout), exactly as ``offers.training`` judges a learned policy."""
    return served_policy(features, expected_gain(bundle.outcomes(features), catalog), catalog, config)


def _serving_rows(reward: np.ndarray, treated: np.ndarray, held: np.ndarray, n_boot: int, seed: int) -> list:
    rows = []
    for name, mask in ((SERVING, treated), (HELD_OUT, held)):
        est = bootstrap_mean(reward[mask], n_boot=n_boot, seed=seed)
        rows.append((name, "on_policy", est.value, est.ci_low, est.ci_high))
    return rows


def judge_decisions(
    outcomes: pd.DataFrame,
    catalog: Catalog,
    *,
    candidates: Mapping[str, pd.DataFrame] | None = None,
    risk_thresholds: Sequence[float] = (0.3, 0.6),
    n_boot: int = 500,
    seed: int = 0,
    skipped_lines: int = 0,
    min_ess_share: float = MIN_ESS_SHARE,
    max_weight: float = MAX_WEIGHT,
) -> Judgement:
    """Lift vs holdout (overall, per intended message, per risk band) and policy values of a decision log.

    ``outcomes``: ``decision_outcomes`` as pandas. ``candidates``: name -> per-arm probabilities with
    one row per row of ``outcomes`` (same order). ``skipped_lines``: lines the log reader skipped,
    carried into the summary so nothing is lost silently.
    """
    outcomes = outcomes.reset_index(drop=True)
    notes: list[str] = []
    warnings: list[str] = []
    if skipped_lines:
        warnings.append(f"{skipped_lines:,} decision-log line(s) were skipped (cut short or not a decision)")
    banded = with_risk_band(outcomes, risk_thresholds)
    overall = lift_vs_holdout(banded, n_boot=n_boot, seed=seed)
    by_message = None
    if s.INTENDED_MESSAGE_ID in banded and banded[s.INTENDED_MESSAGE_ID].notna().any():
        by_message = lift_vs_holdout(banded, by=s.INTENDED_MESSAGE_ID, n_boot=n_boot, seed=seed)
    else:
        notes.append(
            "the log has no intended_message_id (the message a holdout user would have got): "
            "lift is measured overall and per risk band only"
        )
    by_band = lift_vs_holdout(banded, by=RISK_BAND, n_boot=n_boot, seed=seed)
    if int(overall["holdout_n"].iloc[0]) == 0:
        warnings.append("no holdout decisions in the log: lift vs holdout cannot be measured")
    values, overlap = _policy_values(
        outcomes, catalog, candidates or {}, n_boot=n_boot, seed=seed, notes=notes
    )
    for row in overlap.itertuples(index=False):
        if row.policy in (SERVING, HELD_OUT):
            continue
        diag = WeightDiagnostics(int(row.rows), float(row.ess), float(row.max_weight), int(row.matched))
        warning = overlap_warning(str(row.policy), diag, min_ess_share=min_ess_share, max_weight=max_weight)
        if warning:
            warnings.append(warning)
    return Judgement(
        rows=len(outcomes),
        skipped_lines=skipped_lines,
        lift_overall=overall,
        lift_by_message=by_message,
        lift_by_band=by_band,
        values=values,
        overlap=overlap,
        warnings=tuple(warnings),
        notes=tuple(notes),
    )


def _policy_values(
    outcomes: pd.DataFrame,
    catalog: Catalog,
    candidates: Mapping[str, pd.DataFrame],
    *,
    n_boot: int,
    seed: int,
    notes: list[str],
) -> tuple[pd.DataFrame, pd.DataFrame]:
    ok = loggable_rows(outcomes)
    if not ok.all():
        notes.append(
            f"{int((~ok).sum()):,} decision(s) without a logged propensity are left out of the policy values"
        )
    logged = outcomes[ok].reset_index(drop=True)
    codes, names = pd.factorize(logged[s.MESSAGE_ID])  # arms as a numpy text array, built once
    arm = pd.Series(
        np.asarray([str(n) for n in names], dtype=str)[codes] if len(codes) else np.array([], dtype=str)
    )
    reward = rewards(arm, logged[s.CONVERTED].astype(float), catalog)
    propensity = pd.to_numeric(logged[s.PROPENSITY]).to_numpy(dtype=float)
    flag = logged[HOLDOUT].astype("boolean") if HOLDOUT in logged else pd.Series(pd.NA, index=logged.index)
    held = flag.fillna(False).to_numpy(dtype=bool)
    treated = flag.notna().to_numpy(dtype=bool) & ~held
    rows = _serving_rows(reward, treated, held, n_boot, seed)
    overlap = [
        (SERVING, int(treated.sum()), float(treated.sum()), 1.0, int(treated.sum())),
        (HELD_OUT, int(held.sum()), float(held.sum()), 1.0, int(held.sum())),
    ]
    if len(logged):
        arms = list(dict.fromkeys([*catalog.arms, *sorted(map(str, names))]))
        allowed = pd.DataFrame(True, index=logged.index, columns=arms)
        targets = {NONE: single_arm_policy(allowed, s.CONTROL_ARM)}
        for name, probs in candidates.items():
            if len(probs) != len(outcomes):
                raise ValueError(
                    f"candidate {name!r}: {len(probs):,} rows of probabilities "
                    f"for {len(outcomes):,} decisions"
                )
            targets[name] = (
                probs.reset_index(drop=True)[ok].reset_index(drop=True).reindex(columns=arms, fill_value=0.0)
            )
        means = pd.Series(reward).groupby(codes).mean().rename(index=dict(enumerate(map(str, names))))
        q_hat = pd.DataFrame({a: np.full(len(logged), means.get(a, reward.mean())) for a in arms})
        table = compare_policies(arm.to_numpy(), reward, propensity, targets, q_hat, n_boot=n_boot, seed=seed)
        rows += list(table.itertuples(index=False, name=None))
        for name, target in targets.items():
            diag = weight_diagnostics(arm.to_numpy(), propensity, target)
            overlap.append((name, diag.rows, diag.ess, diag.max_weight, diag.matched))
    return pd.DataFrame(rows, columns=list(VALUE_COLUMNS)), pd.DataFrame(
        overlap, columns=list(OVERLAP_COLUMNS)
    )
