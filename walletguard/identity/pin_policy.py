"""The 6-digit payment password: what an onlooker or a thief with the holder's papers tries."""

from __future__ import annotations

import itertools
from collections.abc import Callable

from walletguard.identity.password_policy import PersonalContext, Violation, birthday_forms

PIN_LENGTH = 6
# Notorious PINs beyond the patterns checked below ("520" is "I love you", 1314 "for life").
COMMON_PINS = frozenset(
    {
        "000000", "111222", "112233", "121314", "123123", "123321", "131420", "147258",
        "147369", "159357", "159753", "168168", "258258", "258369", "321321", "369258",
        "520131", "520520", "521521", "666888", "778899", "789456", "888666", "999888",
    }
)  # fmt: skip


def _is_run(pin: str) -> bool:
    steps = {int(b) - int(a) for a, b in itertools.pairwise(pin)}
    return steps in ({1}, {-1})


def _is_pattern(pin: str) -> bool:
    if len(set(pin)) <= 2:
        return True
    # One unit repeated (121212, 123123) or pairs (112233).
    for size in (1, 2, 3):
        if pin == pin[:size] * (PIN_LENGTH // size):
            return True
    return pin[0::2] == pin[1::2]


def check_payment_pin(
    pin: str, context: PersonalContext, matches_login_password: Callable[[str], bool]
) -> list[Violation]:
    if not pin.isdigit() or not pin.isascii():
        return [Violation("pin.not_digits", {"length": PIN_LENGTH})]
    if len(pin) != PIN_LENGTH:
        return [Violation("pin.length", {"length": PIN_LENGTH})]
    violations: list[Violation] = []
    if _is_run(pin):
        violations.append(Violation("pin.sequence"))
    if _is_pattern(pin):
        violations.append(Violation("pin.repeated"))
    if pin in COMMON_PINS:
        violations.append(Violation("pin.common"))
    forms = {f for f in birthday_forms(context.birthday) if f.isdigit()}
    if pin in forms or pin[:4] in forms or pin[2:] in forms:
        violations.append(Violation("pin.birthday"))
    national = "".join(ch for ch in context.phone_e164 if ch.isdigit())
    if pin in national[-8:]:
        violations.append(Violation("pin.phone"))
    if context.id_number and pin in context.id_number:
        violations.append(Violation("pin.id_number"))
    if matches_login_password(pin):
        violations.append(Violation("pin.same_as_login_password"))
    return violations
