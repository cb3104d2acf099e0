"""Money as integer fen: parsing what people type, printing what they read, never a float."""

from __future__ import annotations

import ast
import inspect
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from walletguard.kit import money
from walletguard.kit.i18n import LANGUAGES, text
from walletguard.kit.money import (
    MAX_FEN,
    InvalidAmount,
    format_yuan,
    format_yuan_plain,
    parse_yuan,
)

ERROR_CODES = (
    "money.not_a_number",
    "money.too_many_decimals",
    "money.not_positive",
    "money.too_large",
)


@pytest.mark.parametrize(
    ("typed", "fen"),
    [
        ("1,000.00", 100_000),
        ("1000", 100_000),
        ("88130.5", 8_813_050),
        ("¥1,000.00", 100_000),
        ("￥1,000.00", 100_000),
        ("¥ 1,000.00", 100_000),
        ("1000元", 100_000),
        ("1,000.00 元", 100_000),
        ("  12.34  ", 1_234),
        ("0.01", 1),
        ("0.1", 10),
        ("007", 700),
        ("1,234,567.89", 123_456_789),
        ("1000000000000", MAX_FEN),
        ("1,000,000,000,000.00", MAX_FEN),
    ],
)
def test_parses_what_people_type(typed: str, fen: int) -> None:
    assert parse_yuan(typed) == fen


@pytest.mark.parametrize(
    ("value", "fen"),
    [
        (1, 100),
        (88130, 8_813_000),
        (10**12, MAX_FEN),
        (Decimal("12.34"), 1_234),
        (Decimal("0.5"), 50),
        # Trailing zeros from arithmetic are not a part of a fen.
        (Decimal("1.5") * Decimal("2.00"), 300),
        (Decimal("1E+3"), 100_000),
    ],
)
def test_parses_ints_and_decimals(value: int | Decimal, fen: int) -> None:
    assert parse_yuan(value) == fen


@pytest.mark.parametrize(
    ("value", "code"),
    [
        ("", "money.not_a_number"),
        ("   ", "money.not_a_number"),
        ("abc", "money.not_a_number"),
        ("12.34.56", "money.not_a_number"),
        ("1e3", "money.not_a_number"),
        ("NaN", "money.not_a_number"),
        ("inf", "money.not_a_number"),
        ("-Infinity", "money.not_a_number"),
        ("1,00", "money.not_a_number"),
        ("10,000,0", "money.not_a_number"),
        (",100", "money.not_a_number"),
        (".5", "money.not_a_number"),
        ("5.", "money.not_a_number"),
        ("+5", "money.not_a_number"),
        ("１００", "money.not_a_number"),
        ("¥", "money.not_a_number"),
        ("元", "money.not_a_number"),
        ("$5", "money.not_a_number"),
        (Decimal("NaN"), "money.not_a_number"),
        (Decimal("sNaN"), "money.not_a_number"),
        (Decimal("Infinity"), "money.not_a_number"),
        (Decimal("-Infinity"), "money.not_a_number"),
        ("1.234", "money.too_many_decimals"),
        ("0.001", "money.too_many_decimals"),
        # The dot may be a mistyped thousands separator: refuse rather than charge 1 yuan.
        ("1.000", "money.too_many_decimals"),
        (Decimal("0.005"), "money.too_many_decimals"),
        (Decimal("1.0000000000000000000000000000000001"), "money.too_many_decimals"),
        ("0", "money.not_positive"),
        ("0.00", "money.not_positive"),
        ("-1", "money.not_positive"),
        ("-0.01", "money.not_positive"),
        ("¥-5", "money.not_positive"),
        (0, "money.not_positive"),
        (-100, "money.not_positive"),
        (Decimal("-12.34"), "money.not_positive"),
        (Decimal("0E-1000"), "money.not_positive"),
        ("1000000000000.01", "money.too_large"),
        ("1,000,000,000,001", "money.too_large"),
        (10**12 + 1, "money.too_large"),
        (10**1000, "money.too_large"),
        (Decimal("1E+15"), "money.too_large"),
        ("9" * 1000, "money.too_large"),
    ],
)
def test_refusals_carry_a_code(value: str | int | Decimal, code: str) -> None:
    with pytest.raises(InvalidAmount) as caught:
        parse_yuan(value)
    assert caught.value.code == code
    assert isinstance(caught.value, ValueError)


@pytest.mark.parametrize("value", ["0", "0.00", 0, Decimal(0), Decimal("-0"), "-0"])
def test_zero_only_when_allowed(value: str | int | Decimal) -> None:
    assert parse_yuan(value, allow_zero=True) == 0


def test_allow_zero_still_refuses_negatives() -> None:
    with pytest.raises(InvalidAmount) as caught:
        parse_yuan("-0.01", allow_zero=True)
    assert caught.value.code == "money.not_positive"


@pytest.mark.parametrize("value", [1.0, 0.1, float("nan"), float("inf"), True, None, b"1", [1]])
def test_floats_and_other_types_are_a_type_error(value: Any) -> None:
    with pytest.raises(TypeError):
        parse_yuan(value)


@pytest.mark.parametrize(
    ("fen", "grouped", "plain"),
    [
        (100_000_000, "1,000,000.00", "1000000.00"),
        (8_813_000, "88,130.00", "88130.00"),
        (100_000, "1,000.00", "1000.00"),
        (99_999, "999.99", "999.99"),
        (1_234, "12.34", "12.34"),
        (5, "0.05", "0.05"),
        (0, "0.00", "0.00"),
        (-1_234, "-12.34", "-12.34"),
        (-5, "-0.05", "-0.05"),
        (-123_456_789, "-1,234,567.89", "-1234567.89"),
        (MAX_FEN, "1,000,000,000,000.00", "1000000000000.00"),
    ],
)
def test_formats(fen: int, grouped: str, plain: str) -> None:
    assert format_yuan(fen) == grouped
    assert format_yuan(fen, grouping=False) == plain
    assert format_yuan_plain(fen) == plain


@pytest.mark.parametrize("value", [1.0, Decimal(1), "100", True, None])
def test_format_takes_only_int(value: Any) -> None:
    with pytest.raises(TypeError):
        format_yuan(value)


@given(st.integers(min_value=1, max_value=MAX_FEN))
def test_round_trip(fen: int) -> None:
    assert parse_yuan(format_yuan(fen)) == fen
    assert parse_yuan(format_yuan_plain(fen)) == fen
    assert parse_yuan(Decimal(format_yuan_plain(fen))) == fen


@given(st.integers(min_value=-(10**20), max_value=10**20))
def test_formatting_is_exact_far_past_float_precision(fen: int) -> None:
    # Past 2**53 a float cannot hold every fen, so any float in the path would lose digits here.
    assert format_yuan(fen) == _reference_format(fen, grouped=True)
    assert format_yuan_plain(fen) == _reference_format(fen, grouped=False)


def test_money_module_has_no_float_arithmetic() -> None:
    # Exactness over a range is evidence; this is the guarantee: no true division, no float()
    # and no float literal anywhere in the module.
    tree = ast.parse(inspect.getsource(money))
    for node in ast.walk(tree):
        assert not isinstance(node, ast.Div), "true division"
        assert not (isinstance(node, ast.Constant) and isinstance(node.value, float))
        assert not (isinstance(node, ast.Name) and node.id == "float")


@given(st.integers(min_value=1, max_value=MAX_FEN))
def test_parsing_is_exact_past_float_precision(fen: int) -> None:
    typed = f"{fen // 100}.{fen % 100:02d}"
    assert parse_yuan(typed) == fen


@pytest.mark.parametrize(("typed", "fen"), [("0.29", 29), ("1.15", 115), ("4.35", 435)])
def test_amounts_a_float_would_lose_a_fen_on(typed: str, fen: int) -> None:
    # int(float("0.29") * 100) == 28: the bug this module exists to make impossible.
    assert parse_yuan(typed) == fen


def test_formats_amounts_past_float_precision() -> None:
    # 2**53 + 1 is the first integer a float rounds; formatting is not bound by MAX_FEN.
    assert format_yuan_plain(2**53 + 1) == "90071992547409.93"


@pytest.mark.parametrize("code", ERROR_CODES)
@pytest.mark.parametrize("lang", LANGUAGES)
def test_every_code_has_a_text(code: str, lang: Any) -> None:
    assert text(code, lang).strip()


def _reference_format(fen: int, *, grouped: bool) -> str:
    digits = str(abs(fen)).rjust(3, "0")
    whole, cents = digits[:-2], digits[-2:]
    if grouped:
        groups: list[str] = []
        while len(whole) > 3:
            groups.insert(0, whole[-3:])
            whole = whole[:-3]
        whole = ",".join([whole, *groups])
    return f"{'-' if fen < 0 else ''}{whole}.{cents}"
