"""Catalog commands: check a message catalog, and preview who would get which message before it goes live.

``check`` loads the catalog with every load-time check (rules, templates, placeholders resolving to
the configured features, user attributes or params, defaults for missing values) and shows each
message as a user without any value would read it. ``preview`` scores a feature snapshot with the
champion models and the candidate catalog through the one scoring path (``engage.scoring.core``),
then shows per message how many users are eligible and chosen, with rendered samples; without models
it shows eligibility (rules, consent, caps) and rendering only, and says so.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from engage import schemas as s
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
    read_exposures,
    read_table,
)

if TYPE_CHECKING:
    import pandas as pd

    from engage.config import EngageConfig
    from engage.offers.catalog import Catalog

__all__ = ["check", "preview"]

CatalogOpt = Annotated[
    Path | None, typer.Option("--catalog", help="Catalog YAML (default: offers.catalog_path of the config).")
]


def _load(cfg: EngageConfig, path: Path | None, feature_names: list[str] | None = None) -> Catalog:
    """The checked catalog (``--catalog`` or the configured one); a CatalogError ends the command."""
    from engage.features.spec import feature_names as standard_features
    from engage.offers.catalog import USER_ATTRIBUTES, CatalogError, load_catalog

    catalog_path = path or Path(cfg.offers.catalog_path)
    check_paths(read={"--catalog": catalog_path})
    names = feature_names or [*standard_features(cfg.features), *USER_ATTRIBUTES]
    try:
        return load_catalog(catalog_path, feature_names=names)
    except CatalogError as exc:
        raise fail(str(exc)) from exc


@file_errors
def check(catalog: CatalogOpt = None, config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Load a catalog with every check scoring applies; show each message as a user without values sees it."""
    cfg = build_config(config, set_)
    loaded = _load(cfg, catalog)
    table = Table("message", "channel", "eligible_if", "reads", "text for a user without values")
    for m in loaded.messages:
        channel = f"{m.channel} (html)" if m.html else m.channel
        reads = ", ".join(sorted(m.template_keys() - set(m.params))) or "-"
        table.add_row(m.id, channel, m.eligible_if.text or "everyone", reads, m.render({}))
    out.print(table)
    out.print(
        f"{loaded.source}: {len(loaded.messages)} messages, contact cap {loaded.max_per_7d} per 7 days: ok",
        highlight=False,
    )


@file_errors
def preview(
    snapshot: Annotated[
        Path, typer.Option(help="Feature snapshot (engage score --snapshot, or engage features --out).")
    ],
    n: Annotated[int, typer.Option("--n", min=0, help="Rendered samples to show.")] = 20,
    catalog: CatalogOpt = None,
    exposures: Annotated[Path | None, typer.Option(help="Past exposures (caps, cooldowns).")] = None,
    tracking_uri: Annotated[str | None, typer.Option(help="MLflow tracking URI (models@champion).")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Who would get which message under a catalog, with rendered samples, before it goes live."""
    quiet_env()
    cfg = build_config(config, set_, **{"tracking.uri": tracking_uri})
    check_paths(read={"--snapshot": snapshot, "--catalog": catalog, "--exposures": exposures})
    features = read_table(snapshot, "--snapshot", required=(s.USER_ID, s.AS_OF), timestamps=(s.AS_OF,))
    frame = features.to_pandas()
    loaded = _load(cfg, catalog, [c for c in frame.columns if c not in (s.USER_ID, s.AS_OF)])
    if frame.empty:
        raise fail(f"--snapshot {snapshot}: no rows to preview")
    history = _history(read_exposures(exposures), frame, loaded)
    allowed = _allowed(frame, loaded, history)
    chosen, texts, note = _decide(frame, loaded, history, cfg)
    _print_messages(loaded, allowed, chosen, texts, frame)
    _print_samples(frame, loaded, allowed, chosen, texts, n, cfg.seed)
    console.print(note, highlight=False)


def _history(exposures: Any, frame: pd.DataFrame, catalog: Catalog) -> pd.DataFrame | None:
    import pandas as pd

    from engage.scoring.job import exposure_history

    as_of = pd.Timestamp(frame[s.AS_OF].max()).to_pydatetime()
    return exposure_history(exposures, as_of, catalog.history_days)


def _allowed(frame: pd.DataFrame, catalog: Catalog, history: Any) -> pd.DataFrame:
    """Eligible, consented, not cooled down and under the cap, per arm (the policy's own check)."""
    import pandas as pd

    from engage.offers.policy import allowed_arms

    as_of = pd.Timestamp(frame[s.AS_OF].max()).to_pydatetime()
    return allowed_arms(frame, catalog, history=history, as_of=as_of, max_per_7d=catalog.max_per_7d)


def _decide(frame: pd.DataFrame, catalog: Catalog, history: Any, cfg: EngageConfig) -> tuple[Any, Any, str]:
    """Chosen message and text per user with the champion models, or (None, texts, why not)."""
    from engage.offers.templates import render_many

    try:
        from engage.scoring.champions import load_champions

        models = load_champions(cfg)
    except Exception as exc:  # no registry, no champion, a model that doesn't load: preview without
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        texts = {m.id: render_many(catalog, [m.id] * len(frame), frame) for m in catalog.messages}
        return (
            None,
            texts,
            f"models unavailable ({first}): eligibility and rendering shown without the policy",
        )
    from engage.scoring.core import score_features

    scores = score_features(
        frame,
        dataclasses.replace(models, catalog=catalog),
        policy=cfg.policy,
        seed=cfg.seed,
        history=history,
        reasons_top_k=None,
    )
    versions = ", ".join(f"{k} {v}" for k, v in models.versions.items())
    note = f"chosen by the champion policy ({versions}), holdout and exploration included; nothing was sent"
    return scores, None, note


def _print_messages(catalog: Catalog, allowed: Any, chosen: Any, texts: Any, frame: pd.DataFrame) -> None:
    total = len(frame)
    columns = ["message", "channel", "allowed users"]
    columns += ["chosen", "sample text"] if chosen is not None else ["sample text"]
    table = Table(*columns, title=f"{total:,} users in the snapshot")
    for arm in catalog.arms:
        m = catalog.get(arm)
        allowed_n = int(allowed[arm].sum())
        row = [arm, m.channel if m else "-", f"{allowed_n:,} ({allowed_n / total:.0%})"]
        if chosen is not None:
            picked = chosen[s.MESSAGE_ID] == arm
            sample = chosen.loc[picked, "message_text"].head(1).tolist()
            row += [f"{int(picked.sum()):,} ({picked.mean():.0%})", sample[0] if sample else ""]
        else:
            rows = allowed[arm].to_numpy().nonzero()[0]
            row += [str(texts[arm][rows[0]]) if m is not None and len(rows) else ""]
        table.add_row(*row)
    out.print(table)


def _print_samples(
    frame: pd.DataFrame, catalog: Catalog, allowed: Any, chosen: Any, texts: Any, n: int, seed: int
) -> None:
    """``n`` users drawn with the config's seed: the chosen message, or (no policy) one they may get."""
    import numpy as np

    if n == 0:
        return
    rows = np.sort(np.random.default_rng(seed).permutation(len(frame))[:n])
    table = Table("user", "message", "channel", "text", title=f"{len(rows)} sampled users")
    if chosen is not None:
        for i in rows:
            r = chosen.iloc[i]
            table.add_row(str(r[s.USER_ID]), r[s.MESSAGE_ID], r[s.CHANNEL], r["message_text"])
    else:
        ids = [m.id for m in catalog.messages]
        for k, i in enumerate(rows):  # without a policy: each user with one of their allowed messages in turn
            options = [arm for arm in ids if allowed[arm].iloc[i]] or [s.CONTROL_ARM]
            arm = options[k % len(options)]
            text = str(texts[arm][i]) if arm in texts else ""
            table.add_row(str(frame[s.USER_ID].iloc[i]), arm, catalog.channel(arm), text)
    out.print(table)
