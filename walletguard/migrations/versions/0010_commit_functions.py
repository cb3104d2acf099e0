"""audit and risk: the writes that go with COMMIT are PL/pgSQL functions

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-02 06:00:00

On PostgreSQL the last statements before COMMIT go in the same message as COMMIT
(``walletguard.kit.db.send_before_commit``), as one query of the simple protocol, where every
statement is planned afresh; a function call is cheap to plan, and a PL/pgSQL function plans
its own statements once per connection.

``walletguard_audit_chain(entries json)`` locks the chain's head (creating it on an empty log),
numbers and hashes the entries in SQL, inserts them and moves the head, without the application
waiting for the head in between. Each element of ``entries`` is
``[prefix, at, event, holder_id, device_id, ip, data]``: ``prefix`` is the entry's canonical JSON
up to its ``prev_hash`` value (``prev_hash`` and ``seq`` sort last), so that the hash is exactly
``walletguard.audit.service.entry_hash``'s: sha256 of ``prefix || prev_hash || '","seq":' ||
seq || '}'`` in UTF-8. It returns, per entry, ``[seq, prev_hash, hash]``.

``walletguard_velocity_add(bucket_shard smallint, buckets json)`` adds a transaction's counts
to its velocity buckets, each element ``[key, minute, count, sum_fen]``, in array order (the
order writers lock the rows in).

SQLite (one writer) keeps both in Python.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0010"
down_revision: str | Sequence[str] | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CHAIN_FUNCTION = """
CREATE FUNCTION walletguard_audit_chain(entries json) RETURNS json LANGUAGE plpgsql AS $$
DECLARE
  head_seq bigint;
  head_hash text;
  entry json;
  entry_hash text;
  chained json[] := '{}';
BEGIN
  SELECT seq, hash INTO head_seq, head_hash FROM audit_head WHERE id = 1 FOR UPDATE;
  IF NOT FOUND THEN
    -- An empty log: FOR UPDATE locked nothing. Create the head (a concurrent creator waits
    -- on the primary key until the other commits), then lock it.
    INSERT INTO audit_head (id, seq, hash) VALUES (1, 0, repeat('0', 64))
      ON CONFLICT (id) DO NOTHING;
    SELECT seq, hash INTO STRICT head_seq, head_hash FROM audit_head WHERE id = 1 FOR UPDATE;
  END IF;
  FOR entry IN SELECT value FROM json_array_elements(entries) LOOP
    head_seq := head_seq + 1;
    entry_hash := encode(sha256(convert_to(
      (entry->>0) || head_hash || '","seq":' || head_seq::text || '}', 'UTF8')), 'hex');
    INSERT INTO audit_log (seq, at, event, holder_id, device_id, ip, data, prev_hash, hash)
      VALUES (head_seq, CAST(entry->>1 AS timestamptz), entry->>2, CAST(entry->>3 AS uuid),
              CAST(entry->>4 AS uuid), entry->>5, entry->>6, head_hash, entry_hash);
    chained := chained || json_build_array(head_seq, head_hash, entry_hash);
    head_hash := entry_hash;
  END LOOP;
  UPDATE audit_head SET seq = head_seq, hash = head_hash WHERE id = 1;
  RETURN array_to_json(chained);
END
$$;
"""


VELOCITY_FUNCTION = """
CREATE FUNCTION walletguard_velocity_add(bucket_shard smallint, buckets json) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO risk_velocity AS bucket (key, minute, shard, count, sum_fen)
    SELECT b.v->>0, CAST(b.v->>1 AS timestamptz), bucket_shard, CAST(b.v->>2 AS integer),
           CAST(b.v->>3 AS bigint)
    FROM json_array_elements(buckets) WITH ORDINALITY AS b(v, n)
    ORDER BY b.n
  ON CONFLICT (key, minute, shard) DO UPDATE SET
    count = bucket.count + excluded.count,
    sum_fen = bucket.sum_fen + excluded.sum_fen;
END
$$;
"""


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(CHAIN_FUNCTION)
        op.execute(VELOCITY_FUNCTION)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS walletguard_velocity_add(smallint, json)")
        op.execute("DROP FUNCTION IF EXISTS walletguard_audit_chain(json)")
