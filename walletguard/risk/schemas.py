"""API shapes of the risk engine: holds for the holder, the review queue for operators."""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field, model_validator

from walletguard.kit.pagination import Pagination
from walletguard.risk.models import RiskDecision


class Reasons(BaseModel):
    zh_cn: list[str] = Field(serialization_alias="zh-CN")
    en: list[str]


class HoldOut(BaseModel):
    id: uuid.UUID
    kind: str
    action: str
    amount_fen: int | None
    payee: str | None
    card_id: uuid.UUID | None
    review: str | None
    created_at: datetime
    expires_at: datetime | None
    rules: list[str]
    reasons: Reasons

    @classmethod
    def of(cls, row: RiskDecision) -> HoldOut:
        return cls(
            id=row.id,
            kind=row.kind,
            action=row.action,
            amount_fen=row.amount_fen,
            payee=row.payee_label,
            card_id=row.card_id,
            review=row.review,
            created_at=row.created_at,
            expires_at=row.expires_at,
            rules=json.loads(row.rules),
            reasons=Reasons(zh_cn=json.loads(row.reasons_zh), en=json.loads(row.reasons_en)),
        )


class ReviewOut(HoldOut):
    holder_id: uuid.UUID
    outcome: str
    score: int
    place: str | None
    shadow_rules: list[str]
    signals: dict[str, Any]
    reviewed_by: str | None

    @classmethod
    def of(cls, row: RiskDecision) -> ReviewOut:
        base = HoldOut.of(row).model_dump()
        return cls(
            **base,
            holder_id=row.holder_id,
            outcome=row.outcome,
            score=row.score,
            place=row.place,
            shadow_rules=json.loads(row.shadow_rules),
            signals=json.loads(row.signals),
            reviewed_by=row.reviewed_by,
        )


class ReviewPage(BaseModel):
    items: list[ReviewOut]
    pagination: Pagination


class RulesReloaded(BaseModel):
    rules: int
    source: str


class TrustedPayeeIn(BaseModel):
    merchant: str | None = Field(default=None, min_length=1, max_length=64)
    to_phone: str | None = Field(default=None, min_length=5, max_length=32)

    @model_validator(mode="after")
    def exactly_one(self) -> TrustedPayeeIn:
        if (self.merchant is None) == (self.to_phone is None):
            raise ValueError("give exactly one of merchant and to_phone")
        return self
