"""All configuration, from ``WALLETGUARD_*`` environment variables (one pydantic-settings class)."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from walletguard.kit.controls import Controls, controls_for

Profile = Literal["protected", "vulnerable"]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="WALLETGUARD_", extra="ignore")

    # Where the embedded default keeps its SQLite file and its key file.
    data_dir: Path = Path("walletguard-data")
    # SQLAlchemy URL; defaults to a SQLite file in data_dir. PostgreSQL in production:
    # postgresql+psycopg://user@host/dbname
    database_url: str | None = None
    # Field-encryption keys as JSON {"key-id": "<base64 32 bytes>", ...}; when unset the embedded
    # default creates data_dir/keys.json on first run.
    field_keys: SecretStr | None = None
    field_active_key: str | None = None
    # HMAC key for blind indexes (lookups of encrypted phone / ID numbers), base64 32 bytes.
    index_key: SecretStr | None = None

    profile: Profile = "protected"
    # Controls switched off on top of the profile, comma-separated (see kit/controls.py).
    disabled_controls: str = ""
    # The sandbox exposes simulated phone inboxes (there is no real SMS carrier in the box).
    sandbox: bool = True
    public_base_url: str = "http://127.0.0.1:8000"
    log_json: bool = False

    # Argon2id, OWASP Password Storage Cheat Sheet: m=19 MiB, t=2, p=1.
    argon2_time_cost: int = Field(default=2, ge=1)
    argon2_memory_kib: int = Field(default=19456, ge=8192)
    argon2_parallelism: int = Field(default=1, ge=1)

    session_lifetime_days: int = Field(default=30, ge=1)
    session_idle_days: int = Field(default=7, ge=1)

    # Login throttling (NIST SP 800-63B 5.2.2: at most 100 consecutive failures).
    login_free_failures: int = Field(default=5, ge=1)
    login_max_consecutive_failures: int = Field(default=100, ge=1, le=100)
    login_ip_failures_per_window: int = Field(default=50, ge=1)
    login_ip_window_minutes: int = Field(default=10, ge=1)

    # Payment password: 5 wrong tries lock payments, each lock longer than the last.
    # Key of the payment-PIN hashes (HMAC-SHA256), base64, 32+ bytes; never stored in the
    # database. Unset: derived from the index key (HKDF, its own label). Changing it
    # invalidates every stored payment password (holders set a new one).
    pin_key: SecretStr | None = None
    pin_max_failures: int = Field(default=5, ge=1)
    pin_lock_minutes: int = Field(default=15, ge=1)

    registration_code_minutes: int = Field(default=10, ge=1)
    registration_code_max_tries: int = Field(default=5, ge=1)
    registration_sms_per_hour: int = Field(default=5, ge=1)

    max_request_bytes: int = Field(default=64 * 1024, ge=1024)
    # Money requests (top-ups, withdrawals, payments, transfers, the confirm and cancel of a
    # pending one) a server process works on at once; the others wait their turn, in order.
    # Each holds its transaction's row locks while it runs, and the process runs Python one
    # thread at a time: more at once only lengthens every one of them (bench/bench_payments.py).
    money_concurrency: int = Field(default=8, ge=1)

    # Multi-factor and device trust (identity, SPEC C2/C3).
    # A step-up grant is good for one sensitive action within this many minutes.
    step_up_fresh_minutes: int = Field(default=5, ge=1, le=60)
    # A new device, once verified, may not do anything dangerous for this long after first seen.
    cooling_off_hours: int = Field(default=24, ge=0)
    # What a cooling-off device may pay in one day, in fen (200.00 yuan).
    cooling_off_daily_cap_fen: int = Field(default=20_000, ge=0)
    # Account recovery (every factor lost) completes only after this delay.
    recovery_delay_hours: int = Field(default=72, ge=0)
    # After a recovery, payments stay closed this long.
    recovery_payment_hold_hours: int = Field(default=24, ge=0)
    # A new bound phone number takes effect after this delay (NIST SP 800-63B-4 4.1.2).
    phone_change_delay_hours: int = Field(default=24, ge=0)
    # Wrong second-factor codes: this many, then a lock that doubles each time.
    step_up_max_failures: int = Field(default=5, ge=1)
    step_up_lock_minutes: int = Field(default=15, ge=1)
    step_up_sms_per_hour: int = Field(default=5, ge=1)
    # Key of the signed "this was not me" and cancel links; derived from the index key if unset.
    not_me_secret: SecretStr | None = None
    not_me_link_days: int = Field(default=7, ge=1)

    # Wallet limits (SPEC C4), in fen: 50,000.00 yuan per movement, 100,000.00 yuan per day.
    default_txn_limit_fen: int = Field(default=5_000_000, ge=1)
    default_daily_limit_fen: int = Field(default=10_000_000, ge=1)
    # Raising a limit or reopening closed transactions waits this long (control limit_delay).
    limit_raise_delay_hours: int = Field(default=24, ge=0)
    reopen_transactions_delay_hours: int = Field(default=24, ge=0)

    # Alerts (SPEC C8). Turning a channel off (or moving it to another address) takes effect
    # only after this delay, announced on every channel meanwhile (control security_alerts).
    alert_off_delay_hours: int = Field(default=24, ge=0)
    # The in-process delivery thread of `serve`/`demo`: None = on with SQLite (the embedded
    # default), off with PostgreSQL (run `walletguard worker` processes instead).
    alerts_in_process: bool | None = None
    alert_poll_seconds: float = Field(default=2.0, gt=0)
    # A worker's claim on an outbox row lasts this long; a dead worker's claims expire with it.
    alert_lease_seconds: int = Field(default=120, ge=5)
    # Failed deliveries are retried after base * 2^(attempt-1) seconds (capped), then dead.
    alert_max_attempts: int = Field(default=8, ge=1)
    alert_retry_base_seconds: int = Field(default=30, ge=1)
    alert_retry_max_seconds: int = Field(default=3600, ge=1)
    # Email alerts over SMTP.
    smtp_host: str = "127.0.0.1"
    smtp_port: int = Field(default=25, ge=1, le=65535)
    smtp_from: str = "walletguard <alerts@walletguard.localhost>"
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    smtp_starttls: bool = False
    smtp_timeout_seconds: float = Field(default=10.0, gt=0)
    # Signed webhooks. Holders' URLs may not point into private, loopback or link-local
    # networks (the worker would otherwise probe the operator's own network) unless allowed.
    webhook_timeout_seconds: float = Field(default=5.0, gt=0)
    webhook_allow_private_targets: bool = False

    # Incident desk (SPEC C10). Operators' API keys as JSON {"operator-name": "token", ...}
    # (each token at least 32 characters); unset: the operator API answers 401 to everyone.
    operator_tokens: SecretStr | None = None
    # A case's timeline and movements reach back this far before the report.
    incident_lookback_days: int = Field(default=30, ge=1)
    # Debits within this long after a new device, sync or credential change are pre-marked.
    incident_suspect_window_hours: int = Field(default=72, ge=1)
    # Service-level targets: an incident case and a complaint must be resolved within these.
    incident_sla_hours: int = Field(default=24, ge=1)
    complaint_sla_hours: int = Field(default=360, ge=1)
    # A TrueType CJK font (.ttf/.ttc with TrueType outlines) embedded in the incident PDFs so they
    # display anywhere; unset: the first of the usual system fonts found (WenQuanYi, AR PL), else
    # the non-embedded STSong-Light, which extracts but needs the reader's own CJK fonts to show.
    pdf_font: Path | None = None

    # Risk engine (SPEC C7). A MaxMind-format .mmdb city database (GeoLite2-City, DB-IP City
    # Lite); unset: the bundled sandbox table of Chinese ranges (walletguard/risk/data).
    geoip_database: Path | None = None
    # The rules file operators edit; unset: the bundled walletguard/risk/data/default_rules.yaml.
    # Reloaded when its modification time changes, or by POST /api/v1/operator/risk/rules/reload.
    risk_rules: Path | None = None
    # Velocity counters: in Redis when set (production, shared by every process), else in the
    # database (the embedded default).
    redis_url: SecretStr | None = None
    # A held movement waits this long for the holder's answer, then expires rejected.
    risk_hold_minutes: int = Field(default=30, ge=1)
    # A confirmed hold lets the same movement through once within this long.
    risk_approval_minutes: int = Field(default=30, ge=1)

    @cached_property
    def effective_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'walletguard.db').as_posix()}"

    @cached_property
    def controls(self) -> Controls:
        names = [n.strip() for n in self.disabled_controls.split(",") if n.strip()]
        return controls_for(self.profile, names)

    @property
    def is_sqlite(self) -> bool:
        return self.effective_database_url.startswith("sqlite")
