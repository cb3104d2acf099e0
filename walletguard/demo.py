"""The demo holder, created through the same registration flow a real holder goes through."""

from __future__ import annotations

import re
from datetime import date
from pathlib import Path

from sqlalchemy import select

from walletguard.bootstrap import Container
from walletguard.identity.models import Holder
from walletguard.identity.service import DeviceInfo, IdentityService, Principal
from walletguard.kit.db import unit_of_work
from walletguard.messages.service import PHONE_CONTEXT, PhoneInbox

_CODE = re.compile(r"(\d{6})")


def ensure_demo_holder(
    container: Container, *, phone: str, name: str, birthday: date, password: str, pin: str
) -> bool:
    """Register the demo holder unless it exists; True when it was created now."""
    index = container.cipher.blind_index(phone, context=PHONE_CONTEXT)
    with unit_of_work(container.sessions) as db:
        if db.scalar(select(Holder.id).where(Holder.phone_index == index)) is not None:
            return False
        identity = IdentityService(db, container)
        pending = identity.start_registration(phone, ip="127.0.0.1")
        sms = PhoneInbox(db, container.cipher, container.clock).messages(phone, limit=1)[0]
        match = _CODE.search(sms.body)
        if match is None:
            raise RuntimeError("the registration SMS carried no code")
        device = DeviceInfo("demo-phone", "李明的手机", "walletguard-demo", "127.0.0.1")
        issued = identity.complete_registration(
            pending.id,
            code=match.group(1),
            name=name,
            birthday=birthday,
            password=password,
            id_number=None,
            device=device,
        )
        principal = Principal(
            holder_id=issued.holder_id,
            session_id=issued.session_id,
            device_id=issued.device_id,
            device_trust=issued.device_trust,
            ip="127.0.0.1",
        )
        identity.set_payment_password(principal, password, pin)
    return True


SEED_SCENARIO = "seed-000-sms-sync-drain.yaml"


def seed_scenario_path() -> Path:
    """The 88,130-yuan case, shipped with the package (also at scenarios/ in the repository)."""
    from importlib import resources

    return Path(str(resources.files("walletguard.simulator") / "scenarios" / SEED_SCENARIO))


def replay_seed_case() -> list[str]:
    """Play the 88,130-yuan case against both profiles; one line of outcome per profile."""
    from walletguard.kit.money import format_yuan
    from walletguard.simulator.runner import run
    from walletguard.simulator.scenario import load_scenario

    scenario = load_scenario(seed_scenario_path())
    lines = []
    for profile in ("vulnerable", "protected"):
        report = run(scenario, profile=profile)
        stopped = next(
            (s for s in report.steps if s.actor != (s.as_ or s.actor) and s.outcome != "ok"),
            None,
        )
        how = (
            f"stopped at step {stopped.index} ({stopped.do}) by {', '.join(stopped.controls)}"
            if stopped is not None and stopped.controls
            else "nothing stopped the attacker"
        )
        lines.append(f"  {profile:<10} loss {format_yuan(report.total_loss_fen):>10} yuan — {how}")
    return lines


def instructions(
    *, base_url: str, phone: str, password: str, pin: str, created: bool, data_dir: Path
) -> str:
    state = "created" if created else "already there"
    return f"""
walletguard demo — embedded default (SQLite in {data_dir}/)

Demo holder ({state}): phone {phone}, password {password}, payment password {pin}

Try, in another terminal:
  # sign in from a new device
  curl -s -X POST {base_url}/api/v1/sessions -H 'content-type: application/json' \\
    -d '{{"phone":"{phone}","password":"{password}",'\\
'"device":{{"id":"my-laptop","label":"Laptop"}}}}'
  # then, with the session_token it returns:
  curl -s {base_url}/api/v1/devices -H "authorization: Bearer $TOKEN"
  curl -s {base_url}/api/v1/sessions -H "authorization: Bearer $TOKEN"
  curl -s {base_url}/api/v1/me/security-events -H "authorization: Bearer $TOKEN"
  # register your own account: the code arrives in the sandbox inbox
  curl -s -X POST {base_url}/api/v1/registrations -H 'content-type: application/json' \\
    -d '{{"phone":"+8613912345678"}}'
  walletguard inbox +8613912345678
  # check the audit chain
  walletguard audit verify
  # replay the 88,130-yuan case step by step, against each profile
  walletguard simulate {seed_scenario_path()} --profile vulnerable
  walletguard simulate {seed_scenario_path()} --profile protected --ablate

API docs: {base_url}/api/v1/docs   (errors in English: add -H 'accept-language: en')
"""
