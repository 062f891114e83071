"""Message text: a catalog template filled from the message's params and the user's features.

Templates use ``str.format`` placeholders (``{top_category}``, ``{discount:.0%}``). Params win over
features of the same name; a placeholder with no value reads as a neutral phrase (``FALLBACK_TEXT``)
and a template that cannot be formatted comes back as written, so rendering never raises.
``check_template`` keeps the placeholders plain (a name, no attribute or index access, no
placeholder inside a format spec, widths and precisions bounded), so that neither the template nor
user data can reach into objects or build huge strings; the catalog applies it at load.
``render_many`` renders a whole batch with one ``fill`` per distinct combination of the values a
template reads, so its text equals the per-row ``render`` exactly.
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from engage.offers.catalog import Catalog, Message

__all__ = [
    "FALLBACK_TEXT",
    "MAX_FORMAT_PRECISION",
    "MAX_FORMAT_WIDTH",
    "RENDER_ROW_BY_ROW",
    "check_template",
    "fill",
    "render",
    "render_many",
    "template_keys",
]


FALLBACK_TEXT = "our picks"
"""What a placeholder with no value reads as."""


MAX_FORMAT_WIDTH = 80
"""The widest field a format spec may ask for (``{name:>20}``)."""
MAX_FORMAT_PRECISION = 20
"""The largest precision a format spec may ask for (``{share:.1%}``)."""

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# [[fill]align][sign][z][#][0][width][grouping][.precision][type] of the format mini-language
_SPEC = re.compile(
    r"(?:.?[<>=^])?[-+ ]?z?#?0?(?P<width>\d*)[,_]?(?:\.(?P<precision>\d+))?[bcdeEfFgGnosxX%]?", re.DOTALL
)


def check_template(template: str) -> None:
    """A ValueError saying what is wrong unless every placeholder is a plain, bounded one.

    Allowed: ``{name}``, ``{name!s}``, ``{name:<spec>}`` with a literal spec of the format
    mini-language, width at most ``MAX_FORMAT_WIDTH`` and precision at most ``MAX_FORMAT_PRECISION``.
    Refused: positional ``{}``/``{0}``, attribute or index access (``{x.__class__}``, ``{x[0]}``) and
    placeholders inside a spec (``{x:>{width}}``, which would let a value set the width).
    """
    for _, name, spec, _ in string.Formatter().parse(template):
        if name is None:
            continue
        if not _NAME.fullmatch(name):
            raise ValueError(
                f"placeholder {{{name}}} must be a plain name (no position, attribute or index access)"
            )
        if not spec:
            continue
        if "{" in spec or "}" in spec:
            raise ValueError(f"placeholder {{{name}}}: a format spec cannot contain a placeholder")
        match = _SPEC.fullmatch(spec)
        if match is None:
            raise ValueError(f"placeholder {{{name}}}: {spec!r} is not a format spec for text or numbers")
        width, precision = int(match["width"] or 0), int(match["precision"] or 0)
        if width > MAX_FORMAT_WIDTH or precision > MAX_FORMAT_PRECISION:
            raise ValueError(
                f"placeholder {{{name}}}: {spec!r} asks for width {width} / precision {precision}; "
                f"at most {MAX_FORMAT_WIDTH} / {MAX_FORMAT_PRECISION}"
            )


@lru_cache(maxsize=1024)
def _safe(template: str) -> bool:
    try:
        check_template(template)
    except ValueError:
        return False
    return True


class _Fill(dict[str, Any]):
    """Template values; a placeholder with no value reads as a neutral phrase, never a crash."""

    def __missing__(self, key: str) -> str:
        return FALLBACK_TEXT


def _template_value(value: Any) -> str | int | float | None:
    """A feature value a template may show: text or a number, as a plain Python scalar; else None.

    Numpy scalars count as their Python value, so a row from a frame and the same row as a dict
    (the HTTP service's JSON) render alike; missing values (NaN, None) read as absent.
    """
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, str | int | float) and not (isinstance(value, float) and value != value):
        return value
    return None


def template_keys(template: str) -> set[str]:
    """The value names a template looks up (``{a.b}`` reads ``a``; nested specs included)."""
    keys: set[str] = set()
    try:
        parts = list(string.Formatter().parse(template))
        for _, name, spec, _ in parts:
            for field_name in [name, *(n for _, n, _, _ in string.Formatter().parse(spec or ""))]:
                if field_name:
                    keys.add(re.split(r"[.\[]", field_name, maxsplit=1)[0])
    except ValueError:
        pass
    return keys


def fill(template: str, params: Mapping[str, Any], features: Mapping[str, Any] | pd.Series) -> str:
    """The text for one user: params, then the user's features, fill the placeholders. Never raises.

    A template ``check_template`` refuses (the catalog refuses it at load) comes back as written.
    """
    if not _safe(template):
        return template
    values = _Fill()
    for key, value in dict(features).items():
        value = _template_value(value)
        if value is not None:
            values[key] = value
    values.update(params)
    try:
        return template.format_map(values)
    except (ValueError, IndexError, KeyError, AttributeError, TypeError):
        return template


def render(catalog: Catalog, message_id: str, features: Mapping[str, Any] | pd.Series) -> str:
    """The message text for one user (empty for `none` or an unknown id); never raises."""
    m = catalog.get(message_id)
    return m.render(features) if m is not None else ""


def render_many(catalog: Catalog, message_ids: Any, features: pd.DataFrame) -> np.ndarray:
    """``render`` for every row (message ids aligned with the rows of ``features``), vectorised.

    Each message is rendered once per distinct combination of the feature values its template
    reads (a template reading only params is rendered once), through ``Message.render`` itself, so
    the text equals the per-row ``render`` exactly. Returns an object array of str.
    """
    ids = np.asarray(message_ids, dtype=object)
    out = np.full(len(ids), "", dtype=object)
    if not len(ids):
        return out
    codes, uniques = pd.factorize(ids)
    for code, message_id in enumerate(uniques):
        m = catalog.get(message_id)
        if m is None:
            continue
        rows = np.flatnonzero(codes == code)
        keys = sorted(k for k in m.template_keys() if k in features.columns and k not in m.params)
        if not keys:
            out[rows] = m.render({})
            continue
        few = len(rows) <= RENDER_ROW_BY_ROW
        out[rows] = (_render_rows if few else _render_distinct)(m, keys, features, rows)
    return out


RENDER_ROW_BY_ROW = 16
"""Up to this many rows a message renders row by row: grouping them costs more than it saves."""


def _render_rows(m: Message, keys: list[str], features: pd.DataFrame, rows: np.ndarray) -> np.ndarray:
    """Texts for ``rows``: one ``m.render`` per row, with the row's values of the ``keys`` columns."""
    columns = [features[key].iloc[rows].tolist() for key in keys]
    texts = [m.render(dict(zip(keys, values, strict=True))) for values in zip(*columns, strict=True)]
    return np.array(texts, dtype=object)


def _render_distinct(m: Message, keys: list[str], features: pd.DataFrame, rows: np.ndarray) -> np.ndarray:
    """Texts for ``rows``: one ``m.render`` per distinct combination of the ``keys`` columns."""
    columns = []
    value_lists = []
    for key in keys:
        column = features[key].iloc[rows]
        try:
            if column.dtype == object:  # 1, 1.0 and True are equal keys but render differently
                typed = [f"{type(v).__name__}\x00{v!r}" for v in column]
                col_codes, _ = pd.factorize(np.array(typed, dtype=object), use_na_sentinel=True)
                first = np.unique(col_codes, return_index=True)[1]
                col_values = column.to_numpy()[first[col_codes[first] >= 0]]
            elif column.dtype.kind == "f":  # by bit pattern: -0.0 and 0.0 render differently
                values = column.to_numpy()
                col_codes, bits = pd.factorize(values.view(f"i{values.itemsize}"))
                col_values = np.asarray(bits).view(values.dtype)
            else:
                col_codes, col_values = pd.factorize(column, use_na_sentinel=True)
        except TypeError:  # unhashable values (lists, dicts): row by row, still through render
            return _render_rows(m, keys, features, rows)
        columns.append(col_codes)
        value_lists.append([*np.asarray(col_values, dtype=object).tolist(), None])  # code -1 -> None
    stacked = np.stack(columns, axis=1)
    combos, inverse = np.unique(stacked, axis=0, return_inverse=True)
    texts = np.array(
        [
            m.render({k: value_lists[j][c] for j, (k, c) in enumerate(zip(keys, combo, strict=True))})
            for combo in combos.tolist()
        ],
        dtype=object,
    )
    return texts[inverse.reshape(-1)]
