"""mfa: second factors, step-up, device trust, recovery, phone changes, "this was not me"

Revision ID: 0004
Revises: 0001
Create Date: 2026-11-22 14:30:00

Devices gain verification and cooling-off columns; holders a post-recovery payment hold.
Existing devices keep their trust: ``trusted`` stays trusted, ``new`` must now verify.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TZ = sa.DateTime(timezone=True)


def _holder_fk(table: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        ["holder_id"], ["holders.id"], name=op.f(f"fk_{table}_holder_id_holders")
    )


def _session_fk(table: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        ["session_id"], ["login_sessions.id"], name=op.f(f"fk_{table}_session_id_login_sessions")
    )


def _index(table: str, *columns: str) -> None:
    with op.batch_alter_table(table, schema=None) as batch_op:
        for column in columns:
            batch_op.create_index(batch_op.f(f"ix_{table}_{column}"), [column], unique=False)


def upgrade() -> None:
    with op.batch_alter_table("devices", schema=None) as batch_op:
        batch_op.add_column(sa.Column("verified_at", TZ, nullable=True))
        batch_op.add_column(sa.Column("verified_by", sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column("cooling_off_until", TZ, nullable=True))
    with op.batch_alter_table("holders", schema=None) as batch_op:
        batch_op.add_column(sa.Column("payments_hold_until", TZ, nullable=True))

    op.create_table(
        "totp_factors",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("holder_id", sa.Uuid(), nullable=False),
        sa.Column("label", sa.String(length=100), nullable=False),
        sa.Column("secret_enc", sa.Text(), nullable=False),
        sa.Column("created_at", TZ, nullable=False),
        sa.Column("confirmed_at", TZ, nullable=True),
        sa.Column("last_used_step", sa.BigInteger(), nullable=True),
        sa.Column("last_used_at", TZ, nullable=True),
        sa.Column("removed_at", TZ, nullable=True),
        _holder_fk("totp_factors"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_totp_factors")),
    )
    _index("totp_factors", "holder_id")

    op.create_table(
        "passkeys",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("holder_id", sa.Uuid(), nullable=False),
        sa.Column("label", sa.String(length=100), nullable=False),
        sa.Column("credential_id", sa.String(length=1400), nullable=False),
        sa.Column("public_key", sa.Text(), nullable=False),
        sa.Column("sign_count", sa.BigInteger(), nullable=False),
        sa.Column("aaguid", sa.String(length=36), nullable=False),
        sa.Column("created_at", TZ, nullable=False),
        sa.Column("last_used_at", TZ, nullable=True),
        sa.Column("removed_at", TZ, nullable=True),
        _holder_fk("passkeys"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_passkeys")),
        sa.UniqueConstraint("credential_id", name=op.f("uq_passkeys_credential_id")),
    )
    _index("passkeys", "holder_id")

    op.create_table(
        "recovery_codes",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("holder_id", sa.Uuid(), nullable=False),
        sa.Column("code_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", TZ, nullable=False),
        sa.Column("used_at", TZ, nullable=True),
        _holder_fk("recovery_codes"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_recovery_codes")),
        sa.UniqueConstraint("code_hash", name=op.f("uq_recovery_codes_code_hash")),
    )
    _index("recovery_codes", "holder_id")

    op.create_table(
        "step_up_challenges",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("holder_id", sa.Uuid(), nullable=False),
        sa.Column("session_id", sa.Uuid(), nullable=False),
        sa.Column("action", sa.String(length=32), nullable=False),
        sa.Column("factor", sa.String(length=32), nullable=False),
        sa.Column("secret", sa.String(length=128), nullable=False),
        sa.Column("created_at", TZ, nullable=False),
        sa.Column("expires_at", TZ, nullable=False),
        sa.Column("used_at", TZ, nullable=True),
        _holder_fk("step_up_challenges"),
        _session_fk("step_up_challenges"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_step_up_challenges")),
    )
    _index("step_up_challenges", "holder_id", "session_id")

    op.create_table(
        "step_up_grants",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("holder_id", sa.Uuid(), nullable=False),
        sa.Column("session_id", sa.Uuid(), nullable=False),
        sa.Column("action", sa.String(length=32), nullable=False),
        sa.Column("factor", sa.String(length=32), nullable=False),
        sa.Column("granted_at", TZ, nullable=False),
        sa.Column("expires_at", TZ, nullable=False),
        sa.Column("consumed_at", TZ, nullable=True),
        _holder_fk("step_up_grants"),
        _session_fk("step_up_grants"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_step_up_grants")),
    )
    _index("step_up_grants", "holder_id", "session_id")

    op.create_table(
        "not_me_reports",
        sa.Column("token_id", sa.String(length=64), nullable=False),
        sa.Column("holder_id", sa.Uuid(), nullable=False),
        sa.Column("device_id", sa.Uuid(), nullable=True),
        sa.Column("event", sa.String(length=64), nullable=False),
        sa.Column("reported_at", TZ, nullable=False),
        sa.Column("ip", sa.String(length=64), nullable=True),
        _holder_fk("not_me_reports"),
        sa.PrimaryKeyConstraint("token_id", name=op.f("pk_not_me_reports")),
    )
    _index("not_me_reports", "holder_id")

    op.create_table(
        "recovery_requests",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("holder_id", sa.Uuid(), nullable=True),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("client_device_id", sa.String(length=128), nullable=False),
        sa.Column("device_label", sa.String(length=100), nullable=False),
        sa.Column("user_agent", sa.String(length=512), nullable=False),
        sa.Column("ip", sa.String(length=64), nullable=True),
        sa.Column("started_at", TZ, nullable=False),
        sa.Column("completes_at", TZ, nullable=False),
        sa.Column("cancelled_at", TZ, nullable=True),
        sa.Column("cancelled_by", sa.String(length=32), nullable=True),
        sa.Column("completed_at", TZ, nullable=True),
        _holder_fk("recovery_requests"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_recovery_requests")),
    )
    _index("recovery_requests", "holder_id")

    op.create_table(
        "password_resets",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("holder_id", sa.Uuid(), nullable=True),
        sa.Column("phone_index", sa.String(length=64), nullable=False),
        sa.Column("code_hash", sa.String(length=64), nullable=True),
        sa.Column("passkey_challenge", sa.String(length=128), nullable=True),
        sa.Column("created_at", TZ, nullable=False),
        sa.Column("expires_at", TZ, nullable=False),
        sa.Column("sms_verified_at", TZ, nullable=True),
        sa.Column("completed_at", TZ, nullable=True),
        _holder_fk("password_resets"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_password_resets")),
    )
    _index("password_resets", "holder_id", "phone_index")

    op.create_table(
        "phone_changes",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("holder_id", sa.Uuid(), nullable=False),
        sa.Column("new_phone_index", sa.String(length=64), nullable=False),
        sa.Column("new_phone_enc", sa.Text(), nullable=False),
        sa.Column("code_hash", sa.String(length=64), nullable=False),
        sa.Column("requested_by_device_id", sa.Uuid(), nullable=False),
        sa.Column("requested_at", TZ, nullable=False),
        sa.Column("code_expires_at", TZ, nullable=False),
        sa.Column("confirmed_at", TZ, nullable=True),
        sa.Column("effective_at", TZ, nullable=True),
        sa.Column("completed_at", TZ, nullable=True),
        sa.Column("cancelled_at", TZ, nullable=True),
        _holder_fk("phone_changes"),
        sa.ForeignKeyConstraint(
            ["requested_by_device_id"],
            ["devices.id"],
            name=op.f("fk_phone_changes_requested_by_device_id_devices"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_phone_changes")),
    )
    _index("phone_changes", "holder_id")


def downgrade() -> None:
    for table in (
        "phone_changes",
        "password_resets",
        "recovery_requests",
        "not_me_reports",
        "step_up_grants",
        "step_up_challenges",
        "recovery_codes",
        "passkeys",
        "totp_factors",
    ):
        op.drop_table(table)
    with op.batch_alter_table("holders", schema=None) as batch_op:
        batch_op.drop_column("payments_hold_until")
    with op.batch_alter_table("devices", schema=None) as batch_op:
        batch_op.drop_column("cooling_off_until")
        batch_op.drop_column("verified_by")
        batch_op.drop_column("verified_at")
