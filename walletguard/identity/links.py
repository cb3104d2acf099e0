"""Signed one-click links: "this was not me" on every announcement, "cancel" on a recovery.

A link carries its own claims (which holder, which device, which event, until when) under an
HMAC-SHA256 with a server key, so it works from an email or an SMS without a login. What makes
it single-use is the database: the reporting service records the link's id under a primary key.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session

from walletguard.alerts import service as alerts
from walletguard.audit import service as audit
from walletguard.audit.models import AuditEntry
from walletguard.bootstrap import Container
from walletguard.identity.models import Holder
from walletguard.kit.errors import WalletguardError

NOT_ME = "not_me"
CANCEL_RECOVERY = "cancel_recovery"


class LinkInvalid(WalletguardError):
    status = 404
    slug = "link-invalid"
    title_key = "mfa.link.invalid_title"


class LinkExpired(WalletguardError):
    status = 410
    slug = "link-expired"
    title_key = "mfa.link.expired_title"


class LinkUsed(WalletguardError):
    status = 409
    slug = "link-used"
    title_key = "mfa.link.used_title"


@dataclass(frozen=True)
class LinkClaims:
    kind: str
    link_id: str
    holder_id: uuid.UUID
    device_id: uuid.UUID | None
    event: str
    expires_at: datetime
    subject_id: uuid.UUID | None  # the recovery a cancel link cancels


def _b64e(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _b64d(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def link_key(env: Container) -> bytes:
    """The configured secret, or one derived from the index key (no new config needed)."""
    configured = env.settings.not_me_secret
    if configured is not None:
        return configured.get_secret_value().encode("utf-8")
    return hmac.new(env.cipher.index_key, b"walletguard/signed-links/v1", hashlib.sha256).digest()


def sign_link(
    env: Container,
    kind: str,
    *,
    holder_id: uuid.UUID,
    device_id: uuid.UUID | None,
    event: str,
    valid_for: timedelta,
    subject_id: uuid.UUID | None = None,
) -> str:
    claims = {
        "k": kind,
        "j": secrets.token_urlsafe(12),
        "h": str(holder_id),
        "d": str(device_id) if device_id else None,
        "e": event,
        "x": int((env.clock.now() + valid_for).timestamp()),
        "s": str(subject_id) if subject_id else None,
    }
    body = _b64e(json.dumps(claims, separators=(",", ":"), sort_keys=True).encode("utf-8"))
    signature = hmac.new(link_key(env), body.encode("ascii"), hashlib.sha256).digest()
    return f"{body}.{_b64e(signature)}"


def read_link(env: Container, token: str, kind: str) -> LinkClaims:
    """The claims of a genuine, unexpired link of this kind; otherwise a problem."""
    body, _, signature = token.partition(".")
    try:
        expected = hmac.new(link_key(env), body.encode("ascii"), hashlib.sha256).digest()
        genuine = hmac.compare_digest(expected, _b64d(signature))
        claims: dict[str, Any] = json.loads(_b64d(body)) if genuine else {}
    except (ValueError, UnicodeError):
        genuine, claims = False, {}
    if not genuine or claims.get("k") != kind:
        raise LinkInvalid("mfa.link.invalid")
    try:
        parsed = LinkClaims(
            kind=kind,
            link_id=str(claims["j"]),
            holder_id=uuid.UUID(str(claims["h"])),
            device_id=uuid.UUID(str(claims["d"])) if claims.get("d") else None,
            event=str(claims["e"]),
            expires_at=datetime.fromtimestamp(int(claims["x"]), tz=env.clock.now().tzinfo),
            subject_id=uuid.UUID(str(claims["s"])) if claims.get("s") else None,
        )
    except (KeyError, ValueError, TypeError) as exc:
        raise LinkInvalid("mfa.link.invalid") from exc
    if parsed.expires_at <= env.clock.now():
        raise LinkExpired("mfa.link.expired")
    return parsed


def not_me_url(
    env: Container, *, holder_id: uuid.UUID, device_id: uuid.UUID | None, event: str
) -> str:
    """A one-click "this was not me" for an announcement about ``device_id``'s doing.

    It points at the web page that asks for one confirming tap and then POSTs to
    ``/api/v1/not-me/{token}``: a plain GET must change nothing, because mail scanners and link
    previews fetch every link they see.
    """
    token = sign_link(
        env,
        NOT_ME,
        holder_id=holder_id,
        device_id=device_id,
        event=event,
        valid_for=timedelta(days=env.settings.not_me_link_days),
    )
    return f"{env.settings.public_base_url.rstrip('/')}/not-me/{token}"


def announce(
    db: Session,
    env: Container,
    event: str,
    *,
    holder_id: uuid.UUID,
    device_id: uuid.UUID | None,
    ip: str | None,
    suspect_device_id: uuid.UUID | None,
    data: Mapping[str, Any] | None = None,
) -> AuditEntry:
    """Audit a ``security.*`` event with its "this was not me" link, and raise its alert.

    The alert goes in-app and by SMS to the bound number always, and by email and webhook where
    the holder has them (``walletguard.alerts.service``); while the ``security_alerts`` control
    is off it is shown in-app only. ``suspect_device_id`` is the device a "not me" report
    revokes. ``data`` must hold no personal data (ids, masked forms, labels only).
    """
    payload = dict(data or {})
    payload["not_me_url"] = not_me_url(
        env, holder_id=holder_id, device_id=suspect_device_id, event=event
    )
    entry = audit.record(
        db, env.clock, event, holder_id=holder_id, device_id=device_id, ip=ip, data=payload
    )
    alerts.security_alert(
        db, env, alert_recipient(db, env, holder_id), event, device_id=device_id, data=payload
    )
    return entry


def alert_recipient(db: Session, env: Container, holder_id: uuid.UUID) -> alerts.Recipient:
    """Whom the alerts capability tells: the holder's bound number (for SMS) and language."""
    holder = db.get(Holder, holder_id)
    if holder is None:
        return alerts.Recipient(holder_id, None)
    return recipient_from(env, holder_id, holder.phone_enc, holder.language)


def recipient_from(
    env: Container, holder_id: uuid.UUID, phone_enc: str, language: str
) -> alerts.Recipient:
    """The alert recipient of a holder's stored columns (a caller that read them already)."""
    phone = env.cipher.decrypt(phone_enc, context="holders.phone")
    return alerts.Recipient(holder_id, phone, "en" if language == "en" else "zh-CN")


def token_of(url: str) -> str:
    """The token at the end of a link (what the web page posts back)."""
    return url.rstrip("/").rsplit("/", 1)[-1]
