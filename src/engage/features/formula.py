"""The feature vocabulary: small expression trees that every engine compiles (one formula per feature).

A formula combines per-user reductions (:class:`Agg`) of a few tables with arithmetic, ratios and
clips; ``engage.features.polars_engine`` compiles it to polars, ``engage.spark.feature_engine`` to Spark.
Each table's rows are before as_of and carry their age: ``day`` (whole days before as_of, an int, so
a window ``lo <= day < hi`` equals ``lo <= age < hi`` for integer bounds) and ``age_us`` (microseconds).

Tables (``TABLES``):

- ``events``: the event log (``event_type``, ``session_id``, ``category``, ``amount``);
- :class:`Rollup` tables: one row per (user, key) of the events, columns given by the spec;
- :class:`Lookahead` tables: some events with ``gap_us``, the time to the user's next matching event
  at or after them (null when none; it may lie after as_of);
- ``exposures``: messages sent (``message_id``, ``channel``); absent when no exposures are given.

Null semantics: a reduction over no rows is 0 for ``count``/``sum``/``distinct`` and null otherwise;
a user without rows in a table gets null from it; a feature's ``fill`` replaces the nulls left at the end.
"""

from __future__ import annotations

from dataclasses import dataclass

DAY_US = 86_400 * 1_000_000
"""Microseconds per day: ``day`` is ``age_us // DAY_US``."""
AGG_KINDS = ("count", "sum", "mean", "min", "max", "distinct")
Scalar = float | int | str | bool | None


class Expr:
    """Base of the expression nodes: operators build :class:`Op` nodes (``==`` stays structural)."""

    def _op(self, op: str, other: Expr | Scalar) -> Op:
        return Op(op, self, lift(other))

    def __add__(self, other: Expr | Scalar) -> Op:
        return self._op("+", other)

    def __sub__(self, other: Expr | Scalar) -> Op:
        return self._op("-", other)

    def __mul__(self, other: Expr | Scalar) -> Op:
        return self._op("*", other)

    def __truediv__(self, other: Expr | Scalar) -> Op:
        return self._op("/", other)

    def __lt__(self, other: Expr | Scalar) -> Op:
        return self._op("<", other)

    def __le__(self, other: Expr | Scalar) -> Op:
        return self._op("<=", other)

    def __gt__(self, other: Expr | Scalar) -> Op:
        return self._op(">", other)

    def __ge__(self, other: Expr | Scalar) -> Op:
        return self._op(">=", other)

    def __and__(self, other: Expr | Scalar) -> Op:
        return self._op("&", other)

    def __or__(self, other: Expr | Scalar) -> Op:
        return self._op("|", other)

    def ne(self, other: Expr | Scalar) -> Op:
        """``self != other`` (``!=``/``==`` on nodes compare the trees themselves)."""
        return self._op("!=", other)

    def isin(self, *values: str) -> IsIn:
        return IsIn(self, tuple(values))

    def not_null(self) -> NotNull:
        return NotNull(self)

    def is_null(self) -> IsNull:
        return IsNull(self)


@dataclass(frozen=True)
class Col(Expr):
    """A column of the table row being reduced (``day``, ``age_us``, ``amount``, a rollup column)."""

    name: str


@dataclass(frozen=True)
class Lit(Expr):
    value: Scalar


@dataclass(frozen=True)
class Op(Expr):
    """A binary operator: ``+ - * /``, comparisons ``< <= > >= !=``, and boolean ``& |``."""

    op: str
    a: Expr
    b: Expr


@dataclass(frozen=True)
class IsIn(Expr):
    a: Expr
    values: tuple[str, ...]


@dataclass(frozen=True)
class NotNull(Expr):
    a: Expr


@dataclass(frozen=True)
class IsNull(Expr):
    a: Expr


@dataclass(frozen=True)
class Agg(Expr):
    """One per-user reduction of ``table``'s rows with ``where`` and ``lo <= day < hi``.

    ``kind``: ``count`` (rows), ``sum``/``mean``/``min``/``max`` of ``of`` (nulls skipped), or
    ``distinct`` (distinct non-null values of ``of``). Sums of ``amount`` are exact in millionths.
    """

    table: str
    kind: str
    of: Expr | None = None
    where: Expr | None = None
    lo: int = 0
    hi: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in AGG_KINDS:
            raise ValueError(f"unknown aggregate kind {self.kind!r}; expected one of {AGG_KINDS}")
        if (self.of is None) != (self.kind == "count"):
            raise ValueError(f"aggregate {self.kind!r} {'needs' if self.of is None else 'takes no'} 'of'")


@dataclass(frozen=True)
class Ratio(Expr):
    """``num / den`` when ``den > 0``, else ``empty`` (null when ``empty`` is None)."""

    num: Expr
    den: Expr
    empty: float | None = 0.0


@dataclass(frozen=True)
class Clip(Expr):
    a: Expr
    lo: float
    hi: float


@dataclass(frozen=True)
class Greatest(Expr):
    """The larger of two values, a null one ignored."""

    a: Expr
    b: Expr


@dataclass(frozen=True)
class IfGiven(Expr):
    """``then`` when the input table ``table`` was given, else ``otherwise``."""

    table: str
    then: Expr
    otherwise: Expr


@dataclass(frozen=True)
class TopKey(Expr):
    """The rollup key whose ``weight`` is largest and positive (ties: the smallest key); null if none."""

    table: str
    weight: str


@dataclass(frozen=True)
class SinceUser(Expr):
    """Days from the users table's timestamp column ``column`` to as_of (null without it)."""

    column: str


@dataclass(frozen=True)
class Rollup:
    """A table with one row per (user, ``key``) of ``parent`` rows whose key is not null.

    ``columns`` are formulas over :class:`Agg` nodes of ``parent`` (reducing the group's rows); a
    ``day`` column is required (windows over the rollup's rows use it).
    """

    name: str
    key: str
    columns: tuple[tuple[str, Expr], ...]
    parent: str = "events"


@dataclass(frozen=True)
class Lookahead:
    """A table of the ``parent`` rows matching ``rows``, each with ``gap_us`` to the user's next row
    matching ``until`` at or after it (ties included; null when none)."""

    name: str
    rows: Expr
    until: Expr
    parent: str = "events"


def lift(value: Expr | Scalar) -> Expr:
    """An expression for a node or a literal."""
    return value if isinstance(value, Expr) else Lit(value)


def aggs_of(expr: Expr) -> list[Agg]:
    """The :class:`Agg` nodes of a formula, in order of first appearance, without repeats."""
    found: dict[Agg, None] = {}

    def walk(e: Expr) -> None:
        if isinstance(e, Agg):
            found.setdefault(e, None)
            return
        for child in vars(e).values():
            if isinstance(child, Expr):
                walk(child)

    walk(expr)
    return list(found)


def top_keys_of(expr: Expr) -> list[TopKey]:
    """The :class:`TopKey` nodes of a formula."""
    if isinstance(expr, TopKey):
        return [expr]
    return [t for child in vars(expr).values() if isinstance(child, Expr) for t in top_keys_of(child)]
