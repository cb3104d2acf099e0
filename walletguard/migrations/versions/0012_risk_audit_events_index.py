"""audit: the security events the risk engine reads, a partial index of their own

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-03 14:00:00

Before every risk decision ``walletguard.risk.repository.holder_and_events`` reads the holder's
security events of the last days (logins, devices added, credentials changed, ...: the events
of ``walletguard.risk.models.AUDIT_STEPS``). Migration 0011's ``(holder_id, event, at)`` index
was to give one short range per event, but PostgreSQL searched it by holder and time only and
filtered the events: every payment the holder made in those days (two entries each) was read
and thrown away again before the next one (0.28 ms of the database's time a payment for a
holder with 300 recent payments, growing with each).

``ix_audit_log_risk_events (holder_id, at) WHERE event IN (...)`` holds only those events: the
read is one range of it, a few entries long, whatever the holder's payments. Movements' entries
are not in it, so a payment's audit writes do not grow it. The list is the one of this
revision; an event added to ``AUDIT_STEPS`` later needs a migration that rebuilds the index
(``tests/test_risk_reads.py`` checks that the two agree).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from walletguard.migrations import online

revision: str = "0012"
down_revision: str | Sequence[str] | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

RISK_EVENTS = sa.text(
    "event IN ('login.succeeded', 'security.device_added', 'security.sync_enabled', "
    "'security.credential_changed', 'payment_password.reset', 'security.factor_enrolled', "
    "'security.factor_removed', 'security.phone_changed')"
)


def upgrade() -> None:
    online.create_index(
        "ix_audit_log_risk_events", "audit_log", ["holder_id", "at"], where=RISK_EVENTS
    )


def downgrade() -> None:
    online.drop_index("ix_audit_log_risk_events", "audit_log")
