"""Every table, imported in one place so Alembic and the tests see the whole schema."""

from walletguard.alerts.models import Alert, AlertChannel, AlertDelivery
from walletguard.audit.models import AuditEntry, AuditHead
from walletguard.bank.models import BankCardAccount, BankChallenge  # noqa: F401
from walletguard.identity.models import (
    Device,
    Holder,
    LoginSession,
    NotMeReport,
    Passkey,
    PasswordReset,
    PendingRegistration,
    PhoneChange,
    RecoveryCode,
    RecoveryRequest,
    StepUpChallenge,
    StepUpGrant,
    TotpFactor,
)
from walletguard.incidents.models import (  # noqa: F401
    CaseNote,
    ChecklistTick,
    IncidentCase,
    MovementMark,
)
from walletguard.kit.db import Base
from walletguard.kit.ratelimit import AttemptCounter
from walletguard.messages.models import MessageSync, PhoneMessage, SimBinding, SimSwap
from walletguard.risk.models import (  # noqa: F401
    RiskDecision,
    RiskPayee,
    RiskScamExposure,
    RiskVelocityBucket,
)
from walletguard.wallet.models import (  # noqa: F401
    Card,
    IdempotencyRecord,
    LedgerAccount,
    LedgerTransaction,
    Posting,
    WalletLimit,
    WalletState,
)

__all__ = [
    "Alert",
    "AlertChannel",
    "AlertDelivery",
    "AttemptCounter",
    "AuditEntry",
    "AuditHead",
    "Base",
    "Device",
    "Holder",
    "LoginSession",
    "MessageSync",
    "NotMeReport",
    "Passkey",
    "PasswordReset",
    "PendingRegistration",
    "PhoneChange",
    "PhoneMessage",
    "RecoveryCode",
    "RecoveryRequest",
    "SimBinding",
    "SimSwap",
    "StepUpChallenge",
    "StepUpGrant",
    "TotpFactor",
]
