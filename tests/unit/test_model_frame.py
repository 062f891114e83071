"""Feature frames are coded the same at fit and predict; unseen categories become missing."""

from __future__ import annotations

import pandas as pd
import pytest

from engage.models.frame import FrameSpec


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
