"""The command line's conventions: --version, choices refused by the flag, remote URIs, the user's umask."""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path
from typing import Any, get_args

import polars as pl
import pytest
import typer
from typer.testing import CliRunner

from engage.cli import app
from engage.cli.common import Engine, check_paths, remote_uri, source
from engage.config import FeatureConfig

runner = CliRunner()
EVENTS = "user_id,ts,event_type\nu1,2024-01-01T10:00:00Z,purchase\nu2,2024-01-02T10:00:00Z,page_view\n"


def _plain(output: str) -> str:
    """The output without the box a usage error is drawn in, whitespace collapsed."""
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", output).split())


def test_version_is_the_installed_package_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"engage {version('engage')}"


def test_the_engine_choices_are_the_configs() -> None:
    assert set(get_args(Engine)) == set(get_args(FeatureConfig.model_fields["engine"].annotation))


@pytest.mark.parametrize(
    ("args", "flag", "choices"),
    [
        (
            [
                "score",
                "--events",
                "e.csv",
                "--as-of",
                "2024-01-01",
                "--out",
                "s.parquet",
                "--engine",
                "duckdb",
            ],
            "--engine",
            "'polars', 'spark'",
        ),
        (
            [
                "features",
                "--events",
                "e.csv",
                "--as-of",
                "2024-01-01",
                "--out",
                "f.parquet",
                "--engine",
                "duckdb",
            ],
            "--engine",
            "'polars', 'spark'",
        ),
        (
            [
                "dataset",
                "--events",
                "e.csv",
                "--start",
                "2024-01-01",
                "--end",
                "2024-02-01",
                "--out",
                "d.parquet",
                "--engine",
                "duckdb",
            ],
            "--engine",
            "'polars', 'spark'",
        ),
        (["report", "--events", "e.csv", "--out", "r", "--period", "Q"], "--period", "'M', 'W'"),
        (["serve", "--model-source", "s3"], "--model-source", "'bento', 'mlflow'"),
    ],
)
def test_a_value_outside_a_choice_is_refused_by_the_flag_with_the_list(
    args: list[str], flag: str, choices: str
) -> None:
    """Before: `--engine duckdb` got through the flag and was blamed on the packaged YAML."""
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    text = _plain(result.output)
    assert f"Invalid value for '{flag}'" in text and choices in text, text
    assert "yaml" not in text.lower()


@pytest.mark.parametrize(
    "uri",
    [
        "s3://bucket/events/part.parquet",
        "abfss://c@acct.dfs.core.windows.net/e",
        "gs://b/k",
        "hdfs://nn:8020/e",
    ],
)
def test_remote_uris_are_kept_as_written(uri: str) -> None:
    assert source(uri) == uri and isinstance(source(uri), str)
    assert remote_uri(Path(uri)) == uri  # what a Path-typed option made of it, named as the user typed it
    assert remote_uri(source("data/events.parquet")) is None and isinstance(source("e.csv"), Path)
    check_paths(sources={"--events": source(uri)}, remote_ok=True)
    with pytest.raises(typer.Exit):
        check_paths(sources={"--events": source(uri)})


def _run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str]) -> Any:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "events.csv").write_text(EVENTS)
    return runner.invoke(app, args)


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (
            ["score", "--events", "s3://b/events.parquet", "--as-of", "2024-02-01", "--out", "s.parquet"],
            "--events s3://b/events.parquet: only --engine spark",
        ),
        (
            [
                "score",
                "--events",
                "events.csv",
                "--users",
                "gs://b/users.parquet",
                "--as-of",
                "2024-02-01",
                "--out",
                "s.parquet",
            ],
            "--users gs://b/users.parquet: only --engine spark",
        ),
        (
            [
                "features",
                "--events",
                "abfss://c@a.dfs.core.windows.net/e",
                "--as-of",
                "2024-02-01",
                "--out",
                "f.parquet",
            ],
            "--events abfss://c@a.dfs.core.windows.net/e: only --engine spark",
        ),
        (
            ["score", "--events", "events.csv", "--as-of", "2024-02-01", "--out", "s3://b/scores.parquet"],
            "--out s3://b/scores.parquet: engage writes local files only",
        ),
        (
            ["features", "--events", "events.csv", "--as-of", "2024-02-01", "--out", "hdfs://nn/f.parquet"],
            "--out hdfs://nn/f.parquet: engage writes local files only",
        ),
        (["validate", "s3://b/events.csv"], "PATH s3://b/events.csv: this option takes a local path"),
        (
            [
                "dataset",
                "--events",
                "s3://b/e.csv",
                "--start",
                "2024-01-01",
                "--end",
                "2024-02-01",
                "--out",
                "d.parquet",
            ],
            "--events s3://b/e.csv: this option takes a local path",
        ),
    ],
)
def test_remote_uris_are_refused_clearly_where_the_engine_cannot_read_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], named: str
) -> None:
    """Before: `s3://b/k` became `s3:/b/k` and was 'file not found' (or a local folder named s3:)."""
    result = _run(tmp_path, monkeypatch, args)
    assert result.exit_code == 2, result.output
    assert named in _plain(result.output)
    assert not any(p.name.endswith(":") for p in tmp_path.iterdir())  # no local 's3:' folder made


def test_spark_gets_the_remote_uris_untouched(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import engage.scoring.champions
    import engage.spark

    seen: dict[str, Any] = {}

    def fake_score_spark(events: Any, *args: Any, users: Any = None, exposures: Any = None, **kw: Any) -> Any:
        seen.update(events=events, users=users, exposures=exposures)
        raise typer.Exit(0)

    monkeypatch.setattr(engage.spark, "score_spark", fake_score_spark)
    monkeypatch.setattr(engage.scoring.champions, "load_champions", lambda cfg: object())
    args = ["score", "--events", "s3a://b/ev/", "--users", "gs://b/u.parquet", "--exposures", "abfss://c@a/x"]
    result = _run(
        tmp_path, monkeypatch, [*args, "--as-of", "2024-02-01", "--out", "s.parquet", "--engine", "spark"]
    )
    assert result.exit_code == 0, result.output
    assert seen == {"events": "s3a://b/ev/", "users": "gs://b/u.parquet", "exposures": "abfss://c@a/x"}


def test_spark_score_takes_master_snapshot_and_decision_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: the Spark run was always local[2] and silently ignored --snapshot and --decision-log."""
    import engage.scoring.champions
    import engage.spark

    seen: dict[str, Any] = {}

    def fake_score_spark(events: Any, as_of: Any, models: Any, cfg: Any, out: Any, **kw: Any) -> Any:
        seen.update(master=cfg.spark.master, snapshot=kw.get("snapshot"), log=kw.get("decision_log"))
        raise typer.Exit(0)

    monkeypatch.setattr(engage.spark, "score_spark", fake_score_spark)
    monkeypatch.setattr(engage.scoring.champions, "load_champions", lambda cfg: object())
    args = [
        "score",
        "--events",
        "events.csv",
        "--as-of",
        "2024-02-01",
        "--out",
        "s.parquet",
        "--engine",
        "spark",
    ]
    args += ["--master", "spark://127.0.0.1:7077", "--snapshot", "snap.parquet", "--decision-log", "log"]
    result = _run(tmp_path, monkeypatch, args)
    assert result.exit_code == 0, result.output
    assert seen == {"master": "spark://127.0.0.1:7077", "snapshot": Path("snap.parquet"), "log": Path("log")}


@pytest.fixture(params=[0o022, 0o077, 0o002])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_files_engage_writes_follow_the_users_umask(
    tmp_path: Path, umask: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: scores, snapshot and validated files came out 0600 whatever the umask."""
    from engage.atomic import write_parquet_atomic

    expected = 0o666 & ~umask
    assert _mode(write_parquet_atomic(pl.DataFrame({"a": [1]}), tmp_path / "w" / "x.parquet")) == expected
    result = _run(tmp_path, monkeypatch, ["validate", "events.csv", "--out-dir", "valid"])
    assert result.exit_code == 0, result.output
    for name in ("accepted.parquet", "quarantine.parquet"):
        assert _mode(tmp_path / "valid" / name) == expected, name
    result = runner.invoke(
        app, ["features", "--events", "events.csv", "--as-of", "2024-02-01", "--out", "f.parquet"]
    )
    assert result.exit_code == 0, result.output
    assert _mode(tmp_path / "f.parquet") == expected
