"""Feature frames are coded the same at fit and predict; unseen categories become missing."""

from __future__ import annotations

import pandas as pd
import pytest

from engage.models.frame import FrameSpec, column_positions


def test_categories_are_stable_and_unseen_values_are_missing() -> None:
    spec = FrameSpec.learn(pd.DataFrame({"x": [1.0, 2.0], "cat": ["b", "a"]}))
    assert spec.categories == {"cat": ["a", "b"]}
    coded = spec.apply(pd.DataFrame({"cat": ["a", "zzz", None], "x": [0.0, 1.0, 2.0], "extra": [1, 2, 3]}))
    assert list(coded.columns) == ["x", "cat"]
    assert coded["cat"].cat.codes.tolist() == [0, -1, -1]


def test_a_missing_feature_is_named() -> None:
    spec = FrameSpec.learn(pd.DataFrame({"x": [1.0], "y": [2.0]}))
    with pytest.raises(KeyError, match="y"):
        spec.apply(pd.DataFrame({"x": [1.0]}))


@pytest.mark.parametrize("n_rows", [3, 300, 3000])  # both lookup paths of the codes
def test_matrix_gives_lightgbm_the_same_predictions_as_the_categorical_frame(n_rows: int) -> None:
    import lightgbm as lgb
    import numpy as np

    rng = np.random.default_rng(1)
    train = pd.DataFrame(
        {
            "x": rng.normal(size=2_000),
            "flag": rng.integers(0, 2, 2_000).astype(bool),
            "cat": rng.choice(["a", "b", "c", "d"], 2_000),
        }
    )
    y = ((train["cat"].isin(["b", "d"])) ^ (train["x"] > 0)).astype(int)
    spec = FrameSpec.learn(train)
    booster = lgb.LGBMClassifier(n_estimators=20, num_leaves=7, verbose=-1).fit(spec.apply(train), y).booster_
    test = pd.DataFrame(
        {
            "cat": rng.choice(["a", "b", "c", "d", "unseen", None], n_rows),
            "x": np.where(rng.random(n_rows) < 0.2, np.nan, rng.normal(size=n_rows)),
            "flag": rng.integers(0, 2, n_rows).astype(bool),
            "user_id": [f"u{i}" for i in range(n_rows)],
        }
    )
    matrix = spec.matrix(test)
    assert matrix.shape == (n_rows, 3)
    assert np.isnan(matrix[test["cat"].isin(["unseen"]).to_numpy() | test["cat"].isna().to_numpy(), 2]).all()
    expected = booster.predict(spec.apply(test), raw_score=True)
    np.testing.assert_allclose(booster.predict(matrix, raw_score=True), expected, rtol=0, atol=1e-12)
    contrib = booster.predict(spec.apply(test), pred_contrib=True)
    np.testing.assert_allclose(booster.predict(matrix, pred_contrib=True), contrib, rtol=0, atol=1e-12)


def test_matrix_refuses_a_repeated_feature_column() -> None:
    """Columns are read by position: a feature column given twice is an error, not a silent pick."""
    spec = FrameSpec.learn(pd.DataFrame({"x": [1.0], "y": [2.0]}))
    repeated = pd.DataFrame([[1.0, 2.0, 3.0]], columns=["x", "y", "x"])
    with pytest.raises(ValueError, match="repeated: x"):
        spec.matrix(repeated)
    extra = pd.DataFrame([[1.0, 2.0, 3.0, 4.0]], columns=["x", "z", "y", "z"])  # a repeated non-feature
    assert spec.matrix(extra).tolist() == [[1.0, 3.0]]
    with pytest.raises(KeyError, match="missing: y"):
        spec.matrix(pd.DataFrame({"x": [1.0]}))
    frame = pd.DataFrame({"a": ["u"], "y": [2.0], "x": [1.0]})
    assert frame.take(column_positions(frame, ["x", "y"]), axis=1).equals(frame[["x", "y"]])
