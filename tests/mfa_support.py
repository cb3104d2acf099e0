"""Test helpers for second factors: an authenticator app, a software passkey, audit lookups."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import timedelta
from struct import pack
from typing import Any

import pyotp
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi.testclient import TestClient
from fido2 import cbor
from soft_webauthn import SoftWebauthnDevice
from sqlalchemy import select
from webauthn.helpers import base64url_to_bytes, bytes_to_base64url

from tests.conftest import Holder, step_up
from walletguard.audit.models import AuditEntry
from walletguard.bootstrap import Container
from walletguard.kit.clock import ManualClock

ORIGIN = "http://127.0.0.1:8000"  # the default WALLETGUARD_PUBLIC_BASE_URL


def _sha256(data: bytes) -> bytes:
    digest = hashes.Hash(hashes.SHA256())
    digest.update(data)
    return digest.finalize()


class SoftPasskey(SoftWebauthnDevice):  # type: ignore[misc]
    """soft-webauthn's authenticator, speaking the browser's JSON and verifying the user.

    The wallet requires user verification (the fingerprint / face), which soft-webauthn does not
    flag; ``create_json`` sets the UV bit in the unsigned "none" attestation and ``get_json``
    signs assertions with UV set. ``counter`` lets a test replay an old signature counter.
    """

    def create_json(self, public_key: dict[str, Any], origin: str = ORIGIN) -> dict[str, Any]:
        options = dict(public_key)
        options["challenge"] = base64url_to_bytes(public_key["challenge"])
        options["user"] = dict(public_key["user"])
        options["user"]["id"] = base64url_to_bytes(public_key["user"]["id"])
        options.pop("attestation", None)
        created = self.create({"publicKey": options}, origin)
        attestation = cbor.decode(created["response"]["attestationObject"])
        auth_data = bytearray(attestation["authData"])
        auth_data[32] |= 0x04  # UV: the user was verified
        attestation["authData"] = bytes(auth_data)
        return {
            "id": bytes_to_base64url(created["rawId"]),
            "rawId": bytes_to_base64url(created["rawId"]),
            "type": "public-key",
            "response": {
                "clientDataJSON": bytes_to_base64url(created["response"]["clientDataJSON"]),
                "attestationObject": bytes_to_base64url(cbor.encode(attestation)),
            },
            "clientExtensionResults": {},
        }

    def get_json(
        self,
        public_key: dict[str, Any],
        origin: str = ORIGIN,
        *,
        counter: int | None = None,
        user_verified: bool = True,
    ) -> dict[str, Any]:
        if counter is None:
            self.sign_count += 1
            counter = self.sign_count
        client_data = json.dumps(
            {"type": "webauthn.get", "challenge": public_key["challenge"], "origin": origin}
        ).encode("utf-8")
        flags = 0x05 if user_verified else 0x01
        auth_data = _sha256(self.rp_id.encode("ascii")) + bytes([flags]) + pack(">I", counter)
        signature = self.private_key.sign(
            auth_data + _sha256(client_data), ec.ECDSA(hashes.SHA256())
        )
        return {
            "id": bytes_to_base64url(self.credential_id),
            "rawId": bytes_to_base64url(self.credential_id),
            "type": "public-key",
            "response": {
                "clientDataJSON": bytes_to_base64url(client_data),
                "authenticatorData": bytes_to_base64url(auth_data),
                "signature": bytes_to_base64url(signature),
                "userHandle": bytes_to_base64url(self.user_handle),
            },
            "clientExtensionResults": {},
        }


@dataclass
class Totp:
    factor_id: str
    app: pyotp.TOTP
    clock: ManualClock

    def code(self) -> str:
        return str(self.app.at(self.clock.now()))


def enrol_totp(client: TestClient, container: Container, holder: Holder) -> Totp:
    """Enrol an authenticator app (a step-up by SMS first, as nothing better is enrolled)."""
    assert isinstance(container.clock, ManualClock)
    step_up(client, container, holder.auth, holder.phone, "enrol_factor")
    started = client.post("/api/v1/me/factors/totp", json={"label": "app"}, headers=holder.auth)
    assert started.status_code == 201, started.text
    body = started.json()
    totp = Totp(body["factor_id"], pyotp.TOTP(body["secret"]), container.clock)
    confirmed = client.post(
        f"/api/v1/me/factors/totp/{body['factor_id']}/confirm",
        json={"code": totp.code()},
        headers=holder.auth,
    )
    assert confirmed.status_code == 200, confirmed.text
    # The confirming code is spent; the next one comes with the next time step.
    container.clock.advance(timedelta(seconds=30))
    return totp


def enrol_passkey(
    client: TestClient, container: Container, holder: Holder, *, factor: str = "sms"
) -> SoftPasskey:
    if factor == "sms":
        step_up(client, container, holder.auth, holder.phone, "enrol_factor")
    options = client.post("/api/v1/me/factors/passkeys/options", headers=holder.auth)
    assert options.status_code == 201, options.text
    authenticator = SoftPasskey()
    credential = authenticator.create_json(options.json()["public_key"])
    registered = client.post(
        "/api/v1/me/factors/passkeys",
        json={"challenge_id": options.json()["challenge_id"], "credential": credential},
        headers=holder.auth,
    )
    assert registered.status_code == 201, registered.text
    return authenticator


def passkey_step_up(
    client: TestClient,
    auth: dict[str, str],
    authenticator: SoftPasskey,
    action: str,
    **get_options: Any,
) -> Any:
    challenge = client.post(
        "/api/v1/step-up/challenges", json={"action": action, "factor": "passkey"}, headers=auth
    )
    assert challenge.status_code == 201, challenge.text
    assertion = authenticator.get_json(challenge.json()["public_key"], **get_options)
    return client.post(
        "/api/v1/step-up",
        json={
            "action": action,
            "factor": "passkey",
            "challenge_id": challenge.json()["challenge_id"],
            "assertion": assertion,
        },
        headers=auth,
    )


def audit_events(container: Container, prefix: str = "") -> list[AuditEntry]:
    with container.sessions() as db:
        return list(
            db.scalars(
                select(AuditEntry)
                .where(AuditEntry.event.startswith(prefix))
                .order_by(AuditEntry.seq)
            ).all()
        )


def audit_data(entry: AuditEntry) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(entry.data)
    return data


def not_me_token(container: Container, event: str) -> str:
    """The token of the newest "this was not me" link announced with ``event``."""
    entries = [e for e in audit_events(container, event) if e.event == event]
    assert entries, f"no {event} announced"
    url = audit_data(entries[-1])["not_me_url"]
    return str(url).rsplit("/", 1)[-1]
