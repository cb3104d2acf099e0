"""The scenario file format (a public contract: docs/scenarios.md documents every field).

A scenario names actors (holders and attackers), their devices with IPs and SIMs, their bank
cards, and the steps they take; the runner plays it against a fresh walletguard instance.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

ACTIONS = (
    "register",
    "login",
    "step_up",
    "approve_device",
    "enable_sync",
    "disable_sync",
    "read_messages",
    "receive_sms",
    "bind_card",
    "unbind_card",
    "reset_payment_password",
    "change_password",
    "set_limit",
    "set_alert",
    "pay",
    "transfer",
    "top_up",
    "withdraw",
    "freeze",
    "report_incident",
    "report_not_me",
    "start_recovery",
    "cancel_recovery",
    "sim_swap",
    "wait",
)
Action = Literal[
    "register",
    "login",
    "step_up",
    "approve_device",
    "enable_sync",
    "disable_sync",
    "read_messages",
    "receive_sms",
    "bind_card",
    "unbind_card",
    "reset_payment_password",
    "change_password",
    "set_limit",
    "set_alert",
    "pay",
    "transfer",
    "top_up",
    "withdraw",
    "freeze",
    "report_incident",
    "report_not_me",
    "start_recovery",
    "cancel_recovery",
    "sim_swap",
    "wait",
]

_DURATION = re.compile(r"^\s*(\d+)\s*(s|m|h|d)\s*$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


class ScenarioError(ValueError):
    """The scenario file is not valid; the message says where."""


def parse_duration(value: str | int) -> timedelta:
    if isinstance(value, int):
        return timedelta(seconds=value)
    match = _DURATION.match(value)
    if not match:
        raise ValueError(f"{value!r} is not a duration like 30m, 25h or 7d")
    return timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DeviceSpec(Strict):
    id: str
    ip: str = "127.0.0.1"
    sim: bool = Field(default=False, description="this device holds the SIM of the actor's phone")
    label: str | None = None


class CardSpec(Strict):
    bank: str = Field(description="bank code from the BIN table, e.g. ICBC")
    number: str
    balance: str = Field(description="yuan, e.g. '50000.00'")
    phone: str | None = Field(default=None, description="reserved phone; the actor's by default")


class ActorSpec(Strict):
    phone: str | None = None
    name: str | None = None
    birthday: str | None = None
    id_number: str | None = None
    password: str | None = None
    payment_password: str | None = None
    devices: list[DeviceSpec] = Field(default_factory=list)
    cards: list[CardSpec] = Field(default_factory=list)
    factors: list[Literal["totp", "passkey", "recovery_codes"]] = Field(
        default_factory=list, description="second factors enrolled right after registering"
    )
    knows: dict[str, dict[str, str]] = Field(
        default_factory=dict,
        description="secrets of other actors this one holds, e.g. a leaked password: "
        "{victim: {password: ...}}",
    )


class Step(BaseModel):
    """One step. Action-specific fields (merchant, amount, card, otp_from …) stay in extra."""

    model_config = ConfigDict(extra="allow")

    actor: str | None = None
    device: str | None = None
    do: Action | None = None
    as_: str | None = Field(default=None, alias="as")
    wait: str | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> Step:
        if self.wait is not None:
            parse_duration(self.wait)
            if self.do not in (None, "wait"):
                raise ValueError("a wait step has no other action")
            return self
        if self.do is None:
            raise ValueError("a step needs `do` (or `wait`)")
        if self.do == "wait":
            if "duration" not in (self.model_extra or {}):
                raise ValueError("`do: wait` needs `duration`")
            return self
        if self.actor is None or self.device is None:
            raise ValueError(f"`{self.do}` needs `actor` and `device`")
        return self

    @property
    def extra(self) -> dict[str, Any]:
        return dict(self.model_extra or {})

    @property
    def target(self) -> str:
        """Whose account the step acts on: `as`, or the actor themself."""
        assert self.actor is not None
        return self.as_ or self.actor


class Expectation(Strict):
    loss: dict[str, str] = Field(default_factory=dict)
    min_alerts: dict[str, int] = Field(default_factory=dict)


class Scenario(Strict):
    name: str
    description: str | None = None
    profile: Literal["protected", "vulnerable"] = "protected"
    start: datetime = datetime(2026, 1, 1, tzinfo=UTC)
    actors: dict[str, ActorSpec]
    steps: list[Step]
    expect: dict[str, Expectation] = Field(default_factory=dict)

    @field_validator("start")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        return value if value.tzinfo else value.replace(tzinfo=UTC)

    @model_validator(mode="after")
    def _references(self) -> Scenario:
        for index, step in enumerate(self.steps):
            if step.actor is None:
                continue
            where = f"step {index + 1}"
            actor = self.actors.get(step.actor)
            if actor is None:
                raise ValueError(f"{where}: unknown actor {step.actor!r}")
            usable = {d.id for d in actor.devices}
            if step.as_ is not None and step.as_ in self.actors:
                # Acting as someone, an actor can also hold that person's own (stolen) phone.
                usable |= {d.id for d in self.actors[step.as_].devices}
            if step.device not in usable:
                raise ValueError(f"{where}: {step.actor} has no device {step.device!r}")
            if step.as_ is not None and step.as_ not in self.actors:
                raise ValueError(f"{where}: unknown actor {step.as_!r} in `as`")
        return self


def load_scenario(path: Path) -> Scenario:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ScenarioError(f"{path}: {exc}") from exc
    try:
        return Scenario.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        location = ".".join(str(p) for p in first["loc"])
        raise ScenarioError(f"{path}: {location}: {first['msg']}") from exc
