"""Deterministic, useful answers for the simulator.

The answer depends only on the prompt text (a stable SHA-1, never ``hash()``),
so the same prompt always gets the same answer:

* classification prompts ("Classify ... as one of: a, b, c", "Labels: a, b",
  "(spam|ham)") answer exactly one of their labels;
* summarisation prompts ("summarize", "summary", "tl;dr") answer a shorter
  text taken from the document;
* extraction prompts ("extract ...") answer a small JSON object;
* anything else gets generic text of about ``answer_tokens`` tokens
  (20-120 tokens chosen by hash when 0).

Token counts are ``ceil(chars / 4)`` everywhere.
"""

from __future__ import annotations

import re

from .extraction import EXTRACT_HINT, extract
from .generic import digest, generic

__all__ = ["classify", "count_tokens", "finish", "make_answer"]


def count_tokens(text: str) -> int:
    """About four characters a token, rounded up."""
    return (len(text) + 3) // 4


# --------------------------------------------------------------------------- classification
_CLASSIFY_HINT = re.compile(
    r"\b(classif\w*|categori[sz]\w*|label\w*|sentiment|which (?:one|category|class)|one of|answer (?:with|only))\b",
    re.I,
)
_PAREN_LIST = re.compile(r"[\(\[\{]\s*([^()\[\]{}|\n]{1,40}(?:\|[^()\[\]{}|\n]{1,40})+)\s*[\)\]\}]")
_NAMED_LIST = re.compile(
    r"\b(?:one of|labels?|categories|category|classes|class|options|choices)\b"
    r"\s*(?:is|are|:|-|=)?\s*(?:the following\s*:?\s*)?(?=([^\n]+))",
    re.I,
)
_AS_LIST = re.compile(
    r"\b(?:as|answer|reply|respond|return|output|choose|pick)(?:\s+(?:with|only|exactly|either|just|from))*:?\s+"
    r"(\w[\w\- ]{0,30}(?:,\s*\w[\w\- ]{0,30})*,?\s+or\s+\w[\w\-]{0,30})",
    re.I,
)
_SPLIT_LIST = re.compile(r"\s*(?:,|;|\||/|\bor\b)\s*", re.I)
_STRIP_LABEL = " \t\"'`*_.:[](){}<>"
_POSITIVE = frozenset(
    [
        "good",
        "great",
        "love",
        "loved",
        "excellent",
        "amazing",
        "happy",
        "best",
        "wonderful",
        "fantastic",
        "nice",
        "perfect",
        "enjoy",
        "enjoyed",
        "recommend",
        "pleased",
        "awesome",
        "brilliant",
        "delighted",
        "superb",
        "fast",
        "helpful",
    ]
)
_NEGATIVE = frozenset(
    [
        "bad",
        "terrible",
        "hate",
        "hated",
        "awful",
        "worst",
        "poor",
        "broken",
        "disappointed",
        "disappointing",
        "horrible",
        "slow",
        "useless",
        "refund",
        "angry",
        "annoying",
        "problem",
        "fail",
        "failed",
        "waste",
        "boring",
    ]
)
_SPAM = frozenset(
    [
        "free",
        "win",
        "winner",
        "prize",
        "click",
        "offer",
        "urgent",
        "cash",
        "claim",
        "congratulations",
        "viagra",
        "lottery",
    ]
)
_WORDS = re.compile(r"[a-z']+")


def _parse_labels(text: str) -> list[str]:
    # A list ends at the first sentence end (". "), not at dots inside labels.
    text = re.split(r"\.(?:\s|$)|\?|!|\bfor\b|\bbased on\b", text, maxsplit=1)[0]
    if ":" in text:  # "one of these categories: a, b, c"
        text = text.rsplit(":", 1)[1]
    labels: list[str] = []
    for raw in _SPLIT_LIST.split(text):
        label = raw.strip(_STRIP_LABEL)
        label = re.sub(r"^(?:and|or|either)\s+", "", label, flags=re.I).strip(_STRIP_LABEL)
        if not label or len(label) > 40 or len(label.split()) > 3:
            continue
        if label.lower() not in (existing.lower() for existing in labels):
            labels.append(label)
    return labels if len(labels) >= 2 else []


def _find_labels(prompt: str) -> tuple[list[str], tuple[int, int]]:
    """Labels listed in the prompt and the span of the list."""
    for pattern in (_PAREN_LIST, _NAMED_LIST, _AS_LIST):
        for match in pattern.finditer(prompt):
            text = match.group(1)
            labels = _parse_labels(text)
            if labels:
                start = match.start()
                # The span covers the list itself, up to the end of its sentence.
                end = match.start(1) + len(re.split(r"\.(?:\s|$)|\?|!", text, maxsplit=1)[0])
                return labels, (start, max(end, match.end()))
    return [], (0, 0)


def classify(labels: list[str], document: str) -> str:
    low = document.lower()
    words = _WORDS.findall(low)
    scores = []
    for label in labels:
        lab = label.lower()
        score = len(re.findall(r"(?<!\w)" + re.escape(lab) + r"(?!\w)", low)) * 10
        if lab == "positive":
            score += sum(w in _POSITIVE for w in words)
        elif lab == "negative":
            score += sum(w in _NEGATIVE for w in words)
        elif lab == "spam":
            score += sum(w in _SPAM for w in words)
        scores.append(score)
    best = max(scores)
    if best > 0:
        return labels[scores.index(best)]
    lowered = [lab.lower() for lab in labels]
    if "neutral" in lowered and words:
        return labels[lowered.index("neutral")]
    if "spam" in lowered and len(labels) == 2:  # no spam words: the other label (ham, not_spam, ...)
        return labels[1 - lowered.index("spam")]
    return labels[digest(document) % len(labels)]


# --------------------------------------------------------------------------- summarisation
_SUMMARY_HINT = re.compile(r"\b(summari[sz]\w*|summary|tl;?\s?dr|condense|in brief|key points)\b", re.I)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_SPACES = re.compile(r"\s+")


def _strip_instruction(text: str, match: re.Match[str]) -> str:
    """Remove the instruction around ``match`` and keep the document."""
    line_start = text.rfind("\n", 0, match.start()) + 1
    line_end = text.find("\n", match.end())
    if line_end < 0:
        line_end = len(text)
    line = text[line_start:line_end]
    colon = line.find(":", match.end() - line_start)
    if colon >= 0 and line[colon + 1 :].strip():
        return (line[colon + 1 :] + text[line_end:]).strip()
    rest = (text[:line_start] + text[line_end:]).strip()
    return rest or (text[: match.start()] + text[match.end() :]).strip(" :\n") or text


def _summarize(document: str) -> str:
    doc = _SPACES.sub(" ", document).strip()
    if len(doc) <= 24:
        return doc
    target = max(40, len(doc) // 3)
    summary = ""
    for sentence in _SENTENCE_END.split(doc):
        if summary and len(summary) + len(sentence) + 1 > target:
            break
        summary = f"{summary} {sentence}".strip()
        if len(summary) >= target:
            break
    if len(summary) > target * 3 // 2 or len(summary) >= len(doc):
        words, out = summary.split(" "), ""
        for word in words:
            if out and len(out) + len(word) + 1 > min(target, len(doc) * 2 // 3):
                break
            out = f"{out} {word}".strip()
        summary = out.rstrip(",;:") + "..."
        if len(summary) >= len(doc):
            summary = doc[: len(doc) // 2].rstrip() + "..."
    return summary


# --------------------------------------------------------------------------- entry points
def make_answer(system: str, user: str, prefill: str, answer_tokens: int = 0) -> str:
    """The answer text for a prompt (before max_tokens/stop_sequences).

    ``system`` is the system prompt text, ``user`` the last user message's
    text, ``prefill`` the text of a trailing assistant message ("" if none):
    the answer continues after it.
    """
    prompt = f"{system}\n{user}" if system else user
    answer = _answer(prompt, system, user, answer_tokens)
    if prefill:
        head = prefill.strip()
        if head and answer.startswith(head):
            answer = answer[len(head) :]
            if prefill[-1].isspace():
                answer = answer.lstrip()
        elif not prefill[-1].isspace() and answer[:1].isalnum():
            answer = " " + answer
    return answer or "OK."


def _answer(prompt: str, system: str, user: str, answer_tokens: int) -> str:
    if _CLASSIFY_HINT.search(prompt) or "|" in prompt:
        labels, (start, end) = _find_labels(prompt)
        if labels:
            if system and start < len(system):
                document = user  # labels in the system prompt: the user text is the document
            else:
                after = prompt[end:]
                # Text after the list is the document; the question before it
                # often names a label ("Is this spam?"), so skip it when we can.
                document = after if len(after.split()) >= 3 else prompt[:start] + " " + after
            return classify(labels, document)
    match = _SUMMARY_HINT.search(user)
    if match:
        return _summarize(_strip_instruction(user, match))
    if _SUMMARY_HINT.search(system):
        return _summarize(user)
    match = EXTRACT_HINT.search(user)
    if match:
        return extract(prompt, _strip_instruction(user, match))
    if EXTRACT_HINT.search(system):
        return extract(prompt, user)
    return generic(prompt, answer_tokens)


def finish(text: str, max_tokens: int, stop_sequences: list[str] | None) -> tuple[str, str, str | None, int]:
    """Apply stop sequences and max_tokens: (text, stop_reason, stop_sequence, output_tokens)."""
    if stop_sequences:
        best = -1
        found = None
        for seq in stop_sequences:
            if seq:
                index = text.find(seq)
                if index >= 0 and (best < 0 or index < best):
                    best, found = index, seq
        if found is not None and count_tokens(text[:best]) <= max_tokens:
            cut = text[:best]
            return cut, "stop_sequence", found, max(1, count_tokens(cut))
    tokens = count_tokens(text)
    if tokens > max_tokens:
        return text[: max_tokens * 4], "max_tokens", None, max_tokens
    return text, "end_turn", None, max(1, tokens)
