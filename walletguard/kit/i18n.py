"""The text catalogue: every user-facing sentence, in zh-CN (default) and English.

Texts live in ``walletguard/kit/catalogue/*.toml``, one file per capability, each key a table with
one string per language::

    ["identity.password.too_short"]
    zh-CN = "密码至少需要 {min_length} 位。"
    en = "The password must be at least {min_length} characters long."

Placeholders use ``str.format`` names. Code refers to texts only by key.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from functools import cache
from importlib import resources
from typing import Literal

Language = Literal["zh-CN", "en"]
LANGUAGES: tuple[Language, ...] = ("zh-CN", "en")
DEFAULT_LANGUAGE: Language = "zh-CN"


class CatalogueError(Exception):
    """The catalogue files are inconsistent (a missing language, a duplicate key)."""


@cache
def catalogue() -> Mapping[str, Mapping[Language, str]]:
    texts: dict[str, dict[Language, str]] = {}
    folder = resources.files("walletguard.kit") / "catalogue"
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if not entry.name.endswith(".toml"):
            continue
        data = tomllib.loads(entry.read_text(encoding="utf-8"))
        for key, table in data.items():
            if key in texts:
                raise CatalogueError(f"{entry.name}: key {key!r} is defined twice")
            if not isinstance(table, dict):
                raise CatalogueError(f"{entry.name}: {key!r} must be a table of languages")
            missing = [lang for lang in LANGUAGES if not isinstance(table.get(lang), str)]
            if missing:
                raise CatalogueError(f"{entry.name}: {key!r} has no text for {', '.join(missing)}")
            texts[key] = {lang: table[lang] for lang in LANGUAGES}
    return texts


def text(key: str, lang: Language = DEFAULT_LANGUAGE, /, **params: object) -> str:
    """The text for ``key`` in ``lang`` with ``params`` filled in. Unknown keys raise KeyError."""
    template = catalogue()[key][lang]
    return template.format(**params) if params else template


def negotiate(accept_language: str | None) -> Language:
    """Pick zh-CN or en from an Accept-Language header; zh-CN unless English is preferred."""
    if not accept_language:
        return DEFAULT_LANGUAGE
    best: tuple[float, Language] | None = None
    for position, part in enumerate(accept_language.split(",")):
        tag, _, q_part = part.strip().partition(";")
        tag = tag.strip().lower()
        quality = 1.0
        if q_part.strip().startswith("q="):
            try:
                quality = float(q_part.strip()[2:])
            except ValueError:
                quality = 0.0
        lang: Language | None = None
        if tag.startswith("zh"):
            lang = "zh-CN"
        elif tag.startswith("en"):
            lang = "en"
        if lang is None or quality <= 0:
            continue
        # Earlier entries win ties, as browsers list them in preference order.
        score = quality - position * 1e-6
        if best is None or score > best[0]:
            best = (score, lang)
    return best[1] if best else DEFAULT_LANGUAGE
