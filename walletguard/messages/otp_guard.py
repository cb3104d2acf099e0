"""The OTP guard's recogniser (SPEC C6): is this message a one-time code, and which code?

A message is a code when a cue ("验证码", "动态密码", "verification code", "OTP"…) stands next to
a 4–8 digit code — or a letters-and-digits code after a strong cue — before or after it. What
sits near a cue but is not a code is refused by its context: a card tail ("尾号8821"), an amount
("1,000.00 元"), a time or date, a hotline ("请致电95588"), an order number.

Decisions on grey cases (tests/data/otp_messages.jsonl holds examples of each):

- Delivery pickup codes (取件码, 提货码, 取餐码, "取件验证码", "签收验证码", "pickup code") are not
  account codes: they open a parcel locker or hand over a parcel, not a wallet, so they stay
  visible on synced devices (the issue: "does not fire on … delivery pickup codes").
- A message that carries a code which it says has expired or was not requested still carries a
  code: it is recognised (hiding it costs nothing; showing it may leak one still valid).
- A password or PIN sent by SMS ("查询密码为 482019", "Your new card PIN is 4821") is no one-time
  code but is as secret: it is recognised too. A postal "PIN code" is not.
- A delivery code that the message calls OTP or 验证码 without naming a pickup or signing
  ("Your OTP for delivery of order 123 is 4821") is recognised: only the named kinds are let go.
- Anti-fraud tips that only mention 验证码/OTP, without a code, are not codes.
- Promo, coupon and gift codes, booking references and tracking numbers are not codes.

The synced copy's wording lives in the catalogue (``otp_guard.hidden``), not here.
"""

from __future__ import annotations

import bisect
import itertools
import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum


@dataclass(frozen=True)
class OtpMatch:
    code: str
    """What a person types: the digits of "G-123456" or "123-456" are "123456"."""
    span: tuple[int, int]
    """Start and end offsets in the original text of the code as written."""
    keyword: str
    """The cue that made it a code, in its canonical form ("动态密码", "verification code")."""


class _Strength(Enum):
    STRONG = "strong"
    """Cue names a one-time code for sure: letters-and-digits codes are accepted too."""
    NUMERIC = "numeric"
    """Cue is generic ("code", "确认码"): only a numeric code counts."""


@dataclass(frozen=True)
class _Cue:
    keyword: str
    pattern: str
    strength: _Strength
    code_before_only: bool = False
    """A verb cue ("use 482019 to verify"): only a code right before it counts."""


# Longest first where one cue contains another, so the canonical keyword is the specific one.
_CUES: tuple[_Cue, ...] = (
    _Cue("动态验证码", r"动态验证码", _Strength.STRONG),
    _Cue("短信验证码", r"短信验证码", _Strength.STRONG),
    _Cue("验证码", r"验证码|驗證碼|验证代码|验证号码", _Strength.STRONG),
    _Cue("动态密码", r"动态密码|動態密碼", _Strength.STRONG),
    _Cue("动态口令", r"动态口令", _Strength.STRONG),
    _Cue("动态码", r"动态码", _Strength.STRONG),
    _Cue("校验码", r"校验码|校驗碼", _Strength.STRONG),
    _Cue("短信口令", r"短信口令", _Strength.STRONG),
    _Cue("短信密码", r"短信密码", _Strength.STRONG),
    _Cue("随机密码", r"随机密码|随机码", _Strength.STRONG),
    _Cue("一次性密码", r"一次性密码|一次性验证码", _Strength.STRONG),
    _Cue("授权码", r"授权码", _Strength.STRONG),
    _Cue("安全码", r"安全码", _Strength.STRONG),
    _Cue("登录码", r"登录码|登入码", _Strength.STRONG),
    _Cue("认证码", r"认证码", _Strength.STRONG),
    _Cue("短信码", r"短信码", _Strength.STRONG),
    _Cue("临时密码", r"临时密码|初始密码", _Strength.STRONG),
    _Cue("确认码", r"确认码", _Strength.NUMERIC),
    _Cue("激活码", r"激活码", _Strength.NUMERIC),
    # A password or PIN sent by SMS is no one-time code, but it is as secret: hidden too.
    _Cue("密码", r"密码", _Strength.NUMERIC),
    _Cue("verification code", r"\bverification\s+code\b|\bverify\s+code\b", _Strength.STRONG),
    _Cue(
        "one-time password",
        r"\bone[\s-]?time\s+(?:password|passcode|pass\s+code|code|pin)\b",
        _Strength.STRONG,
    ),
    _Cue("dynamic password", r"\bdynamic\s+(?:password|passcode|code)\b", _Strength.STRONG),
    _Cue("OTP", r"\botp\b", _Strength.STRONG),
    _Cue("security code", r"\bsecurity\s+code\b", _Strength.STRONG),
    _Cue("passcode", r"\bpasscode\b", _Strength.STRONG),
    _Cue("login code", r"\blog[\s-]?in\s+code\b|\bsign[\s-]?in\s+code\b", _Strength.STRONG),
    _Cue("authentication code", r"\bauthentication\s+code\b|\bauth\s+code\b", _Strength.STRONG),
    _Cue("temporary password", r"\btemporary\s+(?:password|code|pin)\b", _Strength.STRONG),
    _Cue("confirmation code", r"\bconfirmation\s+code\b", _Strength.NUMERIC),
    _Cue("code", r"\bcode\b", _Strength.NUMERIC),
    _Cue("PIN", r"\bpin\b(?!\s*code)", _Strength.NUMERIC),
    _Cue(
        "verify",
        r"\bto\s+(?:verify|confirm|authenticate|authorise|authorize|sign\s+in|log\s*in)\b"
        r"|完成验证|完成身份验证|进行验证|以验证",
        _Strength.NUMERIC,
        code_before_only=True,
    ),
)
_CUE_RE = re.compile("|".join(f"(?P<c{i}>{cue.pattern})" for i, cue in enumerate(_CUES)))

# A cue right after one of these names a parcel, a coupon or a booking, not an account code.
_NOT_ACCOUNT_QUALIFIER = re.compile(
    r"(?:取件|提货|取货|取餐|签收|收货|寄件|自提|快递|包裹|柜|优惠|兑换|邀请|\b(?:"
    r"pick[\s-]?up|collection|locker|parcel|delivery\s+pin|promo(?:tional)?|discount|coupon|"
    r"voucher|gift|referral|invite|invitation|tracking|order|booking|reservation|flight|"
    r"postal|post|pin|zip|area|country|dial(?:ling)?|qr|bar|error|product|reference|ref|"
    r"dress|source|redeem|redemption|offer|sale))\s*$"
)
# A generic "code" in a sentence that sells something is a promo code.
_MARKETING = re.compile(
    r"%|\boff\b|\bdiscount|\bsale\b|\bcoupon|\bpromo|\bsave\b|\bcheckout\b|\bshop\b|\bdeal\b|"
    r"\bfree\s+shipping|\bvoucher|\bredeem"
)

# Between a cue and a code: words that say the message warns about codes rather than carries one.
_WARNING_WORDS = re.compile(
    r"告诉|告知|泄露|泄漏|透露|提供|转发|转告|索要|索取|诈骗|不要|请勿|切勿|勿|任何|不会|"
    r"过期|失效|错误|已发送|\bnever\b|\bshare\b|\banyone\b|\bexpired?\b|\bnot\b|n't\b|"
    r"\bask\b|\bscam|\bfraud"
)
# A full stop inside "5000.00" or "APPLE.COM", a comma inside "1,000.00", ends nothing.
_SENTENCE_BREAK = re.compile(r"[。!?;；，、]|\.(?!\w)|(?<!\d),|,(?!\d)")
_PARENTHETICAL = re.compile(r"\([^()]{0,24}\)|【[^【】]{0,24}】|\[[^\[\]]{0,24}\]")

# What stands right before a number that is not a code.
_NOT_CODE_BEFORE = re.compile(
    r"(?:尾号|卡号|末四位|后四位|末尾|账号|账户|帐户|卡|手机|号码|电话|致电|拨打|热线|客服|"
    r"详询|咨询|订单号|订单|单号|运单号?|快递|取件码|提货码|取货码|取餐码|邀请码|优惠码|"
    r"兑换码|车次|座位|房间|金额|人民币|￥|¥|\$|€|£|"
    r"\bending(?:\s+(?:in|with))?|\bcard|\ba/c|\bacct|\baccount|\bno\.|#|\bcall|\bphone|"
    r"\btel|\bhotline|\bdial|\bcontact|\border|\btracking|\bref|\broom|\bflight|\btrain|"
    r"\bseat|\bgate|\brmb|\bcny|\binr|\busd|\bhkd|\bunit|\bsuite|\bbox|\breply|\btext|"
    r"\bsend|\bsms|回复|发送|编辑|专线)"
    r"[\s:：为是]*(?:为|是)?[\s:]*$"
)
# What stands right after a number that is not a code: a unit, a time, a date.
_NOT_CODE_AFTER = re.compile(
    r"^\s*(?:元|块|人|次|天|日|月|年|号|分|秒|小时|时|点|万|千|百|笔|个|条|份|张|件|位|期|岁|"
    r"楼|室|层|栋|单元|积分|折|倍|%|℃|"
    r"yuan\b|rmb\b|mins?\b|minutes?\b|secs?\b|seconds?\b|hours?\b|hrs?\b|days?\b|km\b|kg\b|"
    r"people\b|times\b|pts\b|points\b|am\b|pm\b|st\b|nd\b|rd\b|th\b)"
)
_TIGHT_AFTER = re.compile(
    r"^[\s:=\-\[【「『“\"'《<]*(?:is|are|为|是|為|of)?[\s:=\-\[【「『“\"'《<]*$"
)
_CONNECTOR_BEFORE = re.compile(r"(?:\bis|为|是|為|:)[\s:\[【「“\"']*$")
_BEFORE_GAP_START = re.compile(r"^\s*(?:$|\bis\b|\bas\b|\bare\b|是|为|為|\(|\[|【|-|:|\s)")
_UNIT_LIKE = re.compile(
    r"^\d+(?:mins?|h|hrs?|s|secs?|m|d|km|kg|g|gb|mb|kb|am|pm|st|nd|rd|th|x|fa|k|w|v|ml|mm|cm)$"
    r"|^[x*]{2,}\d+$"
)

_MAX_DISTANCE_AFTER = 80
_MAX_DISTANCE_BEFORE = 30
_MAX_CODE_WIDTH = 16
_LEADS_MESSAGE = re.compile(r"\s*(?:【[^【】]{0,20}】|\[[^\[\]]{0,20}\])?\s*$")
_DIGIT_RUN = re.compile(r"\d+(?:,\d{3})*(?:[.:/]\d+)*")
_KEPT_FULL_WIDTH = frozenset("，")


@dataclass(frozen=True)
class _Candidate:
    start: int
    end: int
    code: str
    alphanumeric: bool


@dataclass(frozen=True)
class _CueHit:
    start: int
    end: int
    cue: _Cue


def _normalise(text: str) -> tuple[str, str]:
    """Full-width forms folded to ASCII and a lower-case copy, one character for one.

    Folding character by character keeps offsets: a span found in the folded text is the same
    span in the original.
    """
    folded = []
    for char in text:
        # A full-width comma ends a clause; folded to "," it would read as a thousands separator.
        nfkc = char if char in _KEPT_FULL_WIDTH else unicodedata.normalize("NFKC", char)
        folded.append(nfkc if len(nfkc) == 1 else char)
    lowered = [c.lower() if len(c.lower()) == 1 else c for c in folded]
    return "".join(folded), "".join(lowered)


def _numeric_candidates(text: str) -> list[_Candidate]:
    runs = list(_DIGIT_RUN.finditer(text))
    found: list[_Candidate] = []
    i = 0
    while i < len(runs):
        # A chain: digit runs joined by one space or hyphen ("123-456", "1800 123 4567").
        chain = [runs[i]]
        while (
            i + len(chain) < len(runs)
            and runs[i + len(chain)].start() == chain[-1].end() + 1
            and text[chain[-1].end()] in " -"
        ):
            chain.append(runs[i + len(chain)])
        i += len(chain)
        first, last = chain[0], chain[-1]
        before = text[first.start() - 1] if first.start() > 0 else ""
        after = text[last.end()] if last.end() < len(text) else ""
        if (before.isascii() and before.isalpha()) or (after.isascii() and after.isalpha()):
            continue  # "XX1234", "7ABC123": part of a plate, a masked card or a reference
        groups = [m.group() for m in chain]
        separators = {text[m.end()] for m in chain[:-1]}
        pure = all(g.isdigit() for g in groups)
        total = sum(len(g) for g in groups)
        if len(chain) == 1:
            if pure and 4 <= total <= 8:
                found.append(_Candidate(first.start(), first.end(), groups[0], False))
            continue
        if pure and len(separators) == 1 and len({len(g) for g in groups}) == 1 and 4 <= total <= 8:
            # One code written in equal groups: "123-456", "482 019", "83 92 71".
            found.append(_Candidate(first.start(), last.end(), "".join(groups), False))
            continue
        if "-" in separators or (pure and total > 8 and len(chain) > 2):
            continue  # a date, a phone number, a reference written in groups
        # Numbers that merely stand side by side: "382914 10:30前有效".
        for m in chain:
            if m.group().isdigit() and 4 <= len(m.group()) <= 8:
                found.append(_Candidate(m.start(), m.end(), m.group(), False))
    return found


def _alphanumeric_candidates(folded: str, lowered: str) -> list[_Candidate]:
    found = []
    for m in re.finditer(r"(?<![A-Za-z0-9])[A-Za-z0-9]{4,8}(?![A-Za-z0-9])", folded):
        token = m.group()
        if token.isdigit() or token.isalpha() or not any(c.isdigit() for c in token):
            continue
        if _UNIT_LIKE.match(lowered[m.start() : m.end()]):
            continue
        if folded[m.start() - 1 : m.start()] in ("-", ".", "/", "@") or folded[
            m.end() : m.end() + 1
        ] in ("-", "/", "@"):
            continue  # part of a reference, a domain or an address
        if folded[m.end() : m.end() + 1] == "." and folded[m.end() + 1 : m.end() + 2].isalnum():
            continue
        found.append(_Candidate(m.start(), m.end(), token, True))
    return found


def _cue_hits(lowered: str) -> Iterator[_CueHit]:
    for m in _CUE_RE.finditer(lowered):
        assert m.lastgroup is not None
        cue = _CUES[int(m.lastgroup[1:])]
        if _NOT_ACCOUNT_QUALIFIER.search(lowered[max(0, m.start() - 16) : m.start()]):
            continue
        if cue.keyword == "code" and _MARKETING.search(_sentence_around(lowered, m.start())):
            continue
        yield _CueHit(m.start(), m.end(), cue)


def _sentence_around(lowered: str, at: int) -> str:
    """The sentence around ``at``, looking at most 120 characters either way."""
    window_start = max(0, at - 120)
    starts = [m.end() for m in re.finditer(r"[。!?;；\n]|\.\s", lowered[window_start:at])]
    start = window_start + starts[-1] if starts else window_start
    end_match = re.search(r"[。!?;；\n]|\.\s|\.$", lowered[at : at + 120])
    end = at + end_match.start() if end_match else min(len(lowered), at + 120)
    return lowered[start:end]


def _refused_by_context(
    lowered: str, candidate: _Candidate, floor: int, memo: dict[tuple[int, int], bool]
) -> bool:
    """Whether what stands around a number says it is no code (a tail, an amount, a hotline).

    ``memo`` holds the answers of this message: with many cues the same number is asked often.
    """
    window_start = max(floor, candidate.start - 10)
    key = (window_start, candidate.start)
    if key not in memo:
        memo[key] = bool(
            _NOT_CODE_BEFORE.search(lowered[window_start : candidate.start])
            or _NOT_CODE_AFTER.match(lowered[candidate.end : candidate.end + 10])
        )
    return memo[key]


def _cost(
    lowered: str, hit: _CueHit, candidate: _Candidate, memo: dict[tuple[int, int], bool]
) -> int | None:
    """How far a candidate is from being this cue's code; None when it cannot be."""
    if candidate.alphanumeric and hit.cue.strength is not _Strength.STRONG:
        return None
    if candidate.start >= hit.end and not hit.cue.code_before_only:
        if candidate.start - hit.end > _MAX_DISTANCE_AFTER:
            return None
        gap = lowered[hit.end : candidate.start]
        if _refused_by_context(lowered, candidate, hit.end, memo):
            return None
        bare = _PARENTHETICAL.sub(" ", gap)
        if _TIGHT_AFTER.match(bare):
            return len(bare.strip())
        if candidate.alphanumeric and not _CONNECTOR_BEFORE.search(bare):
            return None
        if _SENTENCE_BREAK.search(bare) or _WARNING_WORDS.search(bare):
            return None
        connected = _CONNECTOR_BEFORE.search(bare) is not None
        if len(bare) <= 24 and (connected or not re.search(r"\d", bare)):
            return 5 + len(bare)
        # "OTP for txn of INR 5000.00 at Amazon on card XX1234 is 482913": far, but introduced.
        strong = hit.cue.strength is _Strength.STRONG
        return 40 + len(bare) if strong and connected else None
    if candidate.end <= hit.start:
        gap = lowered[candidate.end : hit.start]
        if _refused_by_context(lowered, candidate, 0, memo) or len(gap) > _MAX_DISTANCE_BEFORE:
            return None
        if re.search(r"\d", gap):
            return None
        if hit.cue.code_before_only:
            return 3 if not gap.strip() else None
        leads = candidate.start <= 24 and _LEADS_MESSAGE.match(lowered[: candidate.start])
        if leads and re.match(r"\s*[,，]", gap):
            # "【支付宝】817839，支付宝验证码": the code opens the message, its name follows.
            rest = gap.lstrip()[1:]
            named = len(rest.strip()) <= 12 and not _SENTENCE_BREAK.search(rest)
            # ... unless the clause goes on to warn: "95588，验证码诈骗高发".
            clause = _SENTENCE_BREAK.split(lowered[hit.end : hit.end + 40], maxsplit=1)[0]
            warned = _WARNING_WORDS.search(rest + " " + clause)
            return 8 + len(rest.strip()) if named and not warned else None
        if not _BEFORE_GAP_START.match(gap):
            return None
        bare = _PARENTHETICAL.sub(" ", gap) if gap.lstrip().startswith(("(", "[", "【")) else gap
        if _SENTENCE_BREAK.search(bare) or _WARNING_WORDS.search(bare):
            return None
        if candidate.alphanumeric and len(gap.strip()) > 12:
            return None
        return 3 + len(gap.strip())
    return None


def recognise_otp(text: str) -> OtpMatch | None:
    """The one-time code this message carries, or None when it carries none."""
    folded, lowered = _normalise(text)
    hits = _cue_hits(lowered)
    first_hit = next(hits, None)
    if first_hit is None:
        return None  # most messages: no cue, no need to look at numbers
    candidates = sorted(
        _numeric_candidates(folded) + _alphanumeric_candidates(folded, lowered),
        key=lambda c: c.start,
    )
    starts = [c.start for c in candidates]
    memo: dict[tuple[int, int], bool] = {}
    best: tuple[int, int, _CueHit, _Candidate] | None = None
    for hit in itertools.chain([first_hit], hits):
        # Only candidates near the cue can be its code; looking no further keeps long texts fast.
        low = bisect.bisect_left(starts, hit.start - _MAX_DISTANCE_BEFORE - _MAX_CODE_WIDTH)
        high = bisect.bisect_right(starts, hit.end + _MAX_DISTANCE_AFTER)
        for candidate in candidates[low:high]:
            if candidate.start < hit.end and candidate.end > hit.start:
                continue
            cost = _cost(lowered, hit, candidate, memo)
            if cost is None:
                continue
            # Numbers before alphanumerics at equal cost: "ID" words are rarely codes.
            key = (cost, int(candidate.alphanumeric))
            if best is None or key < (best[0], best[1]):
                best = (key[0], key[1], hit, candidate)
        if best is not None and best[:2] == (0, 0):
            break  # a number right after its cue: nothing can be closer
    if best is None:
        return None
    _, _, hit, candidate = best
    return OtpMatch(
        code=candidate.code, span=(candidate.start, candidate.end), keyword=hit.cue.keyword
    )
