"""Limits per movement and per day, for the holder and for each card (SPEC C4).

Which movements count:

* the holder's limits count money leaving the holder's hands — payments, transfers and
  withdrawals, whether paid from the balance or from a card;
* a card's limits count debits of that card — top-ups, and payments and transfers paid with it.

"Per day" is since local midnight in China (UTC+8), over pending and posted movements (a pending
card debit may still go through, so it counts until it is voided).

A limit is a series of settings. Lowering takes effect at once; raising takes effect after a
delay (default 24 h, control ``limit_delay``), so whoever has just taken over an account cannot
lift the limits and spend in the same hour. A setting made while a raise is still waiting
replaces that raise.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone

from sqlalchemy.orm import Session

from walletguard.bootstrap import Container
from walletguard.kit.errors import Conflict
from walletguard.kit.money import format_yuan
from walletguard.wallet import repository
from walletguard.wallet.models import WalletLimit

# Asia/Shanghai is UTC+8 all year (no daylight saving since 1991); a fixed offset needs no
# time-zone database on the host.
CHINA_TIME = timezone(timedelta(hours=8), "Asia/Shanghai")

PER_TRANSACTION = "transaction"
DAILY = "daily"
PERIODS = (PER_TRANSACTION, DAILY)

HOLDER_COUNTED_KINDS = ("payment", "transfer", "withdraw")
CARD_COUNTED_KINDS = ("top_up", "payment", "transfer")


class LimitExceeded(Conflict):
    slug = "limit-exceeded"
    title_key = "wallet.limit.exceeded_title"

    def __init__(self, *, scope: str, period: str, limit_fen: int, remaining_fen: int) -> None:
        super().__init__(
            f"wallet.limit.exceeded.{scope}.{period}",
            extensions={
                "scope": scope,
                "period": period,
                "limit": format_yuan(limit_fen, grouping=False),
                "remaining": format_yuan(max(0, remaining_fen), grouping=False),
            },
            limit=format_yuan(limit_fen),
            remaining=format_yuan(max(0, remaining_fen)),
        )


def local_midnight(now: datetime) -> datetime:
    """The start of today in China, as an aware UTC datetime."""
    local = now.astimezone(CHINA_TIME)
    return local.replace(hour=0, minute=0, second=0, microsecond=0).astimezone(UTC)


@dataclass(frozen=True)
class LimitState:
    amount_fen: int
    # A raise that has not taken effect yet, and when it will.
    pending_amount_fen: int | None
    pending_effective_at: datetime | None


def resolve(settings: Sequence[WalletLimit], default_fen: int, now: datetime) -> LimitState:
    """The limit in force at ``now`` and the raise still waiting, from settings in id order.

    A setting is dropped when a newer one was made before it took effect (a lowering cancels a
    waiting raise; a second raise replaces the first).
    """
    live = [
        setting
        for setting in settings
        if not any(
            newer.id > setting.id and newer.created_at < setting.effective_at for newer in settings
        )
    ]
    in_force = [s for s in live if s.effective_at <= now]
    waiting = [s for s in live if s.effective_at > now]
    current = in_force[-1].amount_fen if in_force else default_fen
    pending = waiting[-1] if waiting else None
    return LimitState(
        amount_fen=current,
        pending_amount_fen=pending.amount_fen if pending else None,
        pending_effective_at=pending.effective_at if pending else None,
    )


class Limits:
    def __init__(self, db: Session, env: Container) -> None:
        self.db = db
        self.env = env
        self.clock = env.clock

    def _default(self, period: str) -> int:
        settings = self.env.settings
        return (
            settings.default_txn_limit_fen
            if period == PER_TRANSACTION
            else (settings.default_daily_limit_fen)
        )

    def state(self, holder_id: uuid.UUID, card_id: uuid.UUID | None, period: str) -> LimitState:
        settings = repository.limit_settings(self.db, holder_id, card_id, period)
        return resolve(settings, self._default(period), self.clock.now())

    def used_today(self, holder_id: uuid.UUID, card_id: uuid.UUID | None) -> int:
        since = local_midnight(self.clock.now())
        if card_id is None:
            return repository.spent_since(self.db, since, HOLDER_COUNTED_KINDS, holder_id=holder_id)
        return repository.spent_since(self.db, since, CARD_COUNTED_KINDS, card_id=card_id)

    def set(
        self, holder_id: uuid.UUID, card_id: uuid.UUID | None, period: str, amount_fen: int
    ) -> tuple[WalletLimit, bool]:
        """Record a new setting; returns it and whether it is a raise (then possibly delayed)."""
        if period not in PERIODS:
            raise ValueError(f"unknown limit period {period!r}")
        now = self.clock.now()
        current = self.state(holder_id, card_id, period).amount_fen
        raised = amount_fen > current
        delay = timedelta(0)
        if raised and self.env.settings.controls.limit_delay:
            delay = timedelta(hours=self.env.settings.limit_raise_delay_hours)
        setting = WalletLimit(
            holder_id=holder_id,
            card_id=card_id,
            period=period,
            amount_fen=amount_fen,
            created_at=now,
            effective_at=now + delay,
        )
        self.db.add(setting)
        self.db.flush()
        return setting, raised

    def check(
        self,
        holder_id: uuid.UUID,
        kind: str,
        amount_fen: int,
        *,
        debited_card: uuid.UUID | None,
        holder_facts: repository.MovementFacts | None = None,
    ) -> None:
        """LimitExceeded unless this movement fits every limit that counts it.

        Call with the holder's wallet state locked, so that two movements cannot both fit the
        same remaining daily allowance. ``holder_facts`` (read under that lock) saves the
        holder's own queries: what was spent today, and whether any limit was ever set.
        """
        scopes: list[tuple[str, uuid.UUID | None]] = []
        if kind in HOLDER_COUNTED_KINDS:
            scopes.append(("holder", None))
        if debited_card is not None and kind in CARD_COUNTED_KINDS:
            scopes.append(("card", debited_card))
        for scope, card_id in scopes:
            facts = holder_facts if card_id is None else None
            defaults = facts is not None and not facts.has_limit_settings
            per_txn = (
                self._default(PER_TRANSACTION)
                if defaults
                else self.state(holder_id, card_id, PER_TRANSACTION).amount_fen
            )
            if amount_fen > per_txn:
                raise LimitExceeded(
                    scope=scope, period=PER_TRANSACTION, limit_fen=per_txn, remaining_fen=per_txn
                )
            daily = (
                self._default(DAILY)
                if defaults
                else self.state(holder_id, card_id, DAILY).amount_fen
            )
            used = facts.spent_today_fen if facts else self.used_today(holder_id, card_id)
            if used + amount_fen > daily:
                raise LimitExceeded(
                    scope=scope, period=DAILY, limit_fen=daily, remaining_fen=daily - used
                )
