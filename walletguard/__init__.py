"""walletguard: a mobile wallet built around the cloud-SMS-sync account takeover."""

__version__ = "0.1.0"
