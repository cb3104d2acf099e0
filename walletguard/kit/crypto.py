"""Field encryption for personal data at rest, and blind indexes to look it up.

Every encrypted value is ``v1.<key-id>.<base64url(nonce || ciphertext+tag)>`` under AES-256-GCM,
with the table/column as associated data so a value cannot be moved to another column. Keys have
ids so a new key can become active while old values stay readable; ``walletguard keys rotate``
re-encrypts them. Lookups (login by phone number) use an HMAC-SHA256 blind index with its own key.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlalchemy import Connection, MetaData, select

from walletguard.kit.settings import Settings

_VERSION = "v1"


class KeyConfigurationError(Exception):
    """The field keys are missing or malformed."""


class DecryptionError(Exception):
    """A stored value could not be decrypted (unknown key id, tampering, wrong column)."""


def _b64d(value: str) -> bytes:
    return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))


def _b64e(value: bytes) -> str:
    return base64.urlsafe_b64encode(value).rstrip(b"=").decode("ascii")


@dataclass(frozen=True)
class FieldCipher:
    keys: dict[str, bytes]
    active_key_id: str
    index_key: bytes

    def __post_init__(self) -> None:
        if self.active_key_id not in self.keys:
            raise KeyConfigurationError(f"active key {self.active_key_id!r} is not among the keys")
        for kid, key in self.keys.items():
            if len(key) != 32:
                raise KeyConfigurationError(f"key {kid!r} must be 32 bytes (AES-256)")
            if "." in kid:
                raise KeyConfigurationError(f"key id {kid!r} must not contain '.'")
        if len(self.index_key) < 32:
            raise KeyConfigurationError("the index key must be at least 32 bytes")

    def encrypt(self, plaintext: str, *, context: str) -> str:
        nonce = os.urandom(12)
        sealed = AESGCM(self.keys[self.active_key_id]).encrypt(
            nonce, plaintext.encode("utf-8"), context.encode("utf-8")
        )
        return f"{_VERSION}.{self.active_key_id}.{_b64e(nonce + sealed)}"

    def decrypt(self, token: str, *, context: str) -> str:
        try:
            version, kid, payload = token.split(".", 2)
        except ValueError as exc:
            raise DecryptionError("not an encrypted field value") from exc
        if version != _VERSION or kid not in self.keys:
            raise DecryptionError(f"unknown field key {kid!r}")
        raw = _b64d(payload)
        try:
            plain = AESGCM(self.keys[kid]).decrypt(raw[:12], raw[12:], context.encode("utf-8"))
        except InvalidTag as exc:
            raise DecryptionError("field value failed authentication") from exc
        return plain.decode("utf-8")

    def encrypt_optional(self, plaintext: str | None, *, context: str) -> str | None:
        return None if plaintext is None else self.encrypt(plaintext, context=context)

    def decrypt_optional(self, token: str | None, *, context: str) -> str | None:
        return None if token is None else self.decrypt(token, context=context)

    def key_id_of(self, token: str) -> str:
        return token.split(".", 2)[1]

    def needs_rotation(self, token: str) -> bool:
        return self.key_id_of(token) != self.active_key_id

    def blind_index(self, value: str, *, context: str) -> str:
        message = context.encode("utf-8") + b"\x00" + value.encode("utf-8")
        return hmac.new(self.index_key, message, hashlib.sha256).hexdigest()


def new_key() -> str:
    return _b64e(secrets.token_bytes(32))


def _parse_keys(raw: str) -> dict[str, bytes]:
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise KeyConfigurationError("WALLETGUARD_FIELD_KEYS must be a JSON object") from exc
    if not isinstance(data, dict) or not data:
        raise KeyConfigurationError("WALLETGUARD_FIELD_KEYS must be a non-empty JSON object")
    return {str(kid): _b64d(str(value)) for kid, value in data.items()}


def key_file_path(settings: Settings) -> Path:
    return settings.data_dir / "keys.json"


def load_cipher(settings: Settings, *, create: bool = True) -> tuple[FieldCipher, Path | None]:
    """The cipher from the environment, or from the embedded key file (created on first run).

    Returns the cipher and, when it had to create the key file, its path so the caller can say
    where it is.
    """
    if settings.field_keys is not None:
        keys = _parse_keys(settings.field_keys.get_secret_value())
        if settings.index_key is None:
            raise KeyConfigurationError(
                "WALLETGUARD_INDEX_KEY is required with WALLETGUARD_FIELD_KEYS"
            )
        active = settings.field_active_key or sorted(keys)[-1]
        return FieldCipher(keys, active, _b64d(settings.index_key.get_secret_value())), None

    path = key_file_path(settings)
    created: Path | None = None
    if not path.exists():
        if not create:
            raise KeyConfigurationError(f"no key file at {path}")
        path.parent.mkdir(parents=True, exist_ok=True)
        content = {"field_keys": {"k1": new_key()}, "active": "k1", "index_key": new_key()}
        # Create with owner-only permissions; never world-readable even for a moment.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(content, handle, indent=2)
        created = path
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        keys = {str(k): _b64d(str(v)) for k, v in data["field_keys"].items()}
        cipher = FieldCipher(keys, str(data["active"]), _b64d(str(data["index_key"])))
    except (KeyError, ValueError, TypeError, AttributeError) as exc:
        raise KeyConfigurationError(f"the key file {path} is malformed") from exc
    return cipher, created


def add_key_to_file(path: Path) -> str:
    """Add a new active key to the embedded key file; returns its id."""
    data = json.loads(path.read_text(encoding="utf-8"))
    next_number = 1 + max(int(k[1:]) for k in data["field_keys"] if k[1:].isdigit())
    kid = f"k{next_number}"
    data["field_keys"][kid] = new_key()
    data["active"] = kid
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2)
    tmp.replace(path)
    return kid


def hash_token(token: str) -> str:
    """Session and device tokens are stored only as their SHA-256."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


# -- payment passwords ------------------------------------------------------------------------

PIN_HASH_PREFIX = "$wg-pin-hmac-sha256$v=1$"
_PIN_KEY_LABEL = b"walletguard/payment-pin/v1"


def derive_pin_key(index_key: bytes) -> bytes:
    """The payment-PIN key when none is configured: HKDF-SHA256 of the index key under its own
    label, so it is never the index key itself and needs no new configuration."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_PIN_KEY_LABEL).derive(
        index_key
    )


@dataclass(frozen=True)
class PinHasher:
    """The 6-digit payment password as a keyed hash: HMAC-SHA256 under a server key (the
    "pepper", from configuration, never stored in the database) over a per-holder random salt
    and the PIN, stored as ``$wg-pin-hmac-sha256$v=1$<salt>$<mac>`` (base64url).

    Why not Argon2id like the login password: a PIN has 10^6 values, so a slow hash adds only
    hours to an offline search of a leaked database, while costing ~26 ms of CPU per payment.
    Without the key a dump of the database alone does not let anyone test a single guess;
    online guessing is stopped by the attempt counter (5 tries, then growing locks).
    """

    key: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if len(self.key) < 32:
            raise KeyConfigurationError("the payment-PIN key must be at least 32 bytes")

    def _mac(self, salt: bytes, pin: str) -> bytes:
        message = b"payment-pin\x00" + salt + b"\x00" + pin.encode("utf-8")
        return hmac.new(self.key, message, hashlib.sha256).digest()

    def hash(self, pin: str) -> str:
        salt = secrets.token_bytes(16)
        return f"{PIN_HASH_PREFIX}{_b64e(salt)}${_b64e(self._mac(salt, pin))}"

    @staticmethod
    def is_current(stored: str) -> bool:
        """Whether ``stored`` is in this format (else: a legacy Argon2id hash to upgrade)."""
        return stored.startswith(PIN_HASH_PREFIX)

    def verify(self, stored: str, pin: str) -> bool:
        """Constant-time check of ``pin`` against a hash in this format (False for any other)."""
        if not self.is_current(stored):
            return False
        salt_b64, _, mac_b64 = stored[len(PIN_HASH_PREFIX) :].partition("$")
        try:
            salt, expected = _b64d(salt_b64), _b64d(mac_b64)
        except ValueError:
            return False
        return hmac.compare_digest(self._mac(salt, pin), expected)


def load_pin_hasher(settings: Settings, cipher: FieldCipher) -> PinHasher:
    if settings.pin_key is not None:
        try:
            key = _b64d(settings.pin_key.get_secret_value())
        except ValueError as exc:
            raise KeyConfigurationError("WALLETGUARD_PIN_KEY must be base64") from exc
        return PinHasher(key)
    return PinHasher(derive_pin_key(cipher.index_key))


def constant_time_equal(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode("utf-8"), b.encode("utf-8"))


def field_context(table: str, column: str) -> str:
    """The associated data of an encrypted column: ``holders.phone`` for ``holders.phone_enc``."""
    return f"{table}.{column.removesuffix('_enc')}"


def reencrypt_all(connection: Connection, metadata: MetaData, cipher: FieldCipher) -> int:
    """Re-encrypt every ``*_enc`` value not under the active key; returns how many changed."""
    changed = 0
    for table in metadata.sorted_tables:
        enc_columns = [c for c in table.columns if c.name.endswith("_enc")]
        if not enc_columns:
            continue
        key_columns = list(table.primary_key.columns)
        rows = connection.execute(select(*key_columns, *enc_columns)).all()
        for row in rows:
            values: dict[str, str] = {}
            for column in enc_columns:
                token = row._mapping[column]
                if token is None or not cipher.needs_rotation(token):
                    continue
                context = field_context(table.name, column.name)
                values[column.name] = cipher.encrypt(
                    cipher.decrypt(token, context=context), context=context
                )
            if values:
                where = [k == row._mapping[k] for k in key_columns]
                connection.execute(table.update().where(*where).values(**values))
                changed += 1
    return changed
