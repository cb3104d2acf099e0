"""The command line, run as a holder or operator would run it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import text

from walletguard.bootstrap import build_container
from walletguard.kit.settings import Settings


@pytest.fixture
def cli_env(tmp_path: Path, db_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WALLETGUARD_")}
    env.update(
        WALLETGUARD_DATA_DIR=str(tmp_path / "data"),
        WALLETGUARD_DATABASE_URL=db_url,
        WALLETGUARD_ARGON2_TIME_COST="1",
        WALLETGUARD_ARGON2_MEMORY_KIB="8192",
    )
    return env


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "walletguard.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_demo_sets_up_a_holder_and_the_audit_log_verifies(cli_env: dict[str, str]) -> None:
    demo = run(cli_env, "demo", "--no-serve")
    assert demo.returncode == 0, demo.stderr
    assert "+8613800138000" in demo.stdout
    assert "Created a new field-encryption key file" in demo.stderr
    key_file = Path(cli_env["WALLETGUARD_DATA_DIR"]) / "keys.json"
    assert oct(key_file.stat().st_mode & 0o777) == "0o600"
    again = run(cli_env, "demo", "--no-serve")
    assert again.returncode == 0 and "already there" in again.stdout
    inbox = run(cli_env, "inbox", "13800138000")
    assert inbox.returncode == 0
    assert "注册验证码" in inbox.stdout
    verified = run(cli_env, "audit", "verify")
    assert verified.returncode == 0, verified.stderr
    assert "audit log OK" in verified.stdout


def test_audit_verify_fails_and_names_the_entry(cli_env: dict[str, str]) -> None:
    assert run(cli_env, "demo", "--no-serve").returncode == 0
    settings = Settings(
        data_dir=Path(cli_env["WALLETGUARD_DATA_DIR"]),
        database_url=cli_env["WALLETGUARD_DATABASE_URL"],
    )
    container = build_container(settings)
    with container.engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("ALTER TABLE audit_log DISABLE TRIGGER USER"))
            conn.execute(text("UPDATE audit_log SET event = 'nothing.happened' WHERE seq = 2"))
            conn.execute(text("ALTER TABLE audit_log ENABLE TRIGGER USER"))
        else:
            conn.execute(text("DROP TRIGGER audit_log_no_update"))
            conn.execute(text("UPDATE audit_log SET event = 'nothing.happened' WHERE seq = 2"))
    container.close()
    verified = run(cli_env, "audit", "verify")
    assert verified.returncode == 1
    assert "entry 2" in verified.stderr and "edited" in verified.stderr


def test_errors_are_one_readable_line(cli_env: dict[str, str]) -> None:
    assert run(cli_env, "migrate").returncode == 0
    bad_phone = run(cli_env, "inbox", "not-a-phone")
    assert bad_phone.returncode != 0
    lines = bad_phone.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("walletguard:"), bad_phone.stderr
    bad_db = run({**cli_env, "WALLETGUARD_DATABASE_URL": "nosuchdb://x"}, "migrate")
    assert bad_db.returncode != 0
    assert len(bad_db.stderr.strip().splitlines()) == 1, bad_db.stderr


def test_key_rotation_reencrypts_and_everything_stays_readable(cli_env: dict[str, str]) -> None:
    assert run(cli_env, "demo", "--no-serve").returncode == 0
    rotated = run(cli_env, "keys", "rotate")
    assert rotated.returncode == 0, rotated.stderr
    assert "New active key k2" in rotated.stdout
    settings = Settings(
        data_dir=Path(cli_env["WALLETGUARD_DATA_DIR"]),
        database_url=cli_env["WALLETGUARD_DATABASE_URL"],
    )
    container = build_container(settings)
    with container.engine.connect() as conn:
        values = [r[0] for r in conn.execute(text("SELECT phone_enc FROM holders"))]
    container.close()
    assert values and all(v.startswith("v1.k2.") for v in values)
    inbox = run(cli_env, "inbox", "13800138000")
    assert inbox.returncode == 0 and "注册验证码" in inbox.stdout


def test_risk_housekeeping_runs_on_an_empty_instance(cli_env: dict[str, str]) -> None:
    done = run(cli_env, "risk", "housekeeping")
    assert done.returncode == 0, done.stderr
    assert "0 holds expired, 0 velocity buckets trimmed" in done.stdout
