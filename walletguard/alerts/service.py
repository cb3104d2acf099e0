"""Alerts (SPEC C8): raise them in the caller's transaction; holders' channels; in-app reading.

Raising an alert writes, in the caller's transaction, one ``alerts`` row (texts rendered in
zh-CN and en) and one ``alert_outbox`` row per channel it goes to. If the caller's transaction
rolls back, nothing is queued; if it commits, a worker (``walletguard.alerts.worker``) delivers
every row, retrying, even when a worker dies half-way.

Which channels an alert goes to:

- **in-app** always — the alert row is the delivery, and it cannot be switched off;
- **SMS** to the bound number for every *security* alert, whatever the setting, and for money
  movements while the SMS channel is on (it is by default). An attacker who holds the account
  cannot silence the phone that holds the SIM;
- **email** and **webhook** while the holder has them on (each needs an address first).

While the ``security_alerts`` control is off (the simulator's ablation), ``security.*`` events are
still audited and shown in-app, and nothing else. Switching a channel on is instant; switching
one off — or moving it to another address, which mutes the old one — needs a step-up (the caller
passes the guard) and takes effect after ``WALLETGUARD_ALERT_OFF_DELAY_HOURS``; the change is
itself alerted on every channel, the one going off included.

Dependencies point one way: identity and wallet call this module; it never calls them (they pass
what it needs: the ``Recipient``, the movement's facts).
"""

from __future__ import annotations

import functools
import json
import re
import secrets
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, NamedTuple, Protocol, cast
from urllib.parse import urlsplit

from sqlalchemy import (
    ColumnElement,
    Insert,
    Table,
    Uuid,
    and_,
    bindparam,
    func,
    insert,
    literal,
    select,
    union_all,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import InstrumentedAttribute, Session, aliased

from walletguard.alerts.channels import (
    CHANNELS,
    EMAIL,
    IN_APP,
    SMS,
    WEBHOOK,
    UnsafeWebhookTarget,
    check_webhook_url,
)
from walletguard.alerts.models import Alert, AlertChannel, AlertDelivery
from walletguard.audit import service as audit
from walletguard.bootstrap import Container
from walletguard.kit.db import core, is_postgres
from walletguard.kit.errors import Conflict, InvalidInput, NotFound
from walletguard.kit.i18n import LANGUAGES, Language, text
from walletguard.kit.money import format_yuan

SECURITY = "security"
TRANSACTION = "transaction"
INFO, WARNING, CRITICAL = "info", "warning", "critical"

PENDING, DELIVERED, DEAD = "pending", "delivered", "dead"

# Channels a holder may switch; in-app is always on.
SWITCHABLE = (SMS, EMAIL, WEBHOOK)
# Channels that carry every security alert whatever the holder's setting.
ALWAYS_FOR_SECURITY = (IN_APP, SMS)
# Channels with an address of their own (SMS goes to the bound number).
ADDRESSED = (EMAIL, WEBHOOK)
DEFAULT_ON = {SMS: True, EMAIL: False, WEBHOOK: False}

BEIJING = timezone(timedelta(hours=8), "Asia/Shanghai")
DESTINATION_CONTEXT = "alert_outbox.destination"
TARGET_CONTEXT = "alert_channels.target"
SECRET_CONTEXT = "alert_channels.secret"  # noqa: S105 - a column name, not a secret
PENDING_TARGET_CONTEXT = "alert_channels.pending_target"
PENDING_SECRET_CONTEXT = "alert_channels.pending_secret"  # noqa: S105 - a column name

_EMAIL = re.compile(
    r"[^@\s<>\"',;]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9-]+)+"
)

# Data keys of announced events that are links, not facts: kept out of the alert's data.
_LINK_KEYS = ("not_me_url", "cancel_url")

_SEVERITY: dict[str, str] = {
    "movement.posted": INFO,
    "movement.received": INFO,
    "movement.refunded": INFO,
    "movement.refund_debited": WARNING,
    "movement.failed": WARNING,
    "wallet.transactions_closed": WARNING,
    "wallet.reopen_requested": CRITICAL,
    "wallet.reopen_cancelled": INFO,
    "alerts.channel_on": WARNING,
    "alerts.channel_off_requested": CRITICAL,
    "alerts.channel_off": CRITICAL,
    "alerts.channel_moved": CRITICAL,
    "security.device_added": CRITICAL,
    "security.device_approval_requested": CRITICAL,
    "security.credential_changed": CRITICAL,
    "security.passkey_clone_suspected": CRITICAL,
    "security.recovery_started": CRITICAL,
    "security.recovery_completed": CRITICAL,
    "security.phone_change_requested": CRITICAL,
    "security.phone_changed": CRITICAL,
    "security.sync_enabled": CRITICAL,
    "security.factor_removed": CRITICAL,
    "security.recovery_cancelled": INFO,
    "security.phone_change_cancelled": INFO,
}

# Security events with texts of their own; any other ``security.*`` gets the generic text.
_SECURITY_TEXTS = {
    "security.device_added",
    "security.device_verified",
    "security.device_approved",
    "security.device_approval_requested",
    "security.credential_changed",
    "security.passkey_clone_suspected",
    "security.factor_enrolled",
    "security.factor_removed",
    "security.recovery_started",
    "security.recovery_cancelled",
    "security.recovery_completed",
    "security.phone_change_requested",
    "security.phone_change_cancelled",
    "security.phone_changed",
    "security.sync_enabled",
}


# -- errors ------------------------------------------------------------------------------------


class ChannelAlwaysOn(Conflict):
    slug = "alert-channel-always-on"
    title_key = "alerts.channel.always_on_title"

    def __init__(self, channel: str) -> None:
        super().__init__(f"alerts.channel.always_on.{channel}", extensions={"channel": channel})


class ChannelNeedsTarget(Conflict):
    slug = "alert-channel-no-target"
    title_key = "alerts.channel.no_target_title"

    def __init__(self, channel: str) -> None:
        super().__init__(f"alerts.channel.no_target.{channel}", extensions={"channel": channel})


# -- values ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Phrase:
    """A catalogue text used as a placeholder value, rendered in each alert language."""

    key: str
    params: Mapping[str, str] = field(default_factory=dict)


Param = str | Phrase


@dataclass(frozen=True)
class Recipient:
    """Who an alert is for, as the capability raising it knows them."""

    holder_id: uuid.UUID
    # The bound number (E.164) for SMS; None sends no SMS.
    phone_e164: str | None
    language: Language = "zh-CN"
    # The holder's channel settings as read already in this transaction (``SWITCHABLE``
    # channel: its row, or None for none), read with something else on a hot path (the
    # payment password's statement: ``channel_setting_columns``); None: read when raising.
    channels: Mapping[str, ChannelSetting | None] | None = field(default=None, compare=False)


@dataclass(frozen=True)
class MovementFacts:
    """What an alert may say about a money movement (no personal data)."""

    movement_id: uuid.UUID
    kind: str  # top_up | withdraw | payment | transfer | refund
    amount_fen: int
    source: str  # balance | card
    card_last4: str | None
    payee: str | None  # merchant name or masked phone of a transfer's recipient
    payer: str | None  # masked phone of a transfer's sender
    device_id: uuid.UUID | None
    # For a refund: the kind of the movement it refunds.
    refunded_kind: str | None = None


@dataclass(frozen=True)
class ChannelView:
    """One channel as it is in effect at a moment (a due pending change applied)."""

    channel: str
    enabled: bool
    target_enc: str | None
    secret_enc: str | None
    pending_enabled: bool | None
    pending_target_enc: str | None
    pending_effective_at: datetime | None
    # Which column the target and secret were read from (a due pending change is read from
    # the pending columns until a write settles it), for decryption.
    sealed_in_pending: bool = False

    @property
    def target_context(self) -> str:
        return PENDING_TARGET_CONTEXT if self.sealed_in_pending else TARGET_CONTEXT

    @property
    def secret_context(self) -> str:
        return PENDING_SECRET_CONTEXT if self.sealed_in_pending else SECRET_CONTEXT

    @property
    def always_for_security(self) -> bool:
        return self.channel in ALWAYS_FOR_SECURITY

    @property
    def switchable(self) -> bool:
        return self.channel in SWITCHABLE

    @property
    def has_target(self) -> bool:
        return self.channel not in ADDRESSED or self.target_enc is not None

    @property
    def delivering(self) -> bool:
        """On, and with somewhere to deliver to."""
        return self.enabled and self.has_target

    @property
    def switching_off(self) -> bool:
        return self.pending_enabled is False


def beijing_time(moment: datetime) -> str:
    return moment.astimezone(BEIJING).strftime("%Y-%m-%d %H:%M")


def _beijing_iso(value: object) -> str | None:
    if not isinstance(value, str):
        return None
    try:
        return beijing_time(datetime.fromisoformat(value))
    except ValueError:
        return None


def _render(key: str, lang: Language, params: Mapping[str, Param]) -> str:
    values = {
        name: text(value.key, lang, **value.params) if isinstance(value, Phrase) else value
        for name, value in params.items()
    }
    return text(key, lang, **values)


def category_of(kind: str) -> str:
    return TRANSACTION if kind.startswith("movement.") else SECURITY


def mask_email(address: str) -> str:
    local, _, domain = address.partition("@")
    return f"{local[:1]}***@{domain}"


def mask_url(url: str) -> str:
    """Scheme and host only: a webhook path often carries a token of its own."""
    parts = urlsplit(url)
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname}{port}/…"


def normalise_email(value: str) -> str:
    address = value.strip()
    if len(address) > 254 or not _EMAIL.fullmatch(address):
        raise InvalidInput("alerts.channel.email_invalid", extensions={"field": "address"})
    local, _, domain = address.partition("@")
    return f"{local}@{domain.lower()}"


# -- channel settings --------------------------------------------------------------------------


class ChannelSetting(Protocol):
    """What a view is made of: an ``AlertChannel`` row, or its columns read alone."""

    @property
    def enabled(self) -> bool: ...
    @property
    def target_enc(self) -> str | None: ...
    @property
    def secret_enc(self) -> str | None: ...
    @property
    def pending_enabled(self) -> bool | None: ...
    @property
    def pending_target_enc(self) -> str | None: ...
    @property
    def pending_secret_enc(self) -> str | None: ...
    @property
    def pending_effective_at(self) -> datetime | None: ...


def _view(channel: str, row: ChannelSetting | None, now: datetime) -> ChannelView:
    if channel == IN_APP:
        return ChannelView(IN_APP, True, None, None, None, None, None)
    if row is None:
        return ChannelView(channel, DEFAULT_ON[channel], None, None, None, None, None)
    due = row.pending_effective_at is not None and row.pending_effective_at <= now
    if due:
        moved = row.pending_target_enc is not None
        return ChannelView(
            channel=channel,
            enabled=row.enabled if row.pending_enabled is None else row.pending_enabled,
            target_enc=row.pending_target_enc if moved else row.target_enc,
            secret_enc=row.pending_secret_enc if moved else row.secret_enc,
            pending_enabled=None,
            pending_target_enc=None,
            pending_effective_at=None,
            sealed_in_pending=moved,
        )
    return ChannelView(
        channel=channel,
        enabled=row.enabled,
        target_enc=row.target_enc,
        secret_enc=row.secret_enc,
        pending_enabled=row.pending_enabled,
        pending_target_enc=row.pending_target_enc,
        pending_effective_at=row.pending_effective_at,
    )


def channel_views(db: Session, holder_id: uuid.UUID, now: datetime) -> dict[str, ChannelView]:
    # A channel changed earlier in this transaction is seen: flushed first, then read on the
    # connection (see kit.db.core).
    db.flush()
    settings = core(db).execute(_CHANNEL_SETTINGS, {"holder_id": holder_id})
    return _views_of({row.channel: row for row in settings}, now)


def _views_of(rows: Mapping[str, ChannelSetting | None], now: datetime) -> dict[str, ChannelView]:
    """Every channel's view at ``now`` from the holder's rows by channel (none: the default)."""
    return {channel: _view(channel, rows.get(channel), now) for channel in CHANNELS}


_ALERTS = cast(Table, Alert.__table__)
_DELIVERIES = cast(Table, AlertDelivery.__table__)
_INSERT_ALERT = insert(_ALERTS)
_INSERT_DELIVERIES = insert(_DELIVERIES)
# What raise_alert writes of an outbox row (the id is the table's own).
_DELIVERY_COLUMNS = tuple(c for c in _DELIVERIES.columns if not c.primary_key)


@functools.cache
def _alert_and_deliveries(count: int) -> Insert:
    """PostgreSQL: the alert (``alert_<column>`` parameters) and its ``count`` outbox rows
    (``<column>_<i>``) in one statement, built once for each count of channels; the outbox
    rows' foreign key to the alert is checked when the whole statement is done."""
    alert = (
        insert(_ALERTS)
        .values({c.key: bindparam(f"alert_{c.key}", type_=c.type) for c in _ALERTS.columns})
        .cte("alert")
    )
    # Rows as SELECTs of parameters joined by UNION ALL: a multi-row VALUES list would make
    # SQLAlchemy compile the statement again on every execution (it is not cached).
    rows = [
        select(*(bindparam(f"{c.key}_{i}", type_=c.type) for c in _DELIVERY_COLUMNS))
        for i in range(count)
    ]
    return (
        insert(_DELIVERIES)
        .from_select([c.key for c in _DELIVERY_COLUMNS], union_all(*rows) if count > 1 else rows[0])
        .add_cte(alert)
    )


# What a channel's view is made of (``ChannelSetting``), in this order.
_SETTING_KEYS = (
    "enabled",
    "target_enc",
    "secret_enc",
    "pending_enabled",
    "pending_target_enc",
    "pending_secret_enc",
    "pending_effective_at",
)


class ChannelColumns(NamedTuple):
    """A channel's settings read alone (``ChannelSetting``), in ``_SETTING_KEYS`` order."""

    enabled: bool
    target_enc: str | None
    secret_enc: str | None
    pending_enabled: bool | None
    pending_target_enc: str | None
    pending_secret_enc: str | None
    pending_effective_at: datetime | None


def channel_setting_columns(
    holder_id: ColumnElement[uuid.UUID] | InstrumentedAttribute[uuid.UUID],
) -> tuple[list[Any], list[tuple[Any, ColumnElement[bool]]]]:
    """For a statement of another capability that reads a holder anyway: the columns of the
    holder's ``SWITCHABLE`` channels (``len(_SETTING_KEYS)`` each, in that order; NULLs for a
    channel without a row) and the outer joins that bring them, to add to its own.
    ``channel_settings_of`` makes the ``Recipient.channels`` of them."""
    columns: list[Any] = []
    joins: list[tuple[Any, ColumnElement[bool]]] = []
    for channel in SWITCHABLE:
        table = aliased(AlertChannel, name=f"channel_{channel}")
        joins.append((table, and_(table.holder_id == holder_id, table.channel == literal(channel))))
        columns.extend(getattr(table, key) for key in _SETTING_KEYS)
    return columns, joins


def channel_settings_of(values: Sequence[Any]) -> dict[str, ChannelSetting | None]:
    """``Recipient.channels`` from the values of ``channel_setting_columns``: a channel whose
    row is missing (its ``enabled`` NULL) is None, as ``channel_views`` finds it."""
    width = len(_SETTING_KEYS)
    found: dict[str, ChannelSetting | None] = {}
    for index, channel in enumerate(SWITCHABLE):
        part = values[index * width : (index + 1) * width]
        found[channel] = None if part[0] is None else ChannelColumns._make(part)
    return found


# Built once; columns, not entities (every alert reads them).
_CHANNEL_SETTINGS = select(
    AlertChannel.channel,
    *(getattr(AlertChannel, key) for key in _SETTING_KEYS),
).where(AlertChannel.holder_id == bindparam("holder_id", type_=Uuid()))


def destination_of(env: Container, view: ChannelView) -> tuple[str, str | None] | None:
    """The email address or webhook URL (and secret) in effect, decrypted; None if unset."""
    if view.target_enc is None:
        return None
    target = env.cipher.decrypt(view.target_enc, context=view.target_context)
    secret = env.cipher.decrypt_optional(view.secret_enc, context=view.secret_context)
    return target, secret


def masked_target(channel: str, target: str) -> str:
    return mask_email(target) if channel == EMAIL else mask_url(target)


def display_targets(env: Container, view: ChannelView) -> tuple[str | None, str | None]:
    """The masked address in effect and the masked pending one, for the holder to read."""
    current = destination_of(env, view)
    pending = None
    if view.pending_target_enc is not None:
        pending = env.cipher.decrypt(view.pending_target_enc, context=PENDING_TARGET_CONTEXT)
    return (
        masked_target(view.channel, current[0]) if current else None,
        masked_target(view.channel, pending) if pending else None,
    )


class RaisedAlert(NamedTuple):
    """An alert as ``raise_alert`` wrote it (the row's columns; no ORM object to keep)."""

    id: uuid.UUID
    holder_id: uuid.UUID
    kind: str
    category: str
    severity: str
    language: str
    title_zh: str
    body_zh: str
    title_en: str
    body_en: str
    not_me_url: str | None
    data: str
    device_id: uuid.UUID | None
    created_at: datetime
    read_at: datetime | None


# -- raising -----------------------------------------------------------------------------------


def _channels_for(
    db: Session, env: Container, recipient: Recipient, kind: str, category: str, now: datetime
) -> list[str]:
    if kind.startswith("security.") and not env.settings.controls.security_alerts:
        return [IN_APP]
    if recipient.channels is not None:
        views = _views_of(recipient.channels, now)
    else:
        views = channel_views(db, recipient.holder_id, now)
    chosen = [IN_APP]
    for channel in (SMS, EMAIL, WEBHOOK):
        view = views[channel]
        if channel == SMS and recipient.phone_e164 is None:
            continue
        forced = category == SECURITY and view.always_for_security
        if forced or view.delivering:
            chosen.append(channel)
    return chosen


def raise_alert(
    db: Session,
    env: Container,
    recipient: Recipient,
    kind: str,
    *,
    params: Mapping[str, Param] | None = None,
    data: Mapping[str, Any] | None = None,
    severity: str | None = None,
    not_me_url: str | None = None,
    device_id: uuid.UUID | None = None,
    title_key: str | None = None,
    body_key: str | None = None,
) -> RaisedAlert:
    """Write the alert and its outbox rows in the caller's transaction (written, not committed).

    Texts are ``alerts.<kind>.title`` / ``alerts.<kind>.body`` unless keys are given; ``time``
    (Beijing time, now) is always among the placeholders.
    """
    now = env.clock.now()
    values: dict[str, Param] = {"time": beijing_time(now)}
    values.update(params or {})
    title_key = title_key or f"alerts.{kind}.title"
    body_key = body_key or f"alerts.{kind}.body"
    texts = {
        lang: (_render(title_key, lang, values), _render(body_key, lang, values))
        for lang in LANGUAGES
    }
    category = category_of(kind)
    row: dict[str, Any] = {
        "id": uuid.uuid4(),
        "holder_id": recipient.holder_id,
        "kind": kind,
        "category": category,
        "severity": severity or _SEVERITY.get(kind, WARNING if category == SECURITY else INFO),
        "language": recipient.language,
        "title_zh": texts["zh-CN"][0],
        "body_zh": texts["zh-CN"][1],
        "title_en": texts["en"][0],
        "body_en": texts["en"][1],
        "not_me_url": not_me_url,
        "data": json.dumps(dict(data or {}), sort_keys=True, ensure_ascii=False, default=str),
        "device_id": device_id,
        "created_at": now,
        "read_at": None,
    }
    deliveries: list[dict[str, Any]] = []
    for channel in _channels_for(db, env, recipient, kind, category, now):
        destination = None
        if channel == SMS and recipient.phone_e164 is not None:
            destination = env.cipher.encrypt(recipient.phone_e164, context=DESTINATION_CONTEXT)
        in_app = channel == IN_APP
        deliveries.append(
            {
                "alert_id": row["id"],
                "holder_id": recipient.holder_id,
                "channel": channel,
                "destination_enc": destination,
                "status": DELIVERED if in_app else PENDING,
                "attempts": 0,
                "due_at": now,
                "locked_until": None,
                "claimed_by": None,
                "last_error": None,
                "created_at": now,
                "delivered_at": now if in_app else None,
            }
        )
    # Core inserts, not ORM objects: every movement and security event writes these, and the
    # unit of work's bookkeeping for them cost more than the statements. What is returned is
    # what was written (columns, not an entity of the session). What the caller has pending
    # goes first (the holder an alert is for may be new in this transaction).
    db.flush()
    if deliveries and is_postgres(db):
        params = {f"alert_{key}": value for key, value in row.items()}
        for i, delivery in enumerate(deliveries):
            params.update({f"{key}_{i}": value for key, value in delivery.items()})
        core(db).execute(_alert_and_deliveries(len(deliveries)), params)
    else:
        core(db).execute(_INSERT_ALERT, row)
        if deliveries:
            core(db).execute(_INSERT_DELIVERIES, deliveries)
    return RaisedAlert(**row)


def security_alert(
    db: Session,
    env: Container,
    recipient: Recipient,
    event: str,
    *,
    device_id: uuid.UUID | None,
    data: Mapping[str, Any],
) -> RaisedAlert:
    """The alert for an announced ``security.*`` event (``identity.links.announce``)."""
    unknown = Phrase("alerts.unknown")
    until = next(
        (
            value
            for key in ("cooling_off_until", "completes_at", "effective_at", "payments_hold_until")
            if (value := _beijing_iso(data.get(key)))
        ),
        None,
    )
    credential = str(data.get("credential", ""))
    via = str(data.get("via", "change"))
    factor = str(data.get("factor", ""))
    params: dict[str, Param] = {
        "event": event,
        "device": str(data["device_label"]) if data.get("device_label") else unknown,
        "until": until or unknown,
        "new_phone": str(data.get("new_phone_masked") or "") or unknown,
        "credential": Phrase(f"alerts.credential.{credential}")
        if credential in ("password", "payment_password")
        else unknown,
        "via": Phrase(f"alerts.via.{'reset' if via == 'reset' else 'change'}"),
        "factor": Phrase(f"alerts.factor.{factor}")
        if factor in ("totp", "passkey", "recovery_code", "sms")
        else unknown,
    }
    named = event if event in _SECURITY_TEXTS else "security.generic"
    url = data.get("not_me_url")
    return raise_alert(
        db,
        env,
        recipient,
        event,
        params=params,
        data={k: v for k, v in data.items() if k not in _LINK_KEYS},
        not_me_url=str(url) if url else None,
        device_id=device_id,
        title_key=f"alerts.{named}.title",
        body_key=f"alerts.{named}.body",
    )


def movement_alert(
    db: Session,
    env: Container,
    recipient: Recipient,
    kind: str,
    movement: MovementFacts,
    *,
    not_me_url: str | None = None,
) -> RaisedAlert:
    """A money alert: ``movement.posted | received | failed | refunded | refund_debited``."""
    source: Param = (
        Phrase("alerts.source.card", {"last4": movement.card_last4 or "????"})
        if movement.source == "card"
        else Phrase("alerts.source.balance")
    )
    what_kind = movement.refunded_kind if movement.kind == "refund" else movement.kind
    params: dict[str, Param] = {
        "amount": format_yuan(movement.amount_fen),
        "source": source,
        "card": Phrase("alerts.source.card", {"last4": movement.card_last4 or "????"}),
        "payee": movement.payee or Phrase("alerts.unknown"),
        "payer": movement.payer or Phrase("alerts.unknown"),
        "what": Phrase(f"alerts.what.{what_kind}") if what_kind else Phrase("alerts.unknown"),
    }
    body_key = None
    if kind == "movement.posted":
        body_key = f"alerts.movement.posted.{movement.kind}"
    data = {
        "movement_id": str(movement.movement_id),
        "movement_kind": movement.kind,
        "amount_fen": movement.amount_fen,
        "source": movement.source,
        "card_last4": movement.card_last4,
        "payee": movement.payee,
    }
    return raise_alert(
        db,
        env,
        recipient,
        kind,
        params=params,
        data=data,
        not_me_url=not_me_url,
        device_id=movement.device_id,
        body_key=body_key,
    )


# -- queries for the attack simulator ----------------------------------------------------------


def delivered_count(db: Session, holder_id: uuid.UUID) -> int:
    """Alerts delivered to the holder on at least one channel (in-app counts), each once."""
    count = db.scalar(
        select(func.count(func.distinct(AlertDelivery.alert_id))).where(
            AlertDelivery.holder_id == holder_id, AlertDelivery.status == DELIVERED
        )
    )
    return int(count or 0)


def first_delivered_after(db: Session, holder_id: uuid.UUID, since: datetime) -> datetime | None:
    """When the first delivery to the holder at or after ``since`` happened, on any channel."""
    return db.scalar(
        select(func.min(AlertDelivery.delivered_at)).where(
            AlertDelivery.holder_id == holder_id,
            AlertDelivery.status == DELIVERED,
            AlertDelivery.delivered_at >= since,
        )
    )


# -- the service behind the API ----------------------------------------------------------------


@dataclass(frozen=True)
class ChannelChange:
    """What one settings request did to one channel."""

    channel: str
    outcome: str  # on | off | off_pending | moved | moved_pending | unchanged
    effective_at: datetime | None = None


StepUpGuard = Callable[[], None]


class AlertService:
    def __init__(self, db: Session, env: Container) -> None:
        self.db = db
        self.env = env
        self.clock = env.clock
        self.cipher = env.cipher

    # -- in-app --------------------------------------------------------------------------

    def list_alerts(
        self, holder_id: uuid.UUID, *, offset: int, limit: int, unread_only: bool = False
    ) -> tuple[list[Alert], int]:
        where = [Alert.holder_id == holder_id]
        if unread_only:
            where.append(Alert.read_at.is_(None))
        total = self.db.scalar(select(func.count()).select_from(Alert).where(*where)) or 0
        rows = self.db.scalars(
            select(Alert)
            .where(*where)
            .order_by(Alert.created_at.desc(), Alert.id)
            .offset(offset)
            .limit(limit)
        ).all()
        return list(rows), int(total)

    def unread_count(self, holder_id: uuid.UUID) -> int:
        count = self.db.scalar(
            select(func.count())
            .select_from(Alert)
            .where(Alert.holder_id == holder_id, Alert.read_at.is_(None))
        )
        return int(count or 0)

    def deliveries_of(self, alert_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, list[AlertDelivery]]:
        found: dict[uuid.UUID, list[AlertDelivery]] = {alert_id: [] for alert_id in alert_ids}
        if not alert_ids:
            return found
        for row in self.db.scalars(
            select(AlertDelivery)
            .where(AlertDelivery.alert_id.in_(list(alert_ids)))
            .order_by(AlertDelivery.id)
        ):
            found[row.alert_id].append(row)
        return found

    def mark_read(self, holder_id: uuid.UUID, alert_id: uuid.UUID) -> Alert:
        alert = self.db.get(Alert, alert_id)
        # Another holder's alert does not exist, as far as this holder can tell.
        if alert is None or alert.holder_id != holder_id:
            raise NotFound("alerts.not_found")
        if alert.read_at is None:
            alert.read_at = self.clock.now()
            self.db.flush()
        return alert

    # -- channel settings ----------------------------------------------------------------

    def channels(self, holder_id: uuid.UUID) -> list[ChannelView]:
        views = channel_views(self.db, holder_id, self.clock.now())
        return [views[channel] for channel in CHANNELS]

    def _off_delay(self) -> timedelta:
        if not self.env.settings.controls.security_alerts:
            return timedelta(0)
        return timedelta(hours=self.env.settings.alert_off_delay_hours)

    def _row(self, holder_id: uuid.UUID, channel: str) -> AlertChannel:
        """The holder's row for ``channel``, locked, with any due pending change applied."""
        now = self.clock.now()
        query = select(AlertChannel).where(
            AlertChannel.holder_id == holder_id, AlertChannel.channel == channel
        )
        if is_postgres(self.db):
            query = query.with_for_update()
        row = self.db.scalar(query)
        if row is None:
            row = AlertChannel(
                id=uuid.uuid4(),
                holder_id=holder_id,
                channel=channel,
                enabled=DEFAULT_ON[channel],
                updated_at=now,
            )
            try:
                with self.db.begin_nested():
                    self.db.add(row)
                    self.db.flush()
            except IntegrityError:
                # A concurrent request created it first.
                row = self.db.scalars(query).one()
        if row.pending_effective_at is not None and row.pending_effective_at <= now:
            self._settle(row)
        return row

    def _settle(self, row: AlertChannel) -> None:
        if row.pending_enabled is not None:
            row.enabled = row.pending_enabled
        if row.pending_target_enc is not None:
            row.target_enc = self.cipher.encrypt(
                self.cipher.decrypt(row.pending_target_enc, context=PENDING_TARGET_CONTEXT),
                context=TARGET_CONTEXT,
            )
            row.secret_enc = self.cipher.encrypt_optional(
                self.cipher.decrypt_optional(
                    row.pending_secret_enc, context=PENDING_SECRET_CONTEXT
                ),
                context=SECRET_CONTEXT,
            )
        self._clear_pending(row)

    @staticmethod
    def _clear_pending(row: AlertChannel) -> None:
        row.pending_enabled = None
        row.pending_target_enc = None
        row.pending_secret_enc = None
        row.pending_requested_at = None
        row.pending_effective_at = None

    def _announce(
        self,
        recipient: Recipient,
        kind: str,
        channel: str,
        *,
        device_id: uuid.UUID | None,
        ip: str | None,
        until: datetime | None = None,
        target: str | None = None,
    ) -> None:
        target_param: Param = target or Phrase(f"alerts.target.{channel}")
        if channel in ADDRESSED and target is None:
            target_param = Phrase("alerts.unknown")
        raise_alert(
            self.db,
            self.env,
            recipient,
            kind,
            params={
                "channel": Phrase(f"alerts.channel_name.{channel}"),
                "until": beijing_time(until) if until else Phrase("alerts.unknown"),
                "target": target_param,
            },
            data={"channel": channel, "effective_at": until.isoformat() if until else None},
            device_id=device_id,
        )
        audit.record(
            self.db,
            self.clock,
            kind,
            holder_id=recipient.holder_id,
            device_id=device_id,
            ip=ip,
            data={
                "channel": channel,
                "target": target,
                "effective_at": until.isoformat() if until else None,
            },
        )

    def switch_channels(
        self,
        recipient: Recipient,
        wanted: Mapping[str, bool],
        *,
        device_id: uuid.UUID | None,
        ip: str | None,
        step_up: StepUpGuard,
    ) -> list[ChannelChange]:
        """Switch channels on (instant) and off (step-up, then after the delay).

        ``step_up`` is called once, after the request's own checks, when anything goes off; it
        raises if the caller has no fresh step-up. Every change is alerted before it applies,
        so the channel being switched off carries the news too.
        """
        holder_id = recipient.holder_id
        now = self.clock.now()
        views = channel_views(self.db, holder_id, now)
        going_on: list[str] = []
        going_off: list[str] = []
        for channel in CHANNELS:
            if channel not in wanted:
                continue
            view = views[channel]
            if channel == IN_APP:
                if not wanted[channel]:
                    raise ChannelAlwaysOn(IN_APP)
                continue
            if wanted[channel]:
                if not view.has_target:
                    raise ChannelNeedsTarget(channel)
                if not view.enabled or view.switching_off:
                    going_on.append(channel)
            elif view.enabled and not view.switching_off:
                going_off.append(channel)
        if going_off:
            step_up()
        changes = [ChannelChange(c, "unchanged") for c in wanted if c not in going_on + going_off]
        for channel in going_on:
            row = self._row(holder_id, channel)
            row.enabled = True
            if row.pending_enabled is False:
                row.pending_enabled = None
                if row.pending_target_enc is None:
                    self._clear_pending(row)
            row.updated_at = now
            self.db.flush()
            target = display_targets(self.env, _view(channel, row, now))[0]
            self._announce(
                recipient, "alerts.channel_on", channel, device_id=device_id, ip=ip, target=target
            )
            changes.append(ChannelChange(channel, "on"))
        delay = self._off_delay()
        for channel in going_off:
            row = self._row(holder_id, channel)
            effective_at = now + delay
            kind = "alerts.channel_off_requested" if delay else "alerts.channel_off"
            # Alerted first: the channel is still on, so the news goes out on it as well.
            self._announce(recipient, kind, channel, device_id=device_id, ip=ip, until=effective_at)
            if delay:
                row.pending_enabled = False
                row.pending_requested_at = now
                row.pending_effective_at = effective_at
                changes.append(ChannelChange(channel, "off_pending", effective_at))
            else:
                row.enabled = False
                self._clear_pending(row)
                changes.append(ChannelChange(channel, "off", now))
            row.updated_at = now
            self.db.flush()
        return changes

    def set_email(
        self,
        recipient: Recipient,
        address: str,
        *,
        device_id: uuid.UUID | None,
        ip: str | None,
        step_up: StepUpGuard,
    ) -> ChannelChange:
        normalised = normalise_email(address)
        return self._set_target(
            recipient, EMAIL, normalised, None, device_id=device_id, ip=ip, step_up=step_up
        )

    def set_webhook(
        self,
        recipient: Recipient,
        url: str,
        *,
        device_id: uuid.UUID | None,
        ip: str | None,
        step_up: StepUpGuard,
    ) -> tuple[ChannelChange, str]:
        """Set the webhook URL with a new signing secret; returns the change and the secret
        (shown this once)."""
        url = url.strip()
        try:
            check_webhook_url(
                url,
                allow_private=self.env.settings.webhook_allow_private_targets,
                resolve=False,
            )
        except UnsafeWebhookTarget as exc:
            raise InvalidInput(str(exc), extensions={"field": "url"}) from exc
        secret = "whsec_" + secrets.token_urlsafe(32)
        change = self._set_target(
            recipient, WEBHOOK, url, secret, device_id=device_id, ip=ip, step_up=step_up
        )
        return change, secret

    def _set_target(
        self,
        recipient: Recipient,
        channel: str,
        target: str,
        secret: str | None,
        *,
        device_id: uuid.UUID | None,
        ip: str | None,
        step_up: StepUpGuard,
    ) -> ChannelChange:
        """A new address for a channel. Instant when the channel is not delivering anywhere;
        otherwise it mutes the current address, so it is a step-up and a delay like an off."""
        holder_id = recipient.holder_id
        now = self.clock.now()
        view = channel_views(self.db, holder_id, now)[channel]
        current = destination_of(self.env, view)
        if view.delivering and current is not None and current[0] == target and secret is None:
            return ChannelChange(channel, "unchanged")
        masked = masked_target(channel, target)
        if not view.delivering:
            row = self._row(holder_id, channel)
            row.target_enc = self.cipher.encrypt(target, context=TARGET_CONTEXT)
            row.secret_enc = self.cipher.encrypt_optional(secret, context=SECRET_CONTEXT)
            row.enabled = True
            self._clear_pending(row)
            row.updated_at = now
            self.db.flush()
            self._announce(
                recipient, "alerts.channel_on", channel, device_id=device_id, ip=ip, target=masked
            )
            return ChannelChange(channel, "on")
        step_up()
        delay = self._off_delay()
        effective_at = now + delay
        row = self._row(holder_id, channel)
        # Alerted first, so the current address hears of its replacement.
        self._announce(
            recipient,
            "alerts.channel_moved",
            channel,
            device_id=device_id,
            ip=ip,
            until=effective_at,
            target=masked,
        )
        if delay:
            row.pending_target_enc = self.cipher.encrypt(target, context=PENDING_TARGET_CONTEXT)
            row.pending_secret_enc = self.cipher.encrypt_optional(
                secret, context=PENDING_SECRET_CONTEXT
            )
            row.pending_requested_at = now
            row.pending_effective_at = effective_at
            outcome = "moved_pending"
        else:
            row.target_enc = self.cipher.encrypt(target, context=TARGET_CONTEXT)
            row.secret_enc = self.cipher.encrypt_optional(secret, context=SECRET_CONTEXT)
            self._clear_pending(row)
            outcome = "moved"
        row.updated_at = now
        self.db.flush()
        return ChannelChange(channel, outcome, effective_at)
