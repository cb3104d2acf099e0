"""The login-password policy, in the spirit of NIST SP 800-63B 3.1.1.2.

No composition rules; instead a length range, a bundled list of common and breached passwords,
and the holder's own context — the birthday in any common form, the phone number or its tail,
ID-number fragments, the name in pinyin — plus runs and repeats. Each failing rule is returned,
so the refusal can say every reason at once. Violations never carry the candidate itself.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date
from functools import cache
from importlib import resources

from pypinyin import lazy_pinyin

MIN_LENGTH = 8
MAX_LENGTH = 128
# A straight run this long ("abcdef", "987654", "qwerty") is a sequence, not a secret.
RUN_LENGTH = 6
KEYBOARD_ROWS = ("1234567890", "qwertyuiop", "asdfghjkl", "zxcvbnm")


@dataclass(frozen=True)
class PersonalContext:
    """What an attacker who knows the holder would try first."""

    phone_e164: str
    name: str
    birthday: date
    id_number: str | None


@dataclass(frozen=True)
class Violation:
    code: str
    params: Mapping[str, object] = field(default_factory=dict)


@cache
def common_passwords() -> frozenset[str]:
    listing = resources.files("walletguard.identity") / "data" / "common_passwords.txt"
    lines = listing.read_text(encoding="utf-8").splitlines()
    return frozenset(
        line.strip().lower() for line in lines if line.strip() and not line.startswith("#")
    )


def birthday_forms(birthday: date) -> set[str]:
    """The birthday as people type it: 19850312, 850312, 0312, 12031985, 1985-3-12, …"""
    y, yy = f"{birthday.year:04d}", f"{birthday.year % 100:02d}"
    m, d = f"{birthday.month:02d}", f"{birthday.day:02d}"
    m1, d1 = str(birthday.month), str(birthday.day)
    forms = {y + m + d, yy + m + d, m + d + y, d + m + y, m + d + yy, d + m + yy, m + d, d + m}
    for sep in "-./_ ":
        forms |= {sep.join(p) for p in ((y, m, d), (y, m1, d1), (m, d, y), (d, m, y), (m1, d1, y))}
    return forms


def _name_pinyin(name: str) -> set[str]:
    syllables = [s.lower() for s in lazy_pinyin(name.strip()) if s.strip()]
    joined = "".join(syllables)
    forms = {joined, name.strip().lower()}
    if len(syllables) >= 2:
        # Given name first ("weizhang") and the given name alone when it is long enough.
        forms.add("".join(syllables[1:]) + syllables[0])
        forms.add("".join(syllables[1:]))
    return {f for f in forms if len(f) >= 4 or (f and not f.isascii())}


def _phone_fragments(phone_e164: str) -> set[str]:
    digits = re.sub(r"\D", "", phone_e164)
    national = digits[2:] if digits.startswith("86") else digits
    return {national, *(national[-n:] for n in (6, 7, 8) if len(national) > n)}


def _id_fragments(id_number: str | None) -> set[str]:
    if not id_number:
        return set()
    number = id_number.lower()
    return {number[i : i + 6] for i in range(len(number) - 5)}


def _has_run(text: str, length: int = RUN_LENGTH) -> bool:
    lowered = text.lower()
    for alphabet in ("0123456789", "abcdefghijklmnopqrstuvwxyz", *KEYBOARD_ROWS):
        for source in (alphabet, alphabet[::-1]):
            for start in range(len(source) - length + 1):
                if source[start : start + length] in lowered:
                    return True
    return False


def _is_repetitive(text: str) -> bool:
    if re.search(r"(.)\1{3,}", text):
        return True
    if len(set(text.lower())) <= 3:
        return True
    # The whole thing is one short unit repeated ("abcabcabc", "1212121212").
    return any(
        len(text) % size == 0 and text == text[:size] * (len(text) // size)
        for size in range(1, len(text) // 2 + 1)
    )


def _contains_any(candidate: str, fragments: Iterable[str]) -> bool:
    return any(fragment and fragment in candidate for fragment in fragments)


def check_login_password(password: str, context: PersonalContext) -> list[Violation]:
    violations: list[Violation] = []
    if len(password) < MIN_LENGTH:
        violations.append(Violation("password.too_short", {"min_length": MIN_LENGTH}))
    if len(password) > MAX_LENGTH:
        violations.append(Violation("password.too_long", {"max_length": MAX_LENGTH}))
    lowered = password.lower()
    squashed = re.sub(r"[\s\-_.]", "", lowered)
    stem = re.sub(r"[\d\W_]+$", "", lowered)
    common = common_passwords()
    if lowered in common or squashed in common or (len(stem) >= 4 and stem in common):
        violations.append(Violation("password.common"))
    if _contains_any(lowered, birthday_forms(context.birthday)):
        violations.append(Violation("password.birthday"))
    if _contains_any(squashed, _phone_fragments(context.phone_e164)):
        violations.append(Violation("password.phone"))
    if _contains_any(squashed, _id_fragments(context.id_number)):
        violations.append(Violation("password.id_number"))
    if _contains_any(squashed, _name_pinyin(context.name)):
        violations.append(Violation("password.name"))
    if _has_run(squashed):
        violations.append(Violation("password.sequence", {"length": RUN_LENGTH}))
    if password and _is_repetitive(password):
        violations.append(Violation("password.repeated"))
    return violations
