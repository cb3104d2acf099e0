"""HTTP: the holder's alerts (the in-app channel) and alert channel settings.

Switching a channel off, or giving an active email / webhook channel a new address, is the
sensitive action ``disable_alert_channel``: the device must be past its cooling-off period and
hold a fresh step-up, and the change takes effect only after ``WALLETGUARD_ALERT_OFF_DELAY_HOURS``
(announced at once on every channel). Switching a channel on is instant.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from typing import Annotated, Any, cast

from fastapi import APIRouter, Depends, Query
from sqlalchemy.orm import Session

from walletguard.alerts import schemas
from walletguard.alerts.models import Alert, AlertDelivery
from walletguard.alerts.service import (
    AlertService,
    ChannelChange,
    ChannelView,
    StepUpGuard,
    beijing_time,
    display_targets,
)
from walletguard.bootstrap import Container, Env
from walletguard.identity.auth import CurrentHolder
from walletguard.identity.guards import (
    SensitiveAction,
    require_past_cooling_off,
    require_step_up,
)
from walletguard.identity.links import alert_recipient
from walletguard.identity.service import Principal
from walletguard.kit.http import DbSession, Lang
from walletguard.kit.i18n import Language, text
from walletguard.kit.pagination import PageParams, Pagination, page_params

router = APIRouter(prefix="/api/v1", tags=["alerts"])


def _alert_out(
    alert: Alert, deliveries: Sequence[AlertDelivery], lang: Language
) -> schemas.AlertOut:
    english = lang == "en"
    return schemas.AlertOut(
        id=alert.id,
        kind=alert.kind,
        category=cast(Any, alert.category),
        severity=cast(Any, alert.severity),
        title=alert.title_en if english else alert.title_zh,
        body=alert.body_en if english else alert.body_zh,
        not_me_url=alert.not_me_url,
        data=json.loads(alert.data),
        device_id=alert.device_id,
        created_at=alert.created_at,
        read_at=alert.read_at,
        deliveries=[
            schemas.DeliveryOut(
                channel=cast(Any, row.channel),
                status=cast(Any, row.status),
                attempts=row.attempts,
                delivered_at=row.delivered_at,
            )
            for row in deliveries
        ],
    )


@router.get("/alerts", response_model=schemas.AlertPage, summary="My alerts, newest first")
def list_alerts(
    principal: CurrentHolder,
    db: DbSession,
    env: Env,
    lang: Lang,
    params: PageParams = Depends(page_params),
    unread_only: Annotated[bool, Query(description="Only alerts not yet marked read.")] = False,
) -> schemas.AlertPage:
    service = AlertService(db, env)
    rows, total = service.list_alerts(
        principal.holder_id, offset=params.offset, limit=params.limit, unread_only=unread_only
    )
    unread = total if unread_only else service.unread_count(principal.holder_id)
    deliveries = service.deliveries_of([row.id for row in rows])
    return schemas.AlertPage(
        items=[_alert_out(row, deliveries[row.id], lang) for row in rows],
        unread=unread,
        pagination=Pagination.of(params, total),
    )


@router.post(
    "/alerts/{alert_id}/read", response_model=schemas.AlertOut, summary="Mark an alert read"
)
def mark_alert_read(
    alert_id: uuid.UUID, principal: CurrentHolder, db: DbSession, env: Env, lang: Lang
) -> schemas.AlertOut:
    service = AlertService(db, env)
    alert = service.mark_read(principal.holder_id, alert_id)
    return _alert_out(alert, service.deliveries_of([alert.id])[alert.id], lang)


# -- channel settings --------------------------------------------------------------------------


def _step_up_guard(db: Session, env: Container, principal: Principal) -> StepUpGuard:
    def guard() -> None:
        action = SensitiveAction.DISABLE_ALERT_CHANNEL
        require_past_cooling_off(db, env, principal, action)
        require_step_up(db, env, principal, action)

    return guard


def _channel_out(env: Container, view: ChannelView) -> schemas.ChannelOut:
    current, pending_target = display_targets(env, view)
    pending = None
    if view.pending_effective_at is not None:
        pending = schemas.PendingChangeOut(
            enabled=view.pending_enabled,
            target=pending_target,
            effective_at=view.pending_effective_at,
        )
    return schemas.ChannelOut(
        channel=cast(Any, view.channel),
        enabled=view.enabled,
        delivering=view.delivering,
        always_for_security_alerts=view.always_for_security,
        can_switch_off=view.switchable,
        target=current,
        pending=pending,
    )


def _channels_out(
    db: Session,
    env: Container,
    principal: Principal,
    lang: Language,
    changes: Sequence[ChannelChange] = (),
) -> schemas.AlertChannelsOut:
    views = AlertService(db, env).channels(principal.holder_id)
    pending_offs = [c for c in changes if c.outcome in ("off_pending", "moved_pending")]
    message = None
    if pending_offs and pending_offs[0].effective_at is not None:
        message = text(
            "alerts.channel.off_pending", lang, until=beijing_time(pending_offs[0].effective_at)
        )
    return schemas.AlertChannelsOut(
        channels=[_channel_out(env, view) for view in views],
        changes=[
            schemas.ChannelChangeOut(
                channel=cast(Any, c.channel),
                outcome=cast(Any, c.outcome),
                effective_at=c.effective_at,
            )
            for c in changes
        ],
        message=message,
    )


@router.get(
    "/me/alert-channels",
    response_model=schemas.AlertChannelsOut,
    summary="My alert channels: what is on, where it goes, what is about to change",
)
def get_alert_channels(
    principal: CurrentHolder, db: DbSession, env: Env, lang: Lang
) -> schemas.AlertChannelsOut:
    return _channels_out(db, env, principal, lang)


@router.put(
    "/me/alert-channels",
    response_model=schemas.AlertChannelsOut,
    summary="Switch alert channels on (instant) or off (step-up, then after a delay)",
)
def put_alert_channels(
    body: schemas.AlertChannelsUpdate,
    principal: CurrentHolder,
    db: DbSession,
    env: Env,
    lang: Lang,
) -> schemas.AlertChannelsOut:
    wanted = {name: value for name, value in body.model_dump().items() if value is not None}
    changes = AlertService(db, env).switch_channels(
        alert_recipient(db, env, principal.holder_id),
        wanted,
        device_id=principal.device_id,
        ip=principal.ip,
        step_up=_step_up_guard(db, env, principal),
    )
    return _channels_out(db, env, principal, lang, changes)


@router.put(
    "/me/alert-channels/email",
    response_model=schemas.AlertChannelsOut,
    summary="Send alerts to this email address (a new address for an active channel is delayed)",
)
def put_alert_email(
    body: schemas.EmailChannelSet,
    principal: CurrentHolder,
    db: DbSession,
    env: Env,
    lang: Lang,
) -> schemas.AlertChannelsOut:
    change = AlertService(db, env).set_email(
        alert_recipient(db, env, principal.holder_id),
        body.address,
        device_id=principal.device_id,
        ip=principal.ip,
        step_up=_step_up_guard(db, env, principal),
    )
    return _channels_out(db, env, principal, lang, [change])


@router.put(
    "/me/alert-channels/webhook",
    response_model=schemas.WebhookChannelOut,
    summary="Send signed alerts to this URL; returns the signing secret (shown once)",
)
def put_alert_webhook(
    body: schemas.WebhookChannelSet,
    principal: CurrentHolder,
    db: DbSession,
    env: Env,
    lang: Lang,
) -> schemas.WebhookChannelOut:
    change, secret = AlertService(db, env).set_webhook(
        alert_recipient(db, env, principal.holder_id),
        body.url,
        device_id=principal.device_id,
        ip=principal.ip,
        step_up=_step_up_guard(db, env, principal),
    )
    channels = _channels_out(db, env, principal, lang, [change])
    return schemas.WebhookChannelOut(**channels.model_dump(), secret=secret)
