"""Every file the CLI reads or writes: a bad one ends as one message naming it, exit code 2, no traceback.

Before `cli.common.check_paths` / `read_table` / `file_errors`, 22 of these cases ended in a polars or
OS traceback with exit code 1 (e.g. `--users garbage.parquet`: "ComputeError: parquet: File out of
specification"; `--out` a folder: "IsADirectoryError"; `--out-dir` a file: "FileExistsError").
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import pytest
import typer.main
from typer.testing import CliRunner

from engage.cli import app

runner = CliRunner()

EVENTS = "user_id,ts,event_type,amount\nu1,2024-01-01T10:00:00Z,purchase,5\nu2,2024-01-05,page_view,\n"
AS_OF = ["--as-of", "2024-02-01"]
SPAN = ["--start", "2024-01-02", "--end", "2024-01-03"]

# (command line with {placeholders}, the placeholder naming the bad path the message must show)
CASES: dict[str, tuple[list[str], str]] = {
    "simulate --out is a file": (["simulate", "--out", "{file}", "--users", "5", "--days", "5"], "file"),
    "simulate --resume missing": (
        ["simulate", "--resume", "{missing}", "--decisions", "{folder}", "--days", "5"],
        "missing",
    ),
    "simulate --resume is a file": (
        ["simulate", "--resume", "{file}", "--decisions", "{folder}", "--days", "5"],
        "file",
    ),
    "simulate --resume is not a world": (
        ["simulate", "--resume", "{folder}", "--decisions", "{folder}", "--days", "5"],
        "folder",
    ),
    "simulate --decisions missing": (
        ["simulate", "--resume", "{folder}", "--decisions", "{missing}", "--days", "5"],
        "missing",
    ),
    "validate PATH missing": (["validate", "{missing}"], "missing"),
    "validate PATH is a folder": (["validate", "{folder}"], "folder"),
    "validate --out-dir is a file": (["validate", "{events}", "--out-dir", "{file}"], "file"),
    "validate --out-dir under a file": (["validate", "{events}", "--out-dir", "{under_file}"], "file"),
    "--config is a folder": (["validate", "{events}", "--config", "{folder}"], "folder"),
    "--config missing": (["validate", "{events}", "--config", "{missing}"], "missing"),
    "--config not YAML config": (["validate", "{events}", "--config", "{garbage}"], "garbage"),
    "online load --snapshot missing": (
        ["online", "load", "--snapshot", "{missing}", "--online-store", "redis://127.0.0.1:9/0"],
        "missing",
    ),
    "online load --snapshot not parquet": (
        ["online", "load", "--snapshot", "{garbage}", "--online-store", "redis://127.0.0.1:9/0"],
        "garbage",
    ),
    "online rebuild --decisions is a file": (
        ["online", "rebuild", "--decisions", "{file}", "--online-store", "redis://127.0.0.1:9/0"],
        "file",
    ),
    "online rebuild --feedback-log is a file": (
        ["online", "rebuild", "--feedback-log", "{file}", "--online-store", "redis://127.0.0.1:9/0"],
        "file",
    ),
    "import online-retail-ii PATH missing": (
        ["import", "online-retail-ii", "{missing}", "--out", "{new}"],
        "missing",
    ),
    "import online-retail-ii --out is a folder": (
        ["import", "online-retail-ii", "{events}", "--out", "{folder}"],
        "folder",
    ),
    "import cdnow --out under a file": (["import", "cdnow", "{events}", "--out", "{under_file}"], "file"),
    "import cdnow PATH missing": (["import", "cdnow", "{missing}", "--out", "{new}"], "missing"),
    "import hillstrom PATH is a folder": (["import", "hillstrom", "{folder}", "--out", "{new}"], "folder"),
    "import hillstrom --out is a folder": (
        ["import", "hillstrom", "{events}", "--out", "{folder}"],
        "folder",
    ),
    "features --events missing": (["features", "--events", "{missing}", *AS_OF, "--out", "{new}"], "missing"),
    "features --events is a folder": (
        ["features", "--events", "{folder}", *AS_OF, "--out", "{new}"],
        "folder",
    ),
    "features --events not events": (
        ["features", "--events", "{garbage}", *AS_OF, "--out", "{new}"],
        "garbage",
    ),
    "features --out is a folder": (
        ["features", "--events", "{events}", *AS_OF, "--out", "{folder}"],
        "folder",
    ),
    "features --out under a file": (
        ["features", "--events", "{events}", *AS_OF, "--out", "{under_file}"],
        "file",
    ),
    "features --users not parquet": (
        ["features", "--events", "{events}", *AS_OF, "--out", "{new}", "--users", "{garbage}"],
        "garbage",
    ),
    "features --users wrong format": (
        ["features", "--events", "{events}", *AS_OF, "--out", "{new}", "--users", "{text}"],
        "text",
    ),
    "features --users is a folder": (
        ["features", "--events", "{events}", *AS_OF, "--out", "{new}", "--users", "{folder}"],
        "folder",
    ),
    "features --users lacks user_id": (
        ["features", "--events", "{events}", *AS_OF, "--out", "{new}", "--users", "{no_columns}"],
        "no_columns",
    ),
    "features --exposures not parquet": (
        ["features", "--events", "{events}", *AS_OF, "--out", "{new}", "--exposures", "{garbage}"],
        "garbage",
    ),
    "features --exposures ts not a time": (
        ["features", "--events", "{events}", *AS_OF, "--out", "{new}", "--exposures", "{text_ts}"],
        "text_ts",
    ),
    "features --exposures missing": (
        ["features", "--events", "{events}", *AS_OF, "--out", "{new}", "--exposures", "{missing}"],
        "missing",
    ),
    "dataset --out is a folder": (["dataset", "--events", "{events}", *SPAN, "--out", "{folder}"], "folder"),
    "dataset --events is a folder": (["dataset", "--events", "{folder}", *SPAN, "--out", "{new}"], "folder"),
    "dataset --users not parquet": (
        ["dataset", "--events", "{events}", *SPAN, "--out", "{new}", "--users", "{garbage}"],
        "garbage",
    ),
    "dataset --exposures lacks columns": (
        ["dataset", "--events", "{events}", *SPAN, "--out", "{new}", "--exposures", "{no_columns}"],
        "no_columns",
    ),
    "report --events missing": (["report", "--events", "{missing}", "--out", "{new}"], "missing"),
    "report --out is a file": (["report", "--events", "{events}", "--out", "{file}"], "file"),
    "score --events missing": (["score", "--events", "{missing}", *AS_OF, "--out", "{new}"], "missing"),
    "score --events is a folder": (["score", "--events", "{folder}", *AS_OF, "--out", "{new}"], "folder"),
    "score --out is a folder": (["score", "--events", "{events}", *AS_OF, "--out", "{folder}"], "folder"),
    "score --out under a file": (["score", "--events", "{events}", *AS_OF, "--out", "{under_file}"], "file"),
    "score --snapshot is a folder": (
        ["score", "--events", "{events}", *AS_OF, "--out", "{new}", "--snapshot", "{folder}"],
        "folder",
    ),
    "score --decision-log is a file": (
        ["score", "--events", "{events}", *AS_OF, "--out", "{new}", "--decision-log", "{file}"],
        "file",
    ),
    "score --users not parquet": (
        ["score", "--events", "{events}", *AS_OF, "--out", "{new}", "--users", "{garbage}"],
        "garbage",
    ),
    "score --users missing": (
        ["score", "--events", "{events}", *AS_OF, "--out", "{new}", "--users", "{missing}"],
        "missing",
    ),
    "score --exposures lacks columns": (
        ["score", "--events", "{events}", *AS_OF, "--out", "{new}", "--exposures", "{no_columns}"],
        "no_columns",
    ),
    "score --exposures is a folder": (
        ["score", "--events", "{events}", *AS_OF, "--out", "{new}", "--exposures", "{folder}"],
        "folder",
    ),
    "backtest --scores not parquet": (
        ["backtest", "--scores", "{garbage}", "--events", "{events}"],
        "garbage",
    ),
    "backtest --scores missing": (["backtest", "--scores", "{missing}", "--events", "{events}"], "missing"),
    "backtest --events is a folder": (
        ["backtest", "--scores", "{scores}", "--events", "{folder}", "--out", "{new}"],
        "folder",
    ),
    "backtest --out is a file": (
        ["backtest", "--scores", "{scores}", "--events", "{events}", "--out", "{file}"],
        "file",
    ),
    "export --scores missing": (["export", "--scores", "{missing}", "--out", "{new}"], "missing"),
    "export --scores not a table": (["export", "--scores", "{garbage}", "--out", "{new}"], "garbage"),
    "export --scores lacks the score columns": (
        ["export", "--scores", "{no_columns}", "--out", "{new}"],
        "no_columns",
    ),
    "export --out is a file": (["export", "--scores", "{scores}", "--out", "{file}"], "file"),
    "export --out under a file": (["export", "--scores", "{scores}", "--out", "{under_file}"], "file"),
    "train churn --events is a folder": (["train", "churn", "--events", "{folder}"], "folder"),
    "train churn --users not parquet": (
        ["train", "churn", "--events", "{events}", "--users", "{garbage}"],
        "garbage",
    ),
    "train churn --exposures is a folder": (
        ["train", "churn", "--events", "{events}", "--exposures", "{folder}"],
        "folder",
    ),
    "train churn --states not parquet": (
        ["train", "churn", "--events", "{events}", "--states", "{garbage}"],
        "garbage",
    ),
    "train offers --table not parquet": (["train", "offers", "--table", "{garbage}"], "garbage"),
    "train offers --decisions missing": (
        ["train", "offers", "--decisions", "{missing}", "--events", "{events}"],
        "missing",
    ),
    "train offers --decisions is a file": (
        ["train", "offers", "--decisions", "{file}", "--events", "{events}"],
        "file",
    ),
    "train offers --table is a folder": (["train", "offers", "--table", "{folder}"], "folder"),
    "train offers --table lacks the arm": (["train", "offers", "--table", "{no_columns}"], "no_columns"),
    "train offers --events is a folder": (
        ["train", "offers", "--events", "{folder}", "--exposures", "{exposures}"],
        "folder",
    ),
    "train offers --exposures not parquet": (
        ["train", "offers", "--events", "{events}", "--exposures", "{garbage}"],
        "garbage",
    ),
    "train offers --users missing": (
        ["train", "offers", "--events", "{events}", "--exposures", "{exposures}", "--users", "{missing}"],
        "missing",
    ),
    "train offers --truth not parquet": (
        ["train", "offers", "--events", "{events}", "--exposures", "{exposures}", "--truth", "{garbage}"],
        "garbage",
    ),
    "train timing --events is a folder": (["train", "timing", "--events", "{folder}"], "folder"),
    "train timing --users not parquet": (
        ["train", "timing", "--events", "{events}", "--users", "{garbage}"],
        "garbage",
    ),
    "train timing --exposures is a folder": (
        ["train", "timing", "--events", "{events}", "--exposures", "{folder}"],
        "folder",
    ),
    "train timing --truth missing": (
        ["train", "timing", "--events", "{events}", "--truth", "{missing}"],
        "missing",
    ),
    "evaluate policy --logs not parquet": (
        ["evaluate", "policy", "--logs", "{garbage}", "--actions", "{scores}"],
        "garbage",
    ),
    "evaluate policy --actions missing": (
        ["evaluate", "policy", "--logs", "{scores}", "--actions", "{missing}"],
        "missing",
    ),
    "outcomes --decisions missing": (
        ["outcomes", "--decisions", "{missing}", "--events", "{events}", "--out", "{new}"],
        "missing",
    ),
    "outcomes --decisions is a file": (
        ["outcomes", "--decisions", "{file}", "--events", "{events}", "--out", "{new}"],
        "file",
    ),
    "outcomes --events missing": (
        ["outcomes", "--decisions", "{folder}", "--events", "{missing}", "--out", "{new}"],
        "missing",
    ),
    "outcomes --feedback missing": (
        ["outcomes", "--decisions", "{folder}", "--feedback", "{missing}", "--out", "{new}"],
        "missing",
    ),
    "outcomes --out under a file": (
        ["outcomes", "--decisions", "{folder}", "--events", "{events}", "--out", "{under_file}"],
        "file",
    ),
    "evaluate decisions --decisions not a log": (
        ["evaluate", "decisions", "--decisions", "{folder}", "--events", "{events}", "--out", "{new}"],
        "folder",
    ),
    "evaluate decisions --events missing": (
        ["evaluate", "decisions", "--decisions", "{folder}", "--events", "{missing}", "--out", "{new}"],
        "missing",
    ),
    "evaluate decisions --feedback missing": (
        [
            "evaluate",
            "decisions",
            "--decisions",
            "{folder}",
            "--events",
            "{events}",
            "--feedback",
            "{missing}",
            "--out",
            "{new}",
        ],
        "missing",
    ),
    "evaluate decisions --users missing": (
        [
            "evaluate",
            "decisions",
            "--decisions",
            "{folder}",
            "--events",
            "{events}",
            "--users",
            "{missing}",
            "--out",
            "{new}",
        ],
        "missing",
    ),
    "evaluate decisions --out is a file": (
        ["evaluate", "decisions", "--decisions", "{folder}", "--events", "{events}", "--out", "{file}"],
        "file",
    ),
    "monitor --reference not a table": (
        ["monitor", "--reference", "{garbage}", "--current", "{events}", "--out", "{new}"],
        "garbage",
    ),
    "monitor --reference lacks user_id": (
        ["monitor", "--reference", "{no_columns}", "--current", "{events}", "--out", "{new}"],
        "no_columns",
    ),
    "monitor --current missing": (
        ["monitor", "--reference", "{events}", "--current", "{missing}", "--out", "{new}"],
        "missing",
    ),
    "monitor --scores is a folder": (
        ["monitor", "--reference", "{events}", "--current", "{events}", "--scores", "{folder}"],
        "folder",
    ),
    "monitor --events missing": (
        ["monitor", "--reference", "{events}", "--current", "{events}", "--events", "{missing}"],
        "missing",
    ),
    "monitor --out is a file": (
        ["monitor", "--reference", "{events}", "--current", "{events}", "--out", "{file}"],
        "file",
    ),
    "demo --out is a file": (["demo", "--out", "{file}", "--users", "5", "--days", "5"], "file"),
    "catalog check --catalog missing": (["catalog", "check", "--catalog", "{missing}"], "missing"),
    "catalog check --catalog not YAML": (["catalog", "check", "--catalog", "{garbage}"], "garbage"),
    "catalog preview --snapshot is a folder": (["catalog", "preview", "--snapshot", "{folder}"], "folder"),
    "catalog preview --snapshot not a table": (["catalog", "preview", "--snapshot", "{garbage}"], "garbage"),
    "catalog preview --catalog is a folder": (
        ["catalog", "preview", "--snapshot", "{scores}", "--catalog", "{folder}"],
        "folder",
    ),
    "catalog preview --exposures missing": (
        ["catalog", "preview", "--snapshot", "{scores}", "--exposures", "{missing}"],
        "missing",
    ),
    "feedback import PATH missing": (
        ["feedback", "import", "{missing}", "--feedback-log", "{new}"],
        "missing",
    ),
    "feedback import PATH is a folder": (
        ["feedback", "import", "{folder}", "--feedback-log", "{new}"],
        "folder",
    ),
    "feedback import PATH not a table": (
        ["feedback", "import", "{garbage}", "--feedback-log", "{new}"],
        "garbage",
    ),
    "feedback import --decisions is a file": (
        ["feedback", "import", "{events}", "--decisions", "{file}", "--feedback-log", "{new}"],
        "file",
    ),
    "feedback import --feedback-log is a file": (
        ["feedback", "import", "{events}", "--feedback-log", "{file}"],
        "file",
    ),
}


@pytest.fixture
def paths(tmp_path: Path) -> dict[str, Path]:
    import polars as pl

    files = {
        "events": tmp_path / "events.csv",
        "garbage": tmp_path / "garbage.parquet",
        "text": tmp_path / "users.txt",
        "no_columns": tmp_path / "no_columns.csv",
        "text_ts": tmp_path / "exposures_text_ts.csv",
        "exposures": tmp_path / "exposures.csv",
        "scores": tmp_path / "scores.parquet",
        "file": tmp_path / "a_plain_file",
        "folder": tmp_path / "a_folder.parquet",
        "missing": tmp_path / "does_not_exist.parquet",
        "new": tmp_path / "new" / "out.parquet",
    }
    files["events"].write_text(EVENTS)
    files["garbage"].write_bytes(b"this is not a parquet file")
    files["text"].write_text("hello")
    files["no_columns"].write_text("a,b\n1,2\n")
    files["text_ts"].write_text("user_id,ts,message_id,channel\nu1,yesterday,m1,email\n")
    files["exposures"].write_text("user_id,ts,message_id,channel,propensity\nu1,2024-01-02,m1,email,0.5\n")
    pl.DataFrame({"user_id": ["u1"], "arm": ["none"], "outcome": [0], "propensity": [0.5]}).write_parquet(
        files["scores"]
    )
    files["file"].write_text("x")
    files["folder"].mkdir()
    files["under_file"] = files["file"] / "out.parquet"
    return files


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No MLflow: score gets a stand-in for the champions (no case may get far enough to use them)."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setattr("engage.scoring.champions.load_champions", lambda cfg: object())


def _invoke(args: list[str], paths: dict[str, Path]) -> Any:
    return runner.invoke(app, [a.format(**{k: str(v) for k, v in paths.items()}) for a in args])


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_bad_path_is_one_message_naming_it(case: str, paths: dict[str, Path]) -> None:
    args, bad = CASES[case]
    result = _invoke(args, paths)
    assert isinstance(result.exception, SystemExit), f"{case}: {result.exception!r}\n{result.output}"
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert str(paths[bad]) in result.output, result.output
    assert result.output.count("error:") == 1, result.output
    assert not paths["new"].exists()  # nothing written


def _path_options() -> set[str]:
    """Every "command option" of the app whose value is a path (arguments as PATH)."""
    import typing

    found = set()

    def walk(group: Any, prefix: str) -> None:
        for name, command in getattr(group, "commands", {}).items():
            if hasattr(command, "commands"):
                walk(command, f"{prefix}{name} ")
                continue
            hints = typing.get_type_hints(command.callback)
            for param in command.params:
                hint = hints[param.name]  # Annotated is stripped: Path, Path | None, list[str], ...
                if hint is Path or Path in typing.get_args(hint):
                    option = param.opts[0] if param.param_type_name == "option" else "PATH"
                    found.add(f"{prefix}{name} {option}")

    walk(typer.main.get_command(app), "")
    return found


def test_every_path_option_has_a_case() -> None:
    """A new path option needs its bad-path case here; --config goes through build_config for all."""
    covered = set()
    for args, bad in CASES.values():
        command = (
            " ".join(args[:2])
            if args[0] in {"import", "train", "evaluate", "feedback", "catalog", "online"}
            else args[0]
        )
        at = args.index(f"{{{bad}}}") if f"{{{bad}}}" in args else args.index("{under_file}")
        covered.add(f"{command} {args[at - 1] if args[at - 1].startswith('--') else 'PATH'}")
    options = _path_options()
    assert {"features --users", "score --decision-log", "validate PATH", "demo --out"} <= options
    missing = {o for o in options - covered if not o.endswith(" --config")}
    assert not missing, f"path options without a bad-path case: {sorted(missing)}"
    assert any(o.endswith(" --config") for o in covered)


def test_a_write_that_fails_midway_names_the_file(
    monkeypatch: pytest.MonkeyPatch, paths: dict[str, Path]
) -> None:
    """What slips past the up-front checks (a full disk) is still a message, not a traceback."""

    def full_disk(frame: Any, path: Path) -> Path:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr("engage.atomic.write_parquet_atomic", full_disk)
    result = _invoke(["features", "--events", "{events}", *AS_OF, "--out", "{new}"], paths)
    assert isinstance(result.exception, SystemExit) and result.exit_code == 2, result.output
    assert f"{paths['new']}: No space left on device" in result.output


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_an_unwritable_folder_is_refused_before_any_work(paths: dict[str, Path], tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        result = _invoke(
            ["features", "--events", "{events}", *AS_OF, "--out", str(locked / "f.parquet")], paths
        )
    finally:
        locked.chmod(0o700)
    assert result.exit_code == 2 and f"no permission to write in {locked}" in result.output


def test_paths_with_markup_characters_are_printed_as_written(paths: dict[str, Path], tmp_path: Path) -> None:
    odd = tmp_path / "[bold]data[/bold].parquet"
    result = _invoke(
        ["features", "--events", "{events}", *AS_OF, "--out", "{new}", "--users", str(odd)], paths
    )
    assert result.exit_code == 2 and f"--users {odd}: file not found" in result.output


def test_a_parquet_data_set_folder_reads_as_one_table(tmp_path: Path) -> None:
    """What --engine spark writes (part files, Hive key=value folders, _SUCCESS, a hidden
    temporary) reads as its rows through check_paths and read_table; an empty folder is refused."""
    import polars as pl

    from engage.cli.common import check_paths, read_table

    folder = tmp_path / "scores.parquet"
    for day, users in (("2024-01-01", ["a", "b"]), ("2024-01-02", ["c"])):
        part = folder / f"as_of_day={day}"
        part.mkdir(parents=True)
        pl.DataFrame({"user_id": users, "churn_probability": [0.5] * len(users)}).write_parquet(
            part / "part-00000.parquet"
        )
    (folder / "_SUCCESS").write_text("")
    hidden = folder / "_temporary" / "0"
    hidden.mkdir(parents=True)
    pl.DataFrame({"user_id": ["ghost"], "churn_probability": [1.0]}).write_parquet(hidden / "part.parquet")
    check_paths(read={"--scores": folder})
    table = read_table(folder, "--scores", required=("user_id",))
    assert sorted(table["user_id"].to_list()) == ["a", "b", "c"]
    assert sorted(table["as_of_day"].cast(pl.Utf8).to_list()) == ["2024-01-01", "2024-01-01", "2024-01-02"]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(typer.Exit):
        check_paths(read={"--scores": empty})
