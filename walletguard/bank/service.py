"""Which bank adapter walletguard talks to: wired here, in one place (STYLE rule 6).

The sandbox bank is the only adapter today; a deployment with real banks would choose its adapter
here from the settings. Services ask ``bank_gateway(db, env)`` and see only the port.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from walletguard.bank.gateway import BankGateway
from walletguard.bank.sandbox import SandboxBank
from walletguard.bootstrap import Container


def bank_gateway(db: Session, env: Container) -> BankGateway:
    return SandboxBank(db, env.cipher, env.clock)


def sandbox_bank(db: Session, env: Container) -> SandboxBank:
    """The sandbox's back office (open card accounts, read balances): tests, demo, simulator."""
    return SandboxBank(db, env.cipher, env.clock)
