"""Audiences out: the split (holdout and none left out, counted), the files and their manifest."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

from engage.audiences.files import MANIFEST_NAME, ExportLockedError, export_lock, write_audiences
from engage.audiences.split import AudienceError, audience_stem, split_audiences
from engage.cli import app

runner = CliRunner()
CHANNEL_OF = {"winback_email": "email", "cart_push": "push", "new_items_email": "email", "none": "none"}


def scores_frame(n: int, seed: int, *, holdout_share: float = 0.1, send_at: bool = False) -> pl.DataFrame:
    """A seeded stand-in for `engage score` output: holdout rows carry `none`, as the policy gives them."""
    rng = np.random.default_rng(seed)
    messages = rng.choice(list(CHANNEL_OF), n)
    holdout = rng.random(n) < holdout_share
    messages = np.where(holdout, "none", messages)
    frame = pl.DataFrame(
        {
            "user_id": [f"u{i:06d}" for i in rng.permutation(n)],
            "as_of": [datetime(2024, 6, 1, tzinfo=UTC)] * n,
            "churn_probability": rng.random(n),
            "message_id": messages,
            "channel": [CHANNEL_OF[m] for m in messages],
            "message_text": [f'Hello {i}, "20% off", today,\nonly' for i in range(n)],
            "holdout": holdout,
            "decision_id": [f"{seed:04x}{i:020x}" for i in range(n)],
        }
    )
    if send_at:
        start = datetime(2024, 6, 1, 9, tzinfo=UTC)
        frame = frame.with_columns(
            pl.Series("send_at", [start + timedelta(minutes=int(m)) for m in rng.integers(0, 600, n)])
        )
    return frame


@pytest.mark.parametrize("by", ["message", "channel"])
def test_every_sent_decision_lands_in_exactly_one_audience_and_the_rest_are_counted(by: str) -> None:
    scores = scores_frame(2_000, seed=3)
    result = split_audiences(scores, by)  # type: ignore[arg-type]
    rows = scores.to_dicts()
    sent = [r for r in rows if not r["holdout"] and r["message_id"] != "none"]
    assert result.holdout == sum(r["holdout"] for r in rows) > 0
    assert result.none == sum(not r["holdout"] and r["message_id"] == "none" for r in rows) > 0
    assert result.rows_in == result.exported + result.holdout + result.none == len(rows)
    key = "message_id" if by == "message" else "channel"
    expected: dict[str, set[str]] = {}
    for r in sent:
        expected.setdefault(r[key], set()).add(r["decision_id"])
    assert {name: set(f["decision_id"].to_list()) for name, f in result.frames.items()} == expected
    assert result.counts == {name: len(ids) for name, ids in expected.items()}
    for name, frame in result.frames.items():
        assert frame.columns == ["user_id", "message_id", "channel", "message_text", "decision_id"]
        assert (frame[key] == name).all() and frame["user_id"].is_sorted()
    assert "none" not in result.frames


def test_a_csv_holdout_column_as_text_is_read_and_anything_else_is_named() -> None:
    scores = scores_frame(50, seed=1).with_columns(pl.col("holdout").cast(pl.String).str.to_lowercase())
    assert split_audiences(scores, "message").holdout == int((scores["holdout"] == "true").sum())
    bad = scores.with_columns(
        pl.when(pl.int_range(pl.len()) == 7)
        .then(pl.lit("maybe"))
        .otherwise(pl.col("holdout"))
        .alias("holdout")
    )
    with pytest.raises(AudienceError, match=r"row 8, column holdout: 'maybe'"):
        split_audiences(bad, "message")


def test_rows_an_importer_cannot_use_are_named() -> None:
    scores = scores_frame(40, seed=2, holdout_share=0.0)
    sent = scores.with_row_index("row", offset=1).filter(pl.col("message_id") != "none")
    row = int(sent["row"][3])
    no_text = scores.with_columns(
        pl.when(pl.int_range(pl.len()) == row - 1)
        .then(None)
        .otherwise(pl.col("message_text"))
        .alias("message_text")
    )
    with pytest.raises(AudienceError, match=rf"row {row}, column message_text: empty"):
        split_audiences(no_text, "channel", source="--scores s.parquet")
    first, second = int(sent["row"][0]), int(sent["row"][1])
    twice = scores.with_columns(
        pl.when(pl.int_range(pl.len()) == second - 1)
        .then(pl.lit(scores["decision_id"][first - 1]))
        .otherwise(pl.col("decision_id"))
        .alias("decision_id")
    )
    with pytest.raises(AudienceError, match=rf"rows {first} and {second}, column decision_id"):
        split_audiences(twice, "message")
    with pytest.raises(AudienceError, match=r"missing column.*message_text"):
        split_audiences(scores.drop("message_text"), "message")


def test_audience_file_names_are_safe_and_never_shared() -> None:
    names = ["win back/10%", "win_back_10", "win back 10", "..", "Winback", "ok-id.v2"]
    stems = [audience_stem("message", n) for n in names]
    assert len(set(stems)) == len(names)
    for stem in stems:
        assert stem.startswith("message-") and "/" not in stem and not stem.endswith(".")
    assert audience_stem("message", "ok-id.v2") == "message-ok-id.v2"  # safe names stay readable


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_files_and_manifest_agree_with_the_split(tmp_path: Path) -> None:
    scores = scores_frame(3_000, seed=5, send_at=True)
    result = split_audiences(scores, "message")
    manifest = write_audiences(result, tmp_path, source={"file": "s.parquet", "sha256": "x"})
    assert json.loads((tmp_path / MANIFEST_NAME).read_text()) == manifest
    assert manifest["rows_in"] == scores.height
    assert manifest["not_exported"] == {"holdout": result.holdout, "none": result.none}
    assert manifest["send_at"] == "included" and "send_at" in manifest["columns"]
    assert sum(f["rows"] for f in manifest["files"]) == manifest["exported"] == result.exported
    for entry in manifest["files"]:
        parquet = pl.read_parquet(tmp_path / entry["parquet"])
        assert parquet.height == entry["rows"] and (parquet["message_id"] == entry["audience"]).all()
        assert _sha(tmp_path / entry["csv"]) == entry["csv_sha256"]
        assert _sha(tmp_path / entry["parquet"]) == entry["parquet_sha256"]
        with (tmp_path / entry["csv"]).open(newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
        assert [r["decision_id"] for r in rows] == parquet["decision_id"].to_list()
        assert [r["message_text"] for r in rows] == parquet[
            "message_text"
        ].to_list()  # commas, quotes, newlines
        assert [r["send_at"] for r in rows] == [
            t.strftime("%Y-%m-%dT%H:%M:%SZ") for t in parquet["send_at"].to_list()
        ]
    assert not [p for p in tmp_path.iterdir() if "engage-tmp" in p.name]


def test_a_reexport_removes_audiences_that_are_gone_and_only_those(tmp_path: Path) -> None:
    scores = scores_frame(500, seed=6)
    write_audiences(split_audiences(scores, "message"), tmp_path, source={})
    (tmp_path / "notes.txt").write_text("mine")
    fewer = scores.filter(pl.col("message_id") != "cart_push")
    manifest = write_audiences(split_audiences(fewer, "message"), tmp_path, source={})
    listed = {f[k] for f in manifest["files"] for k in ("csv", "parquet")}
    on_disk = {p.name for p in tmp_path.iterdir() if p.suffix in (".csv", ".parquet")}
    assert on_disk == listed and not any("cart_push" in name for name in on_disk)
    assert (tmp_path / "notes.txt").exists()


def test_one_export_per_folder_at_a_time(tmp_path: Path) -> None:
    # a second open file description: flock refuses it as it would another process
    with (
        export_lock(tmp_path),
        pytest.raises(ExportLockedError, match=str(os.getpid())),
        export_lock(tmp_path),
    ):
        pass
    with export_lock(tmp_path):  # released
        pass


def test_export_command_writes_files_that_follow_the_umask(tmp_path: Path) -> None:
    scores = scores_frame(300, seed=7)
    scores.write_parquet(tmp_path / "scores.parquet")
    old = os.umask(0o027)
    try:
        result = runner.invoke(
            app,
            [
                "export",
                "--scores",
                str(tmp_path / "scores.parquet"),
                "--by",
                "channel",
                "--out",
                str(tmp_path / "a"),
            ],
        )
    finally:
        os.umask(old)
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "a" / MANIFEST_NAME).read_text())
    assert {f["audience"] for f in manifest["files"]} == {"email", "push"}
    assert manifest["scores"]["sha256"] == _sha(tmp_path / "scores.parquet")
    assert "send_at absent" in result.output
    for entry in manifest["files"]:
        assert stat.S_IMODE((tmp_path / "a" / entry["csv"]).stat().st_mode) == 0o640
    result = runner.invoke(
        app,
        ["export", "--scores", str(tmp_path / "scores.parquet"), "--by", "segment", "--out", str(tmp_path)],
    )
    assert result.exit_code == 2 and "message" in result.output and "channel" in result.output


@pytest.mark.parametrize(
    ("sets", "env", "message"),
    [
        ([], {"ENGAGE_WEBHOOK_SECRET": "k"}, "export.webhook.url is not set"),
        (["export.webhook.url=http://example.com/hook"], {"ENGAGE_WEBHOOK_SECRET": "k"}, "use https"),
        (["export.webhook.url=http://127.0.0.1:9/hook"], {}, "ENGAGE_WEBHOOK_SECRET"),
        (
            ["export.webhook.url=https://example.com/h", "export.webhook.secret_env=MY_HOOK_KEY"],
            {"ENGAGE_WEBHOOK_SECRET": "k"},
            "MY_HOOK_KEY",
        ),
    ],
)
def test_webhook_settings_are_checked_before_any_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sets: list[str], env: dict[str, str], message: str
) -> None:
    monkeypatch.delenv("ENGAGE_WEBHOOK_SECRET", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    scores_frame(20, seed=8).write_parquet(tmp_path / "s.parquet")
    args = ["export", "--scores", str(tmp_path / "s.parquet"), "--out", str(tmp_path / "out"), "--webhook"]
    result = runner.invoke(app, [*args, *(a for s in sets for a in ("--set", s))])
    assert result.exit_code == 2, result.output
    assert message in result.output and not (tmp_path / "out").exists()
