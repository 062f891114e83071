"""The `engage` command line: the edge where files, flags and config meet the pure layers.

This module builds the Typer app and registers every command, in the order `engage --help` lists them;
the commands live in `data`, `models`, `scoring`, `monitor`, `serving` and `demo`, their shared helpers in
`common`. Heavy libraries are imported inside each command so that `engage --help` stays instant.
"""

from __future__ import annotations

import typer

from engage.cli import catalog as catalog_cmd
from engage.cli import data, loop, models, scoring, serving
from engage.cli import export as export_cmd
from engage.cli import feedback as feedback_cmd
from engage.cli import monitor as monitor_cmd
from engage.cli import online as online_cmd
from engage.cli import timing as timing_cmd
from engage.cli.common import root
from engage.cli.demo import demo

__all__ = ["app", "main"]

app = typer.Typer(
    name="engage",
    help="Churn risk, reasons and the next-best message from raw customer event logs.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
import_app = typer.Typer(help="Convert a real data set into engage's tables.", no_args_is_help=True)
train_app = typer.Typer(help="Train models (tracked in MLflow).", no_args_is_help=True)
evaluate_app = typer.Typer(help="Judge models and policies offline.", no_args_is_help=True)
app.add_typer(import_app, name="import")
app.add_typer(train_app, name="train")
app.add_typer(evaluate_app, name="evaluate")
app.callback()(root)  # engage --version
catalog_app = typer.Typer(
    help="Check and preview the message catalog before it goes live.", no_args_is_help=True
)
app.add_typer(catalog_app, name="catalog")
feedback_app = typer.Typer(help="Report what happened to logged decisions.", no_args_is_help=True)
app.add_typer(feedback_app, name="feedback")
online_app = typer.Typer(
    help="The shared online store (Redis) of several service replicas.", no_args_is_help=True
)
app.add_typer(online_app, name="online")

app.command()(data.simulate)
app.command()(data.validate)
app.command()(data.features)
app.command()(data.dataset)
app.command()(data.report)
app.command()(scoring.score)
app.command()(scoring.backtest)
app.command("export")(export_cmd.export)
app.command("outcomes")(loop.outcomes)
app.command()(monitor_cmd.monitor)
app.command()(serving.build)
app.command()(serving.serve)
app.command()(demo)
import_app.command("online-retail-ii")(data.import_online_retail_ii)
import_app.command("cdnow")(data.import_cdnow)
import_app.command("hillstrom")(data.import_hillstrom)
train_app.command("churn")(models.train_churn_command)
train_app.command("offers")(models.train_offers_command)
train_app.command("timing")(timing_cmd.train_timing_command)
evaluate_app.command("policy")(models.evaluate_policy)
catalog_app.command("check")(catalog_cmd.check)
catalog_app.command("preview")(catalog_cmd.preview)
evaluate_app.command("decisions")(loop.evaluate_decisions)
feedback_app.command("import")(feedback_cmd.import_feedback)
online_app.command("rebuild")(online_cmd.rebuild)
online_app.command("load")(online_cmd.load)


def main() -> None:  # pragma: no cover - console entry point convenience
    app(prog_name="engage")
