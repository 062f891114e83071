"""`engage catalog check` and `engage catalog preview` (without models: eligibility and rendering)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from engage import schemas as s
from engage.cli import app, common
from engage.config import DEFAULT_CATALOG_PATH

runner = CliRunner()


@pytest.fixture(autouse=True)
def _wide(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tables wide enough to read ids and texts whole; no champion models (as an empty registry says)."""

    def no_models(cfg: object) -> None:
        raise LookupError("no engage-churn@champion in the test's store: run `engage train churn` first")

    monkeypatch.setattr(common.out, "width", 400)
    monkeypatch.setattr("engage.scoring.champions.load_champions", no_models)


def _rows(output: str) -> dict[str, list[str]]:
    """Table rows by their first cell."""
    rows: dict[str, list[str]] = {}
    for line in output.splitlines():
        cells = [c.strip() for c in re.split(r"[│┃]", line)[1:-1]]
        if cells and cells[0]:
            rows.setdefault(cells[0], cells)
    return rows


def test_check_shows_every_message_as_a_user_without_values_reads_it() -> None:
    result = runner.invoke(app, ["catalog", "check"])
    assert result.exit_code == 0, result.output
    raw = yaml.safe_load(DEFAULT_CATALOG_PATH.read_text())
    rows = _rows(result.output)
    for item in raw["messages"]:
        assert item["id"] in rows
        assert "{" not in rows[item["id"]][-1] and rows[item["id"]][-1]
    assert f"{len(raw['messages'])} messages" in result.output


def test_check_names_the_message_and_placeholder_that_would_not_resolve(tmp_path: Path) -> None:
    raw = yaml.safe_load(DEFAULT_CATALOG_PATH.read_text())
    raw["messages"][1]["template"] = "New in {{ top_categroy }}"
    bad = tmp_path / "new.yaml"
    bad.write_text(yaml.safe_dump(raw))
    result = runner.invoke(app, ["catalog", "check", "--catalog", str(bad)])
    assert result.exit_code == 2
    text = " ".join(result.output.split())
    assert f"error: {bad}: message {raw['messages'][1]['id']}: field 'template': placeholder" in text
    assert "{{ top_categroy }}" in text and "Traceback" not in text


def _snapshot(path: Path, n: int = 300) -> pd.DataFrame:
    rng = np.random.default_rng(5)
    frame = pd.DataFrame(
        {
            s.USER_ID: [f"u{i:03d}" for i in range(n)],
            s.AS_OF: pd.Timestamp("2024-06-01", tz="UTC"),
            "cart_abandon_count_7d": rng.integers(0, 2, n).astype(float),
            "product_view_count_28d": rng.integers(0, 5, n).astype(float),
            "days_since_last_session": rng.integers(0, 40, n).astype(float),
            "session_count_28d": rng.integers(0, 6, n).astype(float),
            "top_category": rng.choice(["<b>toys</b>", "books", "none"], n),
            **{s.consent_column(c): rng.random(n) < 0.7 for c in s.CHANNELS},
        }
    )
    frame.to_parquet(path)
    return frame


def test_preview_without_models_shows_who_may_get_each_message_and_how_it_reads(tmp_path: Path) -> None:
    frame = _snapshot(tmp_path / "snap.parquet")
    result = runner.invoke(
        app, ["catalog", "preview", "--snapshot", str(tmp_path / "snap.parquet"), "--n", "12"]
    )
    assert result.exit_code == 0, result.output
    assert "models unavailable" in result.output and "without the policy" in result.output
    rows = _rows(result.output)
    consent = {c: frame[s.consent_column(c)] for c in s.CHANNELS}
    expected = {
        "cart_coupon": (frame["cart_abandon_count_7d"] > 0) & consent["email"],
        "category_news": (frame["product_view_count_28d"] >= 2) & consent["push"],
        "winback_offer": (frame["days_since_last_session"] >= 14) & consent["email"],
        "retained_content": (frame["session_count_28d"] <= 2) & consent["in_app"],
        "newsletter": consent["email"],
    }
    for arm, allowed in expected.items():
        assert rows[arm][2].startswith(f"{int(allowed.sum()):,} ("), (arm, rows[arm])
    assert rows[s.CONTROL_ARM][2].startswith(f"{len(frame):,} (")
    sampled = [r for r in rows.values() if re.fullmatch(r"u\d{3}", r[0])]
    assert len(sampled) == 12
    for user, arm, _channel, text in sampled:
        row = frame.set_index(s.USER_ID).loc[user]
        assert arm == s.CONTROL_ARM or bool(expected[arm][frame[s.USER_ID] == user].iloc[0])
        if arm == "retained_content" and row["top_category"] == "<b>toys</b>":
            assert "&lt;b&gt;toys&lt;/b&gt;" in text  # escaped on the in-app channel
        if arm == "category_news" and row["top_category"] == "none":
            assert "our latest picks" in text


def test_preview_refuses_a_catalog_that_reads_what_the_snapshot_lacks(tmp_path: Path) -> None:
    _snapshot(tmp_path / "snap.parquet").drop(columns=["session_count_28d"]).to_parquet(
        tmp_path / "snap.parquet"
    )
    result = runner.invoke(app, ["catalog", "preview", "--snapshot", str(tmp_path / "snap.parquet")])
    assert result.exit_code == 2
    assert "session_count_28d" in result.output and "retained_content" in result.output
