"""Money as an integer number of fen (1 yuan = 100 fen), parsed and printed without floats.

Every amount inside walletguard is an ``int`` of fen; :data:`Fen` names that in signatures. It is
a plain alias rather than a ``NewType`` so that ledger sums, database columns and pydantic fields
stay ordinary ints without casts at every boundary. Text becomes fen only through
:func:`parse_yuan` and fen becomes text only through :func:`format_yuan`.
"""

from __future__ import annotations

import re
from decimal import Context, Decimal, Inexact, InvalidOperation
from typing import Final, TypeAlias

Fen: TypeAlias = int

FEN_PER_YUAN: Final = 100
MAX_YUAN: Final = 10**12
MAX_FEN: Final = MAX_YUAN * FEN_PER_YUAN

# Enough digits for any amount that passes the range check, and Inexact trapped, so a conversion
# that would have to round raises instead of silently moving a fen.
_EXACT = Context(prec=40, traps=[Inexact, InvalidOperation])

# Commas only in true thousands groups: "1,00" or "10,000,0" is more likely a typo than money.
_AMOUNT = re.compile(
    r"(?P<sign>-)?(?P<whole>[0-9]{1,3}(?:,[0-9]{3})+|[0-9]+)(?:\.(?P<fraction>[0-9]+))?"
)
_CURRENCY_PREFIXES: Final = ("¥", "￥")
_CURRENCY_SUFFIX: Final = "元"


class InvalidAmount(ValueError):
    """An amount a person typed (or a caller passed) that is not a whole, positive number of fen.

    ``code`` is the catalogue key explaining why, for ``walletguard.kit.i18n.text``. A
    ``ValueError`` so that pydantic validators turn it into an ordinary validation error.
    """

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


def parse_yuan(value: str | int | Decimal, *, allow_zero: bool = False) -> Fen:
    """The number of fen in ``value``, an amount in yuan.

    Strings may carry thousands separators, a leading ``¥``/``￥`` and a trailing ``元``:
    ``"¥1,000.00"``, ``"1000元"``, ``"88130.5"``. Refused, with :class:`InvalidAmount`:
    anything else (``money.not_a_number``), a part of a fen (``money.too_many_decimals``),
    zero or less (``money.not_positive``; zero passes with ``allow_zero``) and more than
    10^12 yuan (``money.too_large``).

    A string may have at most two decimal places even when the rest are zeros: in ``"1.000"``
    the dot may well be a mistyped thousands separator. A ``Decimal`` is judged by its value,
    since arithmetic leaves trailing zeros (``Decimal("1.5") * Decimal("2.00")`` is ``3.000``).

    Floats raise ``TypeError``: by the time an amount is a float it may already be off by a fen.
    """
    if isinstance(value, bool) or not isinstance(value, str | int | Decimal):
        raise TypeError(
            f"an amount must be str, int or Decimal, not {type(value).__name__}; "
            "floats cannot carry money exactly"
        )
    if isinstance(value, str):
        yuan = _parse_text(value)
    elif isinstance(value, int):
        yuan = Decimal(value)
    else:
        if not value.is_finite():
            raise InvalidAmount("money.not_a_number")
        if _decimal_places(value) > 2:
            raise InvalidAmount("money.too_many_decimals")
        yuan = value
    if yuan < 0 or (yuan == 0 and not allow_zero):
        raise InvalidAmount("money.not_positive")
    if yuan > MAX_YUAN:
        raise InvalidAmount("money.too_large")
    return int(_EXACT.multiply(yuan, Decimal(FEN_PER_YUAN)))


def format_yuan(fen: Fen, *, grouping: bool = True) -> str:
    """``fen`` as yuan with two decimals: ``100000000`` → ``"1,000,000.00"``, ``-1234`` →
    ``"-12.34"``; without ``grouping``, ``"1000000.00"``. No currency sign: the caller's
    sentence says ``元`` or ``¥`` where its language wants it."""
    if isinstance(fen, bool) or not isinstance(fen, int):
        raise TypeError(f"an amount in fen must be an int, not {type(fen).__name__}")
    yuan, cents = divmod(abs(fen), FEN_PER_YUAN)
    whole = f"{yuan:,}" if grouping else str(yuan)
    sign = "-" if fen < 0 else ""
    return f"{sign}{whole}.{cents:02d}"


def format_yuan_plain(fen: Fen) -> str:
    """``fen`` as ``"88130.00"``: no grouping, for JSON and CSV that other programs read back."""
    return format_yuan(fen, grouping=False)


def _parse_text(value: str) -> Decimal:
    text = value.strip()
    for prefix in _CURRENCY_PREFIXES:
        if text.startswith(prefix):
            text = text.removeprefix(prefix).lstrip()
            break
    text = text.removesuffix(_CURRENCY_SUFFIX).rstrip()
    match = _AMOUNT.fullmatch(text)
    if match is None:
        raise InvalidAmount("money.not_a_number")
    fraction = match["fraction"] or ""
    if len(fraction) > 2:
        raise InvalidAmount("money.too_many_decimals")
    whole = match["whole"].replace(",", "")
    return Decimal(f"{match['sign'] or ''}{whole}.{fraction or '0'}")


def _decimal_places(value: Decimal) -> int:
    """How many decimal places ``value`` needs, ignoring trailing zeros (exact: no context, so no
    rounding, unlike ``Decimal.normalize``)."""
    _, digits, exponent = value.as_tuple()
    assert isinstance(exponent, int)  # finite, checked by the caller
    if exponent >= 0:
        return 0
    significant = len(digits)
    while significant and digits[significant - 1] == 0:
        significant -= 1
    if significant == 0:
        return 0  # zero, however many places it was written with
    return max(0, -exponent - (len(digits) - significant))
