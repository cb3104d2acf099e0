"""money: bound cards, the double-entry ledger, idempotency keys, limits, wallet states, and the
sandbox bank's card accounts and challenges

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22 15:10:00

A holder's available balance never goes below zero: besides the conditional UPDATEs that move
money, a CHECK constraint on ledger_accounts refuses it at the database.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _autoincrement_id() -> sa.Column[int]:
    return sa.Column(
        "id",
        sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
        autoincrement=True,
        nullable=False,
    )


def upgrade() -> None:
    # -- the sandbox bank ------------------------------------------------------------------
    op.create_table(
        "bank_card_accounts",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("bank_code", sa.String(length=16), nullable=False),
        sa.Column("number_index", sa.String(length=64), nullable=False),
        sa.Column("number_enc", sa.Text(), nullable=False),
        sa.Column("last4", sa.String(length=4), nullable=False),
        sa.Column("holder_name_enc", sa.Text(), nullable=False),
        sa.Column("reserved_phone_enc", sa.Text(), nullable=False),
        sa.Column("reserved_phone_index", sa.String(length=64), nullable=False),
        sa.Column("balance_fen", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("blocked_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_bank_card_accounts")),
        sa.UniqueConstraint("number_index", name=op.f("uq_bank_card_accounts_number_index")),
    )
    with op.batch_alter_table("bank_card_accounts", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_bank_card_accounts_reserved_phone_index"),
            ["reserved_phone_index"],
            unique=False,
        )
    op.create_table(
        "bank_challenges",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("card_account_id", sa.Uuid(), nullable=False),
        sa.Column("purpose", sa.String(length=8), nullable=False),
        sa.Column("amount_fen", sa.BigInteger(), nullable=True),
        sa.Column("payee", sa.String(length=100), nullable=True),
        sa.Column("code_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("tries", sa.Integer(), nullable=False),
        sa.Column("used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("closed_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["card_account_id"],
            ["bank_card_accounts.id"],
            name=op.f("fk_bank_challenges_card_account_id_bank_card_accounts"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_bank_challenges")),
    )
    with op.batch_alter_table("bank_challenges", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_bank_challenges_card_account_id"), ["card_account_id"], unique=False
        )

    # -- cards -----------------------------------------------------------------------------
    op.create_table(
        "cards",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("holder_id", sa.Uuid(), nullable=False),
        sa.Column("number_enc", sa.Text(), nullable=False),
        sa.Column("number_index", sa.String(length=64), nullable=False),
        sa.Column("last4", sa.String(length=4), nullable=False),
        sa.Column("bank_code", sa.String(length=16), nullable=False),
        sa.Column("card_type", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("reserved_phone_index", sa.String(length=64), nullable=False),
        sa.Column("binding_challenge_id", sa.Uuid(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("bound_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("unbound_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("blocked_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["holder_id"], ["holders.id"], name=op.f("fk_cards_holder_id_holders")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_cards")),
    )
    with op.batch_alter_table("cards", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_cards_holder_id"), ["holder_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_cards_number_index"), ["number_index"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_cards_reserved_phone_index"), ["reserved_phone_index"], unique=False
        )

    # -- idempotency keys and wallet states ------------------------------------------------
    op.create_table(
        "idempotency_keys",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("holder_id", sa.Uuid(), nullable=False),
        sa.Column("key", sa.String(length=128), nullable=False),
        sa.Column("request_hash", sa.String(length=64), nullable=False),
        sa.Column("response_status", sa.Integer(), nullable=True),
        sa.Column("response_body", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["holder_id"], ["holders.id"], name=op.f("fk_idempotency_keys_holder_id_holders")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_idempotency_keys")),
        sa.UniqueConstraint("holder_id", "key", name=op.f("uq_idempotency_keys_holder_id")),
    )
    op.create_table(
        "wallet_states",
        sa.Column("holder_id", sa.Uuid(), nullable=False),
        sa.Column("closed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("closed_reason", sa.String(length=64), nullable=True),
        sa.Column("reopens_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["holder_id"], ["holders.id"], name=op.f("fk_wallet_states_holder_id_holders")
        ),
        sa.PrimaryKeyConstraint("holder_id", name=op.f("pk_wallet_states")),
    )

    # -- the ledger ------------------------------------------------------------------------
    op.create_table(
        "ledger_accounts",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("code", sa.String(length=200), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("holder_id", sa.Uuid(), nullable=True),
        sa.Column("balance_fen", sa.BigInteger(), nullable=False),
        sa.Column("pending_fen", sa.BigInteger(), nullable=False),
        sa.Column("allow_negative", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "allow_negative OR balance_fen - pending_fen >= 0",
            name=op.f("ck_ledger_accounts_balance_covers_holds"),
        ),
        sa.CheckConstraint(
            "pending_fen >= 0", name=op.f("ck_ledger_accounts_pending_not_negative")
        ),
        sa.ForeignKeyConstraint(
            ["holder_id"], ["holders.id"], name=op.f("fk_ledger_accounts_holder_id_holders")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ledger_accounts")),
        sa.UniqueConstraint("code", name=op.f("uq_ledger_accounts_code")),
    )
    with op.batch_alter_table("ledger_accounts", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_ledger_accounts_holder_id"), ["holder_id"], unique=False
        )
    op.create_table(
        "ledger_transactions",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("status_reason", sa.String(length=32), nullable=True),
        sa.Column("holder_id", sa.Uuid(), nullable=False),
        sa.Column("counterparty_holder_id", sa.Uuid(), nullable=True),
        sa.Column("device_id", sa.Uuid(), nullable=True),
        sa.Column("ip", sa.String(length=64), nullable=True),
        sa.Column("amount_fen", sa.BigInteger(), nullable=False),
        sa.Column("refunded_fen", sa.BigInteger(), nullable=False),
        sa.Column("source", sa.String(length=8), nullable=False),
        sa.Column("card_id", sa.Uuid(), nullable=True),
        sa.Column("payee", sa.String(length=100), nullable=True),
        sa.Column("payer_label", sa.String(length=100), nullable=True),
        sa.Column("risk_decision", sa.String(length=16), nullable=False),
        sa.Column("bank_challenge_id", sa.Uuid(), nullable=True),
        sa.Column("from_account_id", sa.Uuid(), nullable=False),
        sa.Column("to_account_id", sa.Uuid(), nullable=False),
        sa.Column("hold_account_id", sa.Uuid(), nullable=True),
        sa.Column("reverses_id", sa.Uuid(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("posted_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("voided_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["card_id"], ["cards.id"], name=op.f("fk_ledger_transactions_card_id_cards")
        ),
        sa.ForeignKeyConstraint(
            ["counterparty_holder_id"],
            ["holders.id"],
            name=op.f("fk_ledger_transactions_counterparty_holder_id_holders"),
        ),
        sa.ForeignKeyConstraint(
            ["from_account_id"],
            ["ledger_accounts.id"],
            name=op.f("fk_ledger_transactions_from_account_id_ledger_accounts"),
        ),
        sa.ForeignKeyConstraint(
            ["hold_account_id"],
            ["ledger_accounts.id"],
            name=op.f("fk_ledger_transactions_hold_account_id_ledger_accounts"),
        ),
        sa.ForeignKeyConstraint(
            ["holder_id"], ["holders.id"], name=op.f("fk_ledger_transactions_holder_id_holders")
        ),
        sa.ForeignKeyConstraint(
            ["reverses_id"],
            ["ledger_transactions.id"],
            name=op.f("fk_ledger_transactions_reverses_id_ledger_transactions"),
        ),
        sa.ForeignKeyConstraint(
            ["to_account_id"],
            ["ledger_accounts.id"],
            name=op.f("fk_ledger_transactions_to_account_id_ledger_accounts"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ledger_transactions")),
    )
    with op.batch_alter_table("ledger_transactions", schema=None) as batch_op:
        for column in (
            "card_id",
            "counterparty_holder_id",
            "created_at",
            "holder_id",
            "reverses_id",
            "status",
        ):
            batch_op.create_index(
                batch_op.f(f"ix_ledger_transactions_{column}"), [column], unique=False
            )
    op.create_table(
        "ledger_postings",
        _autoincrement_id(),
        sa.Column("transaction_id", sa.Uuid(), nullable=False),
        sa.Column("account_id", sa.Uuid(), nullable=False),
        sa.Column("amount_fen", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["ledger_accounts.id"],
            name=op.f("fk_ledger_postings_account_id_ledger_accounts"),
        ),
        sa.ForeignKeyConstraint(
            ["transaction_id"],
            ["ledger_transactions.id"],
            name=op.f("fk_ledger_postings_transaction_id_ledger_transactions"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ledger_postings")),
    )
    with op.batch_alter_table("ledger_postings", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_ledger_postings_account_id"), ["account_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_ledger_postings_transaction_id"), ["transaction_id"], unique=False
        )

    # -- limits ----------------------------------------------------------------------------
    op.create_table(
        "wallet_limits",
        _autoincrement_id(),
        sa.Column("holder_id", sa.Uuid(), nullable=False),
        sa.Column("card_id", sa.Uuid(), nullable=True),
        sa.Column("period", sa.String(length=16), nullable=False),
        sa.Column("amount_fen", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("effective_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["card_id"], ["cards.id"], name=op.f("fk_wallet_limits_card_id_cards")
        ),
        sa.ForeignKeyConstraint(
            ["holder_id"], ["holders.id"], name=op.f("fk_wallet_limits_holder_id_holders")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_wallet_limits")),
    )
    with op.batch_alter_table("wallet_limits", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_wallet_limits_holder_id"), ["holder_id"], unique=False)


def downgrade() -> None:
    op.drop_table("wallet_limits")
    op.drop_table("ledger_postings")
    op.drop_table("ledger_transactions")
    op.drop_table("ledger_accounts")
    op.drop_table("wallet_states")
    op.drop_table("idempotency_keys")
    op.drop_table("cards")
    op.drop_table("bank_challenges")
    op.drop_table("bank_card_accounts")
