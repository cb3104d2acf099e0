"""The risk engine (SPEC C7): signals, rules as data, decisions with reasons, holds, review.

See docs/risk.md. Other capabilities ask ``RiskService.decide`` / ``check`` before they act.
"""
