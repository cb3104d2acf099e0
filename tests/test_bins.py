"""Card numbers and the bundled BIN table: format, Luhn, issuer by longest prefix."""

from __future__ import annotations

import csv
import re
from importlib import resources
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from stdnum.luhn import calc_check_digit

from walletguard.kit.i18n import LANGUAGES, text
from walletguard.wallet.bins import (
    COLUMNS,
    UNIONPAY_CODE,
    BinTable,
    BinTableError,
    InvalidCardNumber,
    Issuer,
    bin_table,
    issuer_by_code,
    last4,
    lookup_issuer,
    luhn_valid,
    mask_card,
    normalise_card_number,
    validate_card_number,
)

ERROR_CODES = ("card.format", "card.luhn", "card.unknown_issuer")
HEADER = ",".join(COLUMNS)


def card_number(prefix: str, length: int = 16, fill: str = "0") -> str:
    """A number of ``length`` digits starting with ``prefix`` whose Luhn check digit is right."""
    body = prefix + fill * (length - 1 - len(prefix))
    return body + calc_check_digit(body)


def bundled_rows() -> list[dict[str, str]]:
    # Read the file independently of the module under test, so a loader bug cannot hide a row.
    source = resources.files("walletguard.wallet") / "data" / "bins.csv"
    lines = [
        line
        for line in source.read_text(encoding="utf-8").splitlines()
        if line and not line.startswith("#")
    ]
    return list(csv.DictReader(lines))


ROWS = bundled_rows()
BANKS = {row["bank_code"] for row in ROWS} - {UNIONPAY_CODE}


@pytest.mark.parametrize("row", ROWS, ids=[row["prefix"] for row in ROWS])
def test_every_row_names_its_issuer(row: dict[str, str]) -> None:
    number, issuer = validate_card_number(card_number(row["prefix"]))
    assert issuer == Issuer(
        bank_code=row["bank_code"],
        name_zh=row["bank_name_zh"],
        name_en=row["bank_name_en"],
        sms_signature=row["sms_signature"],
        hotline=row["hotline"],
        card_type=row["card_type"],  # type: ignore[arg-type]
    )
    assert lookup_issuer(number) == issuer
    assert lookup_issuer(number[: max(6, len(row["prefix"]))]) == issuer


def test_the_loader_reads_every_row() -> None:
    assert set(bin_table().by_prefix) == {row["prefix"] for row in ROWS}
    assert len(bin_table().by_prefix) == len(ROWS)


def test_covers_at_least_twenty_banks() -> None:
    assert len(BANKS) >= 20
    assert {"ICBC", "CCB", "ABC", "BOC", "BOCOM", "PSBC", "CMB"} <= BANKS


@pytest.mark.parametrize("bank_code", sorted(BANKS | {UNIONPAY_CODE}))
def test_every_bank_has_a_hotline_and_sms_signature(bank_code: str) -> None:
    issuer = issuer_by_code(bank_code)
    assert issuer is not None
    assert re.fullmatch(r"[0-9]{5,11}", issuer.hotline)
    assert issuer.sms_signature
    assert "【" not in issuer.sms_signature
    assert issuer.sms_tag == f"【{issuer.sms_signature}】"
    assert issuer.name_zh
    assert issuer.name_en
    assert issuer.card_type == "unknown"


@pytest.mark.parametrize(
    ("bank_code", "hotline", "signature"),
    [
        ("ICBC", "95588", "工商银行"),
        ("CCB", "95533", "建设银行"),
        ("ABC", "95599", "中国农业银行"),
        ("BOC", "95566", "中国银行"),
        ("BOCOM", "95559", "交通银行"),
        ("PSBC", "95580", "邮储银行"),
        ("CMB", "95555", "招商银行"),
        ("SPDB", "95528", "浦发银行"),
        ("CITIC", "95558", "中信银行"),
        ("CIB", "95561", "兴业银行"),
        ("CMBC", "95568", "民生银行"),
        ("CEB", "95595", "光大银行"),
        ("PAB", "95511", "平安银行"),
        ("HXB", "95577", "华夏银行"),
        ("CGB", "95508", "广发银行"),
        ("UNIONPAY", "95516", "中国银联"),
    ],
)
def test_well_known_hotlines(bank_code: str, hotline: str, signature: str) -> None:
    issuer = issuer_by_code(bank_code)
    assert issuer is not None
    assert (issuer.hotline, issuer.sms_signature) == (hotline, signature)


def test_every_bank_has_several_prefixes() -> None:
    for bank_code in BANKS:
        assert sum(row["bank_code"] == bank_code for row in ROWS) >= 2, bank_code


@pytest.mark.parametrize(
    ("prefix", "bank_code", "card_type"),
    [
        ("622202", "ICBC", "debit"),
        ("622208", "ICBC", "debit"),
        ("620200", "ICBC", "debit"),
        ("621226", "ICBC", "debit"),
        ("621700", "CCB", "debit"),
        ("436742", "CCB", "debit"),
        ("622848", "ABC", "debit"),
        ("103", "ABC", "debit"),
        ("621661", "BOC", "debit"),
        ("456351", "BOC", "debit"),
        ("622262", "BOCOM", "debit"),
        ("622588", "CMB", "debit"),
        ("622575", "CMB", "credit"),
        ("621799", "PSBC", "debit"),
    ],
)
def test_well_known_bins(prefix: str, bank_code: str, card_type: str) -> None:
    _, issuer = validate_card_number(card_number(prefix, 19))
    assert (issuer.bank_code, issuer.card_type) == (bank_code, card_type)


def test_longest_prefix_wins() -> None:
    table = BinTable.from_csv(
        "\n".join(
            [
                HEADER,
                "62,UNIONPAY,银联,UnionPay,中国银联,95516,unknown",
                "622202,ICBC,中国工商银行,ICBC,工商银行,95588,debit",
                "6222021234,CZB,浙商银行,China Zheshang Bank,浙商银行,95527,credit",
            ]
        )
    )
    assert table.lookup("6222021234000000").bank_code == "CZB"  # type: ignore[union-attr]
    assert table.lookup("6222021233000000").bank_code == "ICBC"  # type: ignore[union-attr]
    assert table.lookup("6222031234000000").bank_code == UNIONPAY_CODE  # type: ignore[union-attr]
    assert table.lookup("6300000000000000") is None


def test_longest_prefix_wins_in_the_bundled_table() -> None:
    # A 10-digit 浙商银行 prefix inside a 622309 range that is otherwise plain UnionPay.
    czb = lookup_issuer(card_number("6223091100"))
    other = lookup_issuer(card_number("6223091199"))
    assert czb is not None
    assert other is not None
    assert (czb.bank_code, other.bank_code) == ("CZB", UNIONPAY_CODE)


@pytest.mark.parametrize("prefix", ["629999", "620000", "6212", "62"])
def test_other_62_cards_are_unionpay_with_unknown_bank(prefix: str) -> None:
    number, issuer = validate_card_number(card_number(prefix, 19))
    assert issuer.is_unionpay_fallback
    assert issuer.bank_code == UNIONPAY_CODE
    assert issuer.name_en == "UnionPay"
    assert issuer.name_zh == "银联"
    assert issuer.hotline == "95516"
    assert issuer.card_type == "unknown"
    assert number.startswith(prefix)


@pytest.mark.parametrize(
    "number",
    [
        "4111111111111111",  # the Visa test card
        "5555555555554444",  # the Mastercard test card
        "378282246310005",  # the American Express test card
        card_number("999999"),
        card_number("630000"),
        card_number("1"),
    ],
)
def test_unknown_issuer(number: str) -> None:
    assert luhn_valid(number)
    assert lookup_issuer(number) is None
    with pytest.raises(InvalidCardNumber) as caught:
        validate_card_number(number)
    assert caught.value.code == "card.unknown_issuer"


def test_luhn_pass_and_fail() -> None:
    good = card_number("622202", 19)
    assert luhn_valid(good)
    assert validate_card_number(good)[0] == good
    for digit in "0123456789":
        if digit != good[-1]:
            bad = good[:-1] + digit
            assert not luhn_valid(bad)
            with pytest.raises(InvalidCardNumber) as caught:
                validate_card_number(bad)
            assert caught.value.code == "card.luhn"


@given(
    st.text(alphabet="0123456789", min_size=11, max_size=18),
    st.integers(min_value=0, max_value=18),
    st.integers(min_value=1, max_value=9),
)
def test_luhn_catches_any_single_mistyped_digit(body: str, position: int, change: int) -> None:
    number = body + calc_check_digit(body)
    position %= len(number)
    mistyped = (
        number[:position] + str((int(number[position]) + change) % 10) + number[position + 1 :]
    )
    assert luhn_valid(number)
    assert not luhn_valid(mistyped)


@pytest.mark.parametrize("value", ["", "abc", "6222 0212", "6222０２１２３４５６７８９０", "٦٢٢٢"])
def test_luhn_valid_is_false_for_non_numbers(value: str) -> None:
    assert not luhn_valid(value)


def test_an_unknown_issuer_with_a_bad_check_digit_is_a_luhn_error() -> None:
    good = card_number("999999")
    bad = good[:-1] + str((int(good[-1]) + 1) % 10)
    with pytest.raises(InvalidCardNumber) as caught:
        validate_card_number(bad)
    assert caught.value.code == "card.luhn"


@pytest.mark.parametrize(
    "written",
    [
        "{0} {1} {2} {3} {4}",
        "{0}-{1}-{2}-{3}-{4}",
        "  {0}{1}{2}{3}{4}  ",
        "{0}\t{1} - {2}  {3}{4}",
        "{0}\u3000{1}\u3000{2}\u3000{3}\u3000{4}",
        "{0}－{1}－{2}－{3}－{4}",
    ],
)
def test_spaces_and_hyphens_are_accepted(written: str) -> None:
    number = card_number("622202", 19)
    groups = [number[i : i + 4] for i in range(0, 19, 4)]
    typed = written.format(*groups)
    assert normalise_card_number(typed) == number
    assert validate_card_number(typed)[0] == number
    assert lookup_issuer(typed) == lookup_issuer(number)
    assert last4(typed) == number[-4:]


@pytest.mark.parametrize(
    "value",
    [
        "",
        "   ",
        "- -",
        "62220212345",  # 11 digits
        "62220212345678901234",  # 20 digits
        "6222021234567890a",
        "6222.0212.3456.7890",
        "６２２２０２１２３４５６７８９０",  # full-width digits
        "٦٢٢٢٠٢١٢٣٤٥٦٧٨٩٠",  # Arabic-Indic digits
        "+6222021234567890",
    ],
)
def test_format_errors(value: str) -> None:
    with pytest.raises(InvalidCardNumber) as caught:
        normalise_card_number(value)
    assert caught.value.code == "card.format"
    with pytest.raises(InvalidCardNumber) as caught:
        validate_card_number(value)
    assert caught.value.code == "card.format"


@pytest.mark.parametrize("length", [12, 13, 16, 17, 18, 19])
def test_lengths_twelve_to_nineteen(length: int) -> None:
    number = card_number("622848", length)
    assert validate_card_number(number) == (number, lookup_issuer("622848"))


@pytest.mark.parametrize("value", [6222021234567890, None, b"6222021234567890"])
def test_non_strings_are_a_type_error(value: Any) -> None:
    with pytest.raises(TypeError):
        normalise_card_number(value)


def test_errors_never_carry_the_number() -> None:
    number = card_number("622202", 19)
    bad = number[:-1] + str((int(number[-1]) + 1) % 10)
    with pytest.raises(InvalidCardNumber) as caught:
        validate_card_number(bad)
    assert str(caught.value) == "card.luhn"
    assert bad not in repr(caught.value)


def test_lookup_works_on_the_first_digits_alone() -> None:
    assert lookup_issuer("622202").bank_code == "ICBC"  # type: ignore[union-attr]
    assert lookup_issuer("6222 02").bank_code == "ICBC"  # type: ignore[union-attr]
    assert lookup_issuer("62").bank_code == UNIONPAY_CODE  # type: ignore[union-attr]
    assert lookup_issuer("6") is None
    assert lookup_issuer("") is None
    assert lookup_issuer("abc") is None
    assert lookup_issuer("６２２２０２") is None


def test_issuer_by_code() -> None:
    icbc = issuer_by_code("ICBC")
    assert icbc is not None
    assert (icbc.name_zh, icbc.name_en) == (
        "中国工商银行",
        "Industrial and Commercial Bank of China",
    )
    assert issuer_by_code("icbc") == icbc
    assert issuer_by_code(" cmb ") == issuer_by_code("CMB")
    assert issuer_by_code("NOPE") is None
    assert issuer_by_code("") is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("6222021234567898821", "8821"),
        ("6222 0212 3456 7898 821", "8821"),
        ("8821", "8821"),
        ("0000", "0000"),
    ],
)
def test_last4_and_mask(value: str, expected: str) -> None:
    assert last4(value) == expected
    assert mask_card(value) == f"**** **** **** {expected}"


def test_mask_does_not_reveal_the_length() -> None:
    for length in (12, 16, 19):
        number = card_number("622202", length)
        assert mask_card(number) == f"**** **** **** {number[-4:]}"


@pytest.mark.parametrize("value", ["", "882", "88a1", "****8821"])
def test_last4_refuses_what_is_not_digits(value: str) -> None:
    with pytest.raises(InvalidCardNumber) as caught:
        mask_card(value)
    assert caught.value.code == "card.format"


def test_table_is_loaded_once() -> None:
    assert bin_table() is bin_table()


@pytest.mark.parametrize(
    ("rows", "problem"),
    [
        (["prefix,bank_code", "62,UNIONPAY"], "header"),
        (
            [
                HEADER,
                "622202,ICBC,中国工商银行,ICBC,工商银行,95588,debit",
                "622202,ICBC,中国工商银行,ICBC,工商银行,95588,credit",
            ],
            "twice",
        ),
        (
            [
                HEADER,
                "622202,ICBC,中国工商银行,ICBC,工商银行,95588,debit",
                "622208,ICBC,中国工商银行,ICBC,工商银行,95533,debit",
            ],
            "hotline",
        ),
        ([HEADER, "622202,ICBC,中国工商银行,ICBC,工商银行,95588,prepaid"], "card_type"),
        ([HEADER, "62220x,ICBC,中国工商银行,ICBC,工商银行,95588,debit"], "digits"),
        ([HEADER, "6" * 20 + ",ICBC,中国工商银行,ICBC,工商银行,95588,debit"], "digits"),
        ([HEADER, "622202,ICBC,中国工商银行,ICBC,,95588,debit"], "sms_signature"),
        ([HEADER, "622202,ICBC,中国工商银行,ICBC,工商银行"], "empty"),
        ([HEADER, "622202,ICBC,中国工商银行,ICBC, Ltd,工商银行,95588,debit"], "more fields"),
    ],
)
def test_a_malformed_table_is_refused(rows: list[str], problem: str) -> None:
    with pytest.raises(BinTableError, match=problem):
        BinTable.from_csv("\n".join(rows))


def test_table_comments_and_blank_lines_are_ignored() -> None:
    table = BinTable.from_csv(
        '# a comment, with commas, and "quotes\n\n'
        + HEADER
        + "\n# another\n 622202 , icbc ,中国工商银行,ICBC,工商银行,95588,debit\n"
    )
    assert table.lookup("6222020000000000") == Issuer(
        "ICBC", "中国工商银行", "ICBC", "工商银行", "95588", "debit"
    )


@pytest.mark.parametrize("code", ERROR_CODES)
@pytest.mark.parametrize("lang", LANGUAGES)
def test_every_code_has_a_text(code: str, lang: Any) -> None:
    assert text(code, lang).strip()
