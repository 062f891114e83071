"""``engage train timing``: fit the send-time and channel model, evaluate it, register it in MLflow."""

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
    quiet_env,
    read_exposures,
    read_table,
    read_users,
)
from engage.config import EngageConfig

__all__ = ["train_timing_command"]


@file_errors
def train_timing_command(
    events: Annotated[Path, typer.Option(help="Events file.")],
    users: Annotated[
        Path | None, typer.Option(help="Users table (timezone, consents); without it zones are inferred.")
    ] = None,
    exposures: Annotated[
        Path | None,
        typer.Option(help="Campaign log (channel sends and outcomes: open rates, channel effects)."),
    ] = None,
    truth: Annotated[
        Path | None, typer.Option(help="Simulator truth.parquet (simulate.timing): adds the true values.")
    ] = None,
    tracking_uri: Annotated[str | None, typer.Option(help="MLflow tracking URI.")] = None,
    experiment: Annotated[str | None, typer.Option(help="MLflow experiment name.")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Send time and channel per user, judged against the next purchase (and the simulator's truth)."""
    quiet_env()
    from engage.events import fingerprint
    from engage.training.timing import fit_timing, train_timing

    check_paths(read={"--events": events, "--users": users, "--exposures": exposures, "--truth": truth})
    cfg = build_config(config, set_, **{"tracking.uri": tracking_uri, "tracking.experiment": experiment})
    frame = load_events(events, cfg)
    try:
        fit = fit_timing(
            frame,
            cfg,
            users=read_users(users),
            exposures=read_exposures(exposures),
            truth=read_table(truth, "--truth"),
        )
    except ValueError as exc:
        raise fail(str(exc)) from exc
    result = train_timing(fit, cfg, fingerprint=fingerprint(frame))
    _print_timing(result, cfg)


def _print_timing(result: Any, cfg: EngageConfig) -> None:
    from engage.training.timing import no_history

    m = result.fit.metrics
    out.print(f"as_of {result.fit.as_of:%Y-%m-%d %H:%M} UTC")
    if "timing_hit_rate_top3" in m:
        out.print(
            f"next purchase in the top-3 predicted hours of the week: {m['timing_hit_rate_top3']:.4f} "
            f"(population's top 3: {m['timing_population_hit_rate_top3']:.4f}; "
            f"{int(m['timing_hit_rate_rows']):,} customers)"
        )
    if "timing_true_value" in m:
        table = Table("policy", "true timing gain", title="send hour, simulator truth (1 = a random hour)")
        for label, key in (
            ("engage per user", "timing_true_value"),
            (f"{cfg.timing.fixed_hour_utc:02d}:00 UTC for all", "timing_fixed_hour_value"),
            ("population's best hour", "timing_population_best_value"),
            ("oracle per user", "timing_oracle_value"),
        ):
            table.add_row(label, f"{m[key]:.4f}")
        out.print(table)
        out.print(f"share of the oracle's gain over the fixed hour: {m['timing_share_of_oracle_gain']:.3f}")
    if "timing_true_value" in m and "channel_true_value" not in m:
        out.print("channel: give --users and --exposures for the channel's true values")
    if "channel_true_value" in m:
        out.print(
            f"channel, true gain: engage {m['channel_true_value']:.4f}, best single channel "
            f"{m['channel_best_single_value']:.4f}, oracle {m['channel_oracle_value']:.4f}"
        )
    status = "promoted to @champion" if result.promoted else "kept as @challenger"
    out.print(f"registered {cfg.timing.model_name} v{result.version}: {status}")
    reason = no_history(result.fit, cfg)
    if reason is not None:
        out.print(f"not promoted: {reason}")
