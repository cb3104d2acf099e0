"""API shapes for alerts and alert channels."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, StringConstraints

from walletguard.kit.pagination import Pagination

ChannelName = Literal["in_app", "sms", "email", "webhook"]


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DeliveryOut(BaseModel):
    channel: ChannelName
    status: Literal["pending", "delivered", "dead"]
    attempts: int
    delivered_at: datetime | None


class AlertOut(BaseModel):
    id: uuid.UUID
    kind: str
    category: Literal["security", "transaction"]
    severity: Literal["info", "warning", "critical"]
    title: str
    body: str
    not_me_url: str | None
    data: dict[str, Any]
    device_id: uuid.UUID | None
    created_at: datetime
    read_at: datetime | None
    deliveries: list[DeliveryOut]


class AlertPage(BaseModel):
    items: list[AlertOut]
    unread: int
    pagination: Pagination


class PendingChangeOut(BaseModel):
    # False: the channel goes off then. None: only the address changes.
    enabled: bool | None
    target: str | None
    effective_at: datetime


class ChannelOut(BaseModel):
    channel: ChannelName
    enabled: bool
    # Delivering: on, and with an address where one is needed.
    delivering: bool
    # Security alerts go on this channel whatever ``enabled`` says (in-app and SMS).
    always_for_security_alerts: bool
    can_switch_off: bool
    target: str | None
    pending: PendingChangeOut | None


class ChannelChangeOut(BaseModel):
    channel: ChannelName
    outcome: Literal["on", "off", "off_pending", "moved", "moved_pending", "unchanged"]
    effective_at: datetime | None


class AlertChannelsOut(BaseModel):
    channels: list[ChannelOut]
    changes: list[ChannelChangeOut] = []
    message: str | None = None


class WebhookChannelOut(AlertChannelsOut):
    # Shown once: the key the receiver verifies X-Walletguard-Signature with.
    secret: str


class AlertChannelsUpdate(StrictModel):
    """Channels to switch; a channel left out is left as it is."""

    in_app: bool | None = None
    sms: bool | None = None
    email: bool | None = None
    webhook: bool | None = None


class EmailChannelSet(StrictModel):
    address: Annotated[str, StringConstraints(strip_whitespace=True, min_length=3, max_length=254)]


class WebhookChannelSet(StrictModel):
    url: Annotated[str, StringConstraints(strip_whitespace=True, min_length=8, max_length=2048)]
