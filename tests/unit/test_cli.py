"""The command line: clear messages and exit codes; no import-time side effects in the package."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import polars as pl
from typer.testing import CliRunner

from engage.cli import app

runner = CliRunner()


def test_validate_prints_a_summary_and_writes_both_files(tmp_path: Path) -> None:
    events = tmp_path / "events.csv"
    events.write_text(
        "user_id,ts,event_type,amount\n"
        "u1,2024-01-01T10:00:00Z,purchase,5\n"
        "u1,2024-01-01T10:00:00Z,purchase,5\n"
        ",2024-01-02,page_view,\n"
        "u2,not a date,page_view,\n"
    )
    result = runner.invoke(app, ["validate", str(events), "--out-dir", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "rows in:      4" in result.output
    assert "duplicate_row: 1" in result.output
    quarantine = pl.read_parquet(tmp_path / "out" / "quarantine.parquet")
    assert sorted(quarantine["reason"].to_list()) == [
        "duplicate_row",
        "missing_user_id",
        "unparseable_timestamp",
    ]


def test_validate_fails_with_the_file_and_column_named(tmp_path: Path) -> None:
    events = tmp_path / "events.csv"
    events.write_text("user_id,when,event_type\nu1,2024-01-01,purchase\n")
    result = runner.invoke(app, ["validate", str(events)])
    assert result.exit_code != 0
    assert "missing required column 'ts'" in result.output
    assert "events.csv" in result.output


def test_config_overrides_are_checked(tmp_path: Path) -> None:
    events = tmp_path / "events.csv"
    events.write_text("user_id,ts,event_type\nu1,2024-01-01,purchase\n")
    result = runner.invoke(
        app,
        [
            "features",
            "--events",
            str(events),
            "--as-of",
            "2024-02-01",
            "--out",
            str(tmp_path / "f.parquet"),
            "--set",
            "features.windows=oops",
        ],
    )
    assert result.exit_code != 0
    assert "features.windows" in result.output


def test_importing_every_module_creates_nothing(tmp_path: Path) -> None:
    code = (
        "import pkgutil, importlib, engage\n"
        "for m in pkgutil.walk_packages(engage.__path__, 'engage.'):\n"
        "    if m.name not in ('engage.serving.service', 'engage.spark'):\n"
        "        importlib.import_module(m.name)\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=tmp_path, check=True, timeout=300)
    assert list(tmp_path.iterdir()) == []


def test_help_works_without_serving_or_spark_installed(tmp_path: Path) -> None:
    """A batch-only install (no engage[serve], no engage[spark]): every command's --help still runs,
    and the CLI imports no serving, Spark or tracking library until a command needs it."""
    code = textwrap.dedent(
        """
        import sys
        sys.modules["bentoml"] = None  # `import bentoml` now raises ImportError
        sys.modules["pyspark"] = None
        import click, typer.main
        from typer.testing import CliRunner
        from engage.cli import app

        def paths(group, prefix=()):
            for name, cmd in group.commands.items():
                if isinstance(cmd, click.Group):
                    yield from paths(cmd, (*prefix, name))
                else:
                    yield (*prefix, name)

        runner = CliRunner()
        for args in [(), *paths(typer.main.get_command(app))]:
            result = runner.invoke(app, [*args, "--help"])
            assert result.exit_code == 0, (args, result.output)
        heavy = ("bentoml", "pyspark", "mlflow", "shap", "lightgbm", "engage.serving")
        loaded = [m for m in heavy if sys.modules.get(m) is not None]
        assert not loaded, loaded
        """
    )
    subprocess.run([sys.executable, "-c", code], cwd=tmp_path, check=True, timeout=300)
