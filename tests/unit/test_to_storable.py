"""Scores as stored: nested columns become JSON text that any Parquet reader opens."""

from __future__ import annotations

import json

import pandas as pd

from engage.scoring.core import to_storable


def test_nested_columns_become_json_per_row_whatever_objects_they_share() -> None:
    shared = {"churn": "3", "offers": "1"}
    equal_copy = dict(shared)  # another chunk's mapping: equal, not the same object
    scores = pd.DataFrame(
        {
            "user_id": ["a", "b", "c", "d"],
            "reasons": [[], [{"feature": "x", "value": 1.0}], [], []],
            "model_versions": [shared, shared, equal_copy, {"churn": "4"}],
        }
    )
    stored = to_storable(scores)
    assert [json.loads(v) for v in stored["model_versions"]] == [shared, shared, shared, {"churn": "4"}]
    assert [json.loads(v) for v in stored["reasons"]] == [[], [{"feature": "x", "value": 1.0}], [], []]
    assert isinstance(scores["model_versions"][0], dict), "the input frame is left as it was"
