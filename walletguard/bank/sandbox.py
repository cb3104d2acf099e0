"""The built-in sandbox bank: card accounts with balances, and quick-pay codes sent by SMS.

It behaves like a card issuer's quick-pay (快捷支付) service. Binding a card checks that the bank
issued that number to that name with that reserved phone, then sends a code there; every debit
sends a **dynamic password** to the reserved phone whose text names the card's last 4 digits, the
payee and the amount, so the person reading it knows what they approve. The code is bound to that
amount, payee and card (its hash covers them), lives 5 minutes and allows 3 tries.

It shares the caller's database transaction, so a wallet error after a debit rolls the debit back
too; a real bank behind the port would need a compensating credit instead.
"""

from __future__ import annotations

import hmac
import secrets
import uuid
from datetime import timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from walletguard.bank.gateway import (
    CHALLENGE_MAX_TRIES,
    CHALLENGE_MINUTES,
    BankChallengeClosed,
    BankChallengeRef,
    BankVerificationFailed,
    CardBlockedAtBank,
    CardFundsInsufficient,
    DynamicPasswordWrong,
)
from walletguard.bank.models import BankCardAccount, BankChallenge
from walletguard.kit.clock import Clock
from walletguard.kit.crypto import FieldCipher
from walletguard.kit.i18n import text
from walletguard.kit.money import format_yuan
from walletguard.kit.ratelimit import AttemptCounters
from walletguard.messages.service import PHONE_CONTEXT, PhoneInbox
from walletguard.wallet.bins import InvalidCardNumber, issuer_by_code, last4, validate_card_number

# One blind-index context for card numbers across walletguard and the sandbox bank.
CARD_NUMBER_CONTEXT = "card_number"
SMS_PURPOSE_DEBIT = "bank_dynamic_password"
SMS_PURPOSE_BIND = "bank_binding_code"


class SandboxBankError(ValueError):
    """A sandbox administration request that cannot be carried out (bad number, duplicate)."""


def _same_name(a: str, b: str) -> bool:
    # Banks compare the registered real name; spacing is the only thing people vary.
    return "".join(a.split()).casefold() == "".join(b.split()).casefold()


class SandboxBank:
    """The sandbox adapter of :class:`walletguard.bank.gateway.BankGateway`."""

    def __init__(self, db: Session, cipher: FieldCipher, clock: Clock) -> None:
        self.db = db
        self.cipher = cipher
        self.clock = clock
        self.inbox = PhoneInbox(db, cipher, clock)
        self.counters = AttemptCounters(db, clock)

    # -- administration (the sandbox's own back office; not part of the port) ---------------

    def open_card_account(
        self,
        *,
        number: str,
        holder_name: str,
        reserved_phone_e164: str,
        balance_fen: int,
        bank_code: str | None = None,
    ) -> BankCardAccount:
        """Issue a card: the number must pass Luhn and the BIN table, and be new to the bank."""
        try:
            normalised, issuer = validate_card_number(number)
        except InvalidCardNumber as exc:
            raise SandboxBankError(text(exc.code, "en")) from exc
        if bank_code is not None and issuer.bank_code != bank_code.strip().upper():
            # A UnionPay-fallback BIN may be issued by any bank the operator names.
            if not issuer.is_unionpay_fallback or issuer_by_code(bank_code) is None:
                raise SandboxBankError(
                    f"a card with this number is issued by {issuer.bank_code}, not {bank_code}"
                )
            issuer = issuer_by_code(bank_code) or issuer
        if balance_fen < 0:
            raise SandboxBankError("a card account cannot start with a negative balance")
        index = self.cipher.blind_index(normalised, context=CARD_NUMBER_CONTEXT)
        if self.db.scalar(select(BankCardAccount.id).where(BankCardAccount.number_index == index)):
            raise SandboxBankError("the bank already has a card with this number")
        account = BankCardAccount(
            id=uuid.uuid4(),
            bank_code=issuer.bank_code,
            number_index=index,
            number_enc=self.cipher.encrypt(normalised, context="bank_card_accounts.number"),
            last4=last4(normalised),
            holder_name_enc=self.cipher.encrypt(
                holder_name.strip(), context="bank_card_accounts.holder_name"
            ),
            reserved_phone_enc=self.cipher.encrypt(
                reserved_phone_e164, context="bank_card_accounts.reserved_phone"
            ),
            reserved_phone_index=self.cipher.blind_index(
                reserved_phone_e164, context=PHONE_CONTEXT
            ),
            balance_fen=balance_fen,
            created_at=self.clock.now(),
            blocked_at=None,
        )
        self.db.add(account)
        self.db.flush()
        return account

    def balance_of(self, number: str) -> int | None:
        account = self._account(number)
        return account.balance_fen if account else None

    # -- helpers -------------------------------------------------------------------------

    def _account(self, number: str) -> BankCardAccount | None:
        index = self.cipher.blind_index(number, context=CARD_NUMBER_CONTEXT)
        return self.db.scalar(select(BankCardAccount).where(BankCardAccount.number_index == index))

    def _code_hash(self, challenge: BankChallenge, last_four: str, code: str) -> str:
        # The code's hash covers what it approves: a code for one payment never confirms another,
        # even if the same six digits came up for both.
        message = "|".join(
            [
                "bank-challenge",
                str(challenge.id),
                challenge.purpose,
                str(challenge.amount_fen or 0),
                challenge.payee or "",
                last_four,
                code,
            ]
        ).encode("utf-8")
        return hmac.new(self.cipher.index_key, message, "sha256").hexdigest()

    def _sender(self, account: BankCardAccount) -> str:
        issuer = issuer_by_code(account.bank_code)
        return issuer.sms_signature if issuer else account.bank_code

    def _reserved_phone(self, account: BankCardAccount) -> str:
        return self.cipher.decrypt(
            account.reserved_phone_enc, context="bank_card_accounts.reserved_phone"
        )

    def _new_challenge(
        self, account: BankCardAccount, purpose: str, amount_fen: int | None, payee: str | None
    ) -> tuple[BankChallenge, str]:
        now = self.clock.now()
        challenge = BankChallenge(
            id=uuid.uuid4(),
            card_account_id=account.id,
            purpose=purpose,
            amount_fen=amount_fen,
            payee=payee,
            code_hash="",
            created_at=now,
            expires_at=now + timedelta(minutes=CHALLENGE_MINUTES),
            tries=0,
        )
        code = f"{secrets.randbelow(10**6):06d}"
        challenge.code_hash = self._code_hash(challenge, account.last4, code)
        self.db.add(challenge)
        self.db.flush()
        return challenge, code

    def _check_code(self, challenge_id: uuid.UUID, purpose: str, code: str) -> BankChallenge:
        """The challenge, once ``code`` has been found right; counts the try before checking."""
        challenge = self.db.get(BankChallenge, challenge_id)
        if challenge is None or challenge.purpose != purpose:
            raise BankChallengeClosed("unknown")
        if challenge.used_at is not None:
            raise BankChallengeClosed("used")
        if challenge.closed_at is not None:
            raise BankChallengeClosed("exhausted" if challenge.tries else "cancelled")
        now = self.clock.now()
        if challenge.expires_at <= now:
            raise BankChallengeClosed("expired")
        account = self.db.get(BankCardAccount, challenge.card_account_id)
        assert account is not None  # foreign key
        # Counted atomically before the check: parallel guesses cannot get a fourth try.
        tries = self.counters.reserve(
            f"bank-challenge:{challenge.id}",
            lambda n: timedelta(days=1) if n >= CHALLENGE_MAX_TRIES else None,
        )
        if not tries.allowed:
            raise BankChallengeClosed("exhausted")
        expected = challenge.code_hash
        if not hmac.compare_digest(expected, self._code_hash(challenge, account.last4, code)):
            challenge.tries = tries.failures
            if tries.failures >= CHALLENGE_MAX_TRIES:
                challenge.closed_at = now
            self.db.flush()
            raise DynamicPasswordWrong(remaining=max(0, CHALLENGE_MAX_TRIES - tries.failures))
        # Single use even when two confirmations race: only one conditional UPDATE matches.
        used = self.db.execute(
            update(BankChallenge)
            .where(
                BankChallenge.id == challenge.id,
                BankChallenge.used_at.is_(None),
                BankChallenge.closed_at.is_(None),
            )
            .values(used_at=now, tries=tries.failures)
            .execution_options(synchronize_session=False)
        )
        if getattr(used, "rowcount", 0) != 1:
            raise BankChallengeClosed("used")
        self.db.refresh(challenge)
        return challenge

    # -- the port --------------------------------------------------------------------------

    def start_binding(
        self, *, number: str, holder_name: str, reserved_phone_e164: str
    ) -> BankChallengeRef:
        account = self._account(number)
        if (
            account is None
            or account.blocked_at is not None
            or not _same_name(
                self.cipher.decrypt(
                    account.holder_name_enc, context="bank_card_accounts.holder_name"
                ),
                holder_name,
            )
            or account.reserved_phone_index
            != self.cipher.blind_index(reserved_phone_e164, context=PHONE_CONTEXT)
        ):
            raise BankVerificationFailed("bank.verification_failed")
        challenge, code = self._new_challenge(account, "bind", None, None)
        self.inbox.send_sms(
            self._reserved_phone(account),
            sender=self._sender(account),
            body=text(
                "bank.sms.binding_code",
                signature=self._sender(account),
                last4=account.last4,
                code=code,
                minutes=CHALLENGE_MINUTES,
            ),
            purpose=SMS_PURPOSE_BIND,
        )
        return BankChallengeRef(challenge.id, challenge.expires_at, account.last4)

    def confirm_binding(self, challenge_id: uuid.UUID, code: str) -> None:
        self._check_code(challenge_id, "bind", code)

    def start_debit(self, *, number: str, amount_fen: int, payee: str) -> BankChallengeRef:
        if amount_fen <= 0:
            raise ValueError("a debit must be for a positive amount")
        account = self._account(number)
        if account is None:
            # The wallet only debits cards the bank confirmed when they were bound.
            raise BankVerificationFailed("bank.verification_failed")
        if account.blocked_at is not None:
            raise CardBlockedAtBank()
        challenge, code = self._new_challenge(account, "debit", amount_fen, payee)
        self.inbox.send_sms(
            self._reserved_phone(account),
            sender=self._sender(account),
            body=text(
                "bank.sms.dynamic_password",
                signature=self._sender(account),
                last4=account.last4,
                payee=payee,
                amount=format_yuan(amount_fen),
                code=code,
                minutes=CHALLENGE_MINUTES,
            ),
            purpose=SMS_PURPOSE_DEBIT,
        )
        return BankChallengeRef(challenge.id, challenge.expires_at, account.last4)

    def confirm_debit(self, challenge_id: uuid.UUID, code: str) -> None:
        challenge = self._check_code(challenge_id, "debit", code)
        amount = challenge.amount_fen or 0
        # The balance is checked in the same statement that takes the money: two debits racing
        # for the last yuan cannot both succeed.
        debited = self.db.execute(
            update(BankCardAccount)
            .where(
                BankCardAccount.id == challenge.card_account_id,
                BankCardAccount.blocked_at.is_(None),
                BankCardAccount.balance_fen >= amount,
            )
            .values(balance_fen=BankCardAccount.balance_fen - amount)
            .execution_options(synchronize_session=False)
        )
        if getattr(debited, "rowcount", 0) != 1:
            account = self.db.get(BankCardAccount, challenge.card_account_id)
            if account is not None and account.blocked_at is not None:
                raise CardBlockedAtBank()
            raise CardFundsInsufficient()

    def cancel_challenge(self, challenge_id: uuid.UUID) -> None:
        self.db.execute(
            update(BankChallenge)
            .where(
                BankChallenge.id == challenge_id,
                BankChallenge.used_at.is_(None),
                BankChallenge.closed_at.is_(None),
            )
            .values(closed_at=self.clock.now())
            .execution_options(synchronize_session=False)
        )

    def credit(self, *, number: str, amount_fen: int) -> None:
        if amount_fen <= 0:
            raise ValueError("a credit must be for a positive amount")
        index = self.cipher.blind_index(number, context=CARD_NUMBER_CONTEXT)
        # Credits reach blocked cards too: a blocked card refuses debits, not refunds.
        credited = self.db.execute(
            update(BankCardAccount)
            .where(BankCardAccount.number_index == index)
            .values(balance_fen=BankCardAccount.balance_fen + amount_fen)
            .execution_options(synchronize_session=False)
        )
        if getattr(credited, "rowcount", 0) != 1:
            raise BankVerificationFailed("bank.verification_failed")

    def block_card(self, *, number: str) -> None:
        index = self.cipher.blind_index(number, context=CARD_NUMBER_CONTEXT)
        self.db.execute(
            update(BankCardAccount)
            .where(BankCardAccount.number_index == index, BankCardAccount.blocked_at.is_(None))
            .values(blocked_at=self.clock.now())
            .execution_options(synchronize_session=False)
        )
