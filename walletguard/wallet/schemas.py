"""API shapes for cards, movements, limits and the wallet.

Amounts travel as strings of yuan ("1000.00"), parsed by ``kit.money.parse_yuan`` into integer
fen: a JSON number is refused (a float may already be off by a fen), and so is anything with more
than two decimals, zero or less. Card numbers come in and never go out: responses carry last 4.
"""

from __future__ import annotations

import uuid
from datetime import date, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    WithJsonSchema,
    model_validator,
)
from pydantic_core import PydanticCustomError

from walletguard.kit.money import InvalidAmount, parse_yuan
from walletguard.kit.pagination import Pagination


def _amount(value: object) -> int:
    if not isinstance(value, str):
        raise PydanticCustomError(
            "money.not_a_string", 'an amount is a string of yuan such as "1000.00"'
        )
    try:
        return parse_yuan(value)
    except InvalidAmount as exc:
        # The catalogue code becomes the field error's reason in the problem document.
        raise PydanticCustomError(exc.code, "invalid amount") from None


Amount = Annotated[
    int,
    BeforeValidator(_amount),
    WithJsonSchema({"type": "string", "examples": ["1000.00"], "description": "yuan"}),
]
Pin = Annotated[str, StringConstraints(min_length=1, max_length=32)]
Code = Annotated[str, StringConstraints(strip_whitespace=True, pattern=r"^\d{6}$")]
MerchantName = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64)]
Kind = Literal["top_up", "withdraw", "payment", "transfer", "refund"]
Status = Literal["pending", "posted", "voided", "failed"]


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


# -- cards -----------------------------------------------------------------------------------


class CardBind(StrictModel):
    number: Annotated[str, StringConstraints(min_length=1, max_length=40)]
    reserved_phone: Annotated[str, StringConstraints(strip_whitespace=True, max_length=32)]


class CardVerify(StrictModel):
    code: Code


class CardOut(BaseModel):
    id: uuid.UUID
    last4: str
    masked_number: str
    bank_code: str
    bank_name: str
    card_type: str
    status: str
    created_at: datetime
    bound_at: datetime | None
    blocked_at: datetime | None


class CardBindingStarted(BaseModel):
    card_id: uuid.UUID
    status: Literal["pending_verification"]
    last4: str
    bank_code: str
    code_expires_at: datetime
    message: str


# -- movements -------------------------------------------------------------------------------


class TopUpIn(StrictModel):
    card_id: uuid.UUID
    amount: Amount
    payment_password: Pin


class WithdrawalIn(StrictModel):
    card_id: uuid.UUID
    amount: Amount
    payment_password: Pin


class PaymentIn(StrictModel):
    merchant: MerchantName
    amount: Amount
    payment_password: Pin
    card_id: uuid.UUID | None = None


class TransferIn(StrictModel):
    to_phone: Annotated[str, StringConstraints(strip_whitespace=True, min_length=3, max_length=32)]
    amount: Amount
    payment_password: Pin
    card_id: uuid.UUID | None = None


class MovementConfirm(StrictModel):
    dynamic_password: Code


class CardRef(BaseModel):
    id: uuid.UUID
    last4: str


class MovementOut(BaseModel):
    id: uuid.UUID
    kind: Kind
    status: Status
    status_reason: str | None
    direction: Literal["in", "out"]
    amount: str
    refunded: str
    source: Literal["balance", "card"]
    card: CardRef | None = Field(description="The viewer's own card only.")
    counterparty: str | None = Field(
        description="Merchant name, or the other holder's masked phone number."
    )
    risk_decision: str
    created_at: datetime
    posted_at: datetime | None
    voided_at: datetime | None
    expires_at: datetime | None
    reverses_id: uuid.UUID | None
    device_id: uuid.UUID | None = Field(description="Only for movements the viewer started.")
    ip: str | None = Field(description="Only for movements the viewer started.")


class MovementAccepted(BaseModel):
    movement_id: uuid.UUID
    status: Literal["awaiting_bank_confirmation"]
    expires_at: datetime
    card_last4: str
    message: str
    movement: MovementOut


class MovementPage(BaseModel):
    items: list[MovementOut]
    pagination: Pagination


class MovementQuery(BaseModel):
    date_from: date | None = None
    date_to: date | None = None
    card_id: uuid.UUID | None = None
    kind: Kind | None = None
    status: Status | None = None


# -- wallet and limits -----------------------------------------------------------------------


class WalletOut(BaseModel):
    balance: str
    pending: str
    available: str
    transactions_closed: bool
    closed_at: datetime | None
    reopens_at: datetime | None


class WalletClose(StrictModel):
    reason: Annotated[str, StringConstraints(strip_whitespace=True, max_length=64)] = "holder"


class LimitOut(BaseModel):
    amount: str
    pending_amount: str | None
    pending_effective_at: datetime | None


class LimitScopeOut(BaseModel):
    card_id: uuid.UUID | None
    card_last4: str | None
    per_transaction: LimitOut
    daily: LimitOut
    used_today: str
    remaining_today: str


class LimitsOut(BaseModel):
    holder: LimitScopeOut
    cards: list[LimitScopeOut]


class LimitsUpdate(StrictModel):
    card_id: uuid.UUID | None = None
    per_transaction: Amount | None = None
    daily: Amount | None = None

    @model_validator(mode="after")
    def _something_to_change(self) -> LimitsUpdate:
        if self.per_transaction is None and self.daily is None:
            raise PydanticCustomError(
                "wallet.limits.nothing_to_change", "give per_transaction, daily or both"
            )
        return self


def movement_request(model: BaseModel) -> dict[str, Any]:
    """The request as idempotency fingerprints it: validated values, secrets left out."""
    return model.model_dump(mode="json", exclude={"payment_password", "dynamic_password"})
