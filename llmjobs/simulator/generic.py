"""Generic answers: deterministic filler text of about ``answer_tokens`` tokens
(20-120 chosen by hash when 0), opening with the prompt's topic words."""

from __future__ import annotations

import hashlib
import random
import re

__all__ = ["digest", "generic"]


def digest(text: str) -> int:
    """A stable 64-bit hash of ``text`` (SHA-1, never ``hash()``)."""
    return int.from_bytes(hashlib.sha1(text.encode("utf-8", "surrogatepass")).digest()[:8], "big")


_VOCAB = [
    "the",
    "a",
    "system",
    "request",
    "answer",
    "result",
    "data",
    "value",
    "process",
    "model",
    "batch",
    "call",
    "time",
    "response",
    "item",
    "token",
    "limit",
    "rate",
    "queue",
    "worker",
    "error",
    "retry",
    "stream",
    "client",
    "server",
    "test",
    "method",
    "approach",
    "design",
    "pattern",
    "simple",
    "clear",
    "fast",
    "reliable",
    "careful",
    "useful",
    "important",
    "concurrent",
    "parallel",
    "async",
    "bounded",
    "steady",
    "should",
    "could",
    "would",
    "can",
    "will",
    "may",
    "often",
    "usually",
    "typically",
    "therefore",
    "however",
    "also",
    "then",
    "first",
    "next",
    "this",
    "that",
    "each",
    "every",
    "many",
    "several",
    "some",
    "all",
    "few",
    "one",
    "two",
    "three",
    "when",
    "while",
    "because",
    "so",
    "and",
    "or",
    "but",
    "with",
    "without",
    "for",
    "from",
    "into",
    "over",
    "under",
    "between",
    "across",
    "through",
    "after",
    "before",
    "during",
    "handles",
    "returns",
    "keeps",
    "uses",
    "sends",
    "reads",
    "writes",
    "checks",
    "improves",
    "reduces",
    "measures",
    "waits",
    "runs",
    "schedules",
    "limits",
    "tracks",
]
_TOPIC_WORD = re.compile(r"[A-Za-z][A-Za-z'-]{4,}")
_COMMON = frozenset(
    [
        "about",
        "above",
        "after",
        "again",
        "their",
        "there",
        "these",
        "those",
        "which",
        "would",
        "could",
        "should",
        "where",
        "while",
        "please",
        "write",
        "short",
        "answer",
        "question",
        "explain",
        "describe",
        "tell",
        "give",
        "using",
    ]
)


def generic(prompt: str, answer_tokens: int) -> str:
    seed = digest(prompt)
    rng = random.Random(seed)
    tokens = answer_tokens if answer_tokens > 0 else 20 + seed % 101
    target_chars = tokens * 4
    topics = [w for w in dict.fromkeys(_TOPIC_WORD.findall(prompt)) if w.lower() not in _COMMON][:6]
    parts: list[str] = []
    length = 0
    if topics:
        opening = f"Regarding {', '.join(topics[:3])}:"
        parts.append(opening)
        length = len(opening)
    while length < target_chars:
        words = [rng.choice(_VOCAB) for _ in range(rng.randint(6, 14))]
        if topics and rng.random() < 0.5:
            words[rng.randrange(len(words))] = rng.choice(topics)
        sentence = " ".join(words)
        sentence = sentence[0].upper() + sentence[1:] + "."
        parts.append(sentence)
        length += len(sentence) + 1
    text = " ".join(parts)
    if len(text) > target_chars:
        cut = text.rfind(" ", 0, target_chars)
        text = text[: cut if cut > target_chars // 2 else target_chars].rstrip(" ,.") + "."
    return text
