"""Prompt templates: ``{placeholders}`` filled from an item's fields.

The syntax is ``str.format``'s, cut down to what is safe and useful:

- ``{name}`` is replaced by the item's field ``name``. Names are looked up as
  plain dict keys, never as attributes or indexes, and there are no format
  specs or conversions, so a template can't reach into anything. Spaces
  around a name are ignored (``{ text }`` is ``{text}``); a name may contain
  letters, digits, ``_``, ``-``, ``.`` and inner spaces, so CSV headers such as
  ``{review text}`` work.
- ``{{`` and ``}}`` are literal braces (write ``{{"label": "..."}}`` to show
  JSON in a prompt). A lone brace is an error that says where it is.
- Values: strings as they are, ``None`` as an empty string, anything else
  (numbers, lists, objects from JSONL) as compact JSON.
- **A template with no placeholder** gets the item's ``text`` appended after a
  blank line: ``"Summarize this."`` renders ``"Summarize this.\\n\\n<text>"``.
  An empty template sends the text as it is. Without a ``text`` field such a
  template is rejected, since every item would get the same prompt.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import lru_cache
from typing import Any, Protocol

from .exceptions import JobInputError
from .structured import output_params

__all__ = [
    "PromptSpec",
    "Template",
    "build_params",
    "compile_template",
    "format_value",
    "render",
    "render_chunk",
    "template_fields",
    "validate_template",
]

_NAME = re.compile(r"[\w][\w .\-]*", re.UNICODE)


class Template:
    """A parsed template: literal text and placeholder names, in order."""

    __slots__ = ("fields", "parts", "source")

    def __init__(self, source: str, parts: tuple[tuple[bool, str], ...]) -> None:
        self.source = source
        # (is_placeholder, literal text or field name)
        self.parts = parts
        names: dict[str, None] = {}
        for is_field, value in parts:
            if is_field:
                names[value] = None
        self.fields: tuple[str, ...] = tuple(names)  # first-use order, no duplicates

    def __repr__(self) -> str:
        return f"Template({self.source!r})"

    def missing(self, fields: Mapping[str, Any]) -> str | None:
        """The first placeholder ``fields`` lacks (or ``"text"`` for a no-placeholder template)."""
        if not self.fields:
            return None if "text" in fields else "text"
        for name in self.fields:
            if name not in fields:
                return name
        return None

    def check(self, fields: Mapping[str, Any], where: str | None = None) -> None:
        """Raise ``JobInputError`` if ``fields`` can't fill this template."""
        name = self.missing(fields)
        if name is None:
            return
        prefix = f"{where}: " if where else ""
        available = ", ".join(fields) or "none"
        if not self.fields:
            raise JobInputError(
                f"{prefix}the template has no {{placeholders}} and the data has no 'text' "
                f"field to append to it; add a placeholder (available: {available})"
            )
        raise JobInputError(f"{prefix}placeholder {{{name}}} is not in the data (available: {available})")

    def render(self, fields: Mapping[str, Any]) -> str:
        self.check(fields)
        if not self.fields:
            text = format_value(fields["text"])
            return f"{self.source_text}\n\n{text}" if self.source_text.strip() else text
        return "".join(format_value(fields[v]) if is_field else v for is_field, v in self.parts)

    @property
    def source_text(self) -> str:
        """The template with ``{{``/``}}`` unescaped (meaningful when it has no placeholders)."""
        return "".join(v for _, v in self.parts)


def _position(template: str, index: int) -> str:
    line = template.count("\n", 0, index) + 1
    column = index - (template.rfind("\n", 0, index) + 1) + 1
    return f"line {line}, column {column}" if "\n" in template else f"position {column}"


@lru_cache(maxsize=256)
def compile_template(template: str) -> Template:
    """Parse ``template``; raise ``JobInputError`` naming the place of any syntax error."""
    if not isinstance(template, str):
        raise JobInputError("the template must be text")
    parts: list[tuple[bool, str]] = []
    literal: list[str] = []
    i, n = 0, len(template)
    while i < n:
        brace = min((p for p in (template.find("{", i), template.find("}", i)) if p != -1), default=n)
        if brace > i:
            literal.append(template[i:brace])
            i = brace
            continue
        char = template[i]
        if template.startswith(char * 2, i):
            literal.append(char)
            i += 2
            continue
        if char == "}":
            raise JobInputError(
                f"template: a single '}}' at {_position(template, i)}; write '}}}}' for a literal brace"
            )
        close = template.find("}", i + 1)
        reopen = template.find("{", i + 1)
        if close == -1 or (reopen != -1 and reopen < close):
            raise JobInputError(
                f"template: '{{' at {_position(template, i)} is never closed; write '{{{{' for a literal brace"
            )
        raw = template[i + 1 : close]
        name = raw.strip()
        if not name:
            raise JobInputError(
                f"template: empty placeholder '{{}}' at {_position(template, i)}; "
                "put a field name inside, such as {text}"
            )
        if not _NAME.fullmatch(name):
            shown = raw if len(raw) <= 30 else raw[:27] + "..."
            raise JobInputError(
                f"template: '{{{shown}}}' at {_position(template, i)} is not a placeholder "
                "(a field name has only letters, digits, spaces, '_', '-' and '.'); "
                "for literal braces write '{{' and '}}'"
            )
        if literal:
            parts.append((False, "".join(literal)))
            literal = []
        parts.append((True, name))
        i = close + 1
    if literal:
        parts.append((False, "".join(literal)))
    return Template(template, tuple(parts))


def template_fields(template: str) -> set[str]:
    """The field names ``template``'s placeholders use."""
    return set(compile_template(template).fields)


def validate_template(
    template: str, sample_fields: Iterable[str] | Iterable[Mapping[str, Any]] | Mapping[str, Any]
) -> None:
    """Check ``template`` against the data.

    ``sample_fields`` is either the set of field names every item has, or the
    items themselves (dicts): then the error names the first item that can't
    fill the template ("item 3: placeholder {foo} is not in the data ...").
    """
    compiled = compile_template(template)
    if isinstance(sample_fields, Mapping):
        compiled.check(sample_fields)
        return
    samples: list[Any] = list(sample_fields)
    if samples and all(isinstance(s, Mapping) for s in samples):
        for number, fields in enumerate(samples, 1):
            compiled.check(fields, f"item {number}")
        return
    compiled.check(dict.fromkeys(samples))


def format_value(value: Any) -> str:
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    return json.dumps(value, ensure_ascii=False)


def render(template: str, fields: Mapping[str, Any]) -> str:
    """The prompt for one item."""
    return compile_template(template).render(fields)


class PromptSpec(Protocol):
    """What a prompt needs from a job: plain attributes (a ``BatchJob`` has them, so does any object)."""

    model: str
    max_tokens: int
    prompt_template: str
    system_prompt: str
    stop_sequences: Any


def build_params(job: PromptSpec, fields: Mapping[str, Any]) -> dict[str, Any]:
    """Messages API parameters for one item of ``job``, from the item's ``fields``.

    There is deliberately no ``temperature``/``top_p``/``top_k``: the current
    API version rejects them. A job with an ``output_schema`` asks for JSON through
    ``output_config.format`` (or one strict forced tool, see ``structured.output_params``).
    """
    params: dict[str, Any] = {
        "model": job.model,
        "max_tokens": job.max_tokens,
        "messages": [{"role": "user", "content": render(job.prompt_template, fields)}],
    }
    if job.system_prompt:
        params["system"] = job.system_prompt
    if job.stop_sequences:
        params["stop_sequences"] = list(job.stop_sequences)
    schema = getattr(job, "output_schema", None)
    if schema:
        params.update(output_params(job.model, schema))
    return params


def render_chunk(
    job: PromptSpec,
    rows: Sequence[tuple[int, Any]],
    mark: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
) -> tuple[list[tuple[int, dict[str, Any]]], list[tuple[int, str]]]:
    """Render one claimed chunk of ``(pk, fields)``: the requests (through ``mark``, e.g.
    automatic caching), and the items that can't be rendered, with why (in one line).

    The runner renders each chunk on its writer thread just before the engine takes it,
    so rendered prompts exist only for the items claimed and not yet sent."""
    calls: list[tuple[int, dict[str, Any]]] = []
    broken: list[tuple[int, str]] = []
    for pk, fields in rows:
        try:
            params = build_params(job, fields)
            calls.append((pk, mark(params) if mark is not None else params))
        except Exception as exc:  # the item can't be rendered: it fails, the job goes on
            broken.append((pk, f"{type(exc).__name__}: {' '.join(str(exc).split()) or type(exc).__name__}"))
    return calls, broken
