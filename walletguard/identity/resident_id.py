"""Resident identity card numbers (GB 11643-1999): format, check digit, birth date, region."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from stdnum import exceptions as stdnum_errors
from stdnum.cn import ric

# Province-level codes (first two digits); 83 is issued to residents from Taiwan.
_PROVINCES = frozenset(
    {11, 12, 13, 14, 15, 21, 22, 23, 31, 32, 33, 34, 35, 36, 37, 41, 42, 43, 44, 45, 46}
    | {50, 51, 52, 53, 54, 61, 62, 63, 64, 65, 71, 81, 82, 83}
)


class InvalidResidentId(Exception):
    """The number is not a valid resident ID; ``code`` is the catalogue key saying why."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


@dataclass(frozen=True)
class ResidentId:
    number: str  # 18 characters, a final "x" upper-cased
    birthday: date
    region: str


def parse_resident_id(value: str, *, today: date) -> ResidentId:
    number = ric.compact(value)
    if (
        len(number) != 18
        or not number[:17].isdigit()
        or not (number[17].isdigit() or number[17] == "X")
    ):
        raise InvalidResidentId("identity.id_number.format")
    if number[-1] != ric.calc_check_digit(number):
        raise InvalidResidentId("identity.id_number.checksum")
    try:
        birthday = ric.get_birth_date(number)
    except stdnum_errors.ValidationError as exc:
        raise InvalidResidentId("identity.id_number.birthday") from exc
    if birthday > today or birthday.year < 1900:
        raise InvalidResidentId("identity.id_number.birthday")
    if int(number[:2]) not in _PROVINCES:
        raise InvalidResidentId("identity.id_number.region")
    return ResidentId(number=number, birthday=birthday, region=number[:6])
