"""Security controls as named switches; a profile is a set of them.

``protected`` is walletguard's default: every control on. ``vulnerable`` reproduces the original
product of the 88,130-yuan case: cloud sync mirrors every message, devices are not trusted or
distrusted, and the payment password can be reset with an SMS code alone. Any control can also
be switched off alone (``WALLETGUARD_DISABLED_CONTROLS=otp_guard,cooling_off``), which is how
the simulator's ablation mode asks "would this control alone have stopped it?".
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, fields, replace

# Each control, what it does, and which capability enforces it.
CONTROL_DESCRIPTIONS: dict[str, str] = {
    "new_device_step_up": "a new device must pass a second factor not delivered to it (identity)",
    "cooling_off": "a new device cannot do anything dangerous for 24 h (identity)",
    "step_up": "sensitive actions need a fresh second factor (identity)",
    "sms_restricted": "an SMS code alone never resets the payment password or adds a device",
    "otp_guard": "one-time codes are never synced off the SIM device (messages)",
    "security_alerts": "security events are announced on every channel (alerts)",
    "limit_delay": "raising a limit or reopening payments takes effect after a delay (wallet)",
    "risk_engine": "every login, sensitive action and movement is scored first (risk)",
}


@dataclass(frozen=True)
class Controls:
    new_device_step_up: bool = True
    cooling_off: bool = True
    step_up: bool = True
    sms_restricted: bool = True
    otp_guard: bool = True
    security_alerts: bool = True
    limit_delay: bool = True
    risk_engine: bool = True

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    def without(self, names: Iterable[str]) -> Controls:
        names = list(names)
        unknown = sorted(set(names) - set(self.names()))
        if unknown:
            raise ValueError(f"unknown control(s): {', '.join(unknown)}")
        return replace(self, **dict.fromkeys(names, False))

    def enabled(self) -> list[str]:
        return [name for name in self.names() if getattr(self, name)]


PROFILES: dict[str, Controls] = {
    "protected": Controls(),
    "vulnerable": Controls().without(
        [
            "new_device_step_up",
            "cooling_off",
            "step_up",
            "sms_restricted",
            "otp_guard",
            "limit_delay",
            "risk_engine",
        ]
    ),
}


def controls_for(profile: str, disabled: Iterable[str] = ()) -> Controls:
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose one of {', '.join(PROFILES)}")
    return PROFILES[profile].without(disabled)
