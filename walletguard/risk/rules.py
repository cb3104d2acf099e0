"""Rules are data: a YAML file operators edit, validated on load, compiled, reloadable.

A rule::

    - id: ato-chain                      # unique; [a-z0-9_-]
      kinds: [movement]                  # optional: login | sensitive_action | movement
      when:                              # a condition over signals (see SIGNALS)
        all:
          - {signal: device_new, is: true}
          - {signal: payment_password_reset_h, lt: 24}
      sequence:                          # optional: these happened, in this order, within
        within: 30m
        steps: [credential_changed, new_payee, movement]
      action: freeze                     # allow | challenge | hold | block | freeze
      score: 100
      reasons: {key: risk.reason.ato_chain}        # a catalogue key, or inline texts:
      # reasons: {zh-CN: "…", en: "…"}
      shadow: false                      # true: record that it fired, do not act on it

A condition is ``{all: [...]}``, ``{any: [...]}``, ``{not: {...}}`` or a comparison
``{signal: NAME, OP: VALUE}`` with OP one of ``eq ne lt le gt ge in is``. Nothing is ever
``eval``-ed: the file is parsed into these shapes and compiled into closures once. Every error
names the line of the file it is on (from the YAML node marks).
"""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from walletguard.kit.i18n import catalogue

ACTIONS = ("allow", "challenge", "hold", "block", "freeze")
SEVERITY = {name: rank for rank, name in enumerate(ACTIONS)}
KINDS = ("login", "sensitive_action", "movement")

# Every signal a rule may name, and its type (walletguard/risk/signals.py computes them).
SIGNALS: dict[str, type] = {
    "kind": str,
    "action": str,
    "amount_fen": int,
    "device_age_h": float,
    "device_new": bool,
    "device_vouched": bool,
    "device_state": str,
    "geo_known": bool,
    "province": str,
    "province_familiar": bool,
    "travel_km": float,
    "travel_kmh": float,
    "credential_changed_h": float,
    "payment_password_reset_h": float,
    "sync_enabled_h": float,
    "factor_changed_h": float,
    "phone_changed_h": float,
    "device_added_h": float,
    "sim_swap_h": float,
    "scam_message_h": float,
    "scam_names_payee": bool,
    "account_age_d": float,
    "dormant_d": float,
    "payee_new": bool,
    "payee_trusted": bool,
    "payee_payments": int,
    "history_count_90d": int,
    "amount_vs_p95": float,
    "source_balance_fen": int,
    "empties_source": bool,
    "night": bool,
    "hour_beijing": int,
    "holder_count_10m": int,
    "holder_sum_10m": int,
    "holder_count_1h": int,
    "holder_sum_1h": int,
    "holder_sum_24h": int,
    "card_count_10m": int,
    "card_sum_1h": int,
    "payee_count_1h": int,
    "payee_sum_1h": int,
    "ip_count_1h": int,
    "cards_debited_30m": int,
    "payees_30m": int,
    "payee_senders_1h": int,
    "ip_holders_24h": int,
    "device_holders_24h": int,
    "session_flagged": bool,
}

# Signals the engine computes only when a rule reads one (``signals.Signals.on_demand``), ranked
# by when they are read: 1 the cards and payees of the holder's last half hour (taken from the
# history once it is read, otherwise one short read of the history's newest rows), 2 the
# holder's 90-day decision history (one read of up to ``HISTORY_ROWS`` decisions), 3 travel
# (the place the holder was last let in: taken from the history once it is read, otherwise one
# short read of its own; nothing when this event's place is unknown), 4 counts over other
# holders' decisions. Every other signal is made with the event (rank 0). The parts of an
# ``all`` or ``any`` are tried in rank order (either means the same in any order) and the rules
# run in the rank order of what they read (``RuleSet.in_reading_order``), so a rule that a
# signal made with the event rules out reads nothing more, and travel is read after any rule
# that needed the history has read it, never twice.
RECENT_SIGNALS = ("cards_debited_30m", "payees_30m")
HISTORY_SIGNALS = (
    "province_familiar",
    "history_count_90d",
    "amount_vs_p95",
    "dormant_d",
    "session_flagged",
)
TRAVEL_SIGNALS = ("travel_km", "travel_kmh")
SPREAD_SIGNALS = ("payee_senders_1h", "ip_holders_24h", "device_holders_24h")
HISTORY_RANK = 2
READ_RANK: dict[str, int] = {
    **dict.fromkeys(RECENT_SIGNALS, 1),
    **dict.fromkeys(HISTORY_SIGNALS, HISTORY_RANK),
    **dict.fromkeys(TRAVEL_SIGNALS, 3),
    **dict.fromkeys(SPREAD_SIGNALS, 4),
}

# What a sequence step may name: audit events of the holder, earlier decisions, this event.
SEQUENCE_STEPS = (
    "login",
    "new_device_login",
    "device_added",
    "sync_enabled",
    "credential_changed",
    "payment_password_reset",
    "factor_changed",
    "phone_changed",
    "scam_message",
    "new_payee",
    "movement",
    "payment",
    "transfer",
    "withdraw",
    "top_up",
)

OPERATORS = ("eq", "ne", "lt", "le", "gt", "ge", "in", "is")
_ID = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
_DURATION = re.compile(r"(\d+)\s*([smhd])")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}

Condition = Callable[[Mapping[str, Any]], bool]


class RulesInvalid(ValueError):
    """The rules file is not valid; ``errors`` are ``(line, message)`` pairs, 1-based lines."""

    def __init__(self, source: str, errors: list[tuple[int, str]]) -> None:
        self.source = source
        self.errors = errors
        lines = "\n".join(f"  {source}:{line}: {message}" for line, message in errors)
        super().__init__(f"invalid risk rules ({len(errors)} error(s)):\n{lines}")


@dataclass(frozen=True)
class Sequence_:
    within_s: int
    steps: tuple[str, ...]


@dataclass(frozen=True)
class Rule:
    id: str
    kinds: frozenset[str]
    when: Condition
    sequence: Sequence_ | None
    action: str
    score: int
    reason_zh: str
    reason_en: str
    shadow: bool
    line: int
    # The highest ``READ_RANK`` the rule may read (a sequence reads the history's movements).
    read_rank: int = 0


@dataclass(frozen=True)
class RuleSet:
    rules: tuple[Rule, ...]
    source: str
    # Made once per kind, on first use (``in_reading_order``, ``position``).
    _orders: dict[str, tuple[Rule, ...]] = field(default_factory=dict, compare=False, repr=False)
    _positions: dict[str, int] = field(default_factory=dict, compare=False, repr=False)

    def for_kind(self, kind: str) -> tuple[Rule, ...]:
        return tuple(rule for rule in self.rules if kind in rule.kinds)

    def in_reading_order(self, kind: str) -> tuple[Rule, ...]:
        """The rules of this kind in the rank order of what they read, the file's order among
        equals: whatever they fire is the same set, in the file's order (``service.evaluate``)."""
        order = self._orders.get(kind)
        if order is None:
            order = tuple(sorted(self.for_kind(kind), key=lambda rule: rule.read_rank))
            self._orders[kind] = order
        return order

    def position(self, rule: Rule) -> int:
        """Where the rule stands in the file (rule ids are unique)."""
        if not self._positions:
            self._positions.update({r.id: index for index, r in enumerate(self.rules)})
        return self._positions[rule.id]


def _line(node: Node) -> int:
    return int(node.start_mark.line) + 1


class _Compiler:
    def __init__(self, source: str) -> None:
        self.source = source
        self.errors: list[tuple[int, str]] = []
        # The highest ``READ_RANK`` evaluating each compiled condition may read.
        self.ranks: dict[Condition, int] = {}

    def rank(self, condition: Condition) -> int:
        return self.ranks.get(condition, 0)

    def ranked(self, condition: Condition, rank: int) -> Condition:
        self.ranks[condition] = rank
        return condition

    def error(self, node: Node, message: str) -> None:
        self.errors.append((_line(node), message))

    @staticmethod
    def pairs(node: MappingNode) -> list[tuple[str, Node, Node]]:
        return [
            (str(key.value) if isinstance(key, ScalarNode) else "", key, value)
            for key, value in node.value
        ]

    def scalar(self, node: Node) -> Any:
        return yaml.safe_load(yaml.serialize(node))

    # -- conditions ----------------------------------------------------------------------

    def condition(self, node: Node) -> Condition:
        never: Condition = lambda _s: False  # noqa: E731
        if not isinstance(node, MappingNode):
            self.error(node, "a condition is a mapping: all, any, not, or {signal: …, op: …}")
            return never
        pairs = self.pairs(node)
        keys = {key for key, _, _ in pairs}
        if keys & {"all", "any"}:
            if len(pairs) != 1:
                self.error(node, "'all' / 'any' must be the only key of its condition")
                return never
            key, _, value = pairs[0]
            if not isinstance(value, SequenceNode) or not value.value:
                self.error(value, f"'{key}' takes a non-empty list of conditions")
                return never
            # In rank order, the file's order among equals (a stable sort).
            parts = tuple(sorted((self.condition(child) for child in value.value), key=self.rank))
            rank = max(self.rank(part) for part in parts)
            if key == "all":
                return self.ranked(lambda s: all(part(s) for part in parts), rank)
            return self.ranked(lambda s: any(part(s) for part in parts), rank)
        if "not" in keys:
            if len(pairs) != 1:
                self.error(node, "'not' must be the only key of its condition")
                return never
            inner = self.condition(pairs[0][2])
            return self.ranked(lambda s: not inner(s), self.rank(inner))
        compared = self.comparison(node, pairs)
        signal = next((value for key, _, value in pairs if key == "signal"), None)
        name = self.scalar(signal) if signal is not None else None
        return self.ranked(compared, READ_RANK.get(name, 0) if isinstance(name, str) else 0)

    def comparison(self, node: MappingNode, pairs: list[tuple[str, Node, Node]]) -> Condition:
        never: Condition = lambda _s: False  # noqa: E731
        by_key = {key: (key_node, value) for key, key_node, value in pairs}
        if "signal" not in by_key:
            self.error(node, "a comparison needs 'signal' (or use all / any / not)")
            return never
        name = self.scalar(by_key["signal"][1])
        if name not in SIGNALS:
            self.error(by_key["signal"][1], f"unknown signal {name!r}")
            return never
        ops = [key for key in by_key if key != "signal"]
        if len(ops) != 1 or ops[0] not in OPERATORS:
            self.error(node, f"a comparison takes exactly one operator of {', '.join(OPERATORS)}")
            return never
        op = ops[0]
        value_node = by_key[op][1]
        value = self.scalar(value_node)
        kind = SIGNALS[name]
        if op == "in":
            if not isinstance(value, list) or not value:
                self.error(value_node, "'in' takes a non-empty list")
                return never
            options = frozenset(value)
            return lambda s: s[name] in options
        if op == "is":
            if kind is not bool or not isinstance(value, bool):
                self.error(
                    value_node, f"'is' compares a true/false signal; {name} is {kind.__name__}"
                )
                return never
            return lambda s: s[name] is value
        if kind in (int, float):
            if isinstance(value, bool) or not isinstance(value, int | float):
                self.error(value_node, f"{name} is a number; compare it with a number")
                return never
        elif kind is str:
            if op not in ("eq", "ne") or not isinstance(value, str):
                self.error(value_node, f"{name} is text: use eq, ne or in with text")
                return never
        elif op not in ("eq", "ne") or not isinstance(value, bool):
            self.error(value_node, f"{name} is true/false: use is, eq or ne with true/false")
            return never
        if op == "eq":
            return lambda s: s[name] == value
        if op == "ne":
            return lambda s: s[name] != value
        number = float(value)
        if op == "lt":
            return lambda s: s[name] < number
        if op == "le":
            return lambda s: s[name] <= number
        if op == "gt":
            return lambda s: s[name] > number
        return lambda s: s[name] >= number

    # -- rules ---------------------------------------------------------------------------

    def duration(self, node: Node) -> int:
        value = self.scalar(node)
        match = _DURATION.fullmatch(str(value).strip()) if isinstance(value, str | int) else None
        if match is None or int(match.group(1)) <= 0:
            self.error(node, "a duration is like 30m, 2h, 3d")
            return 0
        return int(match.group(1)) * _UNIT_S[match.group(2)]

    def sequence(self, node: Node) -> Sequence_ | None:
        if not isinstance(node, MappingNode):
            self.error(node, "'sequence' is a mapping with 'within' and 'steps'")
            return None
        by_key = {key: value for key, _, value in self.pairs(node)}
        unknown = set(by_key) - {"within", "steps"}
        if unknown:
            self.error(node, f"unknown key(s) in sequence: {', '.join(sorted(unknown))}")
        if "within" not in by_key or "steps" not in by_key:
            self.error(node, "'sequence' needs 'within' and 'steps'")
            return None
        within = self.duration(by_key["within"])
        steps_node = by_key["steps"]
        if not isinstance(steps_node, SequenceNode) or len(steps_node.value) < 2:
            self.error(steps_node, "'steps' lists at least two steps")
            return None
        steps: list[str] = []
        for child in steps_node.value:
            step = self.scalar(child)
            if step not in SEQUENCE_STEPS:
                self.error(child, f"unknown sequence step {step!r}")
            steps.append(str(step))
        return Sequence_(within, tuple(steps))

    def reasons(self, node: Node) -> tuple[str, str]:
        if not isinstance(node, MappingNode):
            self.error(node, "'reasons' is {key: catalogue.key} or {zh-CN: …, en: …}")
            return "", ""
        by_key = {key: value for key, _, value in self.pairs(node)}
        if "key" in by_key:
            key = self.scalar(by_key["key"])
            texts = catalogue().get(str(key))
            if texts is None:
                self.error(by_key["key"], f"no catalogue text {key!r}")
                return "", ""
            return texts["zh-CN"], texts["en"]
        zh, en = by_key.get("zh-CN"), by_key.get("en")
        if zh is None or en is None:
            self.error(node, "'reasons' needs both zh-CN and en")
            return "", ""
        zh_text, en_text = self.scalar(zh), self.scalar(en)
        if not isinstance(zh_text, str) or not zh_text.strip():
            self.error(zh, "zh-CN reason is empty")
        if not isinstance(en_text, str) or not en_text.strip():
            self.error(en, "en reason is empty")
        return str(zh_text), str(en_text)

    def rule(self, node: Node, seen: dict[str, int]) -> Rule | None:
        if not isinstance(node, MappingNode):
            self.error(node, "a rule is a mapping")
            return None
        by_key = {key: (key_node, value) for key, key_node, value in self.pairs(node)}
        allowed = {"id", "description", "kinds", "when", "sequence", "action", "score"}
        allowed |= {"reasons", "shadow"}
        for key in sorted(set(by_key) - allowed):
            self.error(by_key[key][0], f"unknown key {key!r} in a rule")
        for required in ("id", "when", "action", "score", "reasons"):
            if required not in by_key:
                self.error(node, f"a rule needs {required!r}")
        if any(required not in by_key for required in ("id", "when", "action", "score")):
            return None
        rule_id = self.scalar(by_key["id"][1])
        if not isinstance(rule_id, str) or not _ID.fullmatch(rule_id):
            self.error(by_key["id"][1], "a rule id is 1-64 of a-z 0-9 _ - ")
            rule_id = str(rule_id)
        if rule_id in seen:
            self.error(by_key["id"][1], f"rule id {rule_id!r} already used on line {seen[rule_id]}")
        seen[rule_id] = _line(node)
        kinds: frozenset[str] = frozenset(KINDS)
        if "kinds" in by_key:
            raw = self.scalar(by_key["kinds"][1])
            if not isinstance(raw, list) or not raw or any(k not in KINDS for k in raw):
                self.error(by_key["kinds"][1], f"'kinds' lists some of {', '.join(KINDS)}")
            else:
                kinds = frozenset(raw)
        action = self.scalar(by_key["action"][1])
        if action not in ACTIONS:
            self.error(by_key["action"][1], f"action must be one of {', '.join(ACTIONS)}")
        score = self.scalar(by_key["score"][1])
        if isinstance(score, bool) or not isinstance(score, int) or not 0 <= score <= 1000:
            self.error(by_key["score"][1], "score is a whole number from 0 to 1000")
            score = 0
        shadow = False
        if "shadow" in by_key:
            shadow_value = self.scalar(by_key["shadow"][1])
            if not isinstance(shadow_value, bool):
                self.error(by_key["shadow"][1], "shadow is true or false")
            shadow = bool(shadow_value)
        when = self.condition(by_key["when"][1])
        sequence = self.sequence(by_key["sequence"][1]) if "sequence" in by_key else None
        zh, en = self.reasons(by_key["reasons"][1]) if "reasons" in by_key else ("", "")
        return Rule(
            id=rule_id,
            kinds=kinds,
            when=when,
            sequence=sequence,
            action=str(action),
            score=score,
            reason_zh=zh,
            reason_en=en,
            shadow=shadow,
            line=_line(node),
            read_rank=max(self.rank(when), HISTORY_RANK if sequence is not None else 0),
        )

    def document(self, text: str) -> RuleSet:
        try:
            root = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            line = int(mark.line) + 1 if mark is not None else 1
            raise RulesInvalid(self.source, [(line, f"not valid YAML: {exc.problem}")]) from None
        rules_node: Node | None = None
        if isinstance(root, MappingNode):
            by_key = {key: (key_node, value) for key, key_node, value in self.pairs(root)}
            for key in sorted(set(by_key) - {"version", "rules"}):
                self.error(by_key[key][0], f"unknown top-level key {key!r}")
            if "version" in by_key and self.scalar(by_key["version"][1]) != 1:
                self.error(by_key["version"][1], "only version 1 is understood")
            rules_node = by_key.get("rules", (None, None))[1]
        if not isinstance(rules_node, SequenceNode):
            where = root if root is not None else ScalarNode("tag:yaml.org,2002:null", "")
            if root is None:
                raise RulesInvalid(self.source, [(1, "the file is empty; it needs 'rules:'")])
            self.error(where, "the file needs 'rules:' with a list of rules")
            raise RulesInvalid(self.source, self.errors)
        seen: dict[str, int] = {}
        rules = [self.rule(child, seen) for child in rules_node.value]
        if self.errors:
            raise RulesInvalid(self.source, sorted(self.errors))
        return RuleSet(tuple(rule for rule in rules if rule is not None), self.source)


def parse_rules(text: str, source: str = "<rules>") -> RuleSet:
    """Validate and compile a rules document; RulesInvalid lists every error with its line."""
    return _Compiler(source).document(text)


def default_rules_text() -> str:
    data = resources.files("walletguard.risk").joinpath("data/default_rules.yaml")
    return data.read_text(encoding="utf-8")


class RuleBook:
    """The current rules of one process, reloaded when the file's modification time changes.

    A file that fails validation on reload leaves the last good rules in force (and says why in
    ``last_error``); the first load fails loudly, so a server never starts without rules.
    """

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._mtime: float | None = None
        self.last_error: str | None = None
        self._rules = self._load()

    def _load(self) -> RuleSet:
        if self.path is None:
            return parse_rules(default_rules_text(), "default_rules.yaml")
        self._mtime = self.path.stat().st_mtime
        return parse_rules(self.path.read_text(encoding="utf-8"), str(self.path))

    def current(self) -> RuleSet:
        if self.path is not None:
            mtime: float | None
            try:
                mtime = self.path.stat().st_mtime
            except OSError:
                mtime = self._mtime
            if mtime != self._mtime:
                self.reload(quiet=True)
        return self._rules

    def reload(self, *, quiet: bool = False) -> RuleSet:
        with self._lock:
            try:
                self._rules = self._load()
                self.last_error = None
            except (RulesInvalid, OSError) as exc:
                self.last_error = str(exc)
                if self.path is not None:
                    with contextlib.suppress(OSError):
                        self._mtime = self.path.stat().st_mtime
                if not quiet:
                    raise
            return self._rules


_BOOKS: dict[str, RuleBook] = {}
_BOOKS_LOCK = threading.Lock()


def rule_book(path: Path | None) -> RuleBook:
    """One cached book per rules file per process (parsed once, not per decision)."""
    key = str(path) if path is not None else ""
    with _BOOKS_LOCK:
        book = _BOOKS.get(key)
        if book is None:
            book = RuleBook(path)
            _BOOKS[key] = book
        return book


def strongest(actions: Sequence[str]) -> str:
    return max(actions, key=lambda action: SEVERITY[action], default="allow")
