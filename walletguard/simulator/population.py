"""Population mode: many benign holders living their days, mixed with attack campaigns.

``generate`` builds, deterministically from a seed, one big :class:`Scenario`: N holders who
register, bind cards, top up their salary, pay every day from balance and cards, send money to
family, travel to other cities, verify a new phone, sync messages to their own tablet — and, on
some of them, attack campaigns instantiated from the scenario library (actors renamed, fresh
phone numbers, cards and secrets, time-shifted into the D days). ``run_population`` plays it in
one world with :func:`walletguard.simulator.runner.run` (one instance, one manual clock, every
actor's steps merged in time order) and measures protection against friction:

- money attacked: what the campaigns take when nothing stops them (their library scenario's
  ``expect.vulnerable.loss``); money lost: what left the victims through the attackers' steps;
- legitimate actions: every step an actor takes on their own account, and the share of them
  ``challenged``, ``held`` and ``blocked`` (``failed`` counted apart).
"""

from __future__ import annotations

import itertools
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import phonenumbers
from stdnum import luhn

from walletguard.identity.password_policy import PersonalContext, check_login_password
from walletguard.identity.phone import parse_mobile
from walletguard.identity.pin_policy import check_payment_pin
from walletguard.kit.money import format_yuan_plain, parse_yuan
from walletguard.simulator import runner
from walletguard.simulator.scenario import Scenario, Step, load_scenario, parse_duration
from walletguard.wallet.bins import bin_table, validate_card_number

LIBRARY = Path(__file__).resolve().parent / "scenarios"
CAMPAIGNS = (
    "seed-000-sms-sync-drain",
    "sim-swap",
    "patient-attacker",
    "lost-unlocked-phone",
)
OUTCOMES = ("ok", "challenged", "held", "blocked", "failed")
CHINA = timezone(timedelta(hours=8))
START = datetime(2026, 9, 1, tzinfo=CHINA)
# One holder in fifty is the target of a campaign (at least one campaign of each kind).
CAMPAIGN_SHARE = 0.02
# A session ends after 7 idle days or 30 days: a holder signs in again on a device unused for
# this long, or signed in on this long ago (margins for the clock's drift: actions advance it).
RELOGIN_IDLE = timedelta(days=6)
RELOGIN_LIFETIME = timedelta(days=28)
# Two steps of one holder are at least this far apart (an authenticator code is good once).
STEP_GAP = timedelta(minutes=2)

# Where people are: a few ISP ranges per city (home addresses and travel destinations).
CITIES: dict[str, tuple[str, ...]] = {
    "上海": ("116.228", "116.233", "101.227"),
    "北京": ("61.135", "123.125", "114.247"),
    "广州": ("113.108", "183.6", "14.215"),
    "深圳": ("183.14", "119.123", "113.116"),
    "杭州": ("115.236", "60.191", "122.224"),
    "成都": ("171.88", "125.70", "182.150"),
    "武汉": ("27.17", "59.172", "58.49"),
    "西安": ("113.140", "1.85", "124.115"),
    "南京": ("218.94", "180.110", "58.240"),
    "重庆": ("113.204", "222.177", "106.91"),
}
MOBILE_PREFIXES = (
    "130", "131", "132", "133", "135", "136", "137", "138", "139", "150", "151", "152",
    "155", "156", "157", "158", "159", "176", "177", "180", "181", "182", "185", "186",
    "187", "188", "189", "199",
)  # fmt: skip
SURNAMES = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘蒋蔡余杜叶程"
GIVEN = "伟芳娜敏静丽强磊军洋勇艳杰娟涛明超秀霞平刚桂英华玉兰萍鹏辉玲斌宇浩凯秀云健俊帆雪琳晨欣怡"
WORDS = (
    "Harbor", "Lotus", "Cedar", "Violet", "Maple", "Quartz", "Juniper", "Falcon", "Willow",
    "Thistle", "Copper", "Amber", "Birch", "Coral", "Delta", "Ember", "Fjord", "Garnet",
    "Hazel", "Indigo", "Jasper", "Kestrel", "Lagoon", "Meadow", "Nectar", "Orchid", "Pebble",
    "Quill", "Raven", "Saffron", "Tundra", "Umber", "Velvet", "Walnut", "Yarrow", "Zephyr",
    "Basalt", "Canyon", "Dune", "Glacier", "Heron", "Island", "Lantern", "Marble", "Nimbus",
)  # fmt: skip
MERCHANTS = (
    "便利店", "超市", "早餐店", "咖啡馆", "面馆", "菜市场", "药店", "地铁", "出租车", "外卖",
    "水果店", "书店", "电影院", "加油站", "理发店", "奶茶店",
)  # fmt: skip
BANKS = ("ICBC", "CCB", "ABC", "BOC", "CMB", "BOCOM", "PSBC", "CIB", "SPDB", "CITIC")


# -- the generated population -------------------------------------------------------------------


@dataclass(frozen=True)
class PopulationSpec:
    holders: int
    days: int
    seed: int

    def __post_init__(self) -> None:
        if self.holders < 2:
            raise ValueError("a population needs at least 2 holders")
        if self.days < 1:
            raise ValueError("a population lives at least 1 day")


@dataclass
class Campaign:
    """One library scenario instantiated against one holder of the population."""

    name: str
    victim: str
    attackers: list[str]
    attacked_fen: int
    starts_at: datetime


@dataclass
class Population:
    spec: PopulationSpec
    scenario: Scenario
    campaigns: list[Campaign]
    # per step (same order as scenario.steps): the holder's life event it belongs to, or the
    # campaign's name — "wait" for the clock's steps
    kinds: list[str]


@dataclass
class _Planned:
    at: datetime
    order: int
    step: dict[str, Any]
    kind: str


@dataclass
class _Holder:
    name: str
    phone: str
    person: str
    birthday: date
    password: str
    payment_password: str
    city: str
    home_ip: str
    factors: list[str]
    cards: list[dict[str, str]]
    devices: list[dict[str, Any]]
    everyday_card: int = 0
    phone_device: str = ""
    balance_fen: int = 0
    card_fen: dict[int, int] = field(default_factory=dict)
    family: list[str] = field(default_factory=list)
    busy_until: datetime = START
    registered_at: datetime = START + timedelta(days=1)
    logged_in: dict[str, datetime] = field(default_factory=dict)
    used: dict[str, datetime] = field(default_factory=dict)
    # benign life stops when an attack on this holder begins
    quiet_from: datetime | None = None

    def receives_at(self, at: datetime) -> bool:
        """Whether family may send them money then: registered, and no attack under way."""
        return self.registered_at < at and (self.quiet_from is None or at < self.quiet_from)

    def actor_spec(self) -> dict[str, Any]:
        return {
            "phone": self.phone,
            "name": self.person,
            "birthday": self.birthday.isoformat(),
            "password": self.password,
            "payment_password": self.payment_password,
            "factors": self.factors,
            "devices": self.devices,
            "cards": self.cards,
        }


class _Generator:
    def __init__(self, spec: PopulationSpec) -> None:
        self.spec = spec
        # Not a secret: the same seed must give the same population.
        self.rng = random.Random(spec.seed)  # noqa: S311
        self.planned: list[_Planned] = []
        self.order = itertools.count()
        self.phones: set[str] = set()
        self.card_numbers: set[str] = set()
        self.ips: set[str] = set()
        self.holders: dict[str, _Holder] = {}
        self.actors: dict[str, dict[str, Any]] = {}
        self.campaigns: list[Campaign] = []
        self.deferred: list[tuple[datetime, dict[str, Any], str, _Holder | None]] = []
        self.card_prefixes: dict[str, list[str]] = {}
        for prefix, issuer in bin_table().by_prefix.items():
            if len(prefix) == 6 and issuer.card_type == "debit":
                self.card_prefixes.setdefault(issuer.bank_code, []).append(prefix)

    # -- identities ----------------------------------------------------------------------------

    def phone(self) -> str:
        while True:
            prefix = self.rng.choice(MOBILE_PREFIXES)
            digits = f"{self.rng.randrange(10**8):08d}"
            number = f"+86 {prefix} {digits[:4]} {digits[4:]}"
            parsed = phonenumbers.parse(number, "CN")
            if not phonenumbers.is_valid_number(parsed):
                continue
            e164 = parse_mobile(number)
            if e164 not in self.phones:
                self.phones.add(e164)
                return number

    def ip(self, city: str) -> str:
        while True:
            head = self.rng.choice(CITIES[city])
            address = f"{head}.{self.rng.randrange(1, 255)}.{self.rng.randrange(1, 255)}"
            if address not in self.ips:
                self.ips.add(address)
                return address

    def card(self, bank: str, balance_fen: int) -> dict[str, str]:
        prefixes = self.card_prefixes.get(bank) or self.card_prefixes["ICBC"]
        length = 16 if bank == "CMB" else 19
        while True:
            prefix = self.rng.choice(prefixes)
            body = prefix + "".join(
                str(self.rng.randrange(10)) for _ in range(length - len(prefix) - 1)
            )
            number = body + luhn.calc_check_digit(body)
            normalised, issuer = validate_card_number(number)
            if normalised not in self.card_numbers:
                self.card_numbers.add(normalised)
                return {
                    "bank": issuer.bank_code,
                    "number": normalised,
                    "balance": format_yuan_plain(balance_fen),
                }

    def person(self) -> tuple[str, date]:
        name = self.rng.choice(SURNAMES) + "".join(
            self.rng.choice(GIVEN) for _ in range(self.rng.choice((1, 2)))
        )
        birthday = date(1960, 1, 1) + timedelta(days=self.rng.randrange(365 * 44))
        return name, birthday

    def secrets(self, phone: str, person: str, birthday: date) -> tuple[str, str]:
        context = PersonalContext(parse_mobile(phone), person, birthday, None)
        while True:
            first, second = self.rng.sample(WORDS, 2)
            password = f"{first}-{second}-{self.rng.randrange(1000, 10000)}"
            if not check_login_password(password, context):
                break
        return password, self.pin(context, password)

    def pin(self, context: PersonalContext, password: str) -> str:
        while True:
            pin = f"{self.rng.randrange(10**6):06d}"
            if not check_payment_pin(pin, context, lambda p: p == password):
                return pin

    def holder(self, index: int, *, cards: list[dict[str, str]] | None = None) -> _Holder:
        name = f"h{index:05d}"
        phone = self.phone()
        person, birthday = self.person()
        password, pin = self.secrets(phone, person, birthday)
        city = self.rng.choice(list(CITIES))
        home_ip = self.ip(city)
        roll = self.rng.random()
        factors = ["passkey"] if roll < 0.5 else ["totp"] if roll < 0.8 else []
        if cards is None:
            cards = [
                self.card(self.rng.choice(BANKS), self.rng.randrange(20_000, 120_000) * 100)
                for _ in range(self.rng.choice((1, 1, 2)))
            ]
        device = f"{name}-phone"
        holder = _Holder(
            name=name,
            phone=phone,
            person=person,
            birthday=birthday,
            password=password,
            payment_password=pin,
            city=city,
            home_ip=home_ip,
            factors=factors,
            cards=cards,
            devices=[{"id": device, "ip": home_ip, "sim": True, "label": f"{person}的手机"}],
            phone_device=device,
        )
        holder.card_fen = {i: parse_yuan(c["balance"]) for i, c in enumerate(cards)}
        return holder

    # -- planning ------------------------------------------------------------------------------

    def plan(self, at: datetime, step: dict[str, Any], kind: str) -> None:
        self.planned.append(_Planned(at, next(self.order), step, kind))

    def act(
        self,
        holder: _Holder,
        at: datetime,
        device: str,
        do: str,
        kind: str,
        ip: str | None = None,
        *,
        exact: bool = False,
        **fields: Any,
    ) -> datetime:
        """Plan one of the holder's own steps (signing in first if the session may have ended);
        returns when the holder is free again. ``exact``: at that very time (a campaign's step)."""
        if not exact:
            at = max(at, holder.busy_until)
        step: dict[str, Any] = {"actor": holder.name, "device": device, "do": do, **fields}
        if ip is not None:
            step["ip"] = ip
        if do not in {"register", "login"}:
            signed_in = holder.logged_in.get(device)
            used = holder.used.get(device)
            if (
                signed_in is None
                or used is None
                or at - used >= RELOGIN_IDLE
                or at - signed_in >= RELOGIN_LIFETIME
            ):
                login = {"actor": holder.name, "device": device, "do": "login"}
                if ip is not None:
                    login["ip"] = ip
                self.plan(at, login, "sign-in")
                holder.logged_in[device] = at
                at += STEP_GAP
        if do in {"register", "login"}:
            holder.logged_in[device] = at
        holder.used[device] = at
        self.plan(at, step, kind)
        if not exact:
            holder.busy_until = at + STEP_GAP
        return at + STEP_GAP

    def register(self, holder: _Holder) -> None:
        at = START + timedelta(hours=8, minutes=self.rng.randrange(12 * 60))
        holder.registered_at = at
        at = self.act(holder, at, holder.phone_device, "register", "setup", holder.home_ip)
        for index in range(len(holder.cards)):
            at = self.act(
                holder, at, holder.phone_device, "bind_card", "setup", holder.home_ip, card=index
            )
        salary = self.rng.randrange(3_000, 9_000) * 100
        self.top_up(holder, at, holder.phone_device, holder.home_ip, salary, "salary")

    def top_up(
        self, holder: _Holder, at: datetime, device: str, ip: str, fen: int, kind: str
    ) -> None:
        card = holder.everyday_card
        fen = min(fen, holder.card_fen[card] - 100_00)
        if fen <= 0:
            return
        holder.card_fen[card] -= fen
        holder.balance_fen += fen
        self.act(holder, at, device, "top_up", kind, ip, card=card, amount=format_yuan_plain(fen))

    def live(self, holders: list[_Holder]) -> None:
        """Every holder's days: payments, family transfers, salary, travel, new phone, tablet."""
        events: dict[str, dict[str, Any]] = {}
        for holder in holders:
            plan: dict[str, Any] = {"salary_day": self.rng.randrange(1, 30)}
            if holder.quiet_from is not None:
                events[holder.name] = plan
                continue
            if self.spec.days >= 3 and self.rng.random() < 0.25:
                length = self.rng.randrange(2, 5)
                first = self.rng.randrange(1, max(2, self.spec.days - 1))
                destination = self.rng.choice([c for c in CITIES if c != holder.city])
                plan["trip"] = (first, first + length, destination, self.ip(destination))
            strong = bool(holder.factors)
            if strong and self.spec.days >= 2 and self.rng.random() < 0.12:
                plan["new_phone"] = self.rng.randrange(1, self.spec.days)
            if strong and self.spec.days >= 2 and self.rng.random() < 0.12:
                plan["tablet"] = self.rng.randrange(1, max(2, self.spec.days - 1))
            events[holder.name] = plan
        for day in range(self.spec.days):
            incoming: Counter[str] = Counter()
            for holder in holders:
                incoming.update(self.day(holder, day, events[holder.name]))
            for name, fen in incoming.items():
                self.holders[name].balance_fen += fen

    def day(self, holder: _Holder, day: int, plan: dict[str, Any]) -> Counter[str]:
        rng = self.rng
        sent: Counter[str] = Counter()
        morning = START + timedelta(days=day, hours=7, minutes=30 + rng.randrange(60))
        if holder.quiet_from is not None and morning >= holder.quiet_from:
            return sent
        ip = holder.home_ip
        trip = plan.get("trip")
        if trip and trip[0] <= day < trip[1]:
            ip = trip[3]
        at = max(morning, holder.busy_until)
        if plan.get("new_phone") == day:
            at = self.new_phone(holder, at, ip)
        if plan.get("tablet") == day:
            at = self.tablet(holder, at, ip)
            plan["synced_from"] = day + 2
        tablet = next((d["id"] for d in holder.devices if d.get("tablet")), None)
        synced = plan.get("synced_from") is not None and day >= plan["synced_from"]
        if tablet is not None and synced and rng.random() < 0.5:
            at = self.act(
                holder,
                at + timedelta(minutes=rng.randrange(30, 180)),
                tablet,
                "read_messages",
                "tablet",
                holder.home_ip,
            )
        if day > 0 and plan["salary_day"] == day % 30:
            self.top_up(
                holder, at, holder.phone_device, ip, rng.randrange(3_000, 9_000) * 100, "salary"
            )
        for _ in range(rng.choice((0, 1, 1, 2, 2, 3))):
            at = at + timedelta(minutes=rng.randrange(20, 240))
            if holder.quiet_from is not None and at >= holder.quiet_from:
                break
            if at.hour >= 23:
                break
            roll = rng.random()
            if roll < 0.55:
                fen = int(rng.lognormvariate(3.3, 0.8) * 100) + 100
                if fen > holder.balance_fen:
                    self.top_up(holder, at, holder.phone_device, ip, 1_000_00, "top-up")
                    at = holder.busy_until
                holder.balance_fen -= fen
                at = self.act(
                    holder,
                    at,
                    holder.phone_device,
                    "pay",
                    "pay",
                    ip,
                    merchant=rng.choice(MERCHANTS),
                    amount=format_yuan_plain(fen),
                )
            elif roll < 0.8:
                fen = int(rng.lognormvariate(4.5, 0.7) * 100) + 1_00
                card = holder.everyday_card
                if holder.card_fen[card] - fen < 100_00:
                    continue
                holder.card_fen[card] -= fen
                at = self.act(
                    holder,
                    at,
                    holder.phone_device,
                    "pay",
                    "card-pay",
                    ip,
                    merchant=rng.choice(MERCHANTS),
                    amount=format_yuan_plain(fen),
                    card=card,
                )
            else:
                family = [self.holders[n] for n in holder.family if self.holders[n].receives_at(at)]
                if not family:
                    continue
                fen = rng.randrange(50, 800) * 100
                if fen > holder.balance_fen:
                    continue
                payee = rng.choice(family)
                holder.balance_fen -= fen
                sent[payee.name] += fen
                at = self.act(
                    holder,
                    at,
                    holder.phone_device,
                    "transfer",
                    "family",
                    ip,
                    to=payee.name,
                    amount=format_yuan_plain(fen),
                )
        return sent

    def new_phone(self, holder: _Holder, at: datetime, ip: str) -> datetime:
        """Sign in on the new phone, approve it from the old one, move the SIM into it."""
        old = holder.phone_device
        new = f"{holder.name}-newphone"
        holder.devices.append({"id": new, "ip": holder.home_ip, "label": "新手机"})
        at = self.act(holder, at, new, "login", "new-phone", ip)
        at = self.act(holder, at, old, "approve_device", "new-phone", ip, target_device=new)
        at = self.act(holder, at, new, "sim_swap", "new-phone", ip)
        holder.phone_device = new
        return at

    def tablet(self, holder: _Holder, at: datetime, ip: str) -> datetime:
        """Sign in on their own tablet at home, approve it, sync after the cooling-off."""
        tablet = f"{holder.name}-tablet"
        holder.devices.append({"id": tablet, "ip": holder.home_ip, "label": "平板", "tablet": True})
        at = self.act(holder, at, tablet, "login", "tablet", holder.home_ip)
        at = self.act(
            holder, at, holder.phone_device, "approve_device", "tablet", ip, target_device=tablet
        )
        sync_at = at + timedelta(hours=25)
        self.act(holder, sync_at, tablet, "enable_sync", "tablet", holder.home_ip)
        holder.busy_until = at
        return at

    # -- attack campaigns ----------------------------------------------------------------------

    def campaign(self, number: int, library: Scenario, index: int) -> _Holder:
        """A holder shaped like ``library``'s victim (its cards, factors and devices, fresh
        numbers and secrets), and the campaign's steps, renamed and time-shifted into the days;
        the steps are planned by :meth:`plan_campaigns` once the holders' days are planned."""
        victim_name = next(n for n, a in library.actors.items() if a.phone is not None)
        spec = library.actors[victim_name]
        cards = [self.card(c.bank, parse_yuan(c.balance)) for c in spec.cards]
        # Everyday spending uses a card of their own, so the campaign finds its cards intact.
        cards.append(self.card(self.rng.choice(BANKS), self.rng.randrange(20_000, 60_000) * 100))
        holder = self.holder(index, cards=cards)
        holder.everyday_card = len(cards) - 1
        holder.factors = list(spec.factors)
        devices = {d.id: f"{holder.name}-{d.id}" for d in spec.devices}
        holder.devices = [
            {"id": devices[d.id], "ip": holder.home_ip, "sim": d.sim, "label": d.label}
            for d in spec.devices
        ]
        holder.phone_device = next(devices[d.id] for d in spec.devices if d.sim)
        names = {victim_name: holder.name}
        for actor in library.actors:
            if actor != victim_name:
                names[actor] = f"c{number:03d}-{actor}"
        context = PersonalContext(parse_mobile(holder.phone), holder.person, holder.birthday, None)
        # What leaked or is typed in the library file, mapped to this holder's own secrets.
        literals: dict[str, str] = {}
        if spec.password:
            literals[spec.password] = holder.password
        if spec.payment_password:
            literals[spec.payment_password] = holder.payment_password
        for step in library.steps:
            new = step.extra.get("new")
            if new is not None and step.do == "reset_payment_password":
                literals[str(new)] = self.pin(context, holder.password)
        for actor, actor_spec in library.actors.items():
            if actor == victim_name:
                continue
            city = self.rng.choice([c for c in CITIES if c != holder.city])
            for device in actor_spec.devices:
                devices[device.id] = f"{names[actor]}-{device.id}"
            self.actors[names[actor]] = {
                "knows": {
                    names.get(owner, owner): {k: literals.get(v, v) for k, v in leaked.items()}
                    for owner, leaked in actor_spec.knows.items()
                },
                "devices": [
                    {"id": devices[d.id], "ip": self.ip(city), "label": d.label}
                    for d in actor_spec.devices
                ],
            }
        expected = library.expect.get("vulnerable")
        attacked_fen = (
            parse_yuan(expected.loss.get(victim_name, "0.00"), allow_zero=True) if expected else 0
        )
        # The campaign's steps after the victim's own setup (register, bind_card) keep their own
        # timeline (offsets from the first kept step); the waits before that step are dropped.
        timeline: list[tuple[timedelta, Step]] = []
        offset = timedelta(0)
        for step in library.steps:
            if step.wait is not None or step.do == "wait":
                if timeline:
                    offset += parse_duration(str(step.wait or step.extra.get("duration")))
                continue
            if step.actor == victim_name and step.do in {"register", "bind_card"} and not timeline:
                continue
            timeline.append((offset, step))
            offset += STEP_GAP
        first_attack = next(o for o, s in timeline if s.actor != victim_name)
        span = timeline[-1][0] - first_attack
        earliest = START + timedelta(days=1) + first_attack
        latest = START + timedelta(days=self.spec.days) - span
        window = max(0, int((latest - earliest).total_seconds()))
        starts_at = earliest + timedelta(seconds=self.rng.randrange(window + 1))
        anchor = starts_at - first_attack
        holder.quiet_from = starts_at
        attackers = [n for n in names.values() if n != holder.name]
        self.campaigns.append(
            Campaign(library.name, holder.name, attackers, attacked_fen, starts_at)
        )
        for offset, step in timeline:
            fields = {
                k: (literals.get(v, v) if isinstance(v, str) else v) for k, v in step.extra.items()
            }
            for key in ("to", "target_actor"):
                if key in fields:
                    fields[key] = names.get(str(fields[key]), fields[key])
            if "target_device" in fields:
                fields["target_device"] = devices.get(str(fields["target_device"]))
            assert step.actor is not None
            assert step.device is not None
            assert step.do is not None
            planned: dict[str, Any] = {
                "actor": names[step.actor],
                "device": devices[step.device],
                "do": step.do,
                **fields,
            }
            if step.as_ is not None:
                planned["as"] = names[step.as_]
            victim = holder if step.actor == victim_name else None
            self.deferred.append((anchor + offset, planned, library.name, victim))
        return holder

    def plan_campaigns(self) -> None:
        for at, step, kind, victim in self.deferred:
            if victim is None:
                self.plan(at, step, kind)
                continue
            fields = {k: v for k, v in step.items() if k not in {"actor", "device", "do"}}
            self.act(victim, at, step["device"], step["do"], kind, exact=True, **fields)

    # -- the whole population ------------------------------------------------------------------

    def generate(self) -> Population:
        count = self.spec.holders
        campaigns = min(count // 2, max(len(CAMPAIGNS), round(count * CAMPAIGN_SHARE)))
        library = {name: load_scenario(LIBRARY / f"{name}.yaml") for name in CAMPAIGNS}
        kinds = [CAMPAIGNS[i % len(CAMPAIGNS)] for i in range(campaigns)]
        self.rng.shuffle(kinds)
        targets = sorted(self.rng.sample(range(count), campaigns))
        holders: list[_Holder] = []
        for index in range(count):
            if index in targets:
                kind = kinds[targets.index(index)]
                holders.append(self.campaign(targets.index(index) + 1, library[kind], index))
            else:
                holders.append(self.holder(index))
        for holder in holders:
            self.holders[holder.name] = holder
        # Families of two to four holders send each other money.
        order = list(holders)
        self.rng.shuffle(order)
        while order:
            size = min(len(order), self.rng.randrange(2, 5))
            family, order = order[:size], order[size:]
            for member in family:
                member.family = [m.name for m in family if m is not member]
        for holder in holders:
            self.register(holder)
        self.live(holders)
        self.plan_campaigns()
        return self.assemble(holders)

    def assemble(self, holders: list[_Holder]) -> Population:
        actors: dict[str, Any] = {h.name: h.actor_spec() for h in holders}
        for spec in actors.values():
            for device in spec["devices"]:
                device.pop("tablet", None)
        actors.update(self.actors)
        steps: list[dict[str, Any]] = []
        kinds: list[str] = []
        clock = START
        for planned in sorted(self.planned, key=lambda p: (p.at, p.order)):
            if planned.at > clock:
                steps.append({"wait": f"{int((planned.at - clock).total_seconds())}s"})
                kinds.append("wait")
                clock = planned.at
            steps.append(planned.step)
            kinds.append(planned.kind)
        scenario = Scenario.model_validate(
            {
                "name": f"population-{self.spec.holders}x{self.spec.days}d-seed{self.spec.seed}",
                "description": "benign holders mixed with attack campaigns from the library",
                "start": START.astimezone(UTC),
                "actors": actors,
                "steps": steps,
            }
        )
        return Population(self.spec, scenario, self.campaigns, kinds)


def generate(spec: PopulationSpec) -> Population:
    """The population of ``spec``: the same seed always gives the same scenario."""
    return _Generator(spec).generate()


# -- playing it and measuring -------------------------------------------------------------------


@dataclass
class ProfileResult:
    profile: str
    actions: int
    attacked_fen: int
    lost_fen: int
    legitimate: Counter[str]
    legitimate_by_kind: dict[str, Counter[str]]
    attack_outcomes: Counter[str]
    campaigns: list[dict[str, Any]]
    seconds: float = 0.0

    @property
    def stopped_share(self) -> float | None:
        if not self.attacked_fen:
            return None
        return max(0.0, 1 - self.lost_fen / self.attacked_fen)

    @property
    def legitimate_total(self) -> int:
        return sum(self.legitimate.values())

    def share(self, outcome: str) -> float:
        total = self.legitimate_total
        return self.legitimate[outcome] / total if total else 0.0

    def as_json(self) -> dict[str, Any]:
        return {
            "actions": self.actions,
            "money_attacked": format_yuan_plain(self.attacked_fen),
            "money_lost": format_yuan_plain(self.lost_fen),
            "attack_money_stopped_share": _rounded(self.stopped_share),
            "legitimate_actions": {
                "total": self.legitimate_total,
                **{outcome: self.legitimate[outcome] for outcome in OUTCOMES},
                "challenged_share": _rounded(self.share("challenged")),
                "held_share": _rounded(self.share("held")),
                "blocked_share": _rounded(self.share("blocked")),
                "failed_share": _rounded(self.share("failed")),
            },
            "legitimate_by_kind": {
                kind: {outcome: counts[outcome] for outcome in OUTCOMES if counts[outcome]}
                for kind, counts in sorted(self.legitimate_by_kind.items())
            },
            "attack_steps": {
                o: self.attack_outcomes[o] for o in OUTCOMES if self.attack_outcomes[o]
            },
            "campaigns": self.campaigns,
            "seconds": round(self.seconds, 1),
        }


@dataclass
class PopulationReport:
    spec: PopulationSpec
    campaigns: int
    results: dict[str, ProfileResult]

    def as_json(self) -> dict[str, Any]:
        return {
            "holders": self.spec.holders,
            "days": self.spec.days,
            "seed": self.spec.seed,
            "campaigns": self.campaigns,
            "profiles": {name: result.as_json() for name, result in self.results.items()},
        }


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


def measure(population: Population, report: runner.RunReport) -> ProfileResult:
    """Protection and friction of one played population."""
    legitimate: Counter[str] = Counter()
    by_kind: dict[str, Counter[str]] = {}
    attacks: Counter[str] = Counter()
    actions = 0
    for step, kind in zip(report.steps, population.kinds, strict=True):
        if step.do == "wait":
            continue
        actions += 1
        if step.as_ is not None and step.as_ != step.actor:
            attacks[step.outcome] += 1
            continue
        if (
            step.actor is not None
            and step.actor in population.scenario.actors
            and (population.scenario.actors[step.actor].phone is not None)
        ):
            legitimate[step.outcome] += 1
            by_kind.setdefault(f"{kind}:{step.do}", Counter())[step.outcome] += 1
    campaigns = [
        {
            "scenario": c.name,
            "victim": c.victim,
            "starts_at": c.starts_at.isoformat(),
            "attacked": format_yuan_plain(c.attacked_fen),
            "lost": format_yuan_plain(report.loss_fen.get(c.victim, 0)),
        }
        for c in population.campaigns
    ]
    return ProfileResult(
        profile=report.profile,
        actions=actions,
        attacked_fen=sum(c.attacked_fen for c in population.campaigns),
        lost_fen=report.total_loss_fen,
        legitimate=legitimate,
        legitimate_by_kind=by_kind,
        attack_outcomes=attacks,
        campaigns=campaigns,
    )


def _counting(
    on_step: Callable[[str, int, int], None] | None, profile: str, total: int
) -> Callable[[runner.StepReport], None]:
    done = itertools.count(1)

    def step_played(_step: runner.StepReport) -> None:
        if on_step:
            on_step(profile, next(done), total)

    return step_played


def run_population(
    spec: PopulationSpec,
    profiles: list[str],
    *,
    on_step: Callable[[str, int, int], None] | None = None,
    postgres_admin_url: str | None = None,
) -> PopulationReport:
    """Generate the population once and play it in each profile, one world per profile.
    ``on_step(profile, done, total)`` follows the progress."""
    import time

    population = generate(spec)
    total = len(population.scenario.steps)
    results: dict[str, ProfileResult] = {}
    for profile in profiles:
        began = time.perf_counter()
        played = runner.run(
            population.scenario,
            profile=profile,
            on_step=_counting(on_step, profile, total),
            postgres_admin_url=postgres_admin_url,
        )
        result = measure(population, played)
        result.seconds = time.perf_counter() - began
        results[profile] = result
    return PopulationReport(spec, len(population.campaigns), results)
