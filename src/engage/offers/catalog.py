"""The message catalog marketers edit: YAML loader, a safe rule language, and template rendering.

Rules (``eligible_if``) are tokenized and parsed into a small tree: feature names, numbers, quoted
strings, true/false, comparisons (< <= > >= == !=), and/or/not, parentheses. Nothing is ever passed
to ``eval``. Rules are evaluated vectorized over a features DataFrame; a missing value (NaN/None)
compares false. A malformed catalog fails at load naming the file, the message id and the field.
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from engage import schemas as s

CAP_DAYS = 7
"""The contact cap counts the messages a user got over this many days (``max_per_7d``)."""


class CatalogError(ValueError):
    """A catalog that cannot be used; names the file, message id and field."""


_TOKEN = re.compile(
    r"(?P<num>-?\d+(?:\.\d+)?)"
    r"|(?P<str>'[^']*'|\"[^\"]*\")"
    r"|(?P<op><=|>=|==|!=|<|>|\(|\))"
    r"|(?P<name>[A-Za-z_][A-Za-z0-9_]*)"
)
_OPS = {
    "<": np.less,
    "<=": np.less_equal,
    ">": np.greater,
    ">=": np.greater_equal,
    "==": np.equal,
    "!=": np.not_equal,
}
_KEYWORDS = frozenset({"and", "or", "not", "true", "false"})
# A tree node: ("const", bool) | ("not", node) | ("and"|"or", node, node) | ("cmp", op, term, term);
# a term: ("name", feature) | ("lit", number | str | bool).
Node = tuple[Any, ...]


def tokenize(text: str) -> list[tuple[str, str]]:
    """Split a rule into (kind, text) tokens; anything outside the language is an error."""
    out: list[tuple[str, str]] = []
    pos = 0
    while pos < len(text):
        if text[pos].isspace():
            pos += 1
            continue
        m = _TOKEN.match(text, pos)
        if not m:
            raise ValueError(f"cannot read the rule at character {pos + 1}: {text[pos : pos + 12]!r}")
        kind = m.lastgroup or ""
        out.append((kind, m.group(kind)))
        pos = m.end()
    return out


def _walk_names(node: Node) -> set[str]:
    if node[0] == "cmp":
        return {t[1] for t in (node[2], node[3]) if t[0] == "name"}
    if node[0] in ("and", "or"):
        return _walk_names(node[1]) | _walk_names(node[2])
    if node[0] == "not":
        return _walk_names(node[1])
    return set()


def _side(term: tuple[str, Any], frame: pd.DataFrame, rule: str) -> Any:
    if term[0] != "name":
        return term[1]
    if term[1] not in frame.columns:
        raise KeyError(f"rule {rule!r} uses feature {term[1]!r}, which the features do not have")
    return frame[term[1]].to_numpy()


def _missing(side: Any, n: int) -> np.ndarray:
    if isinstance(side, np.ndarray):
        return np.asarray(pd.isna(side), dtype=bool)
    return np.zeros(n, dtype=bool)


def _compare(op: str, left: Any, right: Any, n: int) -> np.ndarray:
    """Elementwise comparison; missing values and type mismatches (text vs number) compare false."""
    miss = _missing(left, n) | _missing(right, n)
    with np.errstate(invalid="ignore"):
        try:
            result = np.asarray(_OPS[op](left, right), dtype=bool)
        except TypeError:
            # Mixed types (e.g. text column vs number): compare row by row, mismatches are false.
            lv = left if isinstance(left, np.ndarray) else [left] * n
            rv = right if isinstance(right, np.ndarray) else [right] * n
            result = np.array([_safe_cmp(op, a, b) for a, b in zip(lv, rv, strict=True)], dtype=bool)
    if result.ndim == 0:
        result = np.full(n, bool(result))
    return result & ~miss


def _safe_cmp(op: str, a: Any, b: Any) -> bool:
    try:
        return bool(_OPS[op](a, b))
    except TypeError:
        return False


@dataclass(frozen=True)
class Rule:
    """A parsed eligibility rule: its source text and its tree (see ``Node``)."""

    text: str
    tree: Node

    def features(self) -> set[str]:
        """The feature names the rule reads."""
        return _walk_names(self.tree)

    def evaluate(self, frame: pd.DataFrame) -> np.ndarray:
        """Boolean mask over the rows of ``frame``; a feature the frame lacks is a KeyError."""
        n = len(frame)

        def ev(node: Node) -> np.ndarray:
            kind = node[0]
            if kind == "const":
                return np.full(n, bool(node[1]))
            if kind == "and":
                return ev(node[1]) & ev(node[2])
            if kind == "or":
                return ev(node[1]) | ev(node[2])
            if kind == "not":
                return ~ev(node[1])
            left, right = _side(node[2], frame, self.text), _side(node[3], frame, self.text)
            return _compare(node[1], left, right, n)

        return ev(self.tree)


class _Parser:
    """Recursive descent: disj := conj ('or' conj)*; conj := atom ('and' atom)*;
    atom := 'not' atom | '(' disj ')' | term op term | true | false."""

    def __init__(self, tokens: list[tuple[str, str]]) -> None:
        self.tokens = tokens
        self.pos = 0

    def peek(self) -> tuple[str | None, str | None]:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else (None, None)

    def take(self) -> tuple[str | None, str | None]:
        tok = self.peek()
        self.pos += 1
        return tok

    def term(self) -> tuple[str, Any]:
        kind, val = self.take()
        if kind == "num" and val is not None:
            return ("lit", float(val))
        if kind == "str" and val is not None:
            return ("lit", val[1:-1])
        if kind == "name" and val in ("true", "false"):
            return ("lit", val == "true")
        if kind == "name" and val not in _KEYWORDS:
            return ("name", val)
        raise ValueError(
            f"expected a feature name or a value, got {val!r}" if val else "the rule ends too early"
        )

    def atom(self) -> Node:
        kind, val = self.peek()
        if (kind, val) == ("op", "("):
            self.take()
            node = self.disj()
            if self.take() != ("op", ")"):
                raise ValueError("missing ')'")
            return node
        if (kind, val) == ("name", "not"):
            self.take()
            return ("not", self.atom())
        left = self.term()
        kind, val = self.peek()
        if kind == "op" and val in _OPS:
            self.take()
            return ("cmp", val, left, self.term())
        if left[0] == "lit" and isinstance(left[1], bool):
            return ("const", left[1])
        raise ValueError(f"expected a comparison after {left[1]!r}")

    def conj(self) -> Node:
        node = self.atom()
        while self.peek() == ("name", "and"):
            self.take()
            node = ("and", node, self.atom())
        return node

    def disj(self) -> Node:
        node = self.conj()
        while self.peek() == ("name", "or"):
            self.take()
            node = ("or", node, self.conj())
        return node


def parse_rule(text: str | None) -> Rule:
    """Parse an ``eligible_if`` rule; empty means always eligible. Bad syntax is a ValueError."""
    text = (text or "").strip()
    if not text:
        return Rule("", ("const", True))
    parser = _Parser(tokenize(text))
    tree = parser.disj()
    if parser.pos != len(parser.tokens):
        raise ValueError(f"unexpected {parser.tokens[parser.pos][1]!r}")
    return Rule(text, tree)


class _Fill(dict):
    """Template values; a placeholder with no value reads as a neutral phrase, never a crash."""

    def __missing__(self, key: str) -> str:
        return FALLBACK_TEXT


FALLBACK_TEXT = "our picks"


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


@dataclass(frozen=True)
class Message:
    """One catalog entry: where it goes, what it says, what it costs and who may get it."""

    id: str
    channel: str
    template: str
    cost: float
    value: float
    eligible_if: Rule
    cooldown_days: int = 0
    params: dict[str, Any] = field(default_factory=dict)

    def placeholders(self) -> set[str]:
        """Names between braces in the template."""
        return {name for _, name, _, _ in string.Formatter().parse(self.template) if name}

    def template_keys(self) -> set[str]:
        """The value names the template looks up (``{a.b}`` reads ``a``; nested specs included)."""
        keys: set[str] = set()
        try:
            parts = list(string.Formatter().parse(self.template))
            for _, name, spec, _ in parts:
                for field_name in [name, *(n for _, n, _, _ in string.Formatter().parse(spec or ""))]:
                    if field_name:
                        keys.add(re.split(r"[.\[]", field_name, maxsplit=1)[0])
        except ValueError:
            pass
        return keys

    def render(self, features: Mapping[str, Any] | pd.Series) -> str:
        """The text for one user: params, then the user's features, fill the placeholders.

        A placeholder with no value becomes a neutral phrase; a template that cannot be formatted
        comes back as written. Never raises.
        """
        values = _Fill()
        for key, value in dict(features).items():
            value = _template_value(value)
            if value is not None:
                values[key] = value
        values.update(self.params)
        try:
            return self.template.format_map(values)
        except (ValueError, IndexError, KeyError, AttributeError, TypeError):
            return self.template


@dataclass(frozen=True)
class Catalog:
    """The checked catalog: messages in file order and the per-user contact cap."""

    messages: tuple[Message, ...]
    max_per_7d: int = 2
    source: str = ""

    @property
    def history_days(self) -> int:
        """The longest look-back the policy reads: the contact cap's window or the longest cooldown."""
        return max([CAP_DAYS, *(m.cooldown_days for m in self.messages)])

    @property
    def arms(self) -> list[str]:
        """Every arm, the control `none` first."""
        return [s.CONTROL_ARM, *(m.id for m in self.messages)]

    @cached_property
    def _by_id(self) -> dict[str, Message]:
        """Messages by id (the first of a repeated id, like a scan in file order)."""
        by_id: dict[str, Message] = {}
        for m in self.messages:
            by_id.setdefault(m.id, m)
        return by_id

    def get(self, message_id: str) -> Message | None:
        """The message with that id, or None (also for `none`)."""
        return self._by_id.get(message_id)

    def channel(self, message_id: str) -> str:
        """Channel of a message; `none` for the control or an unknown id."""
        m = self.get(message_id)
        return m.channel if m else s.CONTROL_ARM

    @cached_property
    def arm_channels(self) -> np.ndarray:
        """Channel of every arm in ``arms`` order (`none` for the control), as an object array."""
        return np.asarray([self.channel(arm) for arm in self.arms], dtype=object)

    def features(self) -> set[str]:
        """Every feature name the eligibility rules read."""
        return set().union(*(m.eligible_if.features() for m in self.messages))

    def eligibility(self, features: pd.DataFrame) -> pd.DataFrame:
        """Boolean frame, one column per arm (`none` always True), from the eligibility rules only."""
        return pd.DataFrame(self.eligibility_matrix(features), columns=self.arms, index=features.index)

    def eligibility_matrix(self, features: pd.DataFrame) -> np.ndarray:
        """``eligibility`` as a boolean array (rows x ``arms``), without building a frame."""
        out = np.ones((len(features), len(self.messages) + 1), dtype=bool)
        for j, m in enumerate(self.messages, start=1):
            try:
                out[:, j] = m.eligible_if.evaluate(features)
            except KeyError as exc:
                where = f"{self.source}: message {m.id}: field 'eligible_if'"
                raise KeyError(f"{where}: {exc.args[0]}") from exc
        return out


_MESSAGE_FIELDS = frozenset(
    {"id", "channel", "template", "params", "cost", "value", "eligible_if", "cooldown_days"}
)


def load_catalog(path: str | Path, *, feature_names: Iterable[str] | None = None) -> Catalog:
    """Read and check a catalog file; any problem is a CatalogError naming file, message and field.

    With ``feature_names``, rules reading a feature outside that list fail here instead of at scoring.
    """
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError as exc:
        raise CatalogError(f"{path}: catalog file not found") from exc
    except yaml.YAMLError as exc:
        raise CatalogError(f"{path}: not valid YAML: {exc}") from exc
    return catalog_from_dict(raw, source=str(path), feature_names=feature_names)


def _number(item: dict[str, Any], key: str, where: str) -> float:
    value = item.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not np.isfinite(value) or value < 0:
        raise CatalogError(f"{where}: field '{key}' must be a non-negative number, got {value!r}")
    return float(value)


def _message(item: Any, i: int, seen: set[str], path: str, known: set[str] | None) -> Message:
    mid = item.get("id") if isinstance(item, dict) else None
    where = f"{path}: message {mid if mid else f'#{i}'}"
    if not isinstance(item, dict):
        raise CatalogError(f"{where}: expected a mapping of fields, got {type(item).__name__}")
    if not isinstance(mid, str) or not mid.strip():
        raise CatalogError(f"{where}: field 'id' is missing or not text")
    if mid == s.CONTROL_ARM or mid in seen:
        raise CatalogError(f"{where}: field 'id' must be unique and not '{s.CONTROL_ARM}'")
    unknown = sorted(set(item) - _MESSAGE_FIELDS)
    if unknown:
        raise CatalogError(
            f"{where}: field '{unknown[0]}' is not known (fields: {', '.join(sorted(_MESSAGE_FIELDS))})"
        )
    if item.get("channel") not in s.CHANNELS:
        raise CatalogError(
            f"{where}: field 'channel' must be one of {', '.join(s.CHANNELS)}, got {item.get('channel')!r}"
        )
    cost, value = _number(item, "cost", where), _number(item, "value", where)
    template = item.get("template")
    if not isinstance(template, str) or not template.strip():
        raise CatalogError(f"{where}: field 'template' must be non-empty text")
    try:
        list(string.Formatter().parse(template))
    except ValueError as exc:
        raise CatalogError(f"{where}: field 'template': {exc}") from exc
    params = item.get("params") or {}
    if not isinstance(params, dict):
        raise CatalogError(f"{where}: field 'params' must be a mapping of placeholder values")
    rule_text = item.get("eligible_if")
    if rule_text is not None and not isinstance(rule_text, str):
        raise CatalogError(f"{where}: field 'eligible_if' must be text (a rule), got {rule_text!r}")
    try:
        rule = parse_rule(rule_text)
    except ValueError as exc:
        raise CatalogError(f"{where}: field 'eligible_if': {exc}") from exc
    if known is not None and rule.features() - known:
        bad = sorted(rule.features() - known)
        raise CatalogError(f"{where}: field 'eligible_if': unknown feature(s) {', '.join(bad)}")
    cooldown = item.get("cooldown_days", 0)
    if isinstance(cooldown, bool) or not isinstance(cooldown, int) or cooldown < 0:
        raise CatalogError(f"{where}: field 'cooldown_days' must be a non-negative integer, got {cooldown!r}")
    return Message(mid, item["channel"], template, cost, value, rule, cooldown, dict(params))


def catalog_from_dict(
    raw: Any, source: str = "catalog", *, feature_names: Iterable[str] | None = None
) -> Catalog:
    """Build a checked catalog from its parsed YAML (or an equivalent dict)."""
    path = source
    if not isinstance(raw, dict) or not isinstance(raw.get("messages"), list):
        raise CatalogError(f"{path}: expected a mapping with a 'messages' list")
    known = set(feature_names) if feature_names is not None else None
    messages: list[Message] = []
    seen: set[str] = set()
    for i, item in enumerate(raw["messages"], start=1):
        message = _message(item, i, seen, path, known)
        seen.add(message.id)
        messages.append(message)
    caps = raw.get("caps") or {}
    if not isinstance(caps, dict):
        raise CatalogError(f"{path}: caps: expected a mapping such as {{max_per_7d: 2}}")
    cap = caps.get("max_per_7d", 2)
    if isinstance(cap, bool) or not isinstance(cap, int) or cap < 0:
        raise CatalogError(f"{path}: caps: field 'max_per_7d' must be a non-negative integer, got {cap!r}")
    return Catalog(tuple(messages), cap, source)


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
