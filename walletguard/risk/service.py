"""The risk engine (SPEC C7): "may this happen?" before every login, sensitive action, movement.

``RiskService(db, env).decide(event)`` reads the signals, runs the rules, stores the decision
(score, the rules that fired, reasons in zh-CN and en, the signals as evidence — no personal
data) and audits it. ``enforce(decision, principal)`` turns the outcome into the problem the
caller raises: ``risk-challenge`` (403; a fresh strong step-up for ``risky_payment`` clears it for
one request), ``risk-hold`` (409; the holder confirms or rejects on a trusted device, or it
expires rejected), ``risk-blocked`` (403) and ``account-frozen`` (423; the caller closes every
transaction function first). The engine is asked; it never calls its callers back.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session

from walletguard.audit import service as audit
from walletguard.bootstrap import Container
from walletguard.identity.guards import (
    STRONG_FACTORS,
    SensitiveAction,
    consume_grant,
    enrolled_factors,
)
from walletguard.identity.models import Device
from walletguard.identity.service import Principal
from walletguard.kit.db import unit_of_work
from walletguard.kit.errors import Conflict, NotFound, WalletguardError
from walletguard.risk import repository
from walletguard.risk.geo import geo_locator
from walletguard.risk.models import RiskDecision, RiskPayee, RiskScamExposure
from walletguard.risk.rules import (
    HISTORY_SIGNALS,
    RECENT_SIGNALS,
    SEVERITY,
    TRAVEL_SIGNALS,
    Rule,
    RuleBook,
    RuleSet,
    rule_book,
    strongest,
)
from walletguard.risk.signals import NEW_DEVICE_HOURS, Facts, RiskEvent, SignalReader, Signals
from walletguard.risk.velocity import DatabaseVelocity, velocity_store

__all__ = ["Decision", "RiskEvent", "RiskService"]

MAX_SCORE = 1000
# Events whose hold the holder (or an operator) can approve for one retry. A login is never
# refused (a risky one marks its session), so it is never held.
APPROVABLE_KINDS = frozenset({"movement", "sensitive_action"})
STRONG = frozenset(f.value for f in STRONG_FACTORS)


# -- problems ------------------------------------------------------------------------------


def _reasons(decision: Decision) -> dict[str, Any]:
    return {
        "decision_id": str(decision.id),
        "rules": list(decision.rules),
        "reasons": {"zh-CN": list(decision.reasons_zh), "en": list(decision.reasons_en)},
    }


class RiskChallenge(WalletguardError):
    status = 403
    slug = "risk-challenge"
    title_key = "risk.challenge_title"
    keep_writes = True

    def __init__(self, decision: Decision, factors: list[str]) -> None:
        extensions = _reasons(decision)
        extensions.update(action=SensitiveAction.RISKY_PAYMENT.value, factors=factors)
        super().__init__("risk.challenge", extensions=extensions)


class RiskHeld(WalletguardError):
    status = 409
    slug = "risk-hold"
    title_key = "risk.hold_title"
    keep_writes = True

    def __init__(self, decision: Decision, expires_at: datetime) -> None:
        extensions = _reasons(decision)
        extensions.update(hold_id=str(decision.id), expires_at=expires_at.isoformat())
        super().__init__("risk.hold", extensions=extensions)


class RiskBlocked(WalletguardError):
    status = 403
    slug = "risk-blocked"
    title_key = "risk.blocked_title"
    keep_writes = True

    def __init__(self, decision: Decision) -> None:
        super().__init__("risk.blocked", extensions=_reasons(decision))


class AccountFrozen(WalletguardError):
    status = 423
    slug = "account-frozen"
    title_key = "risk.frozen_title"
    keep_writes = True

    def __init__(self, decision: Decision) -> None:
        super().__init__("risk.frozen", extensions=_reasons(decision))


class HoldNotPending(Conflict):
    slug = "hold-not-pending"
    title_key = "risk.hold.not_pending_title"

    def __init__(self, review: str | None) -> None:
        super().__init__("risk.hold.not_pending", extensions={"review": review})


class DeviceNotTrustedForHold(WalletguardError):
    status = 403
    slug = "hold-needs-trusted-device"
    title_key = "risk.hold.untrusted_title"

    def __init__(self) -> None:
        super().__init__("risk.hold.untrusted")


# -- decisions -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Decision:
    id: uuid.UUID
    outcome: str
    score: int
    rules: tuple[str, ...]
    shadow_rules: tuple[str, ...]
    reasons_zh: tuple[str, ...]
    reasons_en: tuple[str, ...]
    signals: dict[str, Any]
    expires_at: datetime | None = None

    @property
    def allowed(self) -> bool:
        return self.outcome == "allow"


def request_hash(event: RiskEvent) -> str:
    """What a confirmed hold approves: this kind of event, amount, card and payee."""
    canonical = json.dumps(
        [
            event.kind,
            event.action,
            event.amount_fen,
            str(event.card_id),
            (event.payee or "").strip().casefold(),
        ],
        ensure_ascii=False,
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def sequence_matches(rule: Rule, facts: Facts, now: datetime) -> bool:
    """The steps happened in order within the window; the last one is this event.

    Earlier steps are matched, in order, against the holder's recent audit events and decisions;
    whatever steps remain must all describe this event (a first payment to a new payee is both
    ``new_payee`` and ``movement``)."""
    assert rule.sequence is not None
    steps = rule.sequence.steps
    if steps[-1] not in facts.current_tags:
        return False
    since = now - timedelta(seconds=rule.sequence.within_s)
    matched = 0
    for at, tags in facts.sequence_timeline():
        if matched >= len(steps) - 1:
            break
        if at >= since and steps[matched] in tags:
            matched += 1
    return all(step in facts.current_tags for step in steps[matched:])


def evaluate(rules: RuleSet, facts: Facts, now: datetime, kind: str) -> list[Rule]:
    """The rules that fire, in the file's order; run in the order of what they read
    (``RuleSet.in_reading_order``), which changes what is read, never what fires."""
    fired: list[Rule] = []
    for rule in rules.in_reading_order(kind):
        if not rule.when(facts.signals):
            continue
        if rule.sequence is not None and not sequence_matches(rule, facts, now):
            continue
        fired.append(rule)
    return sorted(fired, key=rules.position)


class RiskService:
    def __init__(self, db: Session, env: Container) -> None:
        self.db = db
        self.env = env
        self.clock = env.clock
        settings = env.settings
        self.book: RuleBook = rule_book(settings.risk_rules)
        redis_url = settings.redis_url.get_secret_value() if settings.redis_url else None
        self.velocity = velocity_store(db, redis_url)
        self.reader = SignalReader(db, env, geo_locator(settings.geoip_database), self.velocity)

    @property
    def enabled(self) -> bool:
        return self.env.settings.controls.risk_engine

    # -- deciding ------------------------------------------------------------------------

    def decide(self, event: RiskEvent) -> Decision:
        now = self.clock.now()
        rules = self.book.current()
        longest = max(
            [r.sequence.within_s for r in rules.rules if r.sequence is not None], default=0
        )
        lookback = max(timedelta(hours=72), timedelta(seconds=longest))
        facts = self.reader.read(event, now, lookback)
        fired = evaluate(rules, facts, now, event.kind)
        acting = [rule for rule in fired if not rule.shadow]
        shadow = [rule for rule in fired if rule.shadow]
        outcome = strongest([rule.action for rule in acting])
        score = min(MAX_SCORE, sum(rule.score for rule in acting))
        hashed = request_hash(event)
        approved_by: RiskDecision | None = None
        approvable = event.kind in APPROVABLE_KINDS
        if outcome in ("challenge", "hold", "block") and approvable:
            # The holder confirmed this very request after it was held, or an operator released
            # it (a freeze is never lifted this way: reopening is the wallet's own flow). A
            # sensitive action's request is its action: a confirmed hold on turning sync on
            # lets the holder's next try through once.
            since = now - timedelta(minutes=self.env.settings.risk_approval_minutes)
            approved_by = repository.approved_request(self.db, event.holder_id, hashed, since)
            if approved_by is not None:
                approved_by.approval_used_at = now
                outcome = "allow"
        if (
            outcome == "challenge"
            and event.kind == "movement"
            and not enrolled_factors(self.db, event.holder_id)
        ):
            # No strong factor to step up with: the holder confirms on a trusted device instead.
            outcome = "hold"
        if outcome != "allow" and isinstance(facts.signals, Signals):
            # A refusal is looked at by the holder and by an operator: its evidence is every
            # signal of the event and the holder's history, not only those its rules reached
            # (other holders' counts still only when a rule asked for them). The history first:
            # the last half hour's cards and payees and travel are then taken from it.
            facts.signals.read_now((*HISTORY_SIGNALS, *RECENT_SIGNALS, *TRAVEL_SIGNALS))
        expires_at = None
        review = None
        if outcome == "hold":
            expires_at = now + timedelta(minutes=self.env.settings.risk_hold_minutes)
            review = "pending"
        elif outcome == "block":
            review = "pending"
        decision_id = uuid.uuid4()
        counted = event.kind == "movement" and outcome == "allow"
        paid = None
        if counted and facts.payee_key and event.action in ("payment", "transfer"):
            paid = repository.PaidPayee(facts.payee_key, event.amount_fen, now)
        repository.store_decision(
            self.db,
            {
                "id": decision_id,
                "holder_id": event.holder_id,
                "kind": event.kind,
                "action": event.action[:32],
                "device_id": event.device_id,
                "session_id": event.session_id,
                "ip_key": facts.ip_key,
                "device_key": facts.device_key,
                "place": facts.place.label[:64] if facts.place else None,
                "lat": facts.place.lat if facts.place else None,
                "lon": facts.place.lon if facts.place else None,
                "amount_fen": event.amount_fen or None,
                "card_id": event.card_id,
                "payee_key": facts.payee_key,
                "payee_label": (event.payee_label or "")[:64] or None,
                "payee_new": (
                    bool(facts.signals.get("payee_new")) if event.kind == "movement" else None
                ),
                "outcome": outcome,
                "score": score,
                "rules": json.dumps([rule.id for rule in acting]),
                "shadow_rules": json.dumps([rule.id for rule in shadow]),
                "reasons_zh": json.dumps([rule.reason_zh for rule in acting], ensure_ascii=False),
                "reasons_en": json.dumps([rule.reason_en for rule in acting], ensure_ascii=False),
                "signals": json.dumps(facts.signals, ensure_ascii=False, sort_keys=True),
                "request_hash": hashed if approvable else None,
                "created_at": now,
                "review": review,
                "expires_at": expires_at,
                "reviewed_at": None,
                "reviewed_by": None,
                "approval_used_at": None,
            },
            paid=paid,
        )
        if counted:
            self._record_velocity(event, facts, now)
        decision = Decision(
            id=decision_id,
            outcome=outcome,
            score=score,
            rules=tuple(rule.id for rule in acting),
            shadow_rules=tuple(rule.id for rule in shadow),
            reasons_zh=tuple(rule.reason_zh for rule in acting),
            reasons_en=tuple(rule.reason_en for rule in acting),
            signals=dict(facts.signals),  # what was read: nothing left to read later
            expires_at=expires_at,
        )
        if outcome != "allow" or fired or approved_by is not None:
            self._audit_decision(event, decision, approved_by)
        return decision

    def _audit_decision(
        self, event: RiskEvent, decision: Decision, approved_by: RiskDecision | None
    ) -> None:
        """Every decision that fired a rule (shadow ones too) or refused is in the audit log; a
        plain "allow, nothing fired" is recorded in ``risk_decisions`` only (it is the common
        case, and the hash-chained log serialises every writer)."""
        audit.record(
            self.db,
            self.clock,
            "risk.decided",
            holder_id=event.holder_id,
            device_id=event.device_id,
            ip=event.ip,
            data={
                "decision_id": str(decision.id),
                "kind": event.kind,
                "action": event.action,
                "outcome": decision.outcome,
                "score": decision.score,
                "rules": list(decision.rules),
                "shadow_rules": list(decision.shadow_rules),
                "approved_hold": str(approved_by.id) if approved_by else None,
            },
        )

    def _record_velocity(self, event: RiskEvent, facts: Facts, now: datetime) -> None:
        keys = [f"holder:{event.holder_id}"]
        if event.card_id:
            keys.append(f"card:{event.card_id}")
        if facts.payee_key:
            keys.append(f"payee:{facts.payee_key}")
        if facts.ip_key:
            keys.append(f"ip:{facts.ip_key}")
        self.velocity.record(keys, now, event.amount_fen)

    def enforce(
        self,
        decision: Decision,
        principal: Principal | None,
        *,
        freeze_payments: Callable[[], None] | None = None,
    ) -> None:
        """Raise the problem the outcome calls for; return when the event may go ahead.

        A challenge is cleared by a fresh strong step-up grant of this session for
        ``risky_payment`` (spent here). ``freeze_payments`` closes every transaction function
        (the wallet's kill switch) before ``account-frozen`` is raised."""
        if decision.outcome == "allow":
            return
        if decision.outcome == "challenge":
            if principal is not None and consume_grant(
                self.db, self.env, principal, SensitiveAction.RISKY_PAYMENT, STRONG
            ):
                audit.record(
                    self.db,
                    self.clock,
                    "risk.challenge_passed",
                    holder_id=principal.holder_id,
                    device_id=principal.device_id,
                    ip=principal.ip,
                    data={"decision_id": str(decision.id)},
                )
                return
            factors = [f.value for f in enrolled_factors(self.db, self._holder(principal))]
            raise RiskChallenge(decision, factors)
        if decision.outcome == "hold":
            assert decision.expires_at is not None
            raise RiskHeld(decision, decision.expires_at)
        if decision.outcome == "block":
            raise RiskBlocked(decision)
        if freeze_payments is not None:
            freeze_payments()
        raise AccountFrozen(decision)

    @staticmethod
    def _holder(principal: Principal | None) -> uuid.UUID:
        assert principal is not None
        return principal.holder_id

    def check(
        self,
        event: RiskEvent,
        principal: Principal | None,
        *,
        freeze_payments: Callable[[], None] | None = None,
    ) -> Decision | None:
        """decide + enforce when the ``risk_engine`` control is on; None when it is off."""
        if not self.enabled:
            return None
        decision = self.decide(event)
        self.enforce(decision, principal, freeze_payments=freeze_payments)
        return decision

    # -- holds: the holder answers on a trusted device -------------------------------------

    def expire_holds(self) -> int:
        now = self.clock.now()
        expired = 0
        for row in repository.expired_holds(self.db, now):
            row.review = "expired"
            row.reviewed_at = now
            row.reviewed_by = "expiry"
            audit.record(
                self.db,
                self.clock,
                "risk.hold_expired",
                holder_id=row.holder_id,
                data={"decision_id": str(row.id)},
            )
            expired += 1
        return expired

    def housekeeping(self) -> tuple[int, int]:
        """Expire unanswered holds and drop velocity buckets no window reaches any more (the
        database store; Redis expires its own hashes). Returns (expired, trimmed)."""
        expired = self.expire_holds()
        trimmed = 0
        if isinstance(self.velocity, DatabaseVelocity):
            trimmed = self.velocity.trim(self.clock.now())
        return expired, trimmed

    def _own_hold(self, principal: Principal, hold_id: uuid.UUID) -> RiskDecision:
        self.expire_holds()
        row = self.db.get(RiskDecision, hold_id)
        if row is None or row.holder_id != principal.holder_id or row.outcome != "hold":
            raise NotFound("risk.hold.not_found")
        return row

    def holds(self, principal: Principal) -> list[RiskDecision]:
        self.expire_holds()
        rows = repository.decisions_since(
            self.db, principal.holder_id, self.clock.now() - timedelta(days=7)
        )
        return [row for row in rows if row.outcome == "hold"]

    def _require_trusted_device(self, principal: Principal, row: RiskDecision) -> None:
        """Vouched for by the holder (registered on it or approved from a trusted one), or
        known for a day — and not the unvouched device whose own request is held."""
        device = self.db.get(Device, principal.device_id)
        if device is None or device.revoked_at is not None:
            raise DeviceNotTrustedForHold()
        vouched = device.trust == "trusted"
        age = self.clock.now() - device.first_seen_at
        if vouched:
            return
        if age < timedelta(hours=NEW_DEVICE_HOURS) or device.id == row.device_id:
            raise DeviceNotTrustedForHold()

    def answer_hold(
        self, principal: Principal, hold_id: uuid.UUID, *, confirm: bool
    ) -> RiskDecision:
        row = self._own_hold(principal, hold_id)
        self._require_trusted_device(principal, row)
        if row.review != "pending":
            raise HoldNotPending(row.review)
        row.review = "confirmed" if confirm else "rejected"
        row.reviewed_at = self.clock.now()
        row.reviewed_by = "holder"
        audit.record(
            self.db,
            self.clock,
            "risk.hold_confirmed" if confirm else "risk.hold_rejected",
            holder_id=principal.holder_id,
            device_id=principal.device_id,
            ip=principal.ip,
            data={"decision_id": str(row.id)},
        )
        return row

    # -- operator review -----------------------------------------------------------------

    def review_queue(self, *, offset: int, limit: int) -> tuple[list[RiskDecision], int]:
        self.expire_holds()
        return repository.pending_review(self.db, offset=offset, limit=limit)

    def review(self, decision_id: uuid.UUID, *, operator: str, release: bool) -> RiskDecision:
        """``release``: the hold or block was wrong — the same request may go ahead once.
        Otherwise the operator confirms it (the held movement stays rejected)."""
        self.expire_holds()
        row = self.db.get(RiskDecision, decision_id)
        if row is None or row.outcome not in ("hold", "block"):
            raise NotFound("risk.review.not_found")
        if row.review != "pending":
            raise HoldNotPending(row.review)
        row.review = "released" if release else "upheld"
        row.reviewed_at = self.clock.now()
        row.reviewed_by = f"operator:{operator}"[:80]
        audit.record(
            self.db,
            self.clock,
            "risk.review_released" if release else "risk.review_upheld",
            holder_id=row.holder_id,
            data={"decision_id": str(row.id), "operator": operator, "outcome": row.outcome},
        )
        return row

    def reload_rules(self, *, operator: str) -> RuleSet:
        rules = self.book.reload()
        audit.record(
            self.db,
            self.clock,
            "risk.rules_reloaded",
            data={"operator": operator, "rules": len(rules.rules), "source": rules.source},
        )
        return rules

    # -- hooks other capabilities feed -----------------------------------------------------

    def scam_exposure(
        self, holder_id: uuid.UUID, *, typology: str, named_payee: str | None = None
    ) -> None:
        """The scam-detection capability (C9) saw a scam message reach this holder."""
        self.db.add(
            RiskScamExposure(
                holder_id=holder_id,
                typology=typology[:48],
                payee_key=self.reader.payee_key(named_payee) if named_payee else None,
                received_at=self.clock.now(),
            )
        )
        audit.record(
            self.db,
            self.clock,
            "risk.scam_exposure",
            holder_id=holder_id,
            data={"typology": typology[:48], "names_payee": named_payee is not None},
        )

    def trust_payee(self, principal: Principal, payee: str) -> None:
        """The holder vouches for a payee (allow-list): first payments to it stay frictionless."""
        key = self.reader.payee_key(payee)
        now = self.clock.now()
        stats = repository.payee(self.db, principal.holder_id, key)
        if stats is None:
            stats = RiskPayee(
                holder_id=principal.holder_id,
                payee_key=key,
                payments=0,
                total_fen=0,
                first_at=now,
                last_at=now,
                trusted_at=now,
            )
            self.db.add(stats)
        else:
            stats.trusted_at = now
        audit.record(
            self.db,
            self.clock,
            "risk.payee_trusted",
            holder_id=principal.holder_id,
            device_id=principal.device_id,
            ip=principal.ip,
            data={"payee_key": key[:12]},
        )


def severity(outcome: str) -> int:
    return SEVERITY[outcome]


def ask_about_sensitive_action(
    db: Session, env: Container, principal: Principal, action: SensitiveAction
) -> Decision | None:
    """What identity and messages call before a sensitive action (no-op with the control off).

    A ``freeze`` closes every transaction function through the wallet's kill switch."""

    def freeze_payments() -> None:
        from walletguard.wallet.service import WalletService

        WalletService(db, env).close_all_transactions(
            principal.holder_id,
            reason="risk_engine",
            device_id=principal.device_id,
            ip=principal.ip,
        )

    event = RiskEvent(
        kind="sensitive_action",
        holder_id=principal.holder_id,
        action=action.value,
        device_id=principal.device_id,
        session_id=principal.session_id,
        ip=principal.ip,
    )
    return RiskService(db, env).check(event, principal, freeze_payments=freeze_payments)


def run_housekeeping(container: Container) -> tuple[int, int]:
    """One round of ``RiskService.housekeeping`` in its own transaction (``walletguard risk
    housekeeping``, and the workers' periodic job). Returns (holds expired, buckets trimmed)."""
    with unit_of_work(container.sessions) as db:
        return RiskService(db, container).housekeeping()
