"""``engage online``: the shared online store (Redis) behind several replicas of the service.

``rebuild`` writes the store's contacts, decisions and feedback keys again from the decision and
feedback logs (the durable record); ``load`` writes the latest feature row per user of a snapshot
(pipelined batches, with a TTL) for ``/score`` to read (``serve.online_features``). ``engage score
--online-store`` loads its run's snapshot the same way (:func:`load_snapshot`, the one path).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from engage.cli.common import ConfigOpt, SetOpt, build_config, check_paths, fail, file_errors, out

if TYPE_CHECKING:
    from engage.config import EngageConfig

__all__ = ["load", "load_snapshot", "rebuild", "score_target"]

StoreOpt = Annotated[
    str | None,
    typer.Option("--online-store", help="redis://host:port/db (default: serve.online_store)."),
]


def _store_url(store: str | None, configured: str) -> str:
    url = store or configured
    if not url.startswith(("redis://", "rediss://", "unix://")):
        raise fail(f"--online-store: a redis:// URL is needed (serve.online_store is {configured!r})")
    return url


def score_target(store: str | None, config: EngageConfig) -> str | None:
    """The store ``engage score`` loads its snapshot into, or None (not loaded).

    ``--online-store URL``; without it ``serve.online_store`` when it is a Redis URL and
    ``serve.online_features`` is on (the service reads its feature rows there); ``--online-store
    local``: not loaded whatever the config says."""
    serve = config.serve
    if store is None:
        if not serve.online_features or serve.online_store == "local":
            return None
        return _store_url(None, serve.online_store)
    return None if store == "local" else _store_url(store, serve.online_store)


def load_snapshot(
    snapshot: Path, url: str, config: EngageConfig, *, ttl_days: float | None = None, written: str = ""
) -> int:
    """Load each user's latest feature row of ``snapshot`` into the store at ``url`` and print the
    rows and rows/s: ``engage online load`` and ``engage score --online-store`` both come here.

    ``ttl_days`` defaults to ``serve.online_feature_ttl_days``. An unreadable snapshot or a store
    that does not answer is an error (exit 2) naming it; ``written`` says what stays on disk."""
    import pandas as pd
    import pyarrow as pa

    from engage.online.base import StoreUnavailable
    from engage.online.redis import load_features

    try:
        frame = pd.read_parquet(snapshot)  # a file or a folder of parts (a Spark run's snapshot)
    except (pa.ArrowException, OSError) as exc:
        raise fail(f"--snapshot {snapshot}: not a readable Parquet snapshot ({exc})") from exc
    days = ttl_days if ttl_days is not None else config.serve.online_feature_ttl_days
    started = time.perf_counter()
    try:
        rows = load_features(url, frame, pd.Timedelta(days=days), prefix=config.serve.online_prefix)
    except StoreUnavailable as exc:
        raise fail(f"--online-store {exc}{written}") from exc
    seconds = time.perf_counter() - started
    out.print(
        f"loaded {rows:,} feature rows into {url} in {seconds:.1f} s "
        f"({rows / max(seconds, 1e-9):,.0f} rows/s)"
    )
    return rows


@file_errors
def rebuild(
    store: StoreOpt = None,
    decisions: Annotated[
        Path | None, typer.Option(help="Decision log folder (default: serve.decision_log_dir).")
    ] = None,
    feedback_log: Annotated[
        Path | None, typer.Option(help="Feedback log folder (default: serve.feedback_log_dir).")
    ] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Rebuild the store's contacts, decisions and feedback keys from the logs (features stay)."""
    cfg = build_config(config, set_)
    url = _store_url(store, cfg.serve.online_store)
    decisions = decisions or Path(cfg.serve.decision_log_dir)
    feedback_log = feedback_log or Path(cfg.serve.feedback_log_dir)
    check_paths(folders={"--decisions": decisions, "--feedback-log": feedback_log})
    import pandas as pd

    from engage.offers.catalog import load_catalog
    from engage.online.base import StoreUnavailable
    from engage.online.redis import open_store
    from engage.online.redis import rebuild as rebuild_store
    from engage.scoring.decision_log import read_decisions, utc_now
    from engage.scoring.feedback import read_feedback

    catalog = load_catalog(cfg.offers.catalog_path)
    logged, skipped = read_decisions(decisions)
    reports, _ = read_feedback(feedback_log)
    cfg = cfg.model_copy(update={"serve": cfg.serve.model_copy(update={"online_store": url})})
    try:
        target = open_store(cfg, retention=pd.Timedelta(days=catalog.history_days))
        if target.problem():
            raise fail(f"--online-store {url}: {target.problem()}")
        counts = rebuild_store(target, logged, reports, utc_now())
    except StoreUnavailable as exc:
        raise fail(f"--online-store {url}: {exc}") from exc
    out.print(
        f"rebuilt {url}: {counts['decisions']:,} decisions ({skipped:,} log lines skipped), "
        f"{counts['feedback']:,} feedback reports, {counts['removed_keys']:,} old keys removed"
    )


@file_errors
def load(
    snapshot: Annotated[Path, typer.Option(help="Feature snapshot (Parquet file or folder).")],
    store: StoreOpt = None,
    ttl_days: Annotated[
        float | None, typer.Option(help="Row lifetime in days (default: serve.online_feature_ttl_days).")
    ] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Load each user's latest feature row of a snapshot into the store (pipelined, with a TTL)."""
    cfg = build_config(config, set_)
    url = _store_url(store, cfg.serve.online_store)
    check_paths(read={"--snapshot": snapshot})
    load_snapshot(snapshot, url, cfg, ttl_days=ttl_days)
