"""Risk rules as data: validation with line numbers, reload, every default rule, sequences."""

from __future__ import annotations

import os
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from walletguard.risk.rules import (
    HISTORY_SIGNALS,
    RECENT_SIGNALS,
    SPREAD_SIGNALS,
    TRAVEL_SIGNALS,
    RuleBook,
    RulesInvalid,
    default_rules_text,
    parse_rules,
)
from walletguard.risk.service import evaluate, sequence_matches
from walletguard.risk.signals import NEVER_H, Facts, Signals

NOW = datetime(2026, 3, 12, 9, 0, tzinfo=UTC)

GOOD = """\
version: 1
rules:
  - id: big
    kinds: [movement]
    when: {signal: amount_fen, ge: 100000}
    action: hold
    score: 10
    reasons: {zh-CN: 大额, en: large}
"""


def errors_of(text: str) -> list[tuple[int, str]]:
    with pytest.raises(RulesInvalid) as caught:
        parse_rules(textwrap.dedent(text), "rules.yaml")
    assert "rules.yaml:" in str(caught.value)
    return caught.value.errors


def test_the_default_rules_load() -> None:
    rules = parse_rules(default_rules_text())
    ids = [rule.id for rule in rules.rules]
    assert len(ids) == len(set(ids)) >= 20
    assert all(rule.reason_zh and rule.reason_en for rule in rules.rules)
    assert any(rule.shadow for rule in rules.rules)
    assert any(rule.sequence is not None for rule in rules.rules)


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        (GOOD.replace("amount_fen", "amount_yuan"), 5, "unknown signal 'amount_yuan'"),
        (GOOD.replace("action: hold", "action: maybe"), 6, "action must be one of"),
        (GOOD.replace("score: 10", "score: lots"), 7, "score is a whole number"),
        (GOOD.replace("ge: 100000", "ge: many"), 5, "is a number"),
        (GOOD.replace("ge: 100000", "is: true"), 5, "'is' compares a true/false signal"),
        (GOOD.replace("kinds: [movement]", "kinds: [payment]"), 4, "'kinds' lists"),
        (GOOD.replace("{zh-CN: 大额, en: large}", "{en: large}"), 8, "needs both zh-CN and en"),
        (GOOD.replace("{zh-CN: 大额, en: large}", "{key: risk.nope}"), 8, "no catalogue text"),
        (GOOD + "    colour: red\n", 9, "unknown key 'colour'"),
        (GOOD + GOOD.split("rules:\n")[1], 9, "already used on line 3"),
        (GOOD.replace("    when: {signal: amount_fen, ge: 100000}\n", ""), 3, "needs 'when'"),
        (
            GOOD.replace("{signal: amount_fen, ge: 100000}", "{any: []}"),
            5,
            "non-empty list of conditions",
        ),
        (
            GOOD.replace("{signal: amount_fen, ge: 100000}", "{signal: amount_fen, gt: 1, lt: 9}"),
            5,
            "exactly one operator",
        ),
        (
            GOOD + "    sequence: {within: soon, steps: [login, movement]}\n",
            9,
            "a duration is like",
        ),
        (
            GOOD + "    sequence: {within: 30m, steps: [login, teleport]}\n",
            9,
            "unknown sequence step 'teleport'",
        ),
        ("version: 1\nrules:\n  - id: [\n", 4, "not valid YAML"),
        ("version: 1\nrule: []\n", 2, "unknown top-level key 'rule'"),
    ],
)
def test_invalid_rules_name_their_line(text: str, line: int, words: str) -> None:
    errors = errors_of(text)
    assert any(found == line and words in message for found, message in errors), errors


def test_every_error_is_reported_not_only_the_first() -> None:
    text = GOOD.replace("amount_fen", "nope").replace("action: hold", "action: maybe")
    assert {line for line, _ in errors_of(text)} == {5, 6}


def test_the_file_reloads_when_it_changes_and_keeps_the_last_good_rules(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(GOOD, encoding="utf-8")
    book = RuleBook(path)
    assert [r.id for r in book.current().rules] == ["big"]

    path.write_text(GOOD.replace("id: big", "id: bigger"), encoding="utf-8")
    stat = path.stat()
    os.utime(path, (stat.st_atime, stat.st_mtime + 5))
    assert [r.id for r in book.current().rules] == ["bigger"]

    path.write_text(GOOD.replace("action: hold", "action: maybe"), encoding="utf-8")
    os.utime(path, (stat.st_atime, stat.st_mtime + 10))
    assert [r.id for r in book.current().rules] == ["bigger"]  # still the last good rules
    assert book.last_error is not None and "rules.yaml:6" in book.last_error
    with pytest.raises(RulesInvalid):
        book.reload()


def test_a_broken_file_refuses_to_start(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text("version: 1\nrules: {}\n", encoding="utf-8")
    with pytest.raises(RulesInvalid):
        RuleBook(path)


# -- every default rule fires, and stays quiet for an honest look-alike ----------------------

BENIGN: dict[str, Any] = {
    "kind": "movement",
    "action": "payment",
    "amount_fen": 5_000,
    "device_age_h": 2000.0,
    "device_new": False,
    "device_vouched": True,
    "device_state": "trusted",
    "geo_known": True,
    "province": "上海",
    "province_familiar": True,
    "travel_km": 0.0,
    "travel_kmh": 0.0,
    "credential_changed_h": NEVER_H,
    "payment_password_reset_h": NEVER_H,
    "sync_enabled_h": NEVER_H,
    "factor_changed_h": NEVER_H,
    "phone_changed_h": NEVER_H,
    "device_added_h": NEVER_H,
    "sim_swap_h": NEVER_H,
    "scam_message_h": NEVER_H,
    "scam_names_payee": False,
    "account_age_d": 400.0,
    "dormant_d": 1.0,
    "payee_new": False,
    "payee_trusted": True,
    "payee_payments": 8,
    "history_count_90d": 40,
    "amount_vs_p95": 0.5,
    "source_balance_fen": 1_000_000,
    "empties_source": False,
    "night": False,
    "hour_beijing": 14,
    "holder_count_10m": 0,
    "holder_sum_10m": 0,
    "holder_count_1h": 0,
    "holder_sum_1h": 0,
    "holder_sum_24h": 0,
    "card_count_10m": 0,
    "card_sum_1h": 0,
    "payee_count_1h": 0,
    "payee_sum_1h": 0,
    "ip_count_1h": 0,
    "cards_debited_30m": 1,
    "payees_30m": 1,
    "payee_senders_1h": 1,
    "ip_holders_24h": 1,
    "device_holders_24h": 1,
    "session_flagged": False,
}

NEW_PAYEE = {"payee_new": True, "payee_trusted": False, "payee_payments": 0}

# rule id -> (what makes it fire, the honest look-alike that must not)
CASES: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "ato-chain": (
        {"device_new": True, "sync_enabled_h": 0.2, "payment_password_reset_h": 0.1},
        # the holder's own tablet: sync and a PIN reset, but a device they vouched for
        {"device_new": False, "sync_enabled_h": 0.2, "payment_password_reset_h": 0.1},
    ),
    "empties-source": (
        {"empties_source": True, "amount_fen": 5_000_000, "device_new": True, **NEW_PAYEE},
        {"empties_source": True, "amount_fen": 5_000_000, **NEW_PAYEE},
    ),
    "first-payment-far-above-history": (
        {"amount_vs_p95": 12.0, "amount_fen": 800_000, **NEW_PAYEE},
        {"amount_vs_p95": 12.0, "amount_fen": 800_000},  # the landlord, paid every month
    ),
    "card-fan-out": (
        {"cards_debited_30m": 3, "holder_sum_1h": 8_000_000},
        {"cards_debited_30m": 3, "holder_sum_1h": 20_000},  # three cards, small shopping
    ),
    "payee-fan-out": (
        {"payees_30m": 6, "amount_fen": 300_000, **NEW_PAYEE},
        {"payees_30m": 6, "amount_fen": 12_000, **NEW_PAYEE},  # six friends' share of a trip
    ),
    "mule-collection": (
        {"action": "transfer", "payee_senders_1h": 9, "amount_fen": 300_000, **NEW_PAYEE},
        # friends splitting the dinner bill
        {"action": "transfer", "payee_senders_1h": 9, "amount_fen": 8_000, **NEW_PAYEE},
    ),
    "impossible-travel": (
        {"travel_km": 1200.0, "travel_kmh": 7200.0},
        {"travel_km": 1200.0, "travel_kmh": 500.0},  # a flight
    ),
    "dormant-sudden": (
        {"dormant_d": 200.0, "amount_fen": 900_000, **NEW_PAYEE},
        {"dormant_d": 200.0, "amount_fen": 900_000},
    ),
    "sim-swap-sms-untrusted": (
        {"kind": "sensitive_action", "action": "reset_payment_password", "sim_swap_h": 3.0},
        {"kind": "sensitive_action", "action": "reset_payment_password", "sim_swap_h": 100.0},
    ),
    "sim-swap-large-movement": (
        {"sim_swap_h": 3.0, "amount_fen": 500_000, **NEW_PAYEE},
        {"sim_swap_h": 3.0, "amount_fen": 500_000},
    ),
    "shared-ip": (
        {"ip_holders_24h": 25, "device_vouched": False},
        {"ip_holders_24h": 25},  # a company's office network, the holder's own phone
    ),
    "shared-device": (
        {"device_holders_24h": 4, "device_new": True, "device_vouched": False},
        {"device_holders_24h": 4},
    ),
    "scam-then-pay": (
        {"scam_message_h": 2.0, "amount_fen": 300_000, **NEW_PAYEE},
        {"scam_message_h": 2.0, "amount_fen": 300_000},
    ),
    "scam-named-payee": ({"scam_names_payee": True}, {"scam_message_h": 2.0}),
    "new-device-night-large": (
        {"device_new": True, "night": True, "amount_fen": 600_000, **NEW_PAYEE},
        {"device_new": False, "night": True, "amount_fen": 600_000, **NEW_PAYEE},
    ),
    "risky-login": (
        {"kind": "login", "action": "login", "device_new": True, "province_familiar": False},
        {"kind": "login", "action": "login", "device_new": True},
    ),
    "flagged-session": (
        {"session_flagged": True, "device_new": True},
        {"session_flagged": True},  # the device has since been vouched for
    ),
    "holder-velocity": (
        {"holder_count_10m": 35, "holder_sum_10m": 3_000_000},
        {"holder_count_10m": 35, "holder_sum_10m": 50_000},  # a stall-keeper's small buys
    ),
    "card-velocity": (
        {"card_count_10m": 7, "card_sum_1h": 2_000_000},
        {"card_count_10m": 7, "card_sum_1h": 60_000},
    ),
    "night-large": (
        {"night": True, "amount_fen": 2_000_000, **NEW_PAYEE},
        {"night": True, "amount_fen": 2_000_000},
    ),
}


def fired(overrides: dict[str, Any]) -> set[str]:
    rules = parse_rules(default_rules_text())
    signals = {**BENIGN, **overrides}
    facts = Facts(signals, None, None, None, None)
    return {rule.id for rule in evaluate(rules, facts, NOW, signals["kind"])}


def test_every_default_rule_has_a_case() -> None:
    rules = parse_rules(default_rules_text())
    without_sequence = {rule.id for rule in rules.rules if rule.sequence is None}
    assert without_sequence == set(CASES)


def test_an_honest_baseline_fires_nothing() -> None:
    assert fired({}) == set()


@pytest.mark.parametrize("rule_id", sorted(CASES))
def test_each_default_rule_fires_and_stays_quiet(rule_id: str) -> None:
    fires, quiet = CASES[rule_id]
    assert rule_id in fired(fires)
    assert rule_id not in fired(quiet)


# -- sequence conditions -------------------------------------------------------------------


def sequence_facts(
    timeline: list[tuple[timedelta, set[str]]], current: set[str], **signals: Any
) -> Facts:
    return Facts(
        {**BENIGN, **NEW_PAYEE, "amount_fen": 200_000, **signals},
        None,
        None,
        None,
        None,
        timeline=[(NOW - ago, frozenset(tags)) for ago, tags in timeline],
        current_tags=frozenset(current),
    )


def credential_rule() -> Any:
    rules = parse_rules(default_rules_text())
    return next(rule for rule in rules.rules if rule.id == "credential-then-new-payee")


def test_credential_change_then_new_payee_then_transfer_within_30_minutes() -> None:
    rule = credential_rule()
    here = {"movement", "transfer", "new_payee"}
    assert sequence_matches(
        rule, sequence_facts([(timedelta(minutes=12), {"credential_changed"})], here), NOW
    )
    # too long ago
    assert not sequence_matches(
        rule, sequence_facts([(timedelta(minutes=45), {"credential_changed"})], here), NOW
    )
    # the wrong order: the new payee came first, then the credential change
    assert not sequence_matches(
        rule,
        sequence_facts(
            [(timedelta(minutes=20), {"movement", "new_payee"})],
            {"movement", "transfer"},
        ),
        NOW,
    )
    # in order across three events: change, a first payment to someone new, then another
    assert sequence_matches(
        rule,
        sequence_facts(
            [
                (timedelta(minutes=25), {"credential_changed"}),
                (timedelta(minutes=10), {"movement", "new_payee"}),
            ],
            {"movement", "transfer"},
        ),
        NOW,
    )
    # and no credential change at all
    assert not sequence_matches(rule, sequence_facts([], here), NOW)


def test_a_shadow_rule_is_recorded_apart(tmp_path: Path) -> None:
    rules = parse_rules(GOOD.replace("score: 10", "score: 10\n    shadow: true"))
    assert rules.rules[0].shadow


# -- what a condition reads ------------------------------------------------------------------

COSTLY_FIRST = """\
version: 1
rules:
  - id: far-above
    kinds: [movement]
    when:
      all:
        - any:
            - {signal: payee_senders_1h, ge: 8}
            - {signal: payee_new, is: true}
        - {signal: amount_vs_p95, gt: 5}
        - {signal: device_new, is: true}
    action: challenge
    score: 10
    reasons: {zh-CN: 远超平时金额, en: far above the usual amount}
"""


def _lazy_signals(**made: Any) -> tuple[Signals, list[str]]:
    """Signals made with the event (``made``), and the history's, the last half hour's,
    travel's and the spread's groups on demand; returns what was read, in order."""
    read: list[str] = []

    def history() -> dict[str, Any]:
        read.append("history")
        return {**{name: BENIGN[name] for name in HISTORY_SIGNALS}, "amount_vs_p95": 12.0}

    def recent() -> dict[str, Any]:
        read.append("recent")
        return {"cards_debited_30m": 3, "payees_30m": 1}

    def travel() -> dict[str, Any]:
        read.append("travel")
        return {"travel_km": 1200.0, "travel_kmh": 7200.0}

    def spread() -> dict[str, Any]:
        read.append("spread")
        return dict.fromkeys(SPREAD_SIGNALS, 9)

    signals = Signals(**{**BENIGN, **made})
    for name in (*HISTORY_SIGNALS, *RECENT_SIGNALS, *TRAVEL_SIGNALS, *SPREAD_SIGNALS):
        signals.pop(name, None)
    signals.on_demand(HISTORY_SIGNALS, history)
    signals.on_demand(RECENT_SIGNALS, recent)
    signals.on_demand(TRAVEL_SIGNALS, travel)
    signals.on_demand(SPREAD_SIGNALS, spread)
    return signals, read


def test_a_condition_reads_the_signals_made_with_the_event_first() -> None:
    rules = parse_rules(COSTLY_FIRST)
    # Written costliest first; tried cheapest first: a device the holder vouched for rules
    # the rule out before the history or other holders' decisions are read.
    signals, read = _lazy_signals(device_new=False)
    assert evaluate(rules, Facts(signals, None, None, None, None), NOW, "movement") == []
    assert read == []
    assert "amount_vs_p95" not in signals  # not read, so not stored as evidence either
    # The same rule on a new device, to a new payee: the history is read once, the other
    # holders' decisions never (the ``any`` is true at its cheap part), and the rule fires as
    # it would in the file's order.
    signals, read = _lazy_signals(device_new=True, payee_new=True)
    fired = evaluate(rules, Facts(signals, None, None, None, None), NOW, "movement")
    assert [rule.id for rule in fired] == ["far-above"]
    assert read == ["history"]


TRAVEL_THEN_HISTORY = """\
version: 1
rules:
  - id: far-away
    when: {signal: travel_kmh, gt: 900}
    action: challenge
    score: 10
    reasons: {zh-CN: 异地, en: far away}
  - id: far-above
    kinds: [movement]
    when: {signal: amount_vs_p95, gt: 5}
    action: challenge
    score: 10
    reasons: {zh-CN: 远超平时金额, en: far above the usual amount}
"""


def test_rules_run_in_the_order_of_what_they_read_and_fire_in_the_file_s() -> None:
    # The history first (travel then comes from it, not from a read of its own), the fired
    # rules in the file's order all the same: what is stored and shown does not change.
    signals, read = _lazy_signals()
    rules = parse_rules(TRAVEL_THEN_HISTORY)
    fired = evaluate(rules, Facts(signals, None, None, None, None), NOW, "movement")
    assert [rule.id for rule in fired] == ["far-away", "far-above"]
    assert read == ["history", "travel"]
    assert [rule.read_rank for rule in rules.rules] == [3, 2]


RECENT_THEN_HISTORY = """\
version: 1
rules:
  - id: far-above
    kinds: [movement]
    when:
      all:
        - {signal: amount_vs_p95, gt: 5}
        - {signal: device_new, is: true}
    action: challenge
    score: 10
    reasons: {zh-CN: 远超平时金额, en: far above the usual amount}
  - id: drained
    kinds: [movement]
    when:
      all:
        - {signal: cards_debited_30m, ge: 3}
        - {signal: holder_sum_1h, ge: 300000}
    action: hold
    score: 50
    reasons: {zh-CN: 多卡扣款, en: several cards}
"""


def test_the_last_half_hour_s_cards_are_read_without_the_history() -> None:
    # "Several cards drained" needs the cards of the last half hour, not the 90-day history:
    # a rule reading the history that a signal made with the event rules out reads nothing.
    rules = parse_rules(RECENT_THEN_HISTORY)
    assert [rule.read_rank for rule in rules.rules] == [2, 1]
    signals, read = _lazy_signals(device_new=False, holder_sum_1h=900_000)
    fired = evaluate(rules, Facts(signals, None, None, None, None), NOW, "movement")
    assert [rule.id for rule in fired] == ["drained"]
    assert read == ["recent"]
    assert "amount_vs_p95" not in signals
    # Under 3,000.00 in the hour, the cards are not looked at either.
    signals, read = _lazy_signals(device_new=False, holder_sum_1h=20_000)
    assert evaluate(rules, Facts(signals, None, None, None, None), NOW, "movement") == []
    assert read == []


def test_the_sequence_timeline_reads_the_earlier_movements_once_and_in_order() -> None:
    calls: list[int] = []

    def movements() -> list[tuple[datetime, frozenset[str]]]:
        calls.append(1)
        return [(NOW - timedelta(minutes=5), frozenset({"movement", "new_payee"}))]

    facts = Facts(
        {**BENIGN},
        None,
        None,
        None,
        None,
        timeline=[(NOW - timedelta(minutes=20), frozenset({"credential_changed"}))],
        earlier_movements=movements,
    )
    assert calls == []
    expected = [
        (NOW - timedelta(minutes=20), frozenset({"credential_changed"})),
        (NOW - timedelta(minutes=5), frozenset({"movement", "new_payee"})),
    ]
    assert facts.sequence_timeline() == expected
    assert facts.sequence_timeline() == expected
    assert calls == [1]
