"""A Spark scoring run's decisions as one batch of the decision log, written by the executors.

Same layout, lines and key as ``DecisionWriter.write_frame`` (``engage.scoring.decision_log``):
``<log>/date=<today UTC>/batch-<key>.jsonl`` whose key is ``batch_key`` of the decision ids, so a
re-run of the same job (by either engine) appends nothing. The key is computed by one executor
over the sorted id hashes (8 bytes a user, never on the driver); the lines by every executor from
the committed scores; one executor writes them to a hidden temporary folder, and the driver
publishes the file under its key with a hard link that fails if the key exists (a rename on
remote storage), then removes the folder. Readers only read ``batch-*.jsonl`` files.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from engage import schemas as s
from engage.scoring.decision_log import BatchWrite, decision_id_hashes, frame_lines, utc_now
from engage.spark.io import Target, part_files

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

_SIGN = np.uint64(1 << 63)


def _hashes(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
    """Each decision id's 64-bit hash, its sign bit flipped so Spark's signed sort is unsigned order."""
    for frame in batches:
        h = decision_id_hashes(frame["decision_id"].astype(str).tolist()) ^ _SIGN
        yield pd.DataFrame({"h": h.view(np.int64)})


def _digest(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
    """``batch_key`` over hashes arriving in sorted order: sha256 of their bytes, streamed."""
    digest = hashlib.sha256()
    for frame in batches:
        digest.update((frame["h"].to_numpy(dtype=np.int64).view(np.uint64) ^ _SIGN).tobytes())
    yield pd.DataFrame({"key": [digest.hexdigest()[:32]]})


def spark_batch_key(scores: DataFrame) -> str:
    """``engage.scoring.decision_log.batch_key`` of the scores' decision ids, computed by Spark."""
    hashed = scores.select("decision_id").mapInPandas(_hashes, "h long")
    row = hashed.repartition(1).sortWithinPartitions("h").mapInPandas(_digest, "key string").first()
    if row is None:
        raise RuntimeError("the batch key job returned no row")
    return str(row["key"])


def _lines(stamp: str) -> object:
    def lines(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for frame in batches:
            if frame.empty:
                continue
            frame[s.AS_OF] = pd.to_datetime(frame[s.AS_OF]).dt.tz_localize("UTC")  # session time is UTC
            texts = {t: json.loads(t) for t in frame["model_versions"].unique()}
            frame["model_versions"] = frame["model_versions"].map(texts)  # one dict per distinct text
            yield pd.DataFrame({"value": frame_lines(frame, stamp).decode().splitlines()})

    return lines


def write_decisions(scores: DataFrame, log_dir: str | Path, decided_at: datetime) -> BatchWrite:
    """Publish the committed scores' decisions as one batch of the log at ``log_dir``, at most once."""
    from pyarrow import fs

    key = spark_batch_key(scores)
    name = f"batch-{key}.jsonl"
    root = Target.of(log_dir)
    day = f"date={utc_now():%Y-%m-%d}"
    target = Target(f"{root.uri.rstrip('/')}/{day}/{name}", root.fs, f"{root.path.rstrip('/')}/{day}/{name}")
    if root.exists():
        for info in root.fs.get_file_info(fs.FileSelector(root.path, recursive=True)):
            if info.base_name == name and info.path.rpartition("/")[0].rpartition("/")[2].startswith("date="):
                return BatchWrite(Path(info.path), key, 0, already_logged=True)
    tmp = target.sibling("lines")
    root.fs.create_dir(target.path.rpartition("/")[0], recursive=True)
    try:
        lines = scores.mapInPandas(_lines(decided_at.isoformat()), "value string")  # type: ignore[arg-type]
        lines.repartition(1).write.mode("error").text(tmp.uri)
        (part,) = part_files(tmp, ".txt")
        published = _publish(root, part, target.path)
    finally:
        tmp.remove()
    rows = scores.count() if published else 0
    return BatchWrite(Path(target.path), key, rows, already_logged=not published)


def _publish(root: Target, part: str, target: str) -> bool:
    """The part file as ``target`` unless that exists: a hard link locally (atomic), else a move."""
    from pyarrow import fs

    if isinstance(root.fs, fs.LocalFileSystem):
        try:
            os.link(part, target)
        except FileExistsError:
            return False
        folder = os.open(os.path.dirname(target), os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)
        return True
    if root.fs.get_file_info(target).type != fs.FileType.NotFound:
        return False
    root.fs.move(part, target)
    return True


__all__ = ["spark_batch_key", "write_decisions"]
