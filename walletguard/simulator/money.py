"""Money and account-protection actions of the scenario vocabulary, and the world's bookkeeping.

Cards in a scenario are sandbox-bank accounts opened before the first step. A card-funded
movement is confirmed with the bank's dynamic password, read — like every code — only from what
the acting device can see (``otp_from``). ``holdings_fen`` is what the runner compares before and
after a step to measure what left an account.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import select

from walletguard.bank.service import sandbox_bank
from walletguard.identity.phone import parse_mobile
from walletguard.kit.db import unit_of_work
from walletguard.kit.money import parse_yuan
from walletguard.simulator.actions import (
    Ctx,
    Outcome,
    StepStopped,
    expect_ok,
    read_code,
    with_step_up,
)
from walletguard.simulator.world import CaseRef, World
from walletguard.wallet.models import LedgerAccount, WalletState

# -- the world's bookkeeping ----------------------------------------------------------------------


def open_bank_accounts(world: World) -> None:
    """Issue every card of the scenario at the sandbox bank, before the first step."""
    with unit_of_work(world.container.sessions) as db:
        bank = sandbox_bank(db, world.container)
        for name, actor in world.scenario.actors.items():
            for card in actor.cards:
                phone = card.phone or actor.phone
                if not phone or not actor.name:
                    raise ValueError(f"{name}'s cards need a name and a reserved phone")
                bank.open_card_account(
                    number=card.number,
                    holder_name=actor.name,
                    reserved_phone_e164=parse_mobile(phone),
                    balance_fen=parse_yuan(card.balance, allow_zero=True),
                    bank_code=card.bank,
                )


def holdings_fen(world: World, owner: str) -> int:
    """The owner's wallet balance plus what is left on each of the owner's cards."""
    spec = world.actor(owner)
    with world.container.sessions() as db:
        total = 0
        bank = sandbox_bank(db, world.container)
        for card in spec.cards:
            total += bank.balance_of(card.number) or 0
        holder_id = world.holder_ids.get(owner)
        if holder_id is not None:
            account = db.scalar(
                select(LedgerAccount).where(
                    LedgerAccount.holder_id == holder_id, LedgerAccount.kind == "holder"
                )
            )
            total += account.balance_fen if account is not None else 0
        return total


def after_step(world: World) -> None:
    """Let the in-process alert worker deliver what the step queued (no real time passes)."""
    from walletguard.alerts.worker import deliver_due

    deliver_due(world.container)


def alerts_delivered(world: World, owner: str) -> int:
    from walletguard.alerts.service import delivered_count

    holder_id = world.holder_ids.get(owner)
    if holder_id is None:
        return 0
    with world.container.sessions() as db:
        return delivered_count(db, holder_id)


def first_alert_after(world: World, since: datetime) -> datetime | None:
    """The first alert delivered to any holder of the scenario after the attack began."""
    from walletguard.alerts.service import first_delivered_after

    firsts = []
    with world.container.sessions() as db:
        for holder_id in world.holder_ids.values():
            first = first_delivered_after(db, holder_id, since)
            if first is not None:
                firsts.append(first)
    return min(firsts) if firsts else None


def frozen_at(world: World) -> dict[str, str]:
    """When each holder's transaction functions were closed, if they were."""
    found: dict[str, str] = {}
    with world.container.sessions() as db:
        for owner, holder_id in world.holder_ids.items():
            state = db.scalar(select(WalletState).where(WalletState.holder_id == holder_id))
            if state is not None and state.closed_at is not None:
                found[owner] = state.closed_at.isoformat()
    return found


# -- helpers -------------------------------------------------------------------------------------


def _card_index(ctx: Ctx, key: str = "card") -> int | None:
    value = ctx.extra.get(key)
    if value is None:
        return None
    try:
        index = int(value)
    except (TypeError, ValueError) as exc:
        raise StepStopped(Outcome("failed", [], f"`{key}` must be a card index")) from exc
    if not 0 <= index < len(ctx.world.actor(ctx.owner).cards):
        raise StepStopped(Outcome("failed", [], f"{ctx.owner} has no card {index}"))
    return index


def _bound_card_id(ctx: Ctx, index: int) -> str:
    card_id = ctx.world.cards.get((ctx.owner, index))
    if card_id is None:
        raise StepStopped(Outcome("failed", [], f"card {index} of {ctx.owner} is not bound"))
    return card_id


def _reserved_phone(ctx: Ctx, index: int) -> str:
    spec = ctx.world.actor(ctx.owner)
    phone = spec.cards[index].phone or spec.phone
    assert phone is not None
    return parse_mobile(phone)


def _amount(ctx: Ctx) -> str:
    amount = ctx.extra.get("amount")
    if amount is None:
        raise StepStopped(Outcome("failed", [], "`amount` is required"))
    return str(amount)


def _money_call(ctx: Ctx, path: str, body: dict[str, Any]) -> httpx.Response:
    return ctx.call("POST", path, json=body, headers=ctx.idempotency())


def _move(ctx: Ctx, path: str, body: dict[str, Any], what: str, card: int | None) -> Outcome:
    """Start a movement; for a card debit, confirm it with the bank's dynamic password."""
    payment_password = ctx.secret("payment_password")
    if not payment_password:
        raise StepStopped(Outcome("failed", [], f"{ctx.actor} lacks the payment password"))
    body = {**body, "payment_password": str(payment_password)}
    started = with_step_up(ctx, "payment", lambda: _money_call(ctx, path, body), what)
    if started.get("status") != "awaiting_bank_confirmation":
        return Outcome("ok", [], f"{what}: {started.get('amount', body.get('amount'))}")
    assert card is not None
    code = read_code(ctx, _reserved_phone(ctx, card))
    confirmed = ctx.call(
        "POST",
        f"/api/v1/movements/{started['movement_id']}/confirm",
        json={"dynamic_password": code},
        headers=ctx.idempotency(),
    )
    done = expect_ok(confirmed, f"{what} (bank confirmation)")
    return Outcome("ok", [], f"{what}: {done.get('amount')} {done.get('status')}")


# -- actions -------------------------------------------------------------------------------------


def do_bind_card(ctx: Ctx) -> Outcome:
    index = _card_index(ctx)
    if index is None:
        raise StepStopped(
            Outcome("failed", [], "`card` (an index of the actor's cards) is required")
        )
    spec = ctx.world.actor(ctx.owner).cards[index]
    phone = _reserved_phone(ctx, index)
    started = with_step_up(
        ctx,
        "bind_card",
        lambda: ctx.call(
            "POST", "/api/v1/cards", json={"number": spec.number, "reserved_phone": phone}
        ),
        "bind card",
    )
    code = read_code(ctx, phone)
    verified = expect_ok(
        ctx.call("POST", f"/api/v1/cards/{started['card_id']}/verify", json={"code": code}),
        "bind card (bank code)",
    )
    ctx.world.cards[(ctx.owner, index)] = str(verified["id"])
    return Outcome("ok", [], f"bound {verified['bank_name']} {verified['masked_number']}")


def do_unbind_card(ctx: Ctx) -> Outcome:
    index = _card_index(ctx)
    if index is None:
        raise StepStopped(Outcome("failed", [], "`card` is required"))
    expect_ok(ctx.call("DELETE", f"/api/v1/cards/{_bound_card_id(ctx, index)}"), "unbind card")
    del ctx.world.cards[(ctx.owner, index)]
    return Outcome("ok", [], f"card {index} unbound")


def do_set_limit(ctx: Ctx) -> Outcome:
    body: dict[str, Any] = {}
    for field in ("per_transaction", "daily"):
        if ctx.extra.get(field) is not None:
            body[field] = str(ctx.extra[field])
    index = _card_index(ctx)
    if index is not None:
        body["card_id"] = _bound_card_id(ctx, index)
    limits = with_step_up(
        ctx,
        "raise_limit",
        lambda: ctx.call("PUT", "/api/v1/limits", json=body),
        "set limit",
    )
    scope = limits["holder"]
    if index is not None:
        scope = next(c for c in limits["cards"] if c["card_id"] == body["card_id"])
    pending = [
        f"{period} → {scope[period]['pending_amount']} at {scope[period]['pending_effective_at']}"
        for period in ("per_transaction", "daily")
        if scope[period]["pending_amount"]
    ]
    if pending:
        return Outcome("held", ["limit_delay"], "raise pending: " + "; ".join(pending))
    return Outcome(
        "ok",
        [],
        f"limits now {scope['per_transaction']['amount']} per movement, "
        f"{scope['daily']['amount']} a day",
    )


def do_set_alert(ctx: Ctx) -> Outcome:
    channel = str(ctx.extra.get("channel", ""))
    if channel not in {"in_app", "sms", "email", "webhook"}:
        raise StepStopped(Outcome("failed", [], "`channel` is in_app, sms, email or webhook"))
    enabled = bool(ctx.extra.get("enabled", True))
    target = ctx.extra.get("address") if channel == "email" else ctx.extra.get("url")
    if target is not None and channel in {"email", "webhook"}:
        field = "address" if channel == "email" else "url"
        with_step_up(
            ctx,
            "disable_alert_channel",
            lambda: ctx.call(
                "PUT", f"/api/v1/me/alert-channels/{channel}", json={field: str(target)}
            ),
            f"set {channel} address",
        )
    result = with_step_up(
        ctx,
        "disable_alert_channel",
        lambda: ctx.call("PUT", "/api/v1/me/alert-channels", json={channel: enabled}),
        "set alert channel",
    )
    change = next((c for c in result.get("changes", []) if c["channel"] == channel), None)
    if change is not None and change["outcome"].endswith("_pending"):
        return Outcome(
            "held",
            ["security_alerts"],
            f"{channel} goes off at {change['effective_at']}; the change was announced",
        )
    outcome = change["outcome"] if change else "unchanged"
    return Outcome("ok", [], f"alert channel {channel}: {outcome}")


def do_pay(ctx: Ctx) -> Outcome:
    card = _card_index(ctx)
    body: dict[str, Any] = {
        "merchant": str(ctx.extra.get("merchant", "商户")),
        "amount": _amount(ctx),
    }
    if card is not None:
        body["card_id"] = _bound_card_id(ctx, card)
    return _move(ctx, "/api/v1/payments", body, f"pay {body['merchant']}", card)


def do_transfer(ctx: Ctx) -> Outcome:
    to = ctx.extra.get("to")
    if not to:
        raise StepStopped(Outcome("failed", [], "`to` (an actor or a phone number) is required"))
    to = str(to)
    phone = ctx.world.phone_of(to) if to in ctx.world.scenario.actors else to
    card = _card_index(ctx)
    body: dict[str, Any] = {"to_phone": phone, "amount": _amount(ctx)}
    if card is not None:
        body["card_id"] = _bound_card_id(ctx, card)
    return _move(ctx, "/api/v1/transfers", body, f"transfer to {to}", card)


def do_top_up(ctx: Ctx) -> Outcome:
    card = _card_index(ctx)
    if card is None:
        raise StepStopped(Outcome("failed", [], "`card` is required"))
    body = {"card_id": _bound_card_id(ctx, card), "amount": _amount(ctx)}
    return _move(ctx, "/api/v1/top-ups", body, "top up", card)


def do_withdraw(ctx: Ctx) -> Outcome:
    card = _card_index(ctx)
    if card is None:
        raise StepStopped(Outcome("failed", [], "`card` is required"))
    body = {"card_id": _bound_card_id(ctx, card), "amount": _amount(ctx)}
    return _move(ctx, "/api/v1/withdrawals", body, "withdraw", None)


def do_freeze(ctx: Ctx) -> Outcome:
    reason = str(ctx.extra.get("reason", "holder"))
    state = expect_ok(
        ctx.call("POST", "/api/v1/wallet/close", json={"reason": reason}), "close transactions"
    )
    return Outcome("ok", ["freeze"], f"all transaction functions closed at {state['closed_at']}")


def do_report_incident(ctx: Ctx) -> Outcome:
    """ "I have been robbed / lost my phone": one action freezes payments, every card (here and
    at the bank), sync and every other session, and opens a case at the incident desk."""
    body: dict[str, Any] = {"kind": str(ctx.extra.get("kind", "robbed"))}
    if ctx.extra.get("lost_control_at") is not None:
        body["lost_control_at"] = str(ctx.extra["lost_control_at"])
    reported = expect_ok(ctx.call("POST", "/api/v1/incidents", json=body), "report incident")
    ctx.world.cases[ctx.owner] = CaseRef(
        case_id=str(reported["case_id"]), reporter=(ctx.device_holder, ctx.device)
    )
    case = expect_ok(ctx.call("GET", f"/api/v1/incidents/{reported['case_id']}"), "case")
    by_card = ", ".join(
        f"{line['card_last4'] or 'balance'} {line['amount']}" for line in case["loss"]["by_card"]
    )
    return Outcome(
        "ok",
        ["freeze"],
        f"case {reported['reference']} opened; frozen at {reported['frozen_at']}; "
        f"{reported['cards_blocked']} cards blocked; loss {case['loss']['total']}"
        + (f" ({by_card})" if by_card else ""),
    )


def _as_reporter(world: World, owner: str, ref: CaseRef, path: str) -> httpx.Response | None:
    """GET ``path`` from the device that reported the case, with its session."""
    actor, device = ref.reporter
    login = world.sessions.get((owner, actor, device))
    if login is None:
        return None
    response = world.client(actor, device).get(
        path, headers={"authorization": f"Bearer {login.token}"}
    )
    return response if response.status_code == 200 else None


def case_reports(world: World) -> dict[str, dict[str, Any]]:
    """Each reported case as its holder sees it: id, reference and loss per card and in total."""
    found: dict[str, dict[str, Any]] = {}
    for owner, ref in world.cases.items():
        response = _as_reporter(world, owner, ref, f"/api/v1/incidents/{ref.case_id}")
        if response is None:
            continue
        case = response.json()
        found[owner] = {
            "case_id": ref.case_id,
            "reference": case.get("reference"),
            "loss": case["loss"]["total"],
            "loss_by_card": {
                line["card_last4"] or "balance": line["amount"] for line in case["loss"]["by_card"]
            },
        }
    return found


def export_evidence(world: World, folder: Path) -> list[Path]:
    """Download the evidence package of every case the run opened into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for owner, ref in world.cases.items():
        response = _as_reporter(world, owner, ref, f"/api/v1/incidents/{ref.case_id}/evidence.zip")
        if response is None:
            continue
        profile = world.container.settings.profile
        path = folder / f"{world.scenario.name}-{profile}-{owner}-evidence.zip"
        path.write_bytes(response.content)
        written.append(path)
    return written


ACTIONS: dict[str, Callable[[Ctx], Outcome]] = {
    "bind_card": do_bind_card,
    "unbind_card": do_unbind_card,
    "set_limit": do_set_limit,
    "set_alert": do_set_alert,
    "pay": do_pay,
    "transfer": do_transfer,
    "top_up": do_top_up,
    "withdraw": do_withdraw,
    "freeze": do_freeze,
    "report_incident": do_report_incident,
}
