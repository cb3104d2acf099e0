"""API shapes for phone messages and sync."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, StringConstraints


class SimClaimConfirm(BaseModel):
    model_config = ConfigDict(extra="forbid")
    code: Annotated[str, StringConstraints(strip_whitespace=True, pattern=r"^\d{6}$")]


class SyncState(BaseModel):
    sync_enabled: bool
    holds_sim: bool


class MessageOut(BaseModel):
    id: int
    sender: str
    body: str
    received_at: datetime
    hidden_code: bool
    on_sim_device: bool


class IncomingSms(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sender: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64)]
    body: Annotated[str, StringConstraints(min_length=1, max_length=1000)]
