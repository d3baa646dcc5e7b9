"""Extraction answers: a small JSON object with the fields an "extract ..." prompt names,
filled from the document (emails, URLs, phones, dates, amounts, names, numbers)."""

from __future__ import annotations

import re

import orjson

__all__ = ["EXTRACT_HINT", "extract", "find_for"]

EXTRACT_HINT = re.compile(r"\bextract\w*\b", re.I)
_EXTRACT_FIELDS = re.compile(
    r"\bextract\w*\s+(?:all\s+|the\s+|any\s+)*([\w ,/-]{2,120}?)\s*(?:\bfrom\b|\bin\b|\bout of\b|\bas\b|:|\.|\n|$)",
    re.I,
)
_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
_URL = re.compile(r"https?://[^\s\"'<>]+")
_PHONE = re.compile(r"\+?\d[\d\s().-]{7,}\d")
_DATE = re.compile(
    r"\b(?:\d{4}-\d{2}-\d{2}|\d{1,2}/\d{1,2}/\d{2,4}|"
    r"(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Sept|Oct|Nov|Dec)[a-z]*\.? \d{1,2}(?:st|nd|rd|th)?,? \d{4}|"
    r"\d{1,2} (?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Sept|Oct|Nov|Dec)[a-z]* \d{4})\b"
)
_AMOUNT = re.compile(r"[$€£]\s?\d[\d,]*(?:\.\d+)?|\b\d[\d,]*(?:\.\d+)?\s?(?:USD|EUR|GBP|dollars|euros)\b")
_NUMBER = re.compile(r"(?<![\w.])\d+(?:\.\d+)?(?![\w.])")
_PROPER = re.compile(r"\b[A-Z][a-z]+(?:\s+[A-Z][a-z]+)+\b")
_CAPITAL_ANY = re.compile(r"\b[A-Z][a-zA-Z]+\b")
_STOP_CAPS = frozenset(
    [
        "The",
        "A",
        "An",
        "I",
        "It",
        "This",
        "That",
        "These",
        "Those",
        "In",
        "On",
        "At",
        "Of",
        "For",
        "And",
        "But",
        "Or",
        "If",
        "When",
        "We",
        "You",
        "He",
        "She",
        "They",
    ]
)

_EXTRACTORS: list[tuple[tuple[str, ...], re.Pattern[str]]] = [
    (("email", "e-mail", "mail"), _EMAIL),
    (("url", "link", "website"), _URL),
    (("phone", "telephone", "mobile"), _PHONE),
    (("date", "day", "deadline", "when"), _DATE),
    (("amount", "price", "total", "cost", "sum", "fee", "money"), _AMOUNT),
    (
        (
            "name",
            "person",
            "people",
            "author",
            "customer",
            "who",
            "organization",
            "company",
            "entit",
            "location",
            "place",
            "city",
        ),
        _PROPER,
    ),
    (("number", "count", "quantity", "age", "year", "id"), _NUMBER),
]


def _proper_names(document: str) -> list[str]:
    names = list(dict.fromkeys(_PROPER.findall(document)))
    words = {w for name in names for w in name.split()}
    for word in _CAPITAL_ANY.findall(document):
        if word not in words and word not in _STOP_CAPS:
            words.add(word)
            names.append(word)
    return names


_KEY_WORDS = re.compile(r"[a-z0-9-]+")
_CAMEL = re.compile(r"([a-z0-9])([A-Z])")


def _names(word: str, name: str) -> bool:
    """Does a field-name word name this kind ("emails" names "email"; "summary" does not name "sum")?"""
    return word in (name, name + "s", name + "es") or (len(name) >= 5 and word.startswith(name))


def find_for(key: str, document: str) -> list[str] | None:
    """What the document holds for a field named ``key`` (emails for "email", names
    for "customer", ...): distinct matches in order; None if the name suggests nothing."""
    words = _KEY_WORDS.findall(_CAMEL.sub(r"\1_\2", key).lower())
    pattern = next((pat for names, pat in _EXTRACTORS if any(_names(w, n) for w in words for n in names)), None)
    if pattern is None:
        return None
    if pattern is _PROPER:
        return _proper_names(document)
    return list(dict.fromkeys(m.strip() for m in pattern.findall(document)))


def extract(prompt: str, document: str) -> str:
    keys: list[str] = []
    match = _EXTRACT_FIELDS.search(prompt)
    if match:
        for raw in re.split(r"\s*(?:,|/|\band\b|\bor\b)\s*", match.group(1)):
            words = raw.strip().lower().split()
            if words and len(words) <= 3 and words[0] not in ("information", "data", "info", "details", "json", "text"):
                key = "_".join(words)
                if key not in keys:
                    keys.append(key)
    result: dict[str, object] = {}
    for key in keys[:8]:
        found = find_for(key, document) or []
        if key.endswith("s") and not key.endswith("ss"):
            result[key] = found[:10]
        else:
            result[key] = found[0] if found else None
    if not result:
        result = {
            "entities": _proper_names(document)[:10],
            "numbers": list(dict.fromkeys(_NUMBER.findall(document)))[:10],
        }
        emails = _EMAIL.findall(document)
        if emails:
            result["emails"] = emails[:10]
    return orjson.dumps(result).decode()
