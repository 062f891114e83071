"""Model commands: train the churn and offer models (tracked in MLflow), judge a policy off-policy."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from engage.cli.common import (
    ConfigOpt,
    SetOpt,
    build_config,
    check_paths,
    fail,
    file_errors,
    load_events,
    out,
    progress_bar,
    quiet_env,
    read_exposures,
    read_table,
    read_users,
)
from engage.config import EngageConfig

__all__ = ["evaluate_policy", "train_churn_command", "train_offers_command"]


@file_errors
def train_churn_command(
    events: Annotated[Path, typer.Option(help="Events file.")],
    users: Annotated[Path | None, typer.Option(help="Users table (attributes, consents).")] = None,
    exposures: Annotated[Path | None, typer.Option(help="Campaign exposures (message fatigue).")] = None,
    states: Annotated[
        Path | None, typer.Option(help="Simulator states.parquet: adds oracle_auc to the metrics.")
    ] = None,
    tracking_uri: Annotated[str | None, typer.Option(help="MLflow tracking URI.")] = None,
    experiment: Annotated[str | None, typer.Option(help="MLflow experiment name.")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Out-of-time churn model (LightGBM + calibration) vs logistic and recency baselines, in MLflow."""
    quiet_env()
    from engage.labels import InsufficientDataError
    from engage.training.churn import train_churn

    check_paths(read={"--events": events, "--users": users, "--exposures": exposures, "--states": states})
    cfg = build_config(config, set_, **{"tracking.uri": tracking_uri, "tracking.experiment": experiment})
    frame = load_events(events, cfg)
    user_table, exposure_table = read_users(users), read_exposures(exposures)
    state_table = read_table(states, "--states")
    try:
        with progress_bar("snapshots") as progress:
            result = train_churn(
                frame, cfg, users=user_table, exposures=exposure_table, states=state_table, progress=progress
            )
    except (InsufficientDataError, ValueError) as exc:
        raise fail(str(exc)) from exc
    _print_churn_result(result, cfg)


def _print_churn_result(result: Any, cfg: EngageConfig) -> None:
    metrics = result.metrics
    table = Table(
        "model",
        "AUC",
        "LightGBM AUC minus this [95% CI]",
        "PR AUC",
        "log loss",
        "Brier",
        "ECE",
        "lift@10%",
        title="out-of-time test",
    )
    for label, suffix in (
        ("LightGBM (calibrated)", ""),
        ("logistic regression", "_logreg"),
        ("recency rule", "_recency"),
        ("BTYD: P(no purchase in the horizon)", "_btyd"),
    ):
        if f"oot_auc{suffix}" not in metrics:
            continue
        diff = f"oot_auc_diff{suffix}"  # DeLong interval of the paired difference, same rows
        table.add_row(
            label,
            f"{metrics[f'oot_auc{suffix}']:.4f}",
            f"{metrics[diff]:+.4f} [{metrics[f'{diff}_lo']:+.4f}, {metrics[f'{diff}_hi']:+.4f}]"
            if diff in metrics
            else "",
            *(
                f"{metrics.get(f'oot_{key}{suffix}', float('nan')):.4f}"
                for key in ("pr_auc", "logloss", "brier", "ece", "lift_top_decile")
            ),
        )
    out.print(table)
    if "oracle_auc" in metrics:
        out.print(f"oracle AUC (true churn probability, same rows): {metrics['oracle_auc']:.4f}")
    drivers = Table("driver", "direction", "importance", title="what marks churners")
    for _, row in result.drivers.head(8).iterrows():
        drivers.add_row(
            str(row["feature"]), str(row.get("direction", "")), f"{row.get('importance', float('nan')):.3f}"
        )
    out.print(drivers)
    status = "promoted to @champion" if result.promoted else "kept as @challenger (champion not beaten)"
    out.print(f"registered {cfg.tracking.churn_model_name} v{result.version}: {status}")
    out.print(f"run {result.run_id}; see it with: mlflow ui --backend-store-uri {cfg.tracking.uri}")


@file_errors
def train_offers_command(
    events: Annotated[Path | None, typer.Option(help="Events file (with --exposures).")] = None,
    exposures: Annotated[
        Path | None, typer.Option(help="Campaign exposures (arm, propensity, outcomes).")
    ] = None,
    users: Annotated[Path | None, typer.Option(help="Users table (consents, attributes).")] = None,
    truth: Annotated[
        Path | None, typer.Option(help="Simulator truth.parquet: adds true policy values.")
    ] = None,
    table: Annotated[
        Path | None, typer.Option(help="Or: a randomized campaign table with covariates (e.g. Hillstrom).")
    ] = None,
    decisions: Annotated[
        Path | None,
        typer.Option(help="Or: a served decision log (with --events; --exposures then adds past messages)."),
    ] = None,
    arm_col: Annotated[str, typer.Option(help="--table: the column holding the arm.")] = "arm",
    outcome_col: Annotated[str, typer.Option(help="--table: the 0/1 outcome column.")] = "converted",
    control: Annotated[str, typer.Option(help="--table: the control arm's value.")] = "none",
    propensity_col: Annotated[str | None, typer.Option(help="--table: assignment probabilities.")] = None,
    feature_cols: Annotated[
        list[str] | None,
        typer.Option("--feature-cols", help="--table: covariates (repeat; default: all others)."),
    ] = None,
    tracking_uri: Annotated[str | None, typer.Option(help="MLflow tracking URI.")] = None,
    experiment: Annotated[str | None, typer.Option(help="MLflow experiment name.")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Multi-arm uplift model and its policy, judged off-policy (IPS, SNIPS, DR) before launch."""
    quiet_env()
    from engage.events import fingerprint
    from engage.offers.catalog import load_catalog
    from engage.offers.training import fit_offers, fit_offers_from_table, offer_table
    from engage.training.offers import train_offers

    check_paths(
        read={
            "--events": events,
            "--exposures": exposures,
            "--users": users,
            "--truth": truth,
            "--table": table,
        },
        sources={"--decisions": decisions},
    )
    cfg = build_config(config, set_, **{"tracking.uri": tracking_uri, "tracking.experiment": experiment})
    if table is not None:
        frame = read_table(table, "--table", required=(arm_col, outcome_col)).to_pandas()
        fit = fit_offers_from_table(
            frame,
            cfg,
            arm_col=arm_col,
            outcome_col=outcome_col,
            control=control,
            propensity_col=propensity_col,
            feature_cols=feature_cols,
        )
        stamp: dict[str, str | int] = {"rows": len(frame), "source": str(table)}
    elif decisions is not None and events is not None:
        fit, stamp = _fit_from_decisions(decisions, events, exposures, users, truth, cfg)
    elif events is not None and exposures is not None:
        frame = load_events(events, cfg)
        logged, user_table = read_exposures(exposures), read_users(users)
        truth_table = read_table(truth, "--truth")
        with progress_bar("features at each campaign") as progress:
            data = offer_table(frame, logged, cfg, users=user_table, progress=progress)
        fit = fit_offers(
            data,
            cfg,
            load_catalog(cfg.offers.catalog_path),
            truth=truth_table.to_pandas() if truth_table is not None else None,
        )
        stamp = fingerprint(frame)
    else:
        raise fail("give --events with --exposures, --events with --decisions, or --table")
    result = train_offers(
        fit, cfg, fingerprint=stamp, run_name="offers-from-decisions" if decisions else "offers"
    )
    _print_offer_result(result, cfg)


def _fit_from_decisions(
    decisions: Path,
    events: Path,
    exposures: Path | None,
    users: Path | None,
    truth: Path | None,
    cfg: EngageConfig,
) -> tuple[Any, dict[str, str | int]]:
    """The offers fit from a served decision log: the log becomes a campaign log, then one fit path.

    Holdout rows (and `none` decisions) are the control arm; later decisions are held out when the
    log spans two decision times or more. The fatigue features count the messages the log delivered
    and, with --exposures, the campaign messages before them.
    """
    import polars as pl

    from engage import schemas
    from engage.events import fingerprint
    from engage.offers.catalog import load_catalog
    from engage.offers.training import decision_exposures, fit_offers, offer_table
    from engage.scoring.decision_log import read_decisions

    if not decisions.is_dir():
        raise fail(f"--decisions {decisions}: is a file; give the decision log folder")
    frame = load_events(events, cfg)
    logged, skipped = read_decisions(decisions)
    if logged.empty:
        raise fail(f"--decisions {decisions}: no decisions in the log ({skipped} lines skipped)")
    try:
        served = decision_exposures(logged, frame, cfg)
    except (KeyError, ValueError) as exc:
        raise fail(f"--decisions {decisions}: {exc}") from exc
    columns = [schemas.USER_ID, schemas.TS, schemas.MESSAGE_ID, schemas.CHANNEL]
    past = read_exposures(exposures)
    history = pl.concat(
        [t.select([c for c in columns if c in t.columns]) for t in (past, served) if t is not None],
        how="diagonal_relaxed",
    )
    truth_table = read_table(truth, "--truth")
    with progress_bar("features at each decision") as progress:
        data = offer_table(frame, served, cfg, users=read_users(users), history=history, progress=progress)
    try:
        fit = fit_offers(
            data,
            cfg,
            load_catalog(cfg.offers.catalog_path),
            truth=truth_table.to_pandas() if truth_table is not None else None,
            min_split_dates=2,
        )
    except ValueError as exc:
        raise fail(f"--decisions {decisions}: {exc}") from exc
    held = int(served["holdout"].sum())
    out.print(
        f"decisions: {len(logged):,} ({held:,} holdout, "
        f"{int((served[schemas.MESSAGE_ID] == schemas.CONTROL_ARM).sum()) - held:,} none), "
        f"{skipped:,} lines skipped"
    )
    return fit, {**fingerprint(frame), "decisions": len(logged), "decisions_skipped": skipped}


def _print_offer_result(result: Any, cfg: EngageConfig) -> None:
    values = result.fit.values
    table = Table("policy", "estimator", "value", "95% CI", title="policy values on held-out campaigns")
    for _, row in values.iterrows():
        table.add_row(
            row["policy"],
            row["estimator"],
            f"{row['value']:.4f}",
            f"[{row['ci_low']:.4f}, {row['ci_high']:.4f}]",
        )
    out.print(table)
    m = result.fit.metrics
    if "learned_minus_best_single_arm_dr" in m:
        dr = values[values["estimator"] == "dr"].set_index("policy")["value"]
        best = str(dr[[p for p in dr.index if str(p).startswith("only_")]].idxmax()).removeprefix("only_")
        for label, key in (("learned", "learned"), ("learned (no exploration)", "greedy")):
            key = f"{key}_minus_best_single_arm_dr"
            out.print(
                f"{label} minus {best} to everyone (the best single arm), paired DR: {m[key]:+.4f} "
                f"[{m[key + '_ci_low']:+.4f}, {m[key + '_ci_high']:+.4f}]"
            )
    if "true_policy_value" in m:
        truth = Table("policy", "true value", "incremental over none", title="simulator truth (same rows)")
        for label, key in (
            ("learned", "true_policy_value"),
            ("learned (no exploration)", "true_greedy_policy_value"),
            ("oracle", "oracle_policy_value"),
            ("best single arm", "true_best_single_arm_value"),
            ("logging (random)", "true_logging_policy_value"),
            ("none for all", "true_none_value"),
        ):
            truth.add_row(label, f"{m[key]:.4f}", f"{m[key] - m['true_none_value']:+.4f}")
        out.print(truth)
    status = "promoted to @champion" if result.promoted else "kept as @challenger"
    out.print(f"registered {cfg.tracking.offer_model_name} v{result.version}: {status}")


@file_errors
def evaluate_policy(
    logs: Annotated[Path, typer.Option(help="Logged decisions: columns arm, outcome, propensity.")],
    actions: Annotated[Path, typer.Option(help="Target policy: one probability column per arm, same rows.")],
    n_boot: Annotated[int, typer.Option(help="Bootstrap resamples for the CIs.")] = 500,
    seed: Annotated[int, typer.Option(help="Bootstrap seed.")] = 0,
) -> None:
    """Off-policy value of a candidate policy from logged data: IPS, SNIPS and DR with 95% CIs."""
    from engage.offers.training import evaluate_logged_policy

    check_paths(read={"--logs": logs, "--actions": actions})
    logged, target = read_table(logs, "--logs").to_pandas(), read_table(actions, "--actions").to_pandas()
    try:
        values = evaluate_logged_policy(logged, target, n_boot=n_boot, seed=seed)
    except (KeyError, ValueError) as exc:
        raise fail(str(exc)) from exc
    table = Table(
        "estimator", "value", "95% CI", title=f"target policy value over {len(logged):,} logged rows"
    )
    for _, row in values.iterrows():
        table.add_row(row["estimator"], f"{row['value']:.4f}", f"[{row['ci_low']:.4f}, {row['ci_high']:.4f}]")
    out.print(table)
