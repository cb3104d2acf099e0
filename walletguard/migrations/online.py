"""Index changes that do not stop the wallet while they run.

A plain ``CREATE INDEX`` on PostgreSQL holds a lock on its table that lets every write wait until
the index is built: on a wallet's ``audit_log`` or ``ledger_transactions`` of millions of rows,
payments would queue, then time out, for as long as the build takes. These helpers build and
drop indexes ``CONCURRENTLY`` on PostgreSQL (reads and writes go on meanwhile; the build takes
longer). Those cannot run inside a transaction, so each runs in an autocommit block of its own
(``MigrationContext.autocommit_block``), which commits what the migration did before it; that is
why the environment runs each migration in a transaction of its own (``env.py``,
``transaction_per_migration``).

An interrupted concurrent build leaves an invalid index behind under its name, and the
migration, not recorded as done, runs again: ``create_index`` drops any index of that name
first, so the second run builds it whole. On SQLite, whose writers hold the whole database for
the length of any transaction anyway, they are the plain operations.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


def _postgres() -> bool:
    return bool(op.get_bind().dialect.name == "postgresql")


def create_index(
    name: str, table: str, columns: Sequence[str], *, where: sa.TextClause | None = None
) -> None:
    """``CREATE INDEX name ON table (columns) [WHERE where]``, concurrently on PostgreSQL."""
    if not _postgres():
        op.create_index(name, table, list(columns), unique=False, sqlite_where=where)
        return
    with op.get_context().autocommit_block():
        op.drop_index(name, table_name=table, postgresql_concurrently=True, if_exists=True)
        op.create_index(
            name,
            table,
            list(columns),
            unique=False,
            postgresql_where=where,
            postgresql_concurrently=True,
        )


def drop_index(name: str, table: str) -> None:
    """``DROP INDEX name``, concurrently on PostgreSQL (and there, only if it exists: a run
    interrupted after it had dropped it runs again)."""
    if not _postgres():
        op.drop_index(name, table_name=table)
        return
    with op.get_context().autocommit_block():
        op.drop_index(name, table_name=table, postgresql_concurrently=True, if_exists=True)


def replace_index(
    name: str, table: str, columns: Sequence[str], *, where: sa.TextClause | None = None
) -> None:
    """Replace the index ``name`` with one on ``columns`` [WHERE ``where``] under the same name.
    On PostgreSQL the new one is built beside the old (as ``<name>_new``) before the old is
    dropped and it takes the name, so reads keep an index throughout; a run interrupted at any
    step runs again from the start. On SQLite, the drop and the build in the migration's
    transaction."""
    if not _postgres():
        drop_index(name, table)
        create_index(name, table, columns, where=where)
        return
    building = f"{name}_new"
    create_index(building, table, columns, where=where)
    drop_index(name, table)
    # Renaming takes a lock that lets reads and writes go on (PostgreSQL 12 and newer).
    op.execute(sa.text(f'ALTER INDEX "{building}" RENAME TO "{name}"'))
