"""The wallet's rules (SPEC C4): cards, movements, idempotency, limits, the kill switch, history.

Every movement follows the same order, and the order is the point:

1. the Idempotency-Key is claimed under its unique constraint, first (the endpoint, one INSERT …
   ON CONFLICT DO NOTHING; on PostgreSQL in the statement that reads the session,
   ``IdempotentRequest.authenticated``): a retry gets the first response with nothing else
   checked or written, a concurrent one waits here for the first to finish; a refusal that is
   committed (a wrong payment password) gives the key back;
2. a read-only look at the kill switch (a closed wallet does not even test the payment password,
   so nobody can guess it while the holder has everything closed);
3. the payment password (``IdentityService.verify_payment_password``), its attempt counted
   before it is checked — a wrong one keeps its own failure count and nothing else;
4. the request's own checks (the card is the holder's and bound, the recipient can receive);
5. the holder's wallet-state row is locked (one holder's movements queue), the kill switch is
   checked again under the lock, expired holds are voided, the limits are checked (one read of
   the holder's movements today, ``repository.movement_facts``);
6. the risk engine is asked (``walletguard.risk``: it may challenge, hold, block or freeze);
7. the accounts are locked in id order, last (a merchant's account is shared by every payer),
   the ledger moves the money with one conditional UPDATE of both legs, the alert and its outbox
   rows are written, and the audit entries are chained as the transaction commits.

Between 5 and 6 a device still cooling off is held to its daily cap (``_guard_movement``);
binding a card, raising a limit and reopening transactions are sensitive actions
(``_guard_sensitive``: past cooling-off, the risk engine, a step-up).
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session

from walletguard.alerts import service as alerts
from walletguard.audit import service as audit
from walletguard.bank.gateway import (
    BankChallengeClosed,
    BankVerificationFailed,
    CardBlockedAtBank,
    CardFundsInsufficient,
    DynamicPasswordWrong,
)
from walletguard.bank.sandbox import CARD_NUMBER_CONTEXT
from walletguard.bank.service import bank_gateway
from walletguard.bootstrap import Container
from walletguard.identity import guards
from walletguard.identity.auth import SessionCredentials
from walletguard.identity.guards import SensitiveAction
from walletguard.identity.links import alert_recipient, not_me_url
from walletguard.identity.phone import mask_phone, parse_mobile
from walletguard.identity.service import (
    IdentityService,
    Payer,
    PayerRead,
    Principal,
    payer_params,
)
from walletguard.kit.db import is_postgres
from walletguard.kit.errors import (
    Conflict,
    InvalidInput,
    NotFound,
    TooManyAttempts,
    WalletguardError,
)
from walletguard.kit.i18n import text
from walletguard.kit.ratelimit import AttemptCounters
from walletguard.risk.service import RiskEvent, RiskService
from walletguard.wallet import repository
from walletguard.wallet.bins import InvalidCardNumber, validate_card_number
from walletguard.wallet.ledger import (
    FAILED,
    HOLDER,
    MERCHANT,
    PENDING,
    POSTED,
    VOIDED,
    Ledger,
    MovementNotPending,
    holder_code,
    merchant_code,
)
from walletguard.wallet.limits import HOLDER_COUNTED_KINDS, Limits, local_midnight
from walletguard.wallet.models import Card, IdempotencyRecord, LedgerTransaction, WalletState
from walletguard.wallet.repository import MovementFilter

TOP_UP = "top_up"
WITHDRAW = "withdraw"
PAYMENT = "payment"
TRANSFER = "transfer"
REFUND = "refund"
KINDS = (TOP_UP, WITHDRAW, PAYMENT, TRANSFER, REFUND)
STATUSES = (PENDING, POSTED, VOIDED, FAILED)
REFUNDABLE_KINDS = (PAYMENT, TRANSFER, TOP_UP)
# Movement events that raise an alert (walletguard.alerts); voided holds moved no money.
ALERTED_MOVEMENT_EVENTS = ("movement.posted", "movement.failed", "movement.refunded")

# Failed card bindings per holder per day: guessing a card's reserved phone or holder name
# through the bank costs a try each.
BINDING_FAILURES_PER_DAY = 5
# Transfers to numbers that cannot receive, per holder per hour: the wallet is not a directory.
UNKNOWN_RECIPIENTS_PER_HOUR = 10

_IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]{1,128}")


# -- errors ----------------------------------------------------------------------------------


class TransactionsClosed(WalletguardError):
    status = 423
    slug = "transactions-closed"
    title_key = "wallet.closed_title"

    def __init__(self, state: repository.KillSwitch) -> None:
        super().__init__(
            "wallet.closed",
            extensions={
                "closed_at": state.closed_at.isoformat() if state.closed_at else None,
                "reopens_at": state.reopens_at.isoformat() if state.reopens_at else None,
            },
        )


class CardNotUsable(Conflict):
    slug = "card-not-usable"
    title_key = "wallet.card.not_usable_title"

    def __init__(self, card: Card) -> None:
        super().__init__(
            f"wallet.card.not_usable.{card.status}", extensions={"card_status": card.status}
        )


class CardAlreadyBound(Conflict):
    slug = "card-already-bound"
    title_key = "wallet.card.already_bound_title"

    def __init__(self) -> None:
        super().__init__("wallet.card.already_bound")


class NoReceivingWallet(WalletguardError):
    """The same refusal for a number without an account and any other reason it cannot
    receive: the transfer form is not a way to learn who has a wallet. Kept (``keep_writes``)
    so the count of such refusals survives."""

    status = 422
    slug = "no-receiving-wallet"
    title_key = "wallet.transfer.no_receiver_title"
    keep_writes = True

    def __init__(self) -> None:
        super().__init__("wallet.transfer.no_receiver", extensions={"field": "to_phone"})


class TransferToSelf(InvalidInput):
    slug = "transfer-to-self"

    def __init__(self) -> None:
        super().__init__("wallet.transfer.to_self", extensions={"field": "to_phone"})


class IdempotencyKeyRequired(InvalidInput):
    slug = "idempotency-key-required"

    def __init__(self) -> None:
        super().__init__("wallet.idempotency.required")


class IdempotencyKeyReused(Conflict):
    slug = "idempotency-key-reused"
    title_key = "wallet.idempotency.reused_title"

    def __init__(self) -> None:
        super().__init__("wallet.idempotency.reused")


class IdempotencyRequestInProgress(Conflict):
    slug = "idempotency-request-in-progress"
    title_key = "wallet.idempotency.in_progress_title"

    def __init__(self) -> None:
        super().__init__("wallet.idempotency.in_progress")


class NotRefundable(Conflict):
    slug = "not-refundable"
    title_key = "wallet.refund.not_refundable_title"

    def __init__(self, reason: str) -> None:
        super().__init__(f"wallet.refund.not_refundable.{reason}")


class CardDebitFailed(WalletguardError):
    """The bank refused a debit the holder confirmed; the movement is recorded as failed
    (``keep_writes``: that record, and the used code, must survive the refusal)."""

    status = 409
    slug = "card-debit-failed"
    title_key = "wallet.card_debit_failed_title"
    keep_writes = True

    def __init__(self, movement: LedgerTransaction, cause: WalletguardError) -> None:
        super().__init__(
            cause.detail_key,
            extensions={
                "movement_id": str(movement.id),
                "movement_status": movement.status,
                "reason": cause.slug,
            },
        )


# -- idempotency -----------------------------------------------------------------------------


@dataclass(frozen=True)
class StoredResponse:
    """The first response to an idempotent request, returned again to every retry."""

    status: int
    body: dict[str, Any]


def request_fingerprint(operation: str, request: Mapping[str, Any]) -> str:
    """SHA-256 of the operation and its canonical request (sorted keys, no whitespace).

    Callers leave secrets out (payment and dynamic passwords): a SHA-256 of a 6-digit PIN next
    to the rest of the request would give the PIN away to anyone who reads the table.
    """
    canonical = json.dumps(
        {"operation": operation, "request": request},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        default=str,
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


class IdempotentRequest:
    """One money request under a client's Idempotency-Key (scoped to the holder).

    ``claim`` inserts the key under its unique constraint before the request does anything
    else, or answers a retry from the stored first response (409 for the same key with a
    different request), so of two concurrent requests with one key exactly one executes;
    ``release`` gives the key back when a refusal is committed; ``complete`` stores the
    response in the same transaction as the movement, so a response is stored if and only if
    the movement committed. ``replay`` only looks.
    """

    def __init__(
        self,
        db: Session,
        env: Container,
        holder_id: uuid.UUID,
        key: str | None,
        operation: str,
        request: Mapping[str, Any],
        *,
        fingerprint: str | None = None,
    ) -> None:
        self.db = db
        self.env = env
        self.holder_id = holder_id
        self.key = self.checked_key(key)
        self.fingerprint = fingerprint or request_fingerprint(operation, request)
        self.record_id: uuid.UUID | None = None
        # The key was tried already (``authenticated``) and another request had it.
        self._taken = False

    @staticmethod
    def well_formed(key: str | None) -> str | None:
        """The client's key, trimmed, if it is 1-128 printable ASCII; else None."""
        if key is None:
            return None
        key = key.strip()
        return key if _IDEMPOTENCY_KEY.fullmatch(key) else None

    @classmethod
    def checked_key(cls, key: str | None) -> str:
        """The client's key, trimmed; refused when missing or not 1-128 printable ASCII."""
        if key is None or not key.strip():
            raise IdempotencyKeyRequired()
        checked = cls.well_formed(key)
        if checked is None:
            raise InvalidInput(
                "wallet.idempotency.malformed", extensions={"field": "Idempotency-Key"}
            )
        return checked

    @classmethod
    def authenticated(
        cls,
        db: Session,
        env: Container,
        credentials: SessionCredentials,
        key: str | None,
        operation: str,
        request: Mapping[str, Any],
    ) -> tuple[Principal, IdempotentRequest]:
        """A money request's first step: the holder authenticated (``SessionCredentials.holder``)
        and the request under its key. On PostgreSQL, when the key is well-formed, the key is
        claimed in the statement that reads the session (``repository.authenticate_and_claim``:
        one round trip instead of two), and ``claim`` then only answers what that found. A
        refused session is refused before the key is looked at, as when they are read apart:
        a malformed key goes that way, so a bad token is a 401 before a bad key is a 422."""
        checked = cls.well_formed(key)
        if checked is None or not is_postgres(db):
            principal = credentials.holder(db, env)
            return principal, cls(db, env, principal.holder_id, key, operation, request)
        db.flush()  # a Core read (see IdentityService.authenticate)
        record = IdempotencyRecord(
            id=uuid.uuid4(),
            key=checked,
            request_hash=request_fingerprint(operation, request),
            created_at=env.clock.now(),
        )
        found = repository.authenticate_and_claim(db, credentials.token_hash(), record)
        principal = credentials.holder_of(db, env, found.session)
        call = cls(
            db, env, principal.holder_id, key, operation, request, fingerprint=record.request_hash
        )
        call.record_id = record.id if found.claimed else None
        call._taken = not found.claimed
        return principal, call

    def _stored(self, record: IdempotencyRecord) -> StoredResponse:
        if record.request_hash != self.fingerprint:
            raise IdempotencyKeyReused()
        if record.response_status is None or record.response_body is None:
            raise IdempotencyRequestInProgress()
        body: dict[str, Any] = json.loads(record.response_body)
        return StoredResponse(record.response_status, body)

    def replay(self) -> StoredResponse | None:
        record = repository.idempotency_record(self.db, self.holder_id, self.key)
        return None if record is None else self._stored(record)

    def claim(self) -> StoredResponse | None:
        """Take the key for this request, or the first response if another request had it.

        Called by the endpoint before the request does anything else (one INSERT … ON
        CONFLICT DO NOTHING, no savepoint); a second call in the same request is a no-op."""
        if self.record_id is not None:
            return None
        if not self._taken:
            record = IdempotencyRecord(
                id=uuid.uuid4(),
                holder_id=self.holder_id,
                key=self.key,
                request_hash=self.fingerprint,
                created_at=self.env.clock.now(),
            )
            if repository.claim_idempotency_key(self.db, record):
                self.record_id = record.id
                return None
        # Another request with this key came first (PostgreSQL made us wait for it to commit).
        existing = repository.idempotency_record(self.db, self.holder_id, self.key)
        if existing is None:
            raise IdempotencyRequestInProgress()
        return self._stored(existing)

    def complete(self, status: int, body: Mapping[str, Any]) -> None:
        if self.record_id is None:
            raise RuntimeError("complete() without a successful claim()")
        repository.store_idempotent_response(
            self.db,
            self.record_id,
            status,
            json.dumps(body, ensure_ascii=False, separators=(",", ":"), default=str),
        )

    def release(self) -> None:
        """Give the key back: the request was refused but its refusal is being committed."""
        if self.record_id is not None:
            repository.delete_idempotency_record(self.db, self.record_id)
            self.record_id = None


# -- read models -----------------------------------------------------------------------------


@dataclass(frozen=True)
class WalletSummary:
    balance_fen: int
    pending_fen: int
    transactions_closed: bool
    closed_at: datetime | None
    reopens_at: datetime | None

    @property
    def available_fen(self) -> int:
        return self.balance_fen - self.pending_fen


def is_closed(state: repository.KillSwitch | None, now: datetime) -> bool:
    if state is None or state.closed_at is None:
        return False
    return state.reopens_at is None or state.reopens_at > now


def direction_for(txn: LedgerTransaction, viewer: uuid.UUID) -> str:
    """``in`` or ``out`` of the viewer's wallet or cards."""
    if txn.kind == TOP_UP:
        return "in"
    if txn.kind == REFUND:
        return "in" if viewer == txn.holder_id else "out"
    if viewer == txn.holder_id:
        return "out"
    return "in"


# -- the service -----------------------------------------------------------------------------


class WalletService:
    def __init__(self, db: Session, env: Container) -> None:
        self.db = db
        self.env = env
        self.clock = env.clock
        self.cipher = env.cipher
        self.ledger = Ledger(db, env.clock)
        self.limits = Limits(db, env)
        self.bank = bank_gateway(db, env)
        self.counters = AttemptCounters(db, env.clock)
        # Holders whose wallet state this transaction has locked (and found open).
        self._locked_wallets: set[uuid.UUID] = set()
        # What the wallet-state lock read for the movement about to be judged (see
        # _lock_open_wallet), taken by _judge_movement.
        self._facts_at_lock: dict[uuid.UUID, repository.MovementFacts] = {}
        # Whom the alert of the movement being made goes to, as its payment password read it
        # (see _authorise), taken by _alert_movement.
        self._payers: dict[uuid.UUID, Payer] = {}

    # -- device trust ----------------------------------------------------------------------

    def _guard_sensitive(self, principal: Principal, action: SensitiveAction) -> None:
        """Binding a card, raising a limit and reopening transactions are sensitive actions:
        the device must be past its cooling-off, then ``require_step_up`` asks the risk engine
        and spends a fresh step-up of this session for ``action``."""
        guards.require_past_cooling_off(self.db, self.env, principal, action)
        guards.require_step_up(self.db, self.env, principal, action)

    def _guard_movement(
        self, principal: Principal, payer: Payer, kind: str, amount_fen: int
    ) -> None:
        """A device cooling off moves at most the cap out of the wallet a day (payments,
        transfers, withdrawals since local midnight, from this device); nothing leaves during
        the post-recovery payment hold, whichever device asks (control ``cooling_off``)."""
        if kind not in HOLDER_COUNTED_KINDS:
            return
        cap = guards.daily_cap_of(self.env, payer)
        if cap is None:
            return
        spent = repository.spent_since(
            self.db,
            local_midnight(self.clock.now()),
            HOLDER_COUNTED_KINDS,
            # The device is the holder's: their day's movements are one range of an index.
            holder_id=principal.holder_id,
            device_id=principal.device_id,
        )
        if spent + amount_fen > cap:
            raise guards.CoolingOffCapReached(cap, spent)

    def _risk_decision(
        self,
        principal: Principal,
        kind: str,
        amount_fen: int,
        card: Card | None,
        payee: str | None,
        *,
        payee_label: str | None = None,
        source: str = "balance",
        available_fen: int | None = None,
    ) -> str:
        """Ask the risk engine "may this movement happen?" before it is written (control
        ``risk_engine``). A refusal raises its problem (``risk-challenge``, ``risk-hold``,
        ``risk-blocked``, ``account-frozen`` — the last after closing every transaction
        function here); the decision is stored on the movement."""
        risk = RiskService(self.db, self.env)
        if not risk.enabled:
            return "allow"
        if source == "card" and card is not None:
            balance = self.bank.balance_of(self._card_number(card))
        else:
            balance = available_fen or 0
        event = RiskEvent(
            kind="movement",
            holder_id=principal.holder_id,
            action=kind,
            device_id=principal.device_id,
            session_id=principal.session_id,
            ip=principal.ip,
            amount_fen=amount_fen,
            payee=payee,
            payee_label=payee_label if payee_label is not None else payee,
            card_id=card.id if card else None,
            card_last4=card.last4 if card else None,
            source_balance_fen=balance,
        )
        decision = risk.decide(event)
        risk.enforce(
            decision,
            principal,
            freeze_payments=lambda: self.close_all_transactions(
                principal.holder_id,
                reason="risk_engine",
                device_id=principal.device_id,
                ip=principal.ip,
            ),
        )
        return "allow" if decision.outcome == "allow" else "stepped_up"

    # -- helpers -------------------------------------------------------------------------

    def _audit(
        self,
        event: str,
        txn: LedgerTransaction,
        *,
        card: Card | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        data: dict[str, Any] = {
            "movement_id": str(txn.id),
            "kind": txn.kind,
            "amount_fen": txn.amount_fen,
            "status": txn.status,
            "source": txn.source,
        }
        if card is not None:
            data["card_id"] = str(card.id)
            data["card_last4"] = card.last4
        if txn.kind == PAYMENT and txn.payee:
            # A merchant's name is not personal data; a transfer's recipient is named by id.
            data["payee"] = txn.payee
        if txn.counterparty_holder_id is not None:
            data["to_holder_id"] = str(txn.counterparty_holder_id)
        if txn.status_reason:
            data["reason"] = txn.status_reason
        if txn.reverses_id is not None:
            data["reverses_id"] = str(txn.reverses_id)
        data.update(extra or {})
        audit.record(
            self.db,
            self.clock,
            event,
            holder_id=txn.holder_id,
            device_id=txn.device_id,
            ip=txn.ip,
            data=data,
        )
        if event in ALERTED_MOVEMENT_EVENTS:
            self._alert_movement(event, txn, card)

    def _alert_movement(self, event: str, txn: LedgerTransaction, card: Card | None) -> None:
        """Every posted, failed or refunded movement is alerted (SPEC C8), in this transaction:
        to whoever started it (with "this was not me" naming the device it came from) and, for
        a transfer, to the holder whose balance it credits or, refunded, debits."""
        refunded_kind = None
        if txn.kind == REFUND and txn.reverses_id is not None:
            original = self.db.get(LedgerTransaction, txn.reverses_id)
            refunded_kind = original.kind if original is not None else None
        facts = alerts.MovementFacts(
            movement_id=txn.id,
            kind=txn.kind,
            amount_fen=txn.amount_fen,
            source=txn.source,
            card_last4=card.last4 if card is not None else None,
            payee=txn.payee,
            payer=txn.payer_label,
            device_id=txn.device_id,
            refunded_kind=refunded_kind,
        )
        link = None
        if txn.device_id is not None:
            link = not_me_url(
                self.env, holder_id=txn.holder_id, device_id=txn.device_id, event=event
            )
        payer = self._payers.pop(txn.holder_id, None)
        if payer is not None:
            recipient = payer.recipient
        else:
            recipient = alert_recipient(self.db, self.env, txn.holder_id)
        alerts.movement_alert(self.db, self.env, recipient, event, facts, not_me_url=link)
        counterparty = txn.counterparty_holder_id
        if counterparty is None:
            return
        if event == "movement.posted" and txn.kind == TRANSFER:
            other = alert_recipient(self.db, self.env, counterparty)
            alerts.movement_alert(self.db, self.env, other, "movement.received", facts)
        elif event == "movement.refunded" and refunded_kind == TRANSFER:
            other = alert_recipient(self.db, self.env, counterparty)
            alerts.movement_alert(self.db, self.env, other, "movement.refund_debited", facts)

    def _card_number(self, card: Card) -> str:
        return self.cipher.decrypt(card.number_enc, context="cards.number")

    def _card(self, holder_id: uuid.UUID, card_id: uuid.UUID) -> Card:
        card = repository.card_of_holder(self.db, holder_id, card_id)
        if card is None or card.status == "unbound":
            raise NotFound("wallet.card.not_found")
        return card

    def _bound_card(self, holder_id: uuid.UUID, card_id: uuid.UUID) -> Card:
        card = self._card(holder_id, card_id)
        if card.status != "bound":
            raise CardNotUsable(card)
        return card

    def _lock_open_wallet(
        self, holder_id: uuid.UUID, *, payer_of: Principal | None = None
    ) -> PayerRead | None:
        """Lock the holder's wallet state (created if it does not exist yet) to the end of the
        transaction, and refuse if its transaction functions are closed. The movement is then
        judged (``_judge_movement``) on facts read under this lock. On SQLite the same
        statement reads them (one writer at a time: nothing commits between its start and the
        lock); on PostgreSQL a statement of their own reads them after it, since a statement
        that waited for the lock reads with the snapshot taken before the wait. With
        ``payer_of`` on PostgreSQL the lock's statement also reads what that principal's
        payment password reads (its attempt counter held: ``identity.PAYER_HELD``) and returns
        it; None when it did not (SQLite, or a wallet state created here)."""
        now = self.clock.now()
        payer: PayerRead | None = None
        state: repository.KillSwitch
        self._facts_at_lock.pop(holder_id, None)
        if is_postgres(self.db):
            locked = None
            if payer_of is not None:
                locked = repository.lock_wallet_with_payer(
                    self.db, holder_id, payer_params(payer_of, now)
                )
            if locked is None:
                state = repository.lock_wallet_state(self.db, holder_id, now)
            else:
                state = locked.kill_switch
                payer = PayerRead(locked.payer, now)
        else:
            facts_args = self._facts_args(holder_id, now)
            with_facts = repository.lock_wallet_with_facts(self.db, holder_id, **facts_args)
            if with_facts is None:
                state = repository.lock_wallet_state(self.db, holder_id, now)
            else:
                state = with_facts.kill_switch
                self._facts_at_lock[holder_id] = with_facts.facts
        if is_closed(state, now):
            raise TransactionsClosed(state)
        self._locked_wallets.add(holder_id)
        return payer

    @staticmethod
    def _facts_args(holder_id: uuid.UUID, now: datetime) -> dict[str, Any]:
        return {
            "since": local_midnight(now),
            "now": now,
            "counted_kinds": HOLDER_COUNTED_KINDS,
            "holder_account_code": holder_code(holder_id),
        }

    def _judge_movement(
        self, principal: Principal, kind: str, amount_fen: int, debited_card: Card | None
    ) -> repository.MovementFacts:
        """Step 5 of a new movement: under the wallet-state lock ``_authorise`` took (taken
        here if it did not), void expired holds and check the limits. Returns what was read
        under the lock (the holder's available balance among it)."""
        holder_id = principal.holder_id
        if holder_id not in self._locked_wallets:
            self._lock_open_wallet(holder_id)
        now = self.clock.now()

        def read() -> repository.MovementFacts:
            return repository.movement_facts(self.db, holder_id, **self._facts_args(holder_id, now))

        # Read with the lock when the lock found the wallet state (once: a second movement of
        # the same request reads afresh what the first changed).
        at_lock = self._facts_at_lock.pop(holder_id, None)
        facts = at_lock if at_lock is not None else read()
        if facts.expired_pending:
            self.void_expired_holds(holder_id)
            facts = read()
        self.limits.check(
            holder_id,
            kind,
            amount_fen,
            debited_card=debited_card.id if debited_card else None,
            holder_facts=facts,
        )
        return facts

    def _lock_for_movement(self, holder_id: uuid.UUID) -> WalletState:
        state = repository.lock_wallet_state(self.db, holder_id, self.clock.now())
        if is_closed(state, self.clock.now()):
            raise TransactionsClosed(state)
        self.void_expired_holds(holder_id)
        return state

    def _authorise(self, principal: Principal, payment_password: str) -> Payer:
        """Steps 1-2 of a new movement: lock the wallet state and refuse a closed wallet before
        the payment password is looked at (a closed wallet is no oracle for guessing it), then
        verify the payment password. The lock is the one the movement is then judged and
        posted under: one read of the kill switch, and nothing can close the wallet between
        this check and the posting. Returns what the payment password read of the payer (the
        movement's cooling-off cap is computed from it, ``_guard_movement``)."""
        # On PostgreSQL the lock's statement also reads what the payment password needs (one
        # round trip): the closed wallet is still refused before the PIN is looked at.
        read = self._lock_open_wallet(principal.holder_id, payer_of=principal)
        identity = IdentityService(self.db, self.env)
        payer = identity.verify_payment_password(principal, payment_password, read=read)
        self._payers[principal.holder_id] = payer
        return payer

    def _new_movement(
        self,
        principal: Principal,
        *,
        kind: str,
        amount_fen: int,
        source: str,
        from_account: uuid.UUID,
        to_account: uuid.UUID,
        card: Card | None,
        payee: str | None,
        risk_decision: str,
        counterparty: uuid.UUID | None = None,
        payer_label: str | None = None,
    ) -> LedgerTransaction:
        return LedgerTransaction(
            id=uuid.uuid4(),
            kind=kind,
            status=PENDING,
            holder_id=principal.holder_id,
            counterparty_holder_id=counterparty,
            device_id=principal.device_id,
            ip=principal.ip,
            amount_fen=amount_fen,
            refunded_fen=0,
            source=source,
            card_id=card.id if card else None,
            payee=payee,
            payer_label=payer_label,
            risk_decision=risk_decision,
            from_account_id=from_account,
            to_account_id=to_account,
            created_at=self.clock.now(),
        )

    def _start_card_debit(self, txn: LedgerTransaction, card: Card, bank_payee: str) -> None:
        """Ask the bank to send the dynamic password; the movement waits, pending, until the
        holder types it or the code expires."""
        challenge = self.bank.start_debit(
            number=self._card_number(card), amount_fen=txn.amount_fen, payee=bank_payee
        )
        txn.bank_challenge_id = challenge.challenge_id
        txn.expires_at = challenge.expires_at
        self.ledger.record_pending(txn)
        self._audit("movement.created", txn, card=card)

    def _post_new(self, txn: LedgerTransaction, card: Card | None, *, locked: bool = False) -> None:
        self.ledger.post_new(txn, locked=locked)
        self._audit("movement.created", txn, card=card)
        self._audit("movement.posted", txn, card=card)

    def _end(self, txn: LedgerTransaction, status: str, reason: str) -> bool:
        ended = self.ledger.end_pending(txn, status, reason)
        if ended:
            if txn.bank_challenge_id is not None:
                self.bank.cancel_challenge(txn.bank_challenge_id)
            card = self.db.get(Card, txn.card_id) if txn.card_id else None
            event = "movement.voided" if status == VOIDED else "movement.failed"
            self._audit(event, txn, card=card)
        return ended

    # -- cards ---------------------------------------------------------------------------

    def start_binding(
        self, principal: Principal, *, number: str, reserved_phone: str
    ) -> tuple[Card, datetime]:
        """Check the card and ask its bank to send a code to the reserved phone; the card is
        ``pending`` until the code comes back. Returns the card and when the code expires."""
        try:
            normalised, issuer = validate_card_number(number)
        except InvalidCardNumber as exc:
            raise InvalidInput(exc.code, extensions={"field": "number"}) from exc
        try:
            reserved = parse_mobile(reserved_phone)
        except InvalidInput as exc:
            exc.extensions["field"] = "reserved_phone"
            raise
        holder_id = principal.holder_id
        index = self.cipher.blind_index(normalised, context=CARD_NUMBER_CONTEXT)
        active = repository.active_cards_by_number(self.db, index)
        if any(c.holder_id == holder_id and c.status == "bound" for c in active):
            raise CardAlreadyBound()
        # What the holder typed is checked; now the device, the risk engine and the step-up.
        self._guard_sensitive(principal, SensitiveAction.BIND_CARD)
        key = f"card-binding:{holder_id}"
        tries = self.counters.reserve(
            key,
            lambda n: timedelta(days=1) if n >= BINDING_FAILURES_PER_DAY else None,
            window=timedelta(days=1),
        )
        if not tries.allowed:
            raise TooManyAttempts(
                "wallet.card.too_many_bindings", retry_after_s=tries.retry_after_s
            )
        if any(c.holder_id != holder_id for c in active):
            # Bound to another wallet account: refused like any detail the bank does not
            # confirm, so binding attempts do not reveal where a card is in use.
            raise BankVerificationFailed("bank.verification_failed")
        name = IdentityService(self.db, self.env).profile(holder_id).name
        challenge = self.bank.start_binding(
            number=normalised, holder_name=name, reserved_phone_e164=reserved
        )
        # Only failures count towards the daily allowance.
        self.counters.refund(key)
        now = self.clock.now()
        card = next((c for c in active if c.holder_id == holder_id), None)
        if card is None:
            card = Card(
                id=uuid.uuid4(),
                holder_id=holder_id,
                number_enc=self.cipher.encrypt(normalised, context="cards.number"),
                number_index=index,
                last4=challenge.last4,
                bank_code=issuer.bank_code,
                card_type=issuer.card_type,
                status="pending",
                reserved_phone_index=self.cipher.blind_index(reserved, context="phone"),
                created_at=now,
            )
            self.db.add(card)
        elif card.binding_challenge_id is not None:
            self.bank.cancel_challenge(card.binding_challenge_id)
        card.binding_challenge_id = challenge.challenge_id
        card.reserved_phone_index = self.cipher.blind_index(reserved, context="phone")
        self.db.flush()
        audit.record(
            self.db,
            self.clock,
            "card.binding_started",
            holder_id=holder_id,
            device_id=principal.device_id,
            ip=principal.ip,
            data={"card_id": str(card.id), "card_last4": card.last4, "bank_code": card.bank_code},
        )
        return card, challenge.expires_at

    def confirm_binding(self, principal: Principal, card_id: uuid.UUID, code: str) -> Card:
        card = self._card(principal.holder_id, card_id)
        if card.status != "pending" or card.binding_challenge_id is None:
            raise CardNotUsable(card)
        self.bank.confirm_binding(card.binding_challenge_id, code)
        card.status = "bound"
        card.bound_at = self.clock.now()
        card.binding_challenge_id = None
        self.db.flush()
        audit.record(
            self.db,
            self.clock,
            "card.bound",
            holder_id=principal.holder_id,
            device_id=principal.device_id,
            ip=principal.ip,
            data={"card_id": str(card.id), "card_last4": card.last4, "bank_code": card.bank_code},
        )
        return card

    def unbind_card(self, principal: Principal, card_id: uuid.UUID) -> None:
        """Instant, whatever state the card is in; its pending debits are voided."""
        card = self._card(principal.holder_id, card_id)
        repository.lock_wallet_state(self.db, principal.holder_id, self.clock.now())
        if card.binding_challenge_id is not None:
            self.bank.cancel_challenge(card.binding_challenge_id)
        card.status = "unbound"
        card.unbound_at = self.clock.now()
        card.binding_challenge_id = None
        for txn in repository.pending_movements(self.db, principal.holder_id, card_id=card.id):
            self._end(txn, VOIDED, "card_unbound")
        self.db.flush()
        audit.record(
            self.db,
            self.clock,
            "card.unbound",
            holder_id=principal.holder_id,
            device_id=principal.device_id,
            ip=principal.ip,
            data={"card_id": str(card.id), "card_last4": card.last4},
        )

    def cards(self, holder_id: uuid.UUID) -> list[Card]:
        return repository.cards_of_holder(self.db, holder_id, include_unbound=False)

    def card(self, holder_id: uuid.UUID, card_id: uuid.UUID) -> Card:
        return self._card(holder_id, card_id)

    def block_all_cards(self, holder_id: uuid.UUID, *, reason: str) -> int:
        """Block every card of the holder here and at its bank (stolen phone, "this was not
        me", the incident desk). Pending card debits are voided. Returns how many were blocked.
        Like ``close_all_transactions``, call it before writing your own audit entries."""
        repository.lock_wallet_state(self.db, holder_id, self.clock.now())
        now = self.clock.now()
        blocked = 0
        for card in repository.cards_of_holder(self.db, holder_id, include_unbound=False):
            if card.status == "blocked":
                continue
            if card.binding_challenge_id is not None:
                self.bank.cancel_challenge(card.binding_challenge_id)
                card.binding_challenge_id = None
            self.bank.block_card(number=self._card_number(card))
            card.status = "blocked"
            card.blocked_at = now
            blocked += 1
            for txn in repository.pending_movements(self.db, holder_id, card_id=card.id):
                self._end(txn, VOIDED, "card_blocked")
            audit.record(
                self.db,
                self.clock,
                "card.blocked",
                holder_id=holder_id,
                data={"card_id": str(card.id), "card_last4": card.last4, "reason": reason},
            )
        self.db.flush()
        return blocked

    # -- wallet state and the kill switch --------------------------------------------------

    def summary(self, holder_id: uuid.UUID) -> WalletSummary:
        self.void_expired_holds(holder_id)
        account = self.ledger.find_holder_account(holder_id)
        state = repository.wallet_state(self.db, holder_id)
        now = self.clock.now()
        closed = is_closed(state, now)
        return WalletSummary(
            balance_fen=account.balance_fen if account else 0,
            pending_fen=account.pending_fen if account else 0,
            transactions_closed=closed,
            closed_at=state.closed_at if state and closed else None,
            reopens_at=state.reopens_at if state and closed else None,
        )

    def close_all_transactions(
        self,
        holder_id: uuid.UUID,
        *,
        reason: str,
        device_id: uuid.UUID | None,
        ip: str | None,
    ) -> None:
        """Refuse every movement from now on, void the pending ones, and cancel a requested
        reopening. Idempotent: closing a closed wallet changes nothing.

        It locks the holder's wallet state, which a running movement holds until it commits:
        callers in a larger transaction (the incident desk, "this was not me") call it before
        they write their own audit entries, or a movement waiting for the audit log and this
        waiting for the movement would deadlock on PostgreSQL."""
        state = repository.lock_wallet_state(self.db, holder_id, self.clock.now())
        now = self.clock.now()
        if is_closed(state, now):
            if state.reopens_at is not None:
                state.reopens_at = None
                audit.record(
                    self.db,
                    self.clock,
                    "wallet.reopen_cancelled",
                    holder_id=holder_id,
                    device_id=device_id,
                    ip=ip,
                    data={"reason": reason},
                )
                self._alert_wallet("wallet.reopen_cancelled", holder_id, device_id, {})
        else:
            state.closed_at = now
            state.closed_reason = reason[:64]
            state.reopens_at = None
            audit.record(
                self.db,
                self.clock,
                "wallet.transactions_closed",
                holder_id=holder_id,
                device_id=device_id,
                ip=ip,
                data={"reason": reason},
            )
            self._alert_wallet(
                "wallet.transactions_closed", holder_id, device_id, {"reason": reason[:64]}
            )
        for txn in repository.pending_movements(self.db, holder_id):
            self._end(txn, VOIDED, "transactions_closed")
        self.db.flush()

    def reopen_transactions(self, principal: Principal) -> WalletState:
        """Ask to reopen: it takes effect after the delay (control ``limit_delay``), which any
        trusted device can cancel by closing again. Asking twice does not move the date."""
        state = repository.lock_wallet_state(self.db, principal.holder_id, self.clock.now())
        now = self.clock.now()
        if not is_closed(state, now) or state.reopens_at is not None:
            return state
        # Only a reopening that changes something spends a step-up.
        self._guard_sensitive(principal, SensitiveAction.REOPEN_PAYMENTS)
        delay = timedelta(0)
        if self.env.settings.controls.limit_delay:
            delay = timedelta(hours=self.env.settings.reopen_transactions_delay_hours)
        state.reopens_at = now + delay
        self.db.flush()
        audit.record(
            self.db,
            self.clock,
            "wallet.reopen_requested",
            holder_id=principal.holder_id,
            device_id=principal.device_id,
            ip=principal.ip,
            data={"reopens_at": state.reopens_at.isoformat()},
        )
        self._alert_wallet(
            "wallet.reopen_requested",
            principal.holder_id,
            principal.device_id,
            {"reopens_at": state.reopens_at.isoformat()},
            until=state.reopens_at,
        )
        return state

    def _alert_wallet(
        self,
        kind: str,
        holder_id: uuid.UUID,
        device_id: uuid.UUID | None,
        data: Mapping[str, Any],
        *,
        until: datetime | None = None,
    ) -> None:
        """Closing and reopening transactions is alerted on every channel (SPEC C8)."""
        link = None
        if device_id is not None and kind == "wallet.reopen_requested":
            link = not_me_url(self.env, holder_id=holder_id, device_id=device_id, event=kind)
        alerts.raise_alert(
            self.db,
            self.env,
            alert_recipient(self.db, self.env, holder_id),
            kind,
            params={"until": alerts.beijing_time(until) if until else ""},
            data=data,
            not_me_url=link,
            device_id=device_id,
        )

    # -- limits --------------------------------------------------------------------------

    def set_limit(
        self, principal: Principal, *, card_id: uuid.UUID | None, period: str, amount_fen: int
    ) -> None:
        if card_id is not None:
            self._card(principal.holder_id, card_id)
        current = self.limits.state(principal.holder_id, card_id, period).amount_fen
        if amount_fen > current:
            self._guard_sensitive(principal, SensitiveAction.RAISE_LIMIT)
        setting, raised = self.limits.set(principal.holder_id, card_id, period, amount_fen)
        audit.record(
            self.db,
            self.clock,
            "limits.changed",
            holder_id=principal.holder_id,
            device_id=principal.device_id,
            ip=principal.ip,
            data={
                "card_id": str(card_id) if card_id else None,
                "period": period,
                "amount_fen": amount_fen,
                "raised": raised,
                "effective_at": setting.effective_at.isoformat(),
            },
        )

    # -- movements -----------------------------------------------------------------------

    def top_up(
        self,
        principal: Principal,
        *,
        card_id: uuid.UUID,
        amount_fen: int,
        payment_password: str,
        idem: IdempotentRequest | None = None,
    ) -> LedgerTransaction | StoredResponse:
        """Card → balance. Pending until the holder types the bank's dynamic password."""
        authorised = self._authorise(principal, payment_password)
        card = self._bound_card(principal.holder_id, card_id)
        if idem is not None and (stored := idem.claim()) is not None:
            return stored
        source = self.ledger.settlement_account(card.bank_code)
        target = self.ledger.holder_account(principal.holder_id)
        self._judge_movement(principal, TOP_UP, amount_fen, card)
        self._guard_movement(principal, authorised, TOP_UP, amount_fen)
        risk = self._risk_decision(principal, TOP_UP, amount_fen, card, None, source="card")
        txn = self._new_movement(
            principal,
            kind=TOP_UP,
            amount_fen=amount_fen,
            source="card",
            from_account=source.id,
            to_account=target.id,
            card=card,
            payee=None,
            risk_decision=risk,
        )
        self._start_card_debit(txn, card, text("wallet.bank_payee.top_up"))
        return txn

    def withdraw(
        self,
        principal: Principal,
        *,
        card_id: uuid.UUID,
        amount_fen: int,
        payment_password: str,
        idem: IdempotentRequest | None = None,
    ) -> LedgerTransaction | StoredResponse:
        """Balance → card: held on the balance, credited by the bank, then posted."""
        authorised = self._authorise(principal, payment_password)
        card = self._bound_card(principal.holder_id, card_id)
        if idem is not None and (stored := idem.claim()) is not None:
            return stored
        source = self.ledger.holder_account(principal.holder_id)
        target = self.ledger.settlement_account(card.bank_code)
        facts = self._judge_movement(principal, WITHDRAW, amount_fen, None)
        self._guard_movement(principal, authorised, WITHDRAW, amount_fen)
        risk = self._risk_decision(
            principal, WITHDRAW, amount_fen, card, None, available_fen=facts.available_fen
        )
        txn = self._new_movement(
            principal,
            kind=WITHDRAW,
            amount_fen=amount_fen,
            source="balance",
            from_account=source.id,
            to_account=target.id,
            card=card,
            payee=None,
            risk_decision=risk,
        )
        self.ledger.record_pending(txn)
        self.ledger.hold(txn)
        self._audit("movement.created", txn, card=card)
        # The sandbox bank answers at once; a real bank's credit would confirm later and post
        # the hold then (or void it, giving the money back to the balance).
        self.bank.credit(number=self._card_number(card), amount_fen=amount_fen)
        self.ledger.post_pending(txn)
        self._audit("movement.posted", txn, card=card)
        return txn

    def pay(
        self,
        principal: Principal,
        *,
        merchant: str,
        amount_fen: int,
        payment_password: str,
        card_id: uuid.UUID | None = None,
        idem: IdempotentRequest | None = None,
    ) -> LedgerTransaction | StoredResponse:
        """Pay a merchant from the balance (posted at once) or from a card (pending until the
        bank's dynamic password)."""
        authorised = self._authorise(principal, payment_password)
        card = self._bound_card(principal.holder_id, card_id) if card_id else None
        if idem is not None and (stored := idem.claim()) is not None:
            return stored
        facts = self._judge_movement(principal, PAYMENT, amount_fen, card)
        self._guard_movement(principal, authorised, PAYMENT, amount_fen)
        risk = self._risk_decision(
            principal,
            PAYMENT,
            amount_fen,
            card,
            merchant,
            source="card" if card else "balance",
            available_fen=facts.available_fen,
        )
        if card is not None:
            source_id = self.ledger.settlement_account(card.bank_code).id
            target_id = self.ledger.merchant_account(merchant).id
        else:
            # The accounts are locked last, just before the money moves: a merchant's account
            # is shared by every payer, so it is held for as short a time as possible.
            payer, payee = holder_code(principal.holder_id), merchant_code(merchant)
            ids = self.ledger.locked_accounts(
                {payer: (HOLDER, principal.holder_id), payee: (MERCHANT, None)}
            )
            source_id, target_id = ids[payer], ids[payee]
        txn = self._new_movement(
            principal,
            kind=PAYMENT,
            amount_fen=amount_fen,
            source="card" if card else "balance",
            from_account=source_id,
            to_account=target_id,
            card=card,
            payee=merchant,
            risk_decision=risk,
        )
        if card is not None:
            self._start_card_debit(txn, card, merchant)
        else:
            self._post_new(txn, None, locked=True)
        return txn

    def transfer(
        self,
        principal: Principal,
        *,
        to_phone: str,
        amount_fen: int,
        payment_password: str,
        card_id: uuid.UUID | None = None,
        idem: IdempotentRequest | None = None,
    ) -> LedgerTransaction | StoredResponse:
        """Send money to another holder's balance, from the balance or from a card."""
        try:
            recipient_phone = parse_mobile(to_phone)
        except InvalidInput as exc:
            exc.extensions["field"] = "to_phone"
            raise
        authorised = self._authorise(principal, payment_password)
        card = self._bound_card(principal.holder_id, card_id) if card_id else None
        identity = IdentityService(self.db, self.env)
        # Identity exposes no public lookup by number yet; this is its own, read-only.
        recipient = identity._holder_by_phone(recipient_phone)
        if recipient is not None and recipient.id == principal.holder_id:
            raise TransferToSelf()
        if recipient is None:
            key = f"transfer-unknown-recipient:{principal.holder_id}"
            tries = self.counters.reserve(
                key,
                lambda n: timedelta(hours=1) if n >= UNKNOWN_RECIPIENTS_PER_HOUR else None,
                window=timedelta(hours=1),
            )
            if not tries.allowed:
                raise TooManyAttempts(
                    "wallet.transfer.too_many_unknown", retry_after_s=tries.retry_after_s
                )
            raise NoReceivingWallet()
        if idem is not None and (stored := idem.claim()) is not None:
            return stored
        sender_phone = identity.profile(principal.holder_id).phone
        payee = mask_phone(recipient_phone)
        facts = self._judge_movement(principal, TRANSFER, amount_fen, card)
        self._guard_movement(principal, authorised, TRANSFER, amount_fen)
        risk = self._risk_decision(
            principal,
            TRANSFER,
            amount_fen,
            card,
            recipient_phone,
            payee_label=payee,
            source="card" if card else "balance",
            available_fen=facts.available_fen,
        )
        if card is not None:
            source_id = self.ledger.settlement_account(card.bank_code).id
            target_id = self.ledger.holder_account(recipient.id).id
        else:
            payer, receiver = holder_code(principal.holder_id), holder_code(recipient.id)
            ids = self.ledger.locked_accounts(
                {payer: (HOLDER, principal.holder_id), receiver: (HOLDER, recipient.id)}
            )
            source_id, target_id = ids[payer], ids[receiver]
        txn = self._new_movement(
            principal,
            kind=TRANSFER,
            amount_fen=amount_fen,
            source="card" if card else "balance",
            from_account=source_id,
            to_account=target_id,
            card=card,
            payee=payee,
            risk_decision=risk,
            counterparty=recipient.id,
            payer_label=mask_phone(sender_phone),
        )
        if card is not None:
            self._start_card_debit(txn, card, text("wallet.bank_payee.transfer", payee=payee))
        else:
            self._post_new(txn, None, locked=True)
        return txn

    def _own_movement(self, holder_id: uuid.UUID, movement_id: uuid.UUID) -> LedgerTransaction:
        txn = self.db.get(LedgerTransaction, movement_id)
        # Only whoever started a movement may confirm or cancel it; to anyone else it does not
        # exist (a transfer's recipient sees it in the history, but cannot act on it).
        if txn is None or txn.holder_id != holder_id:
            raise NotFound("wallet.movement.not_found")
        return txn

    def confirm_movement(
        self,
        principal: Principal,
        movement_id: uuid.UUID,
        *,
        dynamic_password: str,
        idem: IdempotentRequest | None = None,
    ) -> LedgerTransaction | StoredResponse:
        """Pass the bank's dynamic password for a pending card debit; the movement posts."""
        txn = self._own_movement(principal.holder_id, movement_id)
        if idem is not None and (stored := idem.claim()) is not None:
            return stored
        self._lock_for_movement(principal.holder_id)
        self.db.refresh(txn)
        if txn.status != PENDING or txn.bank_challenge_id is None:
            if txn.status == VOIDED and txn.status_reason == "expired":
                raise BankChallengeClosed("expired")
            raise MovementNotPending(txn.status)
        card = self.db.get(Card, txn.card_id) if txn.card_id else None
        try:
            self.bank.confirm_debit(txn.bank_challenge_id, dynamic_password)
        except DynamicPasswordWrong as exc:
            if exc.extensions.get("remaining_tries") == 0:
                self._end(txn, VOIDED, "tries_exhausted")
            raise
        except BankChallengeClosed as exc:
            self._end(txn, VOIDED, "expired" if exc.reason == "expired" else "tries_exhausted")
            raise
        except (CardFundsInsufficient, CardBlockedAtBank) as exc:
            self._end(txn, FAILED, exc.slug.replace("-", "_"))
            raise CardDebitFailed(txn, exc) from exc
        self.ledger.post_pending(txn)
        self._audit("movement.posted", txn, card=card)
        return txn

    def cancel_movement(
        self,
        principal: Principal,
        movement_id: uuid.UUID,
        *,
        idem: IdempotentRequest | None = None,
    ) -> LedgerTransaction | StoredResponse:
        txn = self._own_movement(principal.holder_id, movement_id)
        if idem is not None and (stored := idem.claim()) is not None:
            return stored
        repository.lock_wallet_state(self.db, principal.holder_id, self.clock.now())
        self.void_expired_holds(principal.holder_id)
        if not self._end(txn, VOIDED, "cancelled"):
            raise MovementNotPending(txn.status)
        return txn

    def void_expired_holds(self, holder_id: uuid.UUID | None = None) -> int:
        """Void every pending movement whose bank code has expired (all holders', or one's).

        Called lazily on reads and before new movements, so nobody waits for a sweeper; a worker
        may call it for everyone. Returns how many were voided."""
        voided = 0
        for txn in repository.expired_pending(self.db, self.clock.now(), holder_id):
            if self._end(txn, VOIDED, "expired"):
                voided += 1
        return voided

    def refund(
        self,
        movement_id: uuid.UUID,
        amount_fen: int | None = None,
        *,
        operator: str,
        reason: str,
    ) -> LedgerTransaction:
        """Operator refund: a reversing movement against a posted payment, transfer or top-up,
        in part or in full, never beyond the original. Money goes back where it came from (the
        card by a bank credit, or the balance)."""
        original = self.db.get(LedgerTransaction, movement_id)
        if original is None:
            raise NotFound("wallet.movement.not_found")
        if original.kind not in REFUNDABLE_KINDS:
            raise NotRefundable(original.kind)
        if original.status != POSTED:
            raise NotRefundable("not_posted")
        amount = (
            amount_fen if amount_fen is not None else original.amount_fen - original.refunded_fen
        )
        if amount <= 0:
            raise NotRefundable("fully_refunded")
        # Lock the wallet whose balance the refund takes money from (the recipient of a
        # transfer, the holder of a top-up), or else the payer's.
        debited = original.counterparty_holder_id if original.kind == TRANSFER else None
        repository.lock_wallet_state(self.db, debited or original.holder_id, self.clock.now())
        card = self.db.get(Card, original.card_id) if original.card_id else None
        refund = LedgerTransaction(
            id=uuid.uuid4(),
            kind=REFUND,
            status=POSTED,
            holder_id=original.holder_id,
            counterparty_holder_id=original.counterparty_holder_id,
            device_id=None,
            ip=None,
            amount_fen=amount,
            refunded_fen=0,
            source=original.source,
            card_id=original.card_id,
            payee=original.payee,
            payer_label=original.payer_label,
            risk_decision="operator",
            from_account_id=original.to_account_id,
            to_account_id=original.from_account_id,
            created_at=self.clock.now(),
        )
        self.ledger.reverse(original, refund)
        if original.source == "card" and card is not None:
            self.bank.credit(number=self._card_number(card), amount_fen=amount)
        self._audit(
            "movement.refunded",
            refund,
            card=card,
            extra={"operator": operator, "refund_reason": reason},
        )
        return refund

    # -- history -------------------------------------------------------------------------

    def movements(
        self,
        holder_id: uuid.UUID,
        filters: MovementFilter,
        *,
        offset: int = 0,
        limit: int | None = None,
    ) -> tuple[list[LedgerTransaction], int]:
        self.void_expired_holds(holder_id)
        return repository.list_movements(self.db, holder_id, filters, offset=offset, limit=limit)

    def movement(self, holder_id: uuid.UUID, movement_id: uuid.UUID) -> LedgerTransaction:
        self.void_expired_holds(holder_id)
        txn = repository.movement_visible_to(self.db, holder_id, movement_id)
        if txn is None:
            raise NotFound("wallet.movement.not_found")
        return txn

    def card_last4(self, card_ids: set[uuid.UUID]) -> dict[uuid.UUID, str]:
        return {
            card_id: card.last4
            for card_id in card_ids
            if (card := self.db.get(Card, card_id)) is not None
        }
