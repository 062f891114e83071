"""The safe rule language of ``eligible_if``: tokenized and parsed into a small tree, never ``eval``-ed.

A rule reads feature names, numbers, quoted strings, true/false, comparisons (< <= > >= == !=),
and/or/not and parentheses (``and`` binds tighter than ``or``). It is evaluated vectorized over a
features DataFrame; a missing value (NaN/None) or a type mismatch (text vs number) compares false.
Bad syntax is a ValueError saying where; a feature the frame lacks is a KeyError naming it. A rule is
also bounded in size (``MAX_RULE_CHARS``, ``MAX_RULE_COMPARISONS``) and nesting (``MAX_RULE_DEPTH``),
checked while parsing, so that no rule can exhaust the stack when it is read or evaluated.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

__all__ = [
    "MAX_RULE_CHARS",
    "MAX_RULE_COMPARISONS",
    "MAX_RULE_DEPTH",
    "Node",
    "Rule",
    "parse_rule",
    "tokenize",
]

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
MAX_RULE_CHARS = 4_000
"""The longest rule text, in characters."""
MAX_RULE_COMPARISONS = 100
"""The most comparisons (and true/false constants) one rule may hold."""
MAX_RULE_DEPTH = 20
"""The deepest nesting of parentheses and ``not`` in one rule."""
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
        self.depth = 0
        self.comparisons = 0

    def counted(self, node: Node) -> Node:
        self.comparisons += 1
        if self.comparisons > MAX_RULE_COMPARISONS:
            raise ValueError(f"the rule has more than {MAX_RULE_COMPARISONS} comparisons")
        return node

    def nested(self) -> None:
        self.depth += 1
        if self.depth > MAX_RULE_DEPTH:
            raise ValueError(f"the rule nests parentheses or 'not' deeper than {MAX_RULE_DEPTH} levels")

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
            self.nested()
            node = self.disj()
            if self.take() != ("op", ")"):
                raise ValueError("missing ')'")
            self.depth -= 1
            return node
        if (kind, val) == ("name", "not"):
            self.take()
            self.nested()
            node = ("not", self.atom())
            self.depth -= 1
            return node
        left = self.term()
        kind, val = self.peek()
        if kind == "op" and val in _OPS:
            self.take()
            return self.counted(("cmp", val, left, self.term()))
        if left[0] == "lit" and isinstance(left[1], bool):
            return self.counted(("const", left[1]))
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
    if len(text) > MAX_RULE_CHARS:
        raise ValueError(f"the rule is {len(text):,} characters long; at most {MAX_RULE_CHARS:,} are allowed")
    parser = _Parser(tokenize(text))
    tree = parser.disj()
    if parser.pos != len(parser.tokens):
        raise ValueError(f"unexpected {parser.tokens[parser.pos][1]!r}")
    return Rule(text, tree)
