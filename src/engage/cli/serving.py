"""Serving commands: build the scoring Bento from the champion models, serve it."""

from __future__ import annotations

from typing import Annotated, Literal

import typer

from engage.cli.common import ConfigOpt, SetOpt, build_config, fail, out, quiet_env

__all__ = ["build", "serve"]


def build(
    tracking_uri: Annotated[str | None, typer.Option(help="MLflow tracking URI (models@champion).")] = None,
    offline: Annotated[
        bool, typer.Option(help="Lock the Bento's packages from uv's cache only (no package index).")
    ] = False,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Import the champion models into the Bento store and build the scoring Bento (`bentoml build`)."""
    quiet_env()
    from engage.serving.service import build_bento

    cfg = build_config(config, set_, **{"tracking.uri": tracking_uri})
    try:
        tag = build_bento(cfg, offline=offline)
    except (LookupError, RuntimeError) as exc:
        raise fail(str(exc)) from exc
    out.print(f"built Bento {tag}; serve it with: engage serve --target {tag}")


def serve(
    host: Annotated[str | None, typer.Option(help="Bind address (default 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default 3000).")] = None,
    target: Annotated[
        str, typer.Option(help="Service path or a built Bento tag.")
    ] = "engage.serving.service:EngageService",
    model_source: Annotated[
        Literal["bento", "mlflow"], typer.Option(help="bento (store) or mlflow (registry).")
    ] = "bento",
    workers: Annotated[
        int | None, typer.Option(min=1, help="Worker processes (default serve.workers, 1).")
    ] = None,
    insecure: Annotated[
        bool, typer.Option(help="Serve beyond loopback without ENGAGE_API_TOKEN (no auth).")
    ] = False,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Serve POST /score and /explain (BentoML) on loopback by default.

    Beyond loopback ``ENGAGE_API_TOKEN`` is required (exit code 2 without it) unless ``--insecure``.
    Without a built Bento or the models in the Bento store it stops at once (exit code 2) and says
    to run ``engage build`` first, instead of starting workers that cannot load a model.
    """
    quiet_env()
    from engage.serving.process import serve as run_server
    from engage.serving.settings import InsecureBind, api_token, check_exposure

    cfg = build_config(config, set_, **{"serve.workers": workers})
    try:
        check_exposure(host or cfg.serve.host, api_token(), insecure=insecure)
    except InsecureBind as exc:
        raise fail(str(exc)) from exc
    try:
        code = run_server(cfg, host, port, target=target, model_source=model_source)
    except LookupError as exc:  # NotServable: no Bento, no model in the store, no champion
        raise fail(str(exc)) from exc
    raise typer.Exit(code)
