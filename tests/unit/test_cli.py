"""The command line: clear messages and exit codes; no import-time side effects in the package."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import polars as pl
import typer.main
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


def test_validate_reads_the_reference_time_from_config_or_flag(tmp_path: Path) -> None:
    events = tmp_path / "events.csv"
    events.write_text("user_id,ts,event_type\nu1,2024-01-01T10:00:00Z,purchase\nu1,2024-03-01,purchase\n")
    for args in (
        ["--set", "validation.reference_time=2024-02-01T00:00:00Z"],
        ["--reference-time", "2024-02-01"],
    ):
        result = runner.invoke(app, ["validate", str(events), *args])
        assert result.exit_code == 0, result.output
        assert "timestamp_after_reference: 1" in result.output
    assert "timestamp_after_reference" not in runner.invoke(app, ["validate", str(events)]).output


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
        import typer.main
        from typer.testing import CliRunner
        from engage.cli import app

        def paths(group, prefix=()):
            for name, cmd in group.commands.items():
                yield (*prefix, name)
                if hasattr(cmd, "commands"):
                    yield from paths(cmd, (*prefix, name))

        runner = CliRunner()
        seen = list(paths(typer.main.get_command(app)))
        assert ("train", "churn") in seen and ("import", "cdnow") in seen, seen
        for args in [(), *seen]:
            result = runner.invoke(app, [*args, "--help"])
            assert result.exit_code == 0, (args, result.output)
        heavy = ("bentoml", "pyspark", "mlflow", "shap", "lightgbm", "engage.serving")
        loaded = [m for m in heavy if sys.modules.get(m) is not None]
        assert not loaded, loaded
        """
    )
    subprocess.run([sys.executable, "-c", code], cwd=tmp_path, check=True, timeout=300)


README = Path(__file__).resolve().parents[2] / "README.md"


def _registered(group: Any, prefix: tuple[str, ...] = ()) -> dict[str, Any]:
    """Every leaf command of the Typer app, sub-apps included: {"train churn": command}."""
    out: dict[str, Any] = {}
    for name, command in group.commands.items():
        if hasattr(command, "commands"):  # a sub-app (Typer's own click Group)
            out |= _registered(command, (*prefix, name))
        else:
            out[" ".join((*prefix, name))] = command
    return out


def _options(command: Any) -> set[str]:
    return {o for p in command.params for o in (*p.opts, *p.secondary_opts) if o.startswith("-")}


def test_readme_lists_every_command_and_which_take_config() -> None:
    commands = _registered(typer.main.get_command(app))
    rows = re.findall(r"^\| `engage ([a-z\- ]+)` \| .+ \| (yes|no) \|$", README.read_text(), flags=re.M)
    assert [name for name, _ in rows] and len(rows) == len({name for name, _ in rows})
    assert {name for name, _ in rows} == set(commands)
    for name, takes_config in rows:
        options = _options(commands[name])
        expected = {"--config", "--set"} if takes_config == "yes" else set()
        assert options & {"--config", "--set"} == expected, f"engage {name}: README says {takes_config}"


def test_readme_examples_use_real_commands_and_flags() -> None:
    text = README.read_text()
    block = text.split("## Command line", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    commands = _registered(typer.main.get_command(app))
    lines = [line.split("#")[0].split() for line in block.splitlines() if line.startswith("engage ")]
    assert len(lines) >= len(commands)
    for words in lines:
        name = _command_of(words, commands)
        flags = {w.strip("[]|").split("=")[0] for w in words if w.strip("[]|").startswith("--")}
        assert flags <= _options(commands[name]), f"engage {name}: {sorted(flags - _options(commands[name]))}"


def _command_of(words: list[str], commands: dict[str, Any]) -> str:
    """The registered command a README line runs (the longest that matches its first words)."""
    for name in sorted(commands, key=len, reverse=True):
        parts = name.split()
        if words[1 : 1 + len(parts)] == parts:
            return name
    raise AssertionError(f"README runs a command the app does not have: {' '.join(words)}")


def test_backtest_takes_its_horizon_from_config_unless_a_flag_sets_it(tmp_path: Path) -> None:
    events = tmp_path / "events.csv"
    events.write_text("user_id,ts,event_type\nu1,2024-01-01,purchase\nu1,2024-01-20,purchase\n")
    scores = tmp_path / "scores.parquet"
    pl.DataFrame({"user_id": ["u1"], "as_of": ["2024-01-10T00:00:00+00:00"]}).write_parquet(scores)
    base = ["backtest", "--scores", str(scores), "--events", str(events), "--out", str(tmp_path / "bt")]
    for extra, closes in (([], "2024-02-09"), (["--set", "labels.horizon_days=5"], None)):
        result = runner.invoke(app, [*base, *extra])
        if closes:  # default config: 30 days after the scores, past the end of the events
            assert result.exit_code != 0 and closes in result.output, result.output
        else:  # 5 days: the horizon has closed, so the back-test gets past the date check
            assert "before the horizon closes" not in result.output
    flagged = runner.invoke(app, [*base, "--set", "labels.horizon_days=5", "--horizon", "12d"])
    assert "2024-01-22" in flagged.output, flagged.output
