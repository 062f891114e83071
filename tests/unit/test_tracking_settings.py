"""Where MLflow runs and models go: flag > MLFLOW_* variable > config file > packaged default."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from engage import tracking
from engage.config import ENVIRONMENT_KEYS, load_config


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for variable in (*ENVIRONMENT_KEYS.values(), "MLFLOW_REGISTRY_URI"):
        monkeypatch.delenv(variable, raising=False)
    return monkeypatch


def test_precedence_flag_then_environment_then_config_file_then_packaged_default(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    packaged = load_config()
    clean_env.setenv("MLFLOW_TRACKING_URI", "sqlite:///from-env.db")
    clean_env.setenv("MLFLOW_EXPERIMENT_NAME", "env-experiment")
    from_env = load_config()
    assert (from_env.tracking.uri, from_env.tracking.experiment) == (
        "sqlite:///from-env.db",
        "env-experiment",
    )
    assert packaged.tracking.uri != from_env.tracking.uri

    flagged = load_config(overrides={"tracking.uri": "sqlite:///from-flag.db"})
    assert flagged.tracking.uri == "sqlite:///from-flag.db"
    assert flagged.tracking.experiment == "env-experiment"

    own = tmp_path / "engage.yaml"
    own.write_text("tracking:\n  uri: sqlite:///from-file.db\n")
    from_file = load_config(own)
    assert from_file.tracking.uri == "sqlite:///from-file.db"  # the user's own file beats the variable
    assert from_file.tracking.experiment == "env-experiment"  # ... only for what it sets
    clean_env.delenv("MLFLOW_TRACKING_URI")
    assert load_config().tracking.uri == packaged.tracking.uri


def test_an_empty_variable_counts_as_unset(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("MLFLOW_TRACKING_URI", "")
    assert load_config().tracking.uri == load_config(overrides={}).tracking.uri != ""


@pytest.fixture
def restore_mlflow() -> Iterator[None]:
    import mlflow

    before = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    yield
    mlflow.set_tracking_uri(before[0])
    mlflow.set_registry_uri(before[1])


def test_the_registry_follows_tracking_unless_its_own_variable_is_set(
    clean_env: pytest.MonkeyPatch, restore_mlflow: None, tmp_path: Path
) -> None:
    import mlflow

    uri = f"sqlite:///{tmp_path / 'a.db'}"
    tracking.configure(uri)
    assert mlflow.get_registry_uri() == uri
    clean_env.setenv("MLFLOW_REGISTRY_URI", f"sqlite:///{tmp_path / 'registry.db'}")
    tracking.configure(uri)
    assert (mlflow.get_tracking_uri(), mlflow.get_registry_uri()) == (
        uri,
        f"sqlite:///{tmp_path / 'registry.db'}",
    )


def test_a_sqlite_store_keeps_its_artifacts_beside_its_file(tmp_path: Path) -> None:
    location = tracking.artifact_location(f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}")
    assert location == (tmp_path / "store" / "mlartifacts").as_uri()
    assert tracking.artifact_location("http://127.0.0.1:5000") is None
    assert tracking.artifact_location("databricks") is None


def test_a_run_in_a_new_experiment_writes_nothing_in_the_working_folder(
    clean_env: pytest.MonkeyPatch, restore_mlflow: None, tmp_path: Path
) -> None:
    import mlflow

    cwd, store = tmp_path / "cwd", tmp_path / "store"
    cwd.mkdir()
    store.mkdir()
    clean_env.chdir(cwd)
    tracking.configure(f"sqlite:///{store / 'mlflow.db'}")
    with tracking.run("beside-the-store", "unit"):
        tracking.log_metrics({"x": 1.0})
        mlflow.log_text("hello", "note.txt")
    assert list(cwd.iterdir()) == []
    assert list((store / "mlartifacts").rglob("note.txt"))


def test_configure_leaves_the_users_environment_as_it_was(
    clean_env: pytest.MonkeyPatch, restore_mlflow: None, tmp_path: Path
) -> None:
    """MLflow 3's set_tracking_uri writes MLFLOW_TRACKING_URI; before, training with one config then
    loading another config file read the first run's store (the variable outranks the file)."""
    import os

    tracking.configure(f"sqlite:///{tmp_path / 'a.db'}")
    assert "MLFLOW_TRACKING_URI" not in os.environ and "MLFLOW_REGISTRY_URI" not in os.environ
    (tmp_path / "b.yaml").write_text(f"tracking:\n  uri: sqlite:///{tmp_path / 'b.db'}\n")
    assert load_config(tmp_path / "b.yaml").tracking.uri == f"sqlite:///{tmp_path / 'b.db'}"
    clean_env.setenv("MLFLOW_TRACKING_URI", "sqlite:///mine.db")
    tracking.configure(f"sqlite:///{tmp_path / 'a.db'}")
    assert os.environ["MLFLOW_TRACKING_URI"] == "sqlite:///mine.db"
