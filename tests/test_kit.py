"""Kit: the catalogue, field encryption, the clock, the problem format, the server's heap."""

from __future__ import annotations

import base64
import gc
import secrets
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from hypothesis import given
from hypothesis import strategies as st

from tests.conftest import assert_problem
from walletguard.app import create_app, server_app
from walletguard.bootstrap import Container
from walletguard.kit import heap
from walletguard.kit.clock import ManualClock
from walletguard.kit.crypto import DecryptionError, FieldCipher, KeyConfigurationError
from walletguard.kit.i18n import LANGUAGES, catalogue, negotiate, text
from walletguard.kit.settings import Settings


def _cipher(active: str = "a", keys: tuple[str, ...] = ("a",)) -> FieldCipher:
    material = {k: secrets.token_bytes(32) for k in keys}
    return FieldCipher(material, active, secrets.token_bytes(32))


def test_every_catalogue_entry_has_both_languages() -> None:
    texts = catalogue()
    assert len(texts) > 20
    for key, by_lang in texts.items():
        for lang in LANGUAGES:
            assert by_lang[lang].strip(), f"{key} has an empty {lang} text"


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, "zh-CN"),
        ("", "zh-CN"),
        ("en", "en"),
        ("en-US,en;q=0.9", "en"),
        ("zh-CN,zh;q=0.9,en;q=0.8", "zh-CN"),
        ("fr-FR,en;q=0.5", "en"),
        ("fr-FR", "zh-CN"),
        ("en;q=0,zh;q=0.1", "zh-CN"),
        ("en;q=bogus", "zh-CN"),
    ],
)
def test_language_negotiation(header: str | None, expected: str) -> None:
    assert negotiate(header) == expected


def test_text_fills_placeholders() -> None:
    assert "3" in text("identity.pin.wrong", "en", remaining=3)


@given(st.text(max_size=200))
def test_encryption_round_trips(value: str) -> None:
    cipher = _cipher()
    token = cipher.encrypt(value, context="holders.name")
    assert cipher.decrypt(token, context="holders.name") == value


def test_a_value_moved_to_another_column_does_not_decrypt() -> None:
    cipher = _cipher()
    token = cipher.encrypt("6222020200112233445", context="cards.number")
    with pytest.raises(DecryptionError):
        cipher.decrypt(token, context="holders.name")


def test_a_flipped_byte_does_not_decrypt() -> None:
    cipher = _cipher()
    token = cipher.encrypt("张伟", context="holders.name")
    prefix, payload = token.rsplit(".", 1)
    raw = bytearray(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    raw[-1] ^= 1
    tampered = prefix + "." + base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()
    with pytest.raises(DecryptionError):
        cipher.decrypt(tampered, context="holders.name")


def test_old_keys_stay_readable_after_rotation() -> None:
    old = _cipher("a", ("a",))
    token = old.encrypt("+8613812345678", context="holders.phone")
    rotated = FieldCipher({**old.keys, "b": secrets.token_bytes(32)}, "b", old.index_key)
    assert rotated.needs_rotation(token)
    assert rotated.decrypt(token, context="holders.phone") == "+8613812345678"
    fresh = rotated.encrypt("+8613812345678", context="holders.phone")
    assert not rotated.needs_rotation(fresh)
    assert rotated.key_id_of(fresh) == "b"


def test_blind_index_is_stable_and_keyed() -> None:
    a, b = _cipher(), _cipher()
    assert a.blind_index("x", context="phone") == a.blind_index("x", context="phone")
    assert a.blind_index("x", context="phone") != b.blind_index("x", context="phone")
    assert a.blind_index("x", context="phone") != a.blind_index("x", context="id_number")


def test_bad_key_configuration_is_refused() -> None:
    with pytest.raises(KeyConfigurationError):
        FieldCipher({"a": b"short"}, "a", secrets.token_bytes(32))
    with pytest.raises(KeyConfigurationError):
        FieldCipher({"a": secrets.token_bytes(32)}, "b", secrets.token_bytes(32))


def test_manual_clock_moves_only_forward() -> None:
    clock = ManualClock(datetime(2026, 1, 1, tzinfo=UTC))
    assert clock.advance(timedelta(hours=25)) == datetime(2026, 1, 2, 1, tzinfo=UTC)
    with pytest.raises(ValueError, match="backwards"):
        clock.advance(timedelta(seconds=-1))


def test_unknown_routes_and_methods_are_problems(client: TestClient) -> None:
    assert_problem(client.get("/api/v1/nothing-here"), 404, "not-found")
    assert_problem(client.put("/api/v1/registrations"), 405, "method-not-allowed")


def test_malformed_json_is_a_problem(client: TestClient) -> None:
    response = client.post(
        "/api/v1/registrations", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert_problem(response, 422, "invalid-input")


def test_oversized_bodies_are_refused_before_parsing(client: TestClient) -> None:
    response = client.post(
        "/api/v1/registrations",
        content=b'{"phone": "' + b"1" * 70_000 + b'"}',
        headers={"content-type": "application/json"},
    )
    assert_problem(response, 413, "payload-too-large")


def test_problem_titles_follow_accept_language(client: TestClient) -> None:
    zh = client.get("/api/v1/me").json()
    en = client.get("/api/v1/me", headers={"accept-language": "en"}).json()
    assert zh["title"] == "需要登录"
    assert en["title"] == "Authentication required"


def test_openapi_is_3_1(client: TestClient) -> None:
    spec = client.get("/api/v1/openapi.json").json()
    assert spec["openapi"].startswith("3.1")
    assert "/api/v1/sessions" in spec["paths"]


def test_health(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready"}


def _walked(thing: object) -> bool:
    """Whether the garbage collector's walks reach ``thing`` (frozen objects are left out)."""
    return any(tracked is thing for tracked in gc.get_objects())


def test_a_server_process_freezes_what_it_started_with(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``server_app``, what ``walletguard serve`` runs in each process, from the settings in the
    environment: once started, every object alive by then is out of the collector's walks, so a
    full collection no longer walks the app; what is made afterwards is walked as usual."""
    for name in ("data_dir", "database_url", "field_active_key", "argon2_memory_kib"):
        monkeypatch.setenv(f"WALLETGUARD_{name.upper()}", str(getattr(settings, name)))
    for name in ("field_keys", "index_key"):
        secret = getattr(settings, name).get_secret_value()
        monkeypatch.setenv(f"WALLETGUARD_{name.upper()}", secret)
    gc.unfreeze()
    app = server_app()
    try:
        assert _walked(app.router)
        with TestClient(app) as client:
            assert gc.get_freeze_count() > 0
            assert not _walked(app.router)
            assert client.get("/healthz").json() == {"status": "ok"}
            made_since: list[object] = []
            assert _walked(made_since)
            # What the first requests leave for good is frozen by the first full collection
            # after start-up, and only by the first.
            frozen_at_start = gc.get_freeze_count()
            gc.collect()
            assert not _walked(made_since)
            assert gc.get_freeze_count() > frozen_at_start
            made_later: list[object] = []
            gc.collect()
            assert _walked(made_later)
        # The app has stopped: the collector is as it was.
        assert gc.get_freeze_count() == 0
        assert _walked(made_since)
        assert not [hook for hook in gc.callbacks if type(hook).__module__ == heap.__name__]
    finally:
        gc.unfreeze()
        app.state.container.close()


def test_an_app_made_among_others_freezes_nothing(container: Container) -> None:
    """``create_app`` as the tests and the simulator use it, many apps in one process: freezing
    there would keep every earlier app's cycles for good."""
    gc.unfreeze()
    with TestClient(create_app(container)) as client:
        assert client.get("/healthz").status_code == 200
        assert gc.get_freeze_count() == 0


def test_profiles_are_sets_of_switches() -> None:
    from walletguard.kit.controls import PROFILES, controls_for

    assert PROFILES["protected"].enabled() == PROFILES["protected"].names()
    vulnerable = PROFILES["vulnerable"]
    assert not vulnerable.otp_guard
    assert not vulnerable.cooling_off
    ablated = controls_for("protected", ["otp_guard"])
    assert not ablated.otp_guard
    assert ablated.cooling_off
    with pytest.raises(ValueError, match="unknown control"):
        controls_for("protected", ["no_such_control"])
    with pytest.raises(ValueError, match="unknown profile"):
        controls_for("careless")
