"""The message catalog marketers edit: YAML loader, a safe rule language, and template rendering.

Rules (``eligible_if``) are tokenized and parsed into a small tree: feature names, numbers, quoted
strings, true/false, comparisons, and/or/not, parentheses. Nothing is ever passed to eval. A
malformed catalog fails at load naming the file, the message id and the field.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from engage import schemas as s


class CatalogError(ValueError):
    """A catalog that cannot be used; names the file, message id and field."""


_TOKEN = re.compile(
    r"\s*(?:(?P<num>-?\d+(?:\.\d+)?)|(?P<str>'[^']*'|\"[^\"]*\")|(?P<op><=|>=|==|!=|<|>|\(|\))|(?P<name>[A-Za-z_][A-Za-z0-9_]*))"
)
_OPS = {
    "<": np.less,
    "<=": np.less_equal,
    ">": np.greater,
    ">=": np.greater_equal,
    "==": np.equal,
    "!=": np.not_equal,
}


def tokenize(text: str) -> list[tuple[str, str]]:
    pos, out = 0, []
    text = text.strip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise ValueError(f"cannot read the rule at character {pos + 1}: {text[pos : pos + 12]!r}")
        kind = m.lastgroup
        out.append((kind, m.group(kind)))
        pos = m.end()
        while pos < len(text) and text[pos].isspace():
            pos += 1
    return out


@dataclass(frozen=True)
class Rule:
    """A parsed eligibility rule: a tree of ('and'|'or'|'not'|'cmp'|'const', ...)."""

    text: str
    tree: Any

    def features(self) -> set[str]:
        def walk(node):
            if node[0] == "cmp":
                return {x[1] for x in (node[2], node[3]) if x[0] == "name"}
            if node[0] in ("and", "or"):
                return walk(node[1]) | walk(node[2])
            if node[0] == "not":
                return walk(node[1])
            return set()

        return walk(self.tree)

    def evaluate(self, frame: pd.DataFrame) -> np.ndarray:
        def value(term):
            if term[0] == "name":
                if term[1] not in frame.columns:
                    raise KeyError(
                        f"rule {self.text!r} uses feature {term[1]!r}, which the features do not have"
                    )
                return frame[term[1]].to_numpy()
            return term[1]

        def ev(node) -> np.ndarray:
            kind = node[0]
            if kind == "const":
                return np.full(len(frame), bool(node[1]))
            if kind == "and":
                return ev(node[1]) & ev(node[2])
            if kind == "or":
                return ev(node[1]) | ev(node[2])
            if kind == "not":
                return ~ev(node[1])
            left, right = value(node[2]), value(node[3])
            with np.errstate(invalid="ignore"):
                try:
                    result = _OPS[node[1]](left, right)
                except TypeError:
                    result = np.zeros(len(frame), bool)
            result = np.asarray(result, dtype=bool)
            for side in (left, right):
                if isinstance(side, np.ndarray) and side.dtype.kind == "f":
                    result &= ~np.isnan(side)
                elif isinstance(side, np.ndarray) and side.dtype == object:
                    result &= pd.notna(side)
            return result

        return ev(self.tree)


def parse_rule(text: str | None) -> Rule:
    text = (text or "").strip()
    if not text:
        return Rule("", ("const", True))
    tokens = tokenize(text)
    pos = 0

    def peek():
        return tokens[pos] if pos < len(tokens) else (None, None)

    def take():
        nonlocal pos
        pos += 1
        return tokens[pos - 1]

    def term():
        kind, val = take() if pos < len(tokens) else (None, None)
        if kind == "num":
            return ("lit", float(val))
        if kind == "str":
            return ("lit", val[1:-1])
        if kind == "name":
            if val in ("true", "false"):
                return ("lit", val == "true")
            return ("name", val)
        raise ValueError(f"expected a feature name or a value, got {val!r}")

    def atom():
        kind, val = peek()
        if kind == "op" and val == "(":
            take()
            node = disj()
            if take()[1] != ")":
                raise ValueError("missing ')'")
            return node
        if kind == "name" and val == "not":
            take()
            return ("not", atom())
        left = term()
        kind, val = peek()
        if kind == "op" and val in _OPS:
            take()
            return ("cmp", val, left, term())
        if left[0] == "lit" and isinstance(left[1], bool):
            return ("const", left[1])
        raise ValueError(f"expected a comparison after {left[1]!r}")

    def conj():
        node = atom()
        while peek() == ("name", "and"):
            take()
            node = ("and", node, atom())
        return node

    def disj():
        node = conj()
        while peek() == ("name", "or"):
            take()
            node = ("or", node, conj())
        return node

    tree = disj()
    if pos != len(tokens):
        raise ValueError(f"unexpected {tokens[pos][1]!r}")
    return Rule(text, tree)


@dataclass(frozen=True)
class Message:
    id: str
    channel: str
    template: str
    cost: float
    value: float
    eligible_if: Rule
    cooldown_days: int = 0
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Catalog:
    messages: tuple[Message, ...]
    max_per_7d: int = 2
    source: str = ""

    @property
    def arms(self) -> list[str]:
        return [s.CONTROL_ARM, *(m.id for m in self.messages)]

    def get(self, message_id: str) -> Message | None:
        return next((m for m in self.messages if m.id == message_id), None)

    def channel(self, message_id: str) -> str:
        m = self.get(message_id)
        return m.channel if m else s.CONTROL_ARM


def load_catalog(path: str | Path) -> Catalog:
    """Read and check a catalog file; any problem is a CatalogError naming message and field."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError as exc:
        raise CatalogError(f"{path}: catalog file not found") from exc
    except yaml.YAMLError as exc:
        raise CatalogError(f"{path}: not valid YAML: {exc}") from exc
    return catalog_from_dict(raw, source=str(path))


def catalog_from_dict(raw: Any, source: str = "catalog") -> Catalog:
    """Build a checked catalog from its parsed YAML (or an equivalent dict)."""
    path = source
    if not isinstance(raw, dict) or not isinstance(raw.get("messages"), list):
        raise CatalogError(f"{path}: expected a mapping with a 'messages' list")
    messages, seen = [], set()
    for i, item in enumerate(raw["messages"], start=1):
        mid = item.get("id") if isinstance(item, dict) else None
        where = f"{path}: message {mid or f'#{i}'}"
        if not isinstance(item, dict) or not mid:
            raise CatalogError(f"{where}: field 'id' is missing")
        if mid == s.CONTROL_ARM or mid in seen:
            raise CatalogError(f"{where}: field 'id' must be unique and not '{s.CONTROL_ARM}'")
        seen.add(mid)
        if item.get("channel") not in s.CHANNELS:
            raise CatalogError(
                f"{where}: field 'channel' must be one of {', '.join(s.CHANNELS)}, "
                f"got {item.get('channel')!r}"
            )
        for key in ("cost", "value"):
            if not isinstance(item.get(key), int | float) or item[key] < 0:
                raise CatalogError(f"{where}: field '{key}' must be a non-negative number")
        if not isinstance(item.get("template"), str):
            raise CatalogError(f"{where}: field 'template' must be text")
        try:
            rule = parse_rule(item.get("eligible_if"))
        except ValueError as exc:
            raise CatalogError(f"{where}: field 'eligible_if': {exc}") from exc
        cooldown = item.get("cooldown_days", 0)
        if not isinstance(cooldown, int) or cooldown < 0:
            raise CatalogError(f"{where}: field 'cooldown_days' must be a non-negative integer")
        messages.append(
            Message(
                mid,
                item["channel"],
                item["template"],
                float(item["cost"]),
                float(item["value"]),
                rule,
                cooldown,
                dict(item.get("params") or {}),
            )
        )
    caps = raw.get("caps") or {}
    return Catalog(tuple(messages), int(caps.get("max_per_7d", 2)), source)


class _Fill(dict):
    """Template values; a placeholder with no value reads as a neutral phrase, never a crash."""

    def __missing__(self, key: str) -> str:
        return "our picks"


def render(catalog: Catalog, message_id: str, features: pd.Series | dict) -> str:
    """The message text for one user: params and the user's features fill the placeholders."""
    m = catalog.get(message_id)
    if m is None:
        return ""
    values = _Fill(
        {k: v for k, v in dict(features).items() if isinstance(v, str | int | float) and pd.notna(v)}
    )
    values.update(m.params)
    try:
        return m.template.format_map(values)
    except (ValueError, IndexError):
        return m.template
