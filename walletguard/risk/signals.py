"""Signals: what the risk engine knows about one event, computed with a few indexed reads.

Every signal is a number, a truth value or a short word (never personal data), so a decision can
store them as its evidence. Times since something are in hours (``NEVER_H`` when it never
happened); the names are the rule vocabulary (``walletguard.risk.rules.SIGNALS``).
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy.orm import Session

from walletguard.bootstrap import Container
from walletguard.identity.guards import device_state
from walletguard.kit.db import is_postgres
from walletguard.risk import repository
from walletguard.risk.geo import GeoLocator, Place, distance_km
from walletguard.risk.models import AUDIT_STEPS
from walletguard.risk.rules import (
    HISTORY_SIGNALS,
    RECENT_SIGNALS,
    SPREAD_SIGNALS,
    TRAVEL_SIGNALS,
)
from walletguard.risk.velocity import DatabaseVelocity, VelocityStore

NEVER_H = 1_000_000.0
BEIJING = ZoneInfo("Asia/Shanghai")
# A device the holder has not vouched for (registered on it, or approved it from a trusted one)
# is "new" for this long after it was first seen, whatever the profile's controls say.
NEW_DEVICE_HOURS = 24
# A movement that takes at least this share of what its source holds "empties" it (PaySim).
EMPTIES_SHARE = 0.95
# A payee paid this many times before (or marked trusted by the holder) is an honest habit.
TRUSTED_PAYEE_PAYMENTS = 3
HISTORY_DAYS = 90
LOOKBACK_HOURS = 72

TEN_MINUTES = timedelta(minutes=10)
HOUR = timedelta(hours=1)
DAY = timedelta(hours=24)
SPANS = (TEN_MINUTES, HOUR, DAY)


@dataclass(frozen=True)
class RiskEvent:
    """What is about to happen. ``payee`` is a merchant's name or a recipient holder's id;
    ``payee_label`` is what an operator may see (a merchant's name, a masked number)."""

    kind: str  # login | sensitive_action | movement
    holder_id: uuid.UUID
    action: str  # "login", a SensitiveAction value, or a movement kind
    device_id: uuid.UUID | None = None
    session_id: uuid.UUID | None = None
    ip: str | None = None
    amount_fen: int = 0
    payee: str | None = None
    payee_label: str | None = None
    card_id: uuid.UUID | None = None
    card_last4: str | None = None
    # What the movement's source (the card at its bank, or the balance) holds, when known.
    source_balance_fen: int | None = None


class Signals(dict[str, Any]):
    """The signals of one event; a costly group is computed the first time a rule reads one
    of its names (rules read ``signals[name]``), and stored only then."""

    def __init__(self, **values: Any) -> None:
        super().__init__(**values)
        self._pending: dict[str, Callable[[], dict[str, Any]]] = {}

    def on_demand(self, names: tuple[str, ...], compute: Callable[[], dict[str, Any]]) -> None:
        for name in names:
            self._pending[name] = compute

    def read_now(self, names: tuple[str, ...]) -> None:
        """Compute every group still pending among ``names`` (a refused event's evidence)."""
        for name in names:
            if name in self._pending:
                self.__missing__(name)

    def __missing__(self, name: str) -> Any:
        compute = self._pending.get(name)
        if compute is None:
            raise KeyError(name)
        values = compute()
        for key in values:
            self._pending.pop(key, None)
        self.update(values)
        return values[name]


Timeline = list[tuple[datetime, frozenset[str]]]


@dataclass
class Facts:
    """The signals plus what the decision stores and what sequence rules read."""

    signals: dict[str, Any]
    place: Place | None
    ip_key: str | None
    device_key: str | None
    payee_key: str | None
    # (time, sequence step tags) of the holder's recent history, oldest first
    timeline: Timeline = field(default_factory=list)
    current_tags: frozenset[str] = frozenset()
    # The holder's earlier movements for the timeline, from the decision history: read the
    # first time a sequence rule looks at the timeline (``sequence_timeline``), not before.
    earlier_movements: Callable[[], Timeline] | None = None

    def sequence_timeline(self) -> Timeline:
        """The timeline with the earlier movements in it, oldest first."""
        if self.earlier_movements is not None:
            movements, self.earlier_movements = self.earlier_movements(), None
            self.timeline = sorted(self.timeline + movements, key=lambda item: item[0])
        return self.timeline


@functools.cache
def _movement_tags(action: str, payee_new: bool) -> frozenset[str]:
    """The sequence tags of an earlier movement (one set for each kind of movement, made once:
    a decision walks up to ``HISTORY_ROWS`` of them)."""
    return frozenset({"movement", action, "new_payee"} if payee_new else {"movement", action})


def _hours(now: datetime, then: datetime | None) -> float:
    if then is None:
        return NEVER_H
    return max(0.0, (now - then).total_seconds() / 3600)


def _p95(amounts: list[int]) -> int:
    ordered = sorted(amounts)
    return ordered[min(len(ordered) - 1, int(0.95 * (len(ordered) - 1) + 0.5))]


class SignalReader:
    def __init__(
        self, db: Session, env: Container, geo: GeoLocator, velocity: VelocityStore
    ) -> None:
        self.db = db
        self.env = env
        self.geo = geo
        self.velocity = velocity
        self.cipher = env.cipher

    def key(self, value: str, context: str) -> str:
        return self.cipher.blind_index(value, context=context)

    def payee_key(self, payee: str) -> str:
        return self.key(payee.strip().casefold(), "risk.payee")

    def read(self, event: RiskEvent, now: datetime, lookback: timedelta) -> Facts:
        db = self.db
        # The reads below are Core statements, which do not autoflush: what the caller has
        # written in this transaction (a device just added, a login just audited) must count,
        # so the first of them (``holder_and_events``) chains the pending audit entries and
        # flushes the session before it reads.
        s = Signals(kind=event.kind, action=event.action, amount_fen=event.amount_fen)
        payee_key = self.payee_key(event.payee) if event.payee else None
        # The velocity windows this event is judged on, known before anything is read: with
        # the database's store on PostgreSQL they are read in the same statement as the rest.
        ip_key = self.key(event.ip, "risk.ip") if event.ip else None
        holder = f"holder:{event.holder_id}"
        wanted: dict[str, tuple[timedelta, ...]] = {holder: SPANS}
        if event.card_id:
            wanted[f"card:{event.card_id}"] = (TEN_MINUTES, HOUR)
        if payee_key:
            wanted[f"payee:{payee_key}"] = (HOUR,)
        if ip_key:
            wanted[f"ip:{ip_key}"] = (HOUR,)
        database: DatabaseVelocity | None = None
        if isinstance(self.velocity, DatabaseVelocity) and is_postgres(db):
            database = self.velocity
        window_query = database.window_query(wanted, now) if database is not None else None
        (opened_at, last_sim_swap, stats), known, events, window_rows = (
            repository.holder_and_events(
                db,
                event.holder_id,
                payee_key,
                event.device_id,
                audit_since=now - lookback,
                exposures_since=now - DAY,
                windows=window_query,
            )
        )
        device = next((d for d in known if d.id == event.device_id), None)
        devices = [d for d in known if d.revoked_at is None]

        # -- the device ------------------------------------------------------------------
        settings = self.env.settings
        if device is not None:
            age_h = _hours(now, device.first_seen_at)
            vouched = device.trust == "trusted"
            s["device_age_h"] = age_h
            s["device_vouched"] = vouched
            s["device_new"] = not vouched and age_h < NEW_DEVICE_HOURS
            s["device_state"] = str(
                device_state(device, now, settings.controls, settings.cooling_off_hours)
            )
        else:
            s.update(device_age_h=0.0, device_vouched=False, device_new=True, device_state="new")
        device_key = (
            self.key(device.client_device_id, "risk.device") if device is not None else None
        )

        # -- place and travel ----------------------------------------------------------------
        place = self.geo.locate(event.ip)
        s["geo_known"] = place is not None
        s["province"] = place.province if place else ""
        # The 90-day decision history (up to ``HISTORY_ROWS``, newest first) is read only when a
        # rule reads a signal made from it (``HISTORY_SIGNALS``) or a sequence rule reads the
        # timeline: most events are decided by the signals below, made with the event.
        since = now - timedelta(days=HISTORY_DAYS)
        read: list[list[repository.Past]] = []

        def history() -> list[repository.Past]:
            if not read:
                read.append(repository.history(db, event.holder_id, since, event.session_id))
            return read[0]

        familiar: set[str] = set()
        last_seen: list[tuple[datetime, Place]] = []
        for other in devices:
            if other.id == event.device_id:
                continue
            for ip in (other.first_seen_ip, other.last_seen_ip):
                seen = self.geo.locate(ip)
                if seen is not None:
                    familiar.add(seen.province)
            seen_last = self.geo.locate(other.last_seen_ip)
            if seen_last is not None:
                last_seen.append((other.last_seen_at, seen_last))

        def travel() -> dict[str, Any]:
            """How far and how fast from the place the holder was last seen: the other devices'
            last places and where the holder was last let in (only where the holder was let in
            counts: a refused attempt from the far city must not make the thief's next attempt
            look like no travel at all)."""
            if place is None:
                return {"travel_km": 0.0, "travel_kmh": 0.0}
            if read:
                allowed = next((p for p in history() if _let_in_at_a_place(p, now)), None)
            else:
                allowed = repository.last_allowed_place(db, event.holder_id, since, now)
            before = [(at, p) for at, p in last_seen if at <= now]
            if allowed is not None:
                assert allowed.lat is not None
                assert allowed.lon is not None
                parts = (allowed.place or "").split("/")
                where = Place(parts[0], parts[-1], allowed.lat, allowed.lon)
                before.append((allowed.created_at, where))
            if not before:
                return {"travel_km": 0.0, "travel_kmh": 0.0}
            then, where = max(before, key=lambda item: item[0])
            km = distance_km(where, place)
            hours = max((now - then).total_seconds() / 3600, 1 / 60)
            return {"travel_km": round(km, 1), "travel_kmh": round(km / hours, 1)}

        s.on_demand(TRAVEL_SIGNALS, travel)

        # -- recent security events ----------------------------------------------------------
        latest: dict[str, datetime] = {}
        timeline: list[tuple[datetime, frozenset[str]]] = []
        for name, at, data in events.audit:
            step = AUDIT_STEPS[name]
            tags = {step}
            if name == "login.succeeded" and '"new_device":true' in data:
                tags.add("new_device_login")
            latest[step] = max(at, latest.get(step, at))
            timeline.append((at, frozenset(tags)))
        s["credential_changed_h"] = _hours(now, latest.get("credential_changed"))
        s["payment_password_reset_h"] = _hours(now, latest.get("payment_password_reset"))
        s["sync_enabled_h"] = _hours(now, latest.get("sync_enabled"))
        s["factor_changed_h"] = _hours(now, latest.get("factor_changed"))
        s["phone_changed_h"] = _hours(now, latest.get("phone_changed"))
        s["device_added_h"] = _hours(now, latest.get("device_added"))
        s["account_age_d"] = max(0.0, (now - opened_at).total_seconds() / 86400)
        s["sim_swap_h"] = _hours(now, last_sim_swap)

        # -- the payee, the amount and the holder's habits ------------------------------------
        s["payee_payments"] = stats.payments if stats else 0
        s["payee_new"] = bool(payee_key) and stats is None
        s["payee_trusted"] = stats is not None and (
            stats.trusted_at is not None or stats.payments >= TRUSTED_PAYEE_PAYMENTS
        )
        balance = event.source_balance_fen
        s["source_balance_fen"] = balance if balance is not None else -1
        s["empties_source"] = bool(
            event.kind == "movement"
            and balance is not None
            and balance > 0
            and event.amount_fen >= EMPTIES_SHARE * balance
        )
        local = now.astimezone(BEIJING)
        s["hour_beijing"] = local.hour
        s["night"] = local.hour < 6

        # -- scam exposure -----------------------------------------------------------------
        exposures = events.exposures
        s["scam_message_h"] = _hours(now, max(at for at, _ in exposures)) if exposures else NEVER_H
        s["scam_names_payee"] = bool(payee_key) and any(k == payee_key for _, k in exposures)
        for at, _ in exposures:
            timeline.append((at, frozenset({"scam_message"})))

        # -- velocity and spread ---------------------------------------------------------
        if database is not None and window_query is not None and window_rows is not None:
            windows = database.windows_from(window_query, window_rows, now)
        else:
            windows = self.velocity.window_map(wanted, now)
        s["holder_count_10m"] = windows[(holder, TEN_MINUTES)].count
        s["holder_sum_10m"] = windows[(holder, TEN_MINUTES)].sum_fen
        s["holder_count_1h"] = windows[(holder, HOUR)].count
        s["holder_sum_1h"] = windows[(holder, HOUR)].sum_fen
        s["holder_sum_24h"] = windows[(holder, DAY)].sum_fen
        card = f"card:{event.card_id}"
        s["card_count_10m"] = windows[(card, TEN_MINUTES)].count if event.card_id else 0
        s["card_sum_1h"] = windows[(card, HOUR)].sum_fen if event.card_id else 0
        payee = f"payee:{payee_key}"
        s["payee_count_1h"] = windows[(payee, HOUR)].count if payee_key else 0
        s["payee_sum_1h"] = windows[(payee, HOUR)].sum_fen if payee_key else 0
        s["ip_count_1h"] = windows[(f"ip:{ip_key}", HOUR)].count if ip_key else 0

        def habits() -> dict[str, Any]:
            """What the holder's decision history says: familiar provinces, the usual amount,
            the last time money went out, a flagged session."""
            past_rows = history()
            provinces = set(familiar)
            for past in past_rows:
                if past.place and past.outcome == "allow":
                    provinces.add(past.place.split("/")[0])
            amounts = [
                p.amount_fen
                for p in past_rows
                if p.kind == "movement" and p.outcome == "allow" and p.amount_fen
            ]
            p95 = _p95(amounts) if amounts else 0
            last_out = next(
                (
                    p.created_at
                    for p in past_rows
                    if p.kind == "movement" and p.outcome == "allow" and p.action != "top_up"
                ),
                None,
            )
            return {
                "province_familiar": (
                    place is None or not provinces or place.province in provinces
                ),
                "history_count_90d": len(amounts),
                "amount_vs_p95": round(event.amount_fen / p95, 2) if p95 else 0.0,
                "dormant_d": (
                    _hours(now, last_out) / 24 if last_out is not None else s["account_age_d"]
                ),
                "session_flagged": any(
                    p.kind == "login"
                    and p.same_session
                    and p.outcome in ("challenge", "hold", "block")
                    for p in past_rows
                    if event.session_id is not None
                ),
            }

        s.on_demand(HISTORY_SIGNALS, habits)

        def recent() -> dict[str, Any]:
            """The cards debited and the payees paid in the last half hour, refused attempts
            and this movement included: from the history if a rule has read it, otherwise
            from one short read of its newest rows (``repository.recent_cards_and_payees``,
            the same rows)."""
            after = now - HALF_HOUR
            if read:
                cards, payees = cards_and_payees_after(history(), after)
            else:
                cards, payees = repository.recent_cards_and_payees(
                    db, event.holder_id, since, after
                )
            if event.kind == "movement":
                if event.card_id is not None and event.action != "withdraw":
                    cards.add(event.card_id)
                if payee_key:
                    payees.add(payee_key)
            return {"cards_debited_30m": len(cards), "payees_30m": len(payees)}

        s.on_demand(RECENT_SIGNALS, recent)

        # Distinct holders, this one included: counted only if a rule asks (they scan every
        # decision sharing the payee, IP or device in the window).
        def spread() -> dict[str, Any]:
            senders, ip_holders, device_holders = repository.spread(
                db,
                event.holder_id,
                {"payee": now - HOUR, "ip": now - DAY, "device": now - DAY},
                payee_key,
                ip_key,
                device_key,
            )
            return {
                "payee_senders_1h": senders + 1 if payee_key else 0,
                "ip_holders_24h": ip_holders + 1 if ip_key else 0,
                "device_holders_24h": device_holders + 1 if device_key else 0,
            }

        s.on_demand(SPREAD_SIGNALS, spread)

        # -- the timeline of earlier decisions, for sequence rules ---------------------------
        def earlier_movements() -> Timeline:
            movements: Timeline = []
            for past in history():
                if past.created_at < now - lookback:
                    break
                if past.kind != "movement":
                    continue
                tags = _movement_tags(past.action, bool(past.payee_new))
                movements.append((past.created_at, tags))
            return movements

        timeline.sort(key=lambda item: item[0])
        current: set[str] = {event.action}
        if event.kind == "movement":
            current.add("movement")
            if s["payee_new"]:
                current.add("new_payee")
        elif event.kind == "login":
            current.add("login")
            if s["device_new"]:
                current.add("new_device_login")
        return Facts(
            signals=s,
            place=place,
            ip_key=ip_key,
            device_key=device_key,
            payee_key=payee_key,
            timeline=timeline,
            current_tags=frozenset(current),
            earlier_movements=earlier_movements,
        )


HALF_HOUR = timedelta(minutes=30)


def cards_and_payees_after(
    history: list[repository.Past], after: datetime
) -> tuple[set[uuid.UUID], set[str]]:
    """The cards debited and the payees paid by the history's movements newer than ``after``
    (what ``repository.recent_cards_and_payees`` reads without the rest of the history)."""
    rows = [past for past in history if past.kind == "movement" and past.created_at > after]
    cards = {past.card_id for past in rows if past.card_id and past.action != "withdraw"}
    return cards, {past.payee_key for past in rows if past.payee_key is not None}


def _let_in_at_a_place(past: repository.Past, now: datetime) -> bool:
    """An earlier decision that let the holder in somewhere known (what
    ``repository.last_allowed_place`` finds the newest of)."""
    return (
        past.outcome == "allow"
        and past.lat is not None
        and past.lon is not None
        and past.created_at <= now
    )
