"""`engage catalog preview` with champion models: the packaged catalog previews what `engage score` sends."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path

import polars as pl
import pytest
import yaml
from typer.testing import CliRunner

from engage import schemas as s
from engage.cli import app, common
from engage.config import DEFAULT_CATALOG_PATH, load_config
from engage.datasets.simulate import simulate, write_simulation
from engage.offers.catalog import load_catalog
from engage.offers.training import fit_offers, offer_table
from engage.training.churn import train_churn
from engage.training.offers import train_offers

pytestmark = pytest.mark.integration
runner = CliRunner()


def _chosen(output: str) -> dict[str, int]:
    """The preview's 'chosen' column by message id."""
    counts = {}
    for line in output.splitlines():
        cells = [c.strip() for c in re.split(r"[│┃]", line)[1:-1]]
        if len(cells) == 5 and re.fullmatch(r"[\d,]+ \(\d+%\)", cells[3]):
            counts[cells[0]] = int(cells[3].split()[0].replace(",", ""))
    return counts


def test_preview_chooses_what_score_sends_and_a_new_catalog_changes_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(common.out, "width", 400)
    data = simulate(1_000, 120, seed=4)
    paths = write_simulation(data, tmp_path / "data")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    sets = ["tracking.uri=" + uri, "labels.min_churned=50", "labels.min_retained=50", "labels.every_days=14"]
    cfg = load_config(overrides=dict(item.split("=", 1) for item in sets) | {"churn.n_estimators": 40})
    train_churn(data.events, cfg, users=data.users, exposures=data.exposures)
    table = offer_table(data.events, data.exposures, cfg, users=data.users)
    train_offers(fit_offers(table, cfg, load_catalog(cfg.offers.catalog_path), n_boot=10), cfg)
    as_of = (data.events["ts"].max() - timedelta(days=10)).replace(hour=0, minute=0, second=0, microsecond=0)
    flags = [f"--set={item}" for item in sets]
    scores, snapshot = tmp_path / "scores.parquet", tmp_path / "snap.parquet"
    common_inputs = ["--exposures", str(paths["exposures"])]
    score = [
        "score",
        *["--events", str(paths["events"]), "--users", str(paths["users"]), *common_inputs],
        *["--as-of", as_of.isoformat(), "--out", str(scores), "--snapshot", str(snapshot)],
        *["--decision-log", str(tmp_path / "decisions"), *flags],
    ]
    result = runner.invoke(app, score)
    assert result.exit_code == 0, result.output
    assert f"decision log: {pl.read_parquet(scores).height:,} decisions ->" in result.output
    rerun = runner.invoke(app, score)  # the same job again: the log says so and keeps one copy
    assert rerun.exit_code == 0 and "(a re-run): nothing appended" in rerun.output, rerun.output
    sent = pl.read_parquet(scores)[s.MESSAGE_ID].value_counts()
    sent_counts = dict(zip(sent[s.MESSAGE_ID].to_list(), sent["count"].to_list(), strict=True))

    preview = ["catalog", "preview", "--snapshot", str(snapshot), "--n", "5", *common_inputs, *flags]
    result = runner.invoke(app, preview)
    assert result.exit_code == 0, result.output
    assert "chosen by the champion policy" in result.output
    assert {k: v for k, v in _chosen(result.output).items() if v} == sent_counts

    raw = yaml.safe_load(DEFAULT_CATALOG_PATH.read_text())
    dropped = max(sent_counts, key=lambda k: sent_counts[k] if k != s.CONTROL_ARM else -1)
    raw["messages"] = [m for m in raw["messages"] if m["id"] != dropped]
    (tmp_path / "new.yaml").write_text(yaml.safe_dump(raw))
    result = runner.invoke(app, [*preview, "--catalog", str(tmp_path / "new.yaml")])
    assert result.exit_code == 0, result.output
    chosen = _chosen(result.output)
    assert dropped not in chosen and sum(chosen.values()) == sum(sent_counts.values())
