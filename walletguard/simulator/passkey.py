"""A software passkey for scenario actors: the phone's fingerprint / face, in code.

It speaks the browser's WebAuthn JSON to the wallet's real verification (the ``webauthn``
library on the server side): a P-256 key made at registration with a "none" attestation, and
assertions signed over ``authenticatorData || SHA-256(clientDataJSON)`` with user verification
set and a growing signature counter. The private key never leaves the actor's device object, so
an attacker who did not enrol it cannot use it — as with a real phone.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from dataclasses import dataclass, field
from struct import pack
from typing import Any

import cbor2
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from webauthn.helpers import base64url_to_bytes, bytes_to_base64url

# Flags of authenticatorData: user present, user verified, attested credential data included.
_UP, _UV, _AT = 0x01, 0x04, 0x40


def _origin_rp_id(public_key: dict[str, Any], origin: str) -> str:
    rp = public_key.get("rp") or {}
    return str(rp.get("id") or public_key.get("rpId") or origin.split("//", 1)[-1].split(":")[0])


@dataclass
class SoftwarePasskey:
    origin: str
    private_key: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP256R1())
    )
    credential_id: bytes = field(default_factory=lambda: secrets.token_bytes(32))
    rp_id: str = ""
    user_handle: bytes = b""
    sign_count: int = 0

    def _cose_public_key(self) -> bytes:
        numbers = self.private_key.public_key().public_numbers()
        # COSE_Key: kty EC2 (2), alg ES256 (-7), crv P-256 (1), x, y.
        return cbor2.dumps(
            {
                1: 2,
                3: -7,
                -1: 1,
                -2: numbers.x.to_bytes(32, "big"),
                -3: numbers.y.to_bytes(32, "big"),
            }
        )

    def register(self, public_key: dict[str, Any]) -> dict[str, Any]:
        """Answer ``navigator.credentials.create`` options with a new credential."""
        self.rp_id = _origin_rp_id(public_key, self.origin)
        self.user_handle = base64url_to_bytes(public_key["user"]["id"])
        client_data = json.dumps(
            {"type": "webauthn.create", "challenge": public_key["challenge"], "origin": self.origin}
        ).encode()
        auth_data = (
            hashlib.sha256(self.rp_id.encode()).digest()
            + bytes([_UP | _UV | _AT])
            + pack(">I", self.sign_count)
            + bytes(16)  # AAGUID: none
            + pack(">H", len(self.credential_id))
            + self.credential_id
            + self._cose_public_key()
        )
        attestation = cbor2.dumps({"fmt": "none", "attStmt": {}, "authData": auth_data})
        return {
            "id": bytes_to_base64url(self.credential_id),
            "rawId": bytes_to_base64url(self.credential_id),
            "type": "public-key",
            "response": {
                "clientDataJSON": bytes_to_base64url(client_data),
                "attestationObject": bytes_to_base64url(attestation),
            },
            "clientExtensionResults": {},
        }

    def assert_for(self, public_key: dict[str, Any]) -> dict[str, Any]:
        """Answer ``navigator.credentials.get`` options: the fingerprint touch."""
        self.sign_count += 1
        client_data = json.dumps(
            {"type": "webauthn.get", "challenge": public_key["challenge"], "origin": self.origin}
        ).encode()
        auth_data = (
            hashlib.sha256(self.rp_id.encode()).digest()
            + bytes([_UP | _UV])
            + pack(">I", self.sign_count)
        )
        signature = self.private_key.sign(
            auth_data + hashlib.sha256(client_data).digest(), ec.ECDSA(hashes.SHA256())
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
