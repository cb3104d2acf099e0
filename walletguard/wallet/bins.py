"""Which bank issued a card, from the bundled BIN table ``data/bins.csv``.

A card number's leading digits (its BIN, bank identification number) name the issuer. The table
is illustrative, a few well-known prefixes per major Chinese bank, and any other ``62`` card is
UnionPay with an unknown issuer; operators extend the CSV for the banks their holders use. Besides
the bank's names, each issuer carries the signature its SMS are sent under and its hotline, which
the incident desk tells a holder to call to freeze the card.

Card numbers are secret: nothing here logs one, and errors carry only a catalogue code.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from functools import cache
from importlib import resources
from typing import Final, Literal, get_args

from stdnum import luhn

CardType = Literal["debit", "credit", "unknown"]
CARD_TYPES: Final[tuple[CardType, ...]] = get_args(CardType)

UNIONPAY_CODE: Final = "UNIONPAY"
COLUMNS: Final = (
    "prefix",
    "bank_code",
    "bank_name_zh",
    "bank_name_en",
    "sms_signature",
    "hotline",
    "card_type",
)

# People copy numbers as printed on the card ("6222 0212 …") or from apps ("6222-0212-…"); \s
# also covers the full-width space a Chinese input method types.
_SEPARATORS = re.compile(r"[\s\-－]+")
_CARD_NUMBER = re.compile(r"[0-9]{12,19}")
_DIGITS = re.compile(r"[0-9]+")


@dataclass(frozen=True, slots=True)
class Issuer:
    """A card's issuing bank. ``card_type`` is that of the matched BIN; an issuer looked up by
    bank code alone has ``card_type="unknown"``."""

    bank_code: str
    name_zh: str
    name_en: str
    sms_signature: str
    hotline: str
    card_type: CardType

    @property
    def is_unionpay_fallback(self) -> bool:
        return self.bank_code == UNIONPAY_CODE

    @property
    def sms_tag(self) -> str:
        """How the bank's own SMS begin, e.g. ``【工商银行】``."""
        return f"【{self.sms_signature}】"


class InvalidCardNumber(ValueError):
    """A card number that cannot be bound. ``code`` is the catalogue key: ``card.format`` (not
    12–19 digits), ``card.luhn`` (a mistyped digit) or ``card.unknown_issuer``."""

    def __init__(self, code: str) -> None:
        # Only the code goes into the message: exceptions end up in logs, card numbers must not.
        super().__init__(code)
        self.code = code


class BinTableError(ValueError):
    """The BIN table file is malformed or contradicts itself."""


@dataclass(frozen=True, slots=True)
class BinTable:
    """Issuers by prefix (for longest-prefix lookup) and by bank code."""

    by_prefix: Mapping[str, Issuer]
    banks: Mapping[str, Issuer]

    @classmethod
    def from_csv(cls, text: str) -> BinTable:
        """Parse a table in the ``data/bins.csv`` format; ``#`` lines are comments."""
        lines = [line for line in text.splitlines() if line.strip() and not line.startswith("#")]
        reader = csv.DictReader(lines)
        if tuple(reader.fieldnames or ()) != COLUMNS:
            raise BinTableError(f"the header must be {','.join(COLUMNS)}")
        by_prefix: dict[str, Issuer] = {}
        banks: dict[str, Issuer] = {}
        for raw in reader:
            row = {column: (raw.get(column) or "").strip() for column in COLUMNS}
            prefix = row["prefix"]
            # DictReader files surplus fields under None: an unquoted comma in a bank's name.
            if None in raw:
                raise BinTableError(f"prefix {prefix}: more fields than columns")
            if not _DIGITS.fullmatch(prefix) or len(prefix) > 19:
                raise BinTableError(f"prefix {prefix!r} is not 1 to 19 digits")
            if prefix in by_prefix:
                raise BinTableError(f"prefix {prefix} is listed twice")
            empty = [column for column in COLUMNS if not row[column]]
            if empty:
                raise BinTableError(f"prefix {prefix}: {', '.join(empty)} is empty")
            card_type = row["card_type"]
            if card_type not in CARD_TYPES:
                raise BinTableError(
                    f"prefix {prefix}: card_type {card_type!r} is not one of "
                    f"{', '.join(CARD_TYPES)}"
                )
            bank = Issuer(
                bank_code=row["bank_code"].upper(),
                name_zh=row["bank_name_zh"],
                name_en=row["bank_name_en"],
                sms_signature=row["sms_signature"],
                hotline=row["hotline"],
                card_type="unknown",
            )
            # One bank, one identity: a typo in one row's hotline would otherwise send some
            # robbed holders to the wrong number.
            known = banks.setdefault(bank.bank_code, bank)
            if known != bank:
                raise BinTableError(
                    f"prefix {prefix}: {bank.bank_code} has different names, SMS signature "
                    "or hotline in another row"
                )
            by_prefix[prefix] = replace(bank, card_type=card_type)
        return cls(by_prefix=by_prefix, banks=banks)

    def lookup(self, digits: str) -> Issuer | None:
        """The issuer of the longest prefix of ``digits`` in the table."""
        for length in range(min(len(digits), 19), 0, -1):
            issuer = self.by_prefix.get(digits[:length])
            if issuer is not None:
                return issuer
        return None


@cache
def bin_table() -> BinTable:
    """The bundled table, read once per process."""
    source = resources.files("walletguard.wallet") / "data" / "bins.csv"
    return BinTable.from_csv(source.read_text(encoding="utf-8"))


def normalise_card_number(value: str) -> str:
    """``value`` without spaces and hyphens; ``card.format`` unless 12–19 ASCII digits remain."""
    if not isinstance(value, str):
        raise TypeError(f"a card number must be a str, not {type(value).__name__}")
    number = _SEPARATORS.sub("", value)
    # [0-9], not \d: \d also matches full-width and other scripts' digits, which no bank issues.
    if not _CARD_NUMBER.fullmatch(number):
        raise InvalidCardNumber("card.format")
    return number


def luhn_valid(number: str) -> bool:
    """Whether ``number``'s check digit is right (catches one mistyped or two swapped digits)."""
    return bool(_DIGITS.fullmatch(number)) and luhn.is_valid(number)


def lookup_issuer(number: str) -> Issuer | None:
    """The issuer of ``number`` (separators allowed), by longest prefix; any other ``62`` card is
    the UnionPay fallback. Works on the first digits alone, so a form can name the bank while the
    holder is still typing; ``None`` for anything else."""
    digits = _SEPARATORS.sub("", number)
    if not _DIGITS.fullmatch(digits):
        return None
    return bin_table().lookup(digits)


def validate_card_number(value: str) -> tuple[str, Issuer]:
    """The normalised number and its issuer, or :class:`InvalidCardNumber` with ``card.format``,
    ``card.luhn`` or ``card.unknown_issuer``, checked in that order."""
    number = normalise_card_number(value)
    if not luhn_valid(number):
        raise InvalidCardNumber("card.luhn")
    issuer = bin_table().lookup(number)
    if issuer is None:
        raise InvalidCardNumber("card.unknown_issuer")
    return number, issuer


def issuer_by_code(bank_code: str) -> Issuer | None:
    """The bank with this code (``"ICBC"``, any case), with ``card_type="unknown"``."""
    return bin_table().banks.get(bank_code.strip().upper())


def last4(number: str) -> str:
    """The last four digits of a card number (separators allowed), the only part that may leave
    the server."""
    digits = _SEPARATORS.sub("", number)
    if len(digits) < 4 or not _DIGITS.fullmatch(digits):
        raise InvalidCardNumber("card.format")
    return digits[-4:]


def mask_card(number_or_last4: str) -> str:
    """``"**** **** **** 8821"`` from a full number or its last four digits. Always four groups,
    whatever the real length, so the mask does not even reveal that."""
    return f"**** **** **** {last4(number_or_last4)}"
