"""`engage export`: audiences for an e-mail or push platform, as files per message or channel, optionally
posted to a webhook (signed, retried, resumable)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from engage.audiences import By
from engage.cli.common import (
    ConfigOpt,
    SetOpt,
    build_config,
    check_paths,
    console,
    fail,
    file_errors,
    out,
    progress_bar,
    read_table,
)

if TYPE_CHECKING:
    from engage.config import WebhookConfig

__all__ = ["export"]


@file_errors
def export(
    scores: Annotated[Path, typer.Option(help="An `engage score` output (Parquet or CSV).")],
    by: Annotated[By, typer.Option(help="One audience per message (message_id) or per channel.")] = "message",
    out_dir: Annotated[
        Path, typer.Option("--out", help="Folder: <by>-<audience>.csv and .parquet, manifest.json.")
    ] = Path("audiences"),
    webhook: Annotated[
        bool,
        typer.Option(
            "--webhook",
            help="Also post them to export.webhook.url: signed batches, retried; a re-run resumes.",
        ),
    ] = False,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Audience files per message or channel for an e-mail or push platform (holdout and none left out).

    DIR gets <by>-<audience>.csv and .parquet (user_id, message_id, channel, message_text, send_at when
    the scores have it, decision_id) and manifest.json (rows and SHA-256 per file, rows left out).
    --webhook posts them to export.webhook.url, signed with the secret in the environment variable
    export.webhook.secret_env names; DIR/delivered.jsonl records what was acknowledged.

    Exit codes: 0 done; 1 the receiver refused a batch or never acknowledged it (run the same
    command again to resume); 2 a file or setting that cannot be used.
    """
    cfg = build_config(config, set_)
    check_paths(read={"--scores": scores}, folders={"--out": out_dir})
    hook = cfg.export.webhook
    secret = b""
    if webhook:
        from engage.audiences.webhook import check_url

        if not hook.url:
            raise fail(
                "--webhook: export.webhook.url is not set (in --config, or --set export.webhook.url=URL)"
            )
        problem = check_url(hook.url)
        if problem:
            raise fail(f"export.webhook.url: {problem}")
        secret = os.environ.get(hook.secret_env, "").encode()
        if not secret:
            raise fail(
                f"--webhook: the environment variable {hook.secret_env} (export.webhook.secret_env) "
                "holds no secret; set it to the key the receiver verifies signatures with"
            )
    from engage.audiences.files import ExportLockedError, export_lock, sha256_file, write_audiences
    from engage.audiences.split import AudienceError, split_audiences

    table = read_table(scores, "--scores")
    try:
        audiences = split_audiences(table, by, source=f"--scores {scores}")
    except AudienceError as exc:
        raise fail(str(exc)) from exc
    del table
    try:
        with export_lock(out_dir):
            with progress_bar("writing audiences") as progress:
                manifest = write_audiences(
                    audiences,
                    out_dir,
                    source={"file": str(scores), "sha256": sha256_file(scores)},
                    progress=progress,
                )
            _print_manifest(manifest, out_dir)
            if webhook:
                _deliver(audiences, cfg.export.webhook, secret, out_dir, cfg.seed)
    except ExportLockedError as exc:
        raise fail(str(exc)) from exc


def _print_manifest(manifest: dict[str, Any], out_dir: Path) -> None:
    table = Table(manifest["by"], "rows", "file", title="audiences")
    for entry in manifest["files"]:
        table.add_row(escape(entry["audience"]), f"{entry['rows']:,}", escape(entry["csv"]))
    out.print(table)
    left = manifest["not_exported"]
    out.print(
        f"{manifest['exported']:,} of {manifest['rows_in']:,} decisions exported; not exported: "
        f"{left['holdout']:,} holdout, {left['none']:,} none -> {escape(str(out_dir))}",
        highlight=False,
        soft_wrap=True,
    )
    if "send_at" not in manifest["columns"]:
        console.print(f"[yellow]send_at {escape(manifest['send_at'])}[/]", highlight=False, soft_wrap=True)


def _deliver(audiences: Any, hook: WebhookConfig, secret: bytes, out_dir: Path, seed: int) -> None:
    from engage.audiences.webhook import LEDGER_NAME, DeliveryError, deliver

    try:
        with progress_bar("posting to the webhook") as progress:
            report = deliver(audiences, hook, secret, out_dir / LEDGER_NAME, seed=seed, progress=progress)
    except DeliveryError as exc:
        raise fail(str(exc), code=1) from exc
    ledger = escape(str(out_dir / LEDGER_NAME))
    if not report.batches:
        message = f"webhook: nothing new to send; {report.already_delivered:,} acknowledged before ({ledger})"
    else:
        message = (
            f"webhook: {report.decisions:,} decisions in {report.batches:,} batches acknowledged "
            f"({report.decisions_per_second:,.0f}/s, {report.retries} retries); "
            f"{report.already_delivered:,} acknowledged before ({ledger})"
        )
    out.print(message, highlight=False, soft_wrap=True)
