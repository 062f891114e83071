"""Adapter: Hillstrom (MineThatData 2008) e-mail campaign -> a randomized campaign table.

64,000 customers were randomly assigned, with equal probability, one of three arms: men's
e-mail, women's e-mail or no e-mail. The table keeps the pre-treatment covariates, maps
``segment`` to short arm ids (``mens_email``, ``womens_email`` and ``schemas.CONTROL_ARM`` for
"No E-Mail"), keeps the two-week outcomes (visit, conversion, spend), sets the logging
``propensity`` to 1/3 (the randomisation probability) and adds a ``user_id`` (the 1-based row
number as a string), since the file has no customer id.

Note: the covariate ``channel`` is the customer's past purchase channel (Phone / Web /
Multichannel), not a messaging channel.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

import pandas as pd

from engage import schemas
from engage.events import EventsFileError

ARM: Final = "arm"
SEGMENT: Final = "segment"
COVARIATES: Final[tuple[str, ...]] = (
    "recency",
    "history_segment",
    "history",
    "mens",
    "womens",
    "zip_code",
    "newbie",
    "channel",
)
OUTCOMES: Final[tuple[str, ...]] = ("visit", "conversion", "spend")
ARM_BY_SEGMENT: Final[dict[str, str]] = {
    "Mens E-Mail": "mens_email",
    "Womens E-Mail": "womens_email",
    "No E-Mail": schemas.CONTROL_ARM,
}
PROPENSITY: Final = 1.0 / len(ARM_BY_SEGMENT)
COLUMNS: Final[tuple[str, ...]] = (schemas.USER_ID, *COVARIATES, ARM, *OUTCOMES, schemas.PROPENSITY)

_NUMERIC: Final[dict[str, str]] = {
    "recency": "int64",
    "history": "float64",
    "mens": "int64",
    "womens": "int64",
    "newbie": "int64",
    "visit": "int64",
    "conversion": "int64",
    "spend": "float64",
}


def load_hillstrom(path: str | Path) -> pd.DataFrame:
    """Read the Hillstrom CSV into the campaign table (columns ``COLUMNS``, one row per customer).

    Errors name the file, the column and, for bad values, the first offending row (1-based data row).
    """
    path = Path(path)
    if not path.exists():
        raise EventsFileError(f"{path}: file not found")
    try:
        raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, ValueError, UnicodeDecodeError, EOFError) as exc:
        raise EventsFileError(f"{path}: cannot be read as CSV: {exc}") from exc
    needed = (*COVARIATES, SEGMENT, *OUTCOMES)
    missing = [c for c in needed if c not in raw.columns]
    if missing:
        raise EventsFileError(
            f"{path}: missing column '{missing[0]}'; columns found: {', '.join(map(str, raw.columns))}"
        )
    table = pd.DataFrame({schemas.USER_ID: [str(i) for i in range(1, len(raw) + 1)]})
    for column in (*COVARIATES, *OUTCOMES):
        values = raw[column].str.strip()
        dtype = _NUMERIC.get(column)
        if dtype is not None:
            parsed = pd.to_numeric(values, errors="coerce")
            bad = parsed.isna().to_numpy()
            if bad.any():
                row = int(bad.argmax()) + 1
                raise EventsFileError(
                    f"{path}: row {row}, column '{column}': not a number: {values.iloc[row - 1]!r}"
                )
            table[column] = parsed.astype(dtype).to_numpy()
        else:
            table[column] = values.to_numpy()
    arms = raw[SEGMENT].str.strip().map(ARM_BY_SEGMENT)
    unknown = arms.isna().to_numpy()
    if unknown.any():
        row = int(unknown.argmax()) + 1
        raise EventsFileError(
            f"{path}: row {row}, column '{SEGMENT}': unknown segment {raw[SEGMENT].iloc[row - 1]!r} "
            f"(expected one of {', '.join(ARM_BY_SEGMENT)})"
        )
    table[ARM] = arms.to_numpy()
    table[schemas.PROPENSITY] = PROPENSITY
    return table[list(COLUMNS)]
