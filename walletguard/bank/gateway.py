"""The port to card-issuing banks (SPEC C5).

walletguard talks to banks only through :class:`BankGateway`, shaped like China's quick-pay
(快捷支付) flows: binding a card and debiting it each start with the bank sending a code by SMS to
the phone number reserved at the bank for that card, and finish when the holder types the code.
The bank decides, checks the code and holds the card's money; the wallet never sees a code.

The built-in sandbox bank (``bank/sandbox.py``) is the only adapter. A real adapter would call a
bank's API; its errors must be mapped onto the error classes below, so the wallet can react the
same way to any bank.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from walletguard.kit.errors import WalletguardError

# SPEC C5: a dynamic password lives 5 minutes and allows 3 tries.
CHALLENGE_MINUTES = 5
CHALLENGE_MAX_TRIES = 3


@dataclass(frozen=True)
class BankChallengeRef:
    """A code the bank has sent: which challenge to answer, and until when."""

    challenge_id: uuid.UUID
    expires_at: datetime
    last4: str


class BankVerificationFailed(WalletguardError):
    """The bank has no such card, or the name or reserved phone does not match it.

    One refusal for every reason: a bank does not tell a stranger which detail was wrong. Kept
    (``keep_writes``) so the attempt counter survives the refusal."""

    status = 422
    slug = "bank-verification-failed"
    title_key = "bank.verification_failed_title"
    keep_writes = True


class DynamicPasswordWrong(WalletguardError):
    status = 403
    slug = "dynamic-password-wrong"
    title_key = "bank.dynamic_password.wrong_title"
    keep_writes = True

    def __init__(self, *, remaining: int) -> None:
        super().__init__(
            "bank.dynamic_password.wrong",
            extensions={"remaining_tries": remaining},
            remaining=remaining,
        )


class BankChallengeClosed(WalletguardError):
    """The code can no longer be used: expired, tried 3 times, used or cancelled."""

    status = 409
    slug = "dynamic-password-unusable"
    title_key = "bank.dynamic_password.closed_title"
    keep_writes = True

    def __init__(self, reason: str) -> None:
        super().__init__(f"bank.dynamic_password.{reason}", extensions={"reason": reason})
        self.reason = reason


class CardFundsInsufficient(WalletguardError):
    status = 409
    slug = "card-funds-insufficient"
    title_key = "bank.card_funds_insufficient_title"

    def __init__(self) -> None:
        super().__init__("bank.card_funds_insufficient")


class CardBlockedAtBank(WalletguardError):
    status = 409
    slug = "card-blocked"
    title_key = "bank.card_blocked_title"

    def __init__(self) -> None:
        super().__init__("bank.card_blocked")


class BankGateway(Protocol):
    """What walletguard asks of a card-issuing bank. Card numbers cross this port in full (a
    bank knows its cards); nothing on the wallet's side of it keeps them in the clear."""

    def start_binding(
        self, *, number: str, holder_name: str, reserved_phone_e164: str
    ) -> BankChallengeRef:
        """Check that the bank issued ``number`` to ``holder_name`` with this reserved phone, and
        send a binding code there; BankVerificationFailed otherwise."""
        ...

    def confirm_binding(self, challenge_id: uuid.UUID, code: str) -> None:
        """DynamicPasswordWrong or BankChallengeClosed unless ``code`` answers the challenge."""
        ...

    def start_debit(self, *, number: str, amount_fen: int, payee: str) -> BankChallengeRef:
        """Send a dynamic password for this one debit (amount, payee and card) to the card's
        reserved phone; CardBlockedAtBank for a blocked card."""
        ...

    def confirm_debit(self, challenge_id: uuid.UUID, code: str) -> None:
        """Debit the card if ``code`` is right and the card still has the money
        (CardFundsInsufficient otherwise). A debit that succeeded is final."""
        ...

    def cancel_challenge(self, challenge_id: uuid.UUID) -> None:
        """Make a sent code useless (the wallet no longer wants the debit). Idempotent."""
        ...

    def credit(self, *, number: str, amount_fen: int) -> None:
        """Pay money into the card (a withdrawal from the wallet, a refund)."""
        ...

    def balance_of(self, number: str) -> int | None:
        """What the card holds, in fen, when the bank tells (a quick-pay balance enquiry; the
        risk engine asks whether a payment empties the card); None when it does not."""
        ...

    def block_card(self, *, number: str) -> None:
        """Refuse every further debit of the card (the holder reported it stolen). Idempotent."""
        ...
