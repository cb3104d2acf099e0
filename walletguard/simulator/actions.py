"""Scenario actions: each plays one actor, on one device and IP, through the public API.

An action returns what happened (``ok | challenged | held | blocked | failed``), the controls
that acted, and a short detail. Codes are read only from what the acting device can see:
``otp_from: synced_sms`` (the account's synced messages on this device), ``sim_sms`` (the SMS
inbox of a SIM this device holds), or a literal code.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import httpx
import pyotp

from walletguard.identity.phone import parse_mobile
from walletguard.messages.otp_guard import recognise_otp
from walletguard.simulator.passkey import SoftwarePasskey
from walletguard.simulator.scenario import Step, parse_duration
from walletguard.simulator.world import Login, World

# Problem type slug -> (outcome, control that acted). Controls use kit/controls.py names where
# a switch exists, so the ablation can relate what acted to what can be switched off.
PROBLEM_OUTCOMES: dict[str, tuple[str, str | None]] = {
    "device-not-verified": ("challenged", "new_device_step_up"),
    "step-up-required": ("challenged", "step_up"),
    "step-up-failed": ("failed", "step_up"),
    "factor-not-allowed": ("challenged", "sms_restricted"),
    "factor-not-enrolled": ("challenged", "step_up"),
    "reset-refused": ("challenged", "sms_restricted"),
    "device-cooling-off": ("blocked", "cooling_off"),
    "cooling-off-cap": ("blocked", "cooling_off"),
    "transactions-closed": ("blocked", "freeze"),
    "payments-locked": ("blocked", "payment_password"),
    "payment-password-wrong": ("failed", "payment_password"),
    "invalid-credentials": ("failed", "password"),
    "too-many-attempts": ("blocked", "rate_limit"),
    "risk-challenge": ("challenged", "risk_engine"),
    "risk-hold": ("held", "risk_engine"),
    "risk-blocked": ("blocked", "risk_engine"),
    "account-frozen": ("blocked", "risk_engine"),
    "limit-exceeded": ("blocked", "limits"),
    "bank-dynamic-password-refused": ("failed", "bank_dynamic_password"),
    "card-blocked": ("blocked", "freeze"),
}


@dataclass
class Outcome:
    outcome: str
    controls: list[str] = field(default_factory=list)
    detail: str = ""


class StepStopped(Exception):
    """The step could not go on; carries the outcome to report."""

    def __init__(self, outcome: Outcome) -> None:
        super().__init__(outcome.detail)
        self.result = outcome


def _problem(response: httpx.Response) -> tuple[str, dict[str, Any]]:
    try:
        body = response.json()
    except ValueError:
        return f"http-{response.status_code}", {}
    if not isinstance(body, dict):
        return f"http-{response.status_code}", {}
    slug = str(body.get("type", "")).rsplit(":", 1)[-1] or f"http-{response.status_code}"
    return slug, body


def stop_for(response: httpx.Response, what: str) -> StepStopped:
    slug, body = _problem(response)
    outcome, control = PROBLEM_OUTCOMES.get(slug, ("failed", None))
    detail = f"{what}: {slug}"
    if body.get("detail"):
        detail += f" — {body['detail']}"
    return StepStopped(Outcome(outcome, [control] if control else [], detail))


def expect_ok(response: httpx.Response, what: str) -> Any:
    if response.status_code >= 400:
        raise stop_for(response, what)
    return response.json() if response.content else None


@dataclass
class Ctx:
    """One step being played."""

    world: World
    step: Step
    index: int

    @property
    def actor(self) -> str:
        assert self.step.actor is not None
        return self.step.actor

    @property
    def device(self) -> str:
        assert self.step.device is not None
        return self.step.device

    @property
    def owner(self) -> str:
        return self.step.target

    @property
    def extra(self) -> dict[str, Any]:
        return self.step.extra

    @property
    def device_holder(self) -> str:
        """Whose device this is in the scenario file: the actor's own, or — a stolen or
        borrowed phone — the account owner's, used together with the session open on it."""
        if any(d.id == self.device for d in self.world.actor(self.actor).devices):
            return self.actor
        return self.owner

    @property
    def http(self) -> httpx.Client:
        return self.world.client(self.device_holder, self.device)

    def session(self) -> Login:
        login = self.world.sessions.get((self.owner, self.device_holder, self.device))
        if login is None:
            raise StepStopped(
                Outcome("failed", [], f"{self.actor} is not signed in on {self.device}")
            )
        return login

    def auth(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.session().token}"}

    def call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {**self.auth(), **kwargs.pop("headers", {})}
        return self.http.request(method, path, headers=headers, **kwargs)

    def secret(self, name: str) -> Any:
        value = self.extra.get(name)
        if value is not None:
            return value
        return self.world.knows(self.actor, self.owner).get(name)

    def idempotency(self) -> dict[str, str]:
        return {"idempotency-key": f"sim-{self.index}-{uuid.uuid4().hex[:8]}"}


# -- reading codes ------------------------------------------------------------------------------


def read_code(ctx: Ctx, phone: str) -> str:
    """The newest one-time code that the acting device can see for ``phone``."""
    source = str(ctx.extra.get("otp_from", "sim_sms"))
    if source == "synced_sms":
        response = ctx.call("GET", "/api/v1/messages")
        if response.status_code >= 400:
            raise stop_for(response, "reading synced messages")
        for message in response.json():
            if message.get("hidden_code"):
                raise StepStopped(
                    Outcome("failed", ["otp_guard"], "the code was hidden from the synced copy")
                )
            match = recognise_otp(message["body"])
            if match:
                return match.code
        raise StepStopped(Outcome("failed", [], "no code among the synced messages"))
    if source == "sim_sms":
        holder = ctx.world.sim_holder.get(phone)
        if holder != (ctx.device_holder, ctx.device):
            raise StepStopped(
                Outcome("failed", [], f"{ctx.device} does not hold the SIM the code was sent to")
            )
        return read_code_from_sim(ctx, phone)
    return source


# -- step-up ------------------------------------------------------------------------------------


def step_up(ctx: Ctx, action: str, factor: str | None = None) -> str:
    """Pass a step-up for ``action`` with ``factor`` (or the best the actor can use)."""
    known = ctx.world.knows(ctx.actor, ctx.owner)
    strong = ("passkey", "totp", "recovery_code")
    candidates = [factor] if factor else [f for f in strong if f in known]
    candidates = candidates or ["sms"]
    last: StepStopped | None = None
    for chosen in candidates:
        try:
            body: dict[str, Any] = {"action": action, "factor": chosen}
            if chosen == "totp":
                seed = known.get("totp")
                if not seed:
                    raise StepStopped(Outcome("challenged", ["step_up"], "no authenticator app"))
                body["code"] = pyotp.TOTP(seed).at(ctx.world.clock.now())
            elif chosen == "recovery_code":
                codes = known.get("recovery_code") or []
                if not codes:
                    raise StepStopped(Outcome("challenged", ["step_up"], "no recovery code"))
                body["code"] = codes.pop(0)
            elif chosen == "passkey":
                passkey = known.get("passkey")
                if not isinstance(passkey, SoftwarePasskey):
                    raise StepStopped(Outcome("challenged", ["step_up"], "no passkey"))
                started = expect_ok(
                    ctx.call("POST", "/api/v1/step-up/challenges", json=body), "passkey step-up"
                )
                body["challenge_id"] = started["challenge_id"]
                body["assertion"] = passkey.assert_for(started["public_key"])
            elif chosen == "sms":
                started = expect_ok(
                    ctx.call("POST", "/api/v1/step-up/challenges", json=body), "SMS step-up"
                )
                body["challenge_id"] = started["challenge_id"]
                body["code"] = read_code(ctx, ctx.world.phone_of(ctx.owner))
            else:
                raise StepStopped(Outcome("failed", [], f"factor {chosen} is not simulated"))
            expect_ok(ctx.call("POST", "/api/v1/step-up", json=body), f"step-up ({chosen})")
            return chosen
        except StepStopped as stopped:
            last = stopped
    assert last is not None
    raise last


def with_step_up(ctx: Ctx, action: str, send: Callable[[], httpx.Response], what: str) -> Any:
    """Send; if the server asks for a step-up, pass one (when the actor can) and send again."""
    response = send()
    slug, body = _problem(response) if response.status_code >= 400 else ("", {})
    if slug in {"step-up-required", "risk-challenge"}:
        # The problem names the action to step up for (a risk challenge: ``risky_payment``).
        step_up(ctx, str(body.get("action") or action), ctx.extra.get("factor"))
        response = send()
    return expect_ok(response, what)


# -- accounts and devices -------------------------------------------------------------------------


def _remember_login(ctx: Ctx, issued: dict[str, Any]) -> None:
    ctx.world.sessions[(ctx.owner, ctx.device_holder, ctx.device)] = Login(
        token=issued["session_token"], device_id=uuid.UUID(issued["device_id"])
    )
    if issued.get("device_token"):
        ctx.world.device_tokens[(ctx.owner, ctx.device)] = issued["device_token"]
    ctx.world.holder_ids[ctx.owner] = uuid.UUID(issued["holder_id"])


def _claim_sim_if_held(ctx: Ctx) -> None:
    """A device holding the account's SIM proves it (the code arrives on that very phone)."""
    phone = ctx.world.phone_of(ctx.owner)
    if ctx.world.sim_holder.get(phone) != (ctx.device_holder, ctx.device):
        return
    if ctx.call("POST", "/api/v1/messages/sim-claim").status_code >= 400:
        return
    code = read_code_from_sim(ctx, phone)
    ctx.call("POST", "/api/v1/messages/sim-claim/confirm", json={"code": code})


def read_code_from_sim(ctx: Ctx, phone: str) -> str:
    """The newest one-time code in the SIM inbox of ``phone`` (the caller checked the SIM)."""
    inbox = ctx.http.get(f"/api/v1/sandbox/phones/{phone}/messages").json()
    for message in inbox:
        match = recognise_otp(message["body"])
        if match:
            return match.code
    raise StepStopped(Outcome("failed", [], "no code in the SIM inbox"))


def do_register(ctx: Ctx) -> Outcome:
    spec = ctx.world.actor(ctx.owner)
    if ctx.owner != ctx.actor:
        raise StepStopped(Outcome("failed", [], "register acts only for oneself"))
    if not (spec.phone and spec.name and spec.birthday and spec.password):
        raise StepStopped(Outcome("failed", [], "register needs phone, name, birthday, password"))
    phone = ctx.world.phone_of(ctx.owner)
    started = expect_ok(
        ctx.http.post("/api/v1/registrations", json={"phone": phone}), "registration"
    )
    body: dict[str, Any] = {
        "code": read_code_from_sim(ctx, phone),
        "name": spec.name,
        "birthday": spec.birthday,
        "password": spec.password,
        "device": {
            "id": ctx.device,
            "label": ctx.world.device(ctx.device_holder, ctx.device).label or ctx.device,
        },
    }
    if spec.id_number:
        body["id_number"] = spec.id_number
    issued = expect_ok(
        ctx.http.post(f"/api/v1/registrations/{started['registration_id']}/complete", json=body),
        "registration",
    )
    _remember_login(ctx, issued)
    if spec.payment_password:
        expect_ok(
            ctx.call(
                "PUT",
                "/api/v1/me/payment-password",
                json={"login_password": spec.password, "payment_password": spec.payment_password},
            ),
            "payment password",
        )
    _claim_sim_if_held(ctx)
    knows = ctx.world.knows(ctx.actor, ctx.owner)
    if "totp" in spec.factors:
        started_totp = with_step_up(
            ctx,
            "enrol_factor",
            lambda: ctx.call("POST", "/api/v1/me/factors/totp", json={}),
            "TOTP",
        )
        seed = started_totp["secret"]
        code = pyotp.TOTP(seed).at(ctx.world.clock.now())
        expect_ok(
            ctx.call(
                "POST",
                f"/api/v1/me/factors/totp/{started_totp['factor_id']}/confirm",
                json={"code": code},
            ),
            "TOTP",
        )
        knows["totp"] = seed
        # A code is good once: the holder's next code comes with the app's next 30-s step.
        ctx.world.clock.advance(timedelta(seconds=30))
    if "passkey" in spec.factors:
        options = with_step_up(
            ctx,
            "enrol_factor",
            lambda: ctx.call("POST", "/api/v1/me/factors/passkeys/options"),
            "passkey",
        )
        passkey = SoftwarePasskey(origin=ctx.world.container.settings.public_base_url.rstrip("/"))
        credential = passkey.register(options["public_key"])
        expect_ok(
            ctx.call(
                "POST",
                "/api/v1/me/factors/passkeys",
                json={"challenge_id": options["challenge_id"], "credential": credential},
            ),
            "passkey",
        )
        knows["passkey"] = passkey
    if "recovery_codes" in spec.factors:
        codes = with_step_up(
            ctx,
            "enrol_factor",
            lambda: ctx.call("POST", "/api/v1/me/factors/recovery-codes"),
            "recovery codes",
        )
        knows["recovery_code"] = list(codes["codes"])
    return Outcome("ok", [], f"registered {spec.name} on {ctx.device}")


def do_login(ctx: Ctx) -> Outcome:
    password = ctx.secret("password")
    if not password:
        raise StepStopped(
            Outcome("failed", [], f"{ctx.actor} does not know {ctx.owner}'s password")
        )
    body: dict[str, Any] = {
        "phone": ctx.world.phone_of(ctx.owner),
        "password": password,
        "device": {
            "id": ctx.device,
            "label": ctx.world.device(ctx.device_holder, ctx.device).label or ctx.device,
        },
    }
    token = ctx.world.device_tokens.get((ctx.owner, ctx.device))
    if token:
        body["device_token"] = token
    issued = expect_ok(ctx.http.post("/api/v1/sessions", json=body), "login")
    _remember_login(ctx, issued)
    _claim_sim_if_held(ctx)
    if issued.get("device_trust") == "new" and issued.get("new_device"):
        status = ctx.call("GET", "/api/v1/devices/current")
        trust = status.json().get("trust") if status.status_code == 200 else "new"
        if trust == "new":
            return Outcome(
                "challenged",
                ["new_device_step_up"],
                "signed in, but the new device must be verified with a factor it does not hold",
            )
    return Outcome("ok", [], f"signed in on {ctx.device} ({issued.get('device_trust')})")


def do_step_up(ctx: Ctx) -> Outcome:
    action = str(ctx.extra.get("action", "add_device"))
    used = step_up(ctx, action, ctx.extra.get("factor"))
    return Outcome("ok", [], f"step-up for {action} with {used}")


def do_approve_device(ctx: Ctx) -> Outcome:
    target = ctx.extra.get("target_device")
    target_actor = str(ctx.extra.get("target_actor", ctx.owner))
    login = next(
        (
            login
            for (owner, actor, device), login in ctx.world.sessions.items()
            if owner == ctx.owner and device == target and actor == target_actor
        ),
        None,
    )
    if login is None:
        raise StepStopped(Outcome("failed", [], f"no session on device {target!r} to approve"))
    with_step_up(
        ctx,
        "add_device",
        lambda: ctx.call("POST", f"/api/v1/devices/{login.device_id}/approve", json={}),
        "approve device",
    )
    return Outcome("ok", [], f"approved {target}")


def do_enable_sync(ctx: Ctx) -> Outcome:
    with_step_up(ctx, "enable_sync", lambda: ctx.call("POST", "/api/v1/messages/sync"), "sync")
    return Outcome("ok", [], f"message sync on for {ctx.device}")


def do_disable_sync(ctx: Ctx) -> Outcome:
    expect_ok(ctx.call("DELETE", "/api/v1/messages/sync"), "sync")
    return Outcome("ok", [], f"message sync off for {ctx.device}")


def do_read_messages(ctx: Ctx) -> Outcome:
    messages = expect_ok(ctx.call("GET", "/api/v1/messages"), "read messages")
    hidden = sum(1 for m in messages if m.get("hidden_code"))
    shown = sum(1 for m in messages if not m.get("hidden_code") and recognise_otp(m["body"]))
    controls = ["otp_guard"] if hidden else []
    return Outcome(
        "ok", controls, f"{len(messages)} messages, {shown} codes visible, {hidden} hidden"
    )


def do_receive_sms(ctx: Ctx) -> Outcome:
    to = str(ctx.extra.get("to", ctx.owner))
    phone = ctx.world.phone_of(to) if to in ctx.world.scenario.actors else parse_mobile(to)
    body = {"sender": str(ctx.extra.get("sender", "10690000")), "body": str(ctx.extra["body"])}
    expect_ok(ctx.http.post(f"/api/v1/sandbox/phones/{phone}/messages", json=body), "SMS")
    return Outcome("ok", [], f"SMS from {body['sender']} delivered to {to}")


def do_change_password(ctx: Ctx) -> Outcome:
    new = str(ctx.extra["new"])
    current = ctx.secret("password")
    with_step_up(
        ctx,
        "change_password",
        lambda: ctx.call(
            "POST", "/api/v1/me/password", json={"current_password": current, "new_password": new}
        ),
        "change password",
    )
    ctx.world.knows(ctx.actor, ctx.owner)["password"] = new
    return Outcome("ok", [], "login password changed")


def do_reset_payment_password(ctx: Ctx) -> Outcome:
    new = str(ctx.extra["new"])
    factor = ctx.extra.get("factor", "sms")
    step_up(ctx, "reset_payment_password", str(factor))

    def send() -> httpx.Response:
        return ctx.call("POST", "/api/v1/me/payment-password/reset", json={"payment_password": new})

    response = send()
    slug, _ = _problem(response) if response.status_code >= 400 else ("", {})
    if slug in {"step-up-required", "reset-refused"}:
        # Protected profile: the SMS code must be backed by a second, stronger factor.
        known = ctx.world.knows(ctx.actor, ctx.owner)
        strong = next((f for f in ("passkey", "totp", "recovery_code") if f in known), None)
        if strong is None:
            raise stop_for(response, "reset payment password")
        step_up(ctx, "reset_payment_password", strong)
        response = send()
    expect_ok(response, "reset payment password")
    ctx.world.knows(ctx.actor, ctx.owner)["payment_password"] = new
    return Outcome("ok", [], "payment password reset")


def do_sim_swap(ctx: Ctx) -> Outcome:
    phone = ctx.world.phone_of(ctx.owner)
    expect_ok(ctx.http.post(f"/api/v1/sandbox/phones/{phone}/sim-swap"), "SIM swap")
    ctx.world.sim_holder[phone] = (ctx.device_holder, ctx.device)
    return Outcome("ok", [], f"{ctx.owner}'s number now rings on {ctx.actor}'s {ctx.device}")


def do_wait(ctx: Ctx) -> Outcome:
    duration = parse_duration(str(ctx.extra.get("duration") or ctx.step.wait))
    ctx.world.clock.advance(duration)
    return Outcome("ok", [], f"waited {duration}")


def latest_not_me_token(ctx: Ctx) -> str | None:
    """The "this was not me" link of the newest alert this device shows the holder."""
    alerts = expect_ok(ctx.call("GET", "/api/v1/alerts"), "read alerts")
    for alert in alerts["items"]:
        if alert.get("not_me_url"):
            return str(alert["not_me_url"]).rstrip("/").rsplit("/", 1)[-1]
    return None


def do_report_not_me(ctx: Ctx) -> Outcome:
    token = latest_not_me_token(ctx)
    if token is None:
        raise StepStopped(Outcome("failed", [], "no 'this was not me' link has reached the holder"))
    result = expect_ok(ctx.http.post(f"/api/v1/not-me/{token}"), "this was not me")
    return Outcome("ok", ["security_alerts"], f"not me: {result}")


def do_start_recovery(ctx: Ctx) -> Outcome:
    spec = ctx.world.actor(ctx.owner)
    known = ctx.world.knows(ctx.actor, ctx.owner)
    body = {
        "phone": ctx.world.phone_of(ctx.owner),
        "name": known.get("name", spec.name if ctx.actor == ctx.owner else None),
        "id_number": known.get("id_number", spec.id_number if ctx.actor == ctx.owner else None),
        "device": {"id": ctx.device, "label": ctx.device},
    }
    if not body["name"] or not body["id_number"]:
        raise StepStopped(Outcome("failed", [], f"{ctx.actor} lacks {ctx.owner}'s identity data"))
    started = expect_ok(ctx.http.post("/api/v1/recovery", json=body), "recovery")
    ctx.world.recoveries[ctx.owner] = started["recovery_id"]
    return Outcome(
        "held",
        ["recovery_delay"],
        f"recovery completes at {started['completes_at']}, if not cancelled",
    )


def do_cancel_recovery(ctx: Ctx) -> Outcome:
    recovery_id = ctx.world.recoveries.get(ctx.owner)
    if recovery_id is None:
        raise StepStopped(Outcome("failed", [], "no recovery to cancel"))
    expect_ok(ctx.call("POST", f"/api/v1/recovery/{recovery_id}/cancel"), "cancel recovery")
    return Outcome("ok", [], "recovery cancelled")
