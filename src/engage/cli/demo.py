"""The demo: the whole loop on simulated data, by calling the other commands in order."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from engage.cli.common import (
    ConfigOpt,
    SetOpt,
    build_config,
    check_paths,
    console,
    fail,
    file_errors,
    out,
    quiet_env,
)
from engage.cli.data import simulate, validate
from engage.cli.models import train_churn_command, train_offers_command
from engage.cli.scoring import backtest, score

__all__ = ["demo"]


@file_errors
def demo(
    out_dir: Annotated[Path, typer.Option("--out", help="Working folder for the demo.")] = Path("demo"),
    users: Annotated[int | None, typer.Option(help="Simulated users.")] = None,
    days: Annotated[int | None, typer.Option(help="Simulated days.")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed.")] = None,
    rounds: Annotated[
        int | None,
        typer.Option(
            help="Run the closed loop for this many served rounds after round 0; writes DIR/loop.json."
        ),
    ] = None,
    round_days: Annotated[int, typer.Option(help="--rounds: days the world answers each round.")] = 14,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """The whole loop on simulated data: simulate, validate, train churn and offers, score, back-test."""
    quiet_env()
    from datetime import timedelta

    import polars as pl

    check_paths(folders={"--out": out_dir})
    cfg = build_config(config, set_, **{"simulate.users": users, "simulate.days": days, "seed": seed})
    data = out_dir / "data"
    tracking = f"sqlite:///{(out_dir / 'mlflow.db').resolve()}"
    if rounds is not None:
        _closed_loop(
            out_dir,
            cfg.model_copy(update={"tracking": cfg.tracking.model_copy(update={"uri": tracking})}),
            rounds,
            round_days,
        )
        return
    common: dict[str, Any] = {"config": config, "set_": [*(set_ or []), f"tracking.uri={tracking}"]}
    console.rule("[bold]1. simulate users, events and randomized campaigns (with ground truth)")
    simulate(
        out_dir=data,
        users=cfg.simulate.users,
        days=cfg.simulate.days,
        seed=cfg.seed,
        config=config,
        set_=set_,
    )
    console.rule("[bold]2. validate the event log")
    validate(
        path=data / "events.parquet",
        out_dir=out_dir / "validated",
        reference_time=None,
        map_=None,
        config=config,
        set_=set_,
    )
    events = data / "events.parquet"
    last = pl.read_parquet(events, columns=["ts"])["ts"].max()
    if not isinstance(last, datetime):
        raise fail(f"{events}: no events were simulated")
    scoring_date = (last - timedelta(days=cfg.labels.horizon_days)).replace(
        hour=0, minute=0, second=0, microsecond=0
    )
    history = out_dir / "history"
    for name in ("events", "exposures"):
        frame = pl.read_parquet(data / f"{name}.parquet")
        history.mkdir(parents=True, exist_ok=True)
        frame.filter(pl.col("ts") < scoring_date).write_parquet(history / f"{name}.parquet")
    console.rule(f"[bold]3. train the churn model on history before {scoring_date:%Y-%m-%d}")
    train_churn_command(
        events=history / "events.parquet",
        users=data / "users.parquet",
        exposures=history / "exposures.parquet",
        states=data / "states.parquet",
        tracking_uri=None,
        experiment=None,
        **common,
    )
    console.rule("[bold]4. train the next-best-offer model on the randomized campaigns")
    train_offers_command(
        events=history / "events.parquet",
        exposures=history / "exposures.parquet",
        users=data / "users.parquet",
        truth=data / "truth.parquet",
        table=None,
        tracking_uri=None,
        experiment=None,
        **common,
    )
    console.rule(f"[bold]5. score every user as of {scoring_date:%Y-%m-%d}")
    scores = out_dir / "scores.parquet"
    score(
        events=str(history / "events.parquet"),  # inputs are text: they may be remote URIs
        as_of=scoring_date.isoformat(),
        out_file=scores,
        users=str(data / "users.parquet"),
        exposures=str(history / "exposures.parquet"),
        engine=None,
        explain=False,
        explain_top=0.1,
        snapshot=out_dir / "feature_snapshot.parquet",
        decision_log=out_dir / "decisions",
        tracking_uri=None,
        **common,
    )
    console.rule(f"[bold]6. back-test: what happened in the {cfg.labels.horizon_days} days after scoring")
    backtest(
        scores=scores,
        events=events,
        horizon=None,
        out_dir=out_dir / "backtest",
        attribution=None,
        config=config,
        set_=set_,
    )
    console.rule("[bold]done")
    out.print(f"everything is under {out_dir}/; see the runs with:")
    out.print(f"  .venv/bin/mlflow ui --backend-store-uri {tracking}")


def _closed_loop(out_dir: Path, cfg: Any, rounds: int, round_days: int) -> None:
    """engage demo --rounds: round 0 randomized, then serve, answer, measure, retrain, gate."""
    from engage.cli.demo_loop import run_loop

    if rounds < 1 or round_days < 1:
        raise fail(f"--rounds and --round-days must be at least 1, got {rounds} and {round_days}")
    out_dir.mkdir(parents=True, exist_ok=True)
    run_loop(out_dir, cfg, rounds=rounds, round_days=round_days)
    out.print(
        f"wrote {out_dir / 'loop.json'}; runs: .venv/bin/mlflow ui --backend-store-uri {cfg.tracking.uri}"
    )
