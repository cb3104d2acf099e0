"""Mobile numbers: parsed with ``phonenumbers`` (region CN by default), stored as E.164."""

from __future__ import annotations

import phonenumbers
from phonenumbers import NumberParseException, PhoneNumberType

from walletguard.kit.errors import InvalidInput

_MOBILE_TYPES = {PhoneNumberType.MOBILE, PhoneNumberType.FIXED_LINE_OR_MOBILE}


def parse_mobile(value: str, region: str = "CN") -> str:
    """The E.164 form of a mobile number, or InvalidInput that says why."""
    try:
        number = phonenumbers.parse(value, region)
    except NumberParseException as exc:
        raise InvalidInput("identity.phone.unparseable", extensions={"field": "phone"}) from exc
    if not phonenumbers.is_valid_number(number):
        raise InvalidInput("identity.phone.invalid", extensions={"field": "phone"})
    if phonenumbers.number_type(number) not in _MOBILE_TYPES:
        raise InvalidInput("identity.phone.not_mobile", extensions={"field": "phone"})
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def national_digits(e164: str) -> str:
    """The national significant number (13812345678 for +8613812345678)."""
    return str(phonenumbers.parse(e164).national_number)


def mask_phone(e164: str) -> str:
    """+86 138****5678: enough for the holder to recognise, not enough to call."""
    number = phonenumbers.parse(e164)
    national = str(number.national_number)
    if len(national) >= 7:
        national = national[:3] + "*" * (len(national) - 7) + national[-4:]
    return f"+{number.country_code} {national}"


def mask_name(name: str) -> str:
    """张*伟 / L** Lei: first and last character kept for a Chinese name, initials otherwise."""
    name = name.strip()
    if len(name) <= 1:
        return "*"
    if len(name) == 2:
        return name[0] + "*"
    return name[0] + "*" * (len(name) - 2) + name[-1]
