"""Turn user input (pasted text, records, uploaded files) into item fields.

Every item is a flat-ish dict of *fields* that the prompt template fills its
``{placeholders}`` from. The rules, per source:

- **Pasted text / a list of texts** (``parse_texts``): a single string is split
  into lines and each non-blank line is one item; a list gives one item per
  non-blank element (an element may span several lines). Item: ``{"text": s}``.
- **TXT file**: one item per non-blank line, ``{"text": line}``.
- **CSV file** (header row required; ``,`` by default, ``;`` or tab when the
  header line uses that and has no comma): without ``column`` every column is
  a field. With ``column`` the chosen column is *also* the ``text`` field:
  ``{"text": row[column], **row}`` (the chosen column wins over a column that
  is itself called ``text``). Wholly blank rows are skipped; short rows are
  padded with empty strings.
- **JSONL file**: each non-blank line is a JSON object (its keys are the
  fields) or a JSON string (``{"text": s}``). With ``field`` the chosen key is
  also the ``text`` field, as for CSV. A non-string value chosen as text is
  written as compact JSON.
- **Records** (``parse_records``): dicts used as fields as they are; a plain
  string becomes ``{"text": s}``.

A ``custom_id`` (or else an ``id``) field, when present, also becomes the
item's custom id (see ``jobs.job_create``).

Files are read line by line from the bytes (or a binary file object), so a
50 MB upload is held once as bytes and once as parsed items, never as a whole
decoded string too. All problems raise ``JobInputError`` with a message that
says what is wrong and where ("line 7: ...").

Limits (read from settings at call time): ``LLMJOBS_MAX_ITEMS`` (100,000),
``LLMJOBS_MAX_ITEM_CHARS`` (100,000 characters of field values per item) and
``LLMJOBS_MAX_UPLOAD_BYTES`` (50 MB).
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import IO, Any

from .conf import llmjobs_settings
from .exceptions import JobInputError
from .prompts import format_value

__all__ = [
    "FORMATS",
    "detect_format",
    "iter_file",
    "iter_records",
    "iter_texts",
    "max_item_chars",
    "max_items",
    "max_upload_bytes",
    "parse_file",
    "parse_records",
    "parse_texts",
]

FORMATS = ("csv", "jsonl", "txt")
_EXTENSIONS = {
    ".csv": "csv",
    ".tsv": "csv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".txt": "txt",
    ".text": "txt",
}

# One parsed item: where it came from ("line 7", "item 3") and its fields.
Located = tuple[str, dict[str, Any]]


# --- limits --------------------------------------------------------------------


def max_items() -> int:
    return llmjobs_settings().max_items


def max_item_chars() -> int:
    return llmjobs_settings().max_item_chars


def max_upload_bytes() -> int:
    return llmjobs_settings().max_upload_bytes


def _size(n: int) -> str:
    if n < 1024 * 1024:
        return f"{n:,} bytes"
    return f"{n / (1024 * 1024):.1f} MB"


def _value_chars(value: Any, where: str) -> int:
    """Characters a field value adds to an item; rejects NUL (PostgreSQL can't store it)."""
    if value is None:
        return 0
    if isinstance(value, str):
        text = value
    else:
        try:
            text = json.dumps(value, ensure_ascii=False)
        except (TypeError, ValueError) as exc:
            raise JobInputError(f"{where}: a value is not JSON data ({exc})") from None
        if "\\u0000" in text:
            raise JobInputError(f"{where}: contains a NUL character, which cannot be stored")
    if "\x00" in text:
        raise JobInputError(f"{where}: contains a NUL character (is this a binary or UTF-16 file?)")
    return len(text)


def _check_size(fields: Mapping[str, Any], where: str, limit: int) -> None:
    size = 0
    for value in fields.values():
        size += _value_chars(value, where)
    if size > limit:
        raise JobInputError(
            f"{where}: the item is {size:,} characters long, over the limit of "
            f"{limit:,} characters (LLMJOBS_MAX_ITEM_CHARS)"
        )


def _limited(items: Iterable[Located]) -> Iterator[Located]:
    """Stop with a clear error as soon as there is one item too many."""
    limit = max_items()
    count = 0
    for located in items:
        count += 1
        if count > limit:
            raise JobInputError(
                f"too many items: more than {limit:,} (the limit is LLMJOBS_MAX_ITEMS={limit:,}); "
                "split the input into several jobs"
            )
        yield located


_as_text = format_value  # a field value as text: the same rule as in prompts


def _with_text(fields: dict[str, Any], text: Any) -> dict[str, Any]:
    """``{"text": text, **fields}`` where the chosen text wins over a ``text`` field."""
    item: dict[str, Any] = {"text": _as_text(text)}
    for key, value in fields.items():
        if key != "text":
            item[key] = value
    return item


# --- texts and records ---------------------------------------------------------------


def iter_texts(texts: str | Iterable[str]) -> Iterator[Located]:
    """Pasted text (a string: one item per non-blank line) or a list of texts."""
    return _limited(_iter_texts(texts))


def _iter_texts(texts: str | Iterable[str]) -> Iterator[Located]:
    limit = max_item_chars()
    if isinstance(texts, str):
        source: Iterable[str] = texts.splitlines()
        label = "line"
    else:
        source = texts
        label = "text"
    for number, text in enumerate(source, 1):
        where = f"{label} {number}"
        if not isinstance(text, str):
            raise JobInputError(f"{where}: expected a string, got {type(text).__name__}")
        text = text.strip()
        if not text:
            continue
        item = {"text": text}
        _check_size(item, where, limit)
        yield where, item


def iter_records(records: Iterable[Mapping[str, Any] | str]) -> Iterator[Located]:
    """Dicts of fields (or plain strings, which become ``{"text": s}``)."""
    return _limited(_iter_records(records))


def _iter_records(records: Iterable[Mapping[str, Any] | str]) -> Iterator[Located]:
    limit = max_item_chars()
    for number, record in enumerate(records, 1):
        where = f"record {number}"
        if isinstance(record, str):
            if not record.strip():
                continue
            item: dict[str, Any] = {"text": record}
        elif isinstance(record, Mapping):
            bad = [k for k in record if not isinstance(k, str)]
            if bad:
                raise JobInputError(f"{where}: field names must be strings, got {bad[0]!r}")
            item = dict(record)
        else:
            raise JobInputError(f"{where}: expected a dict of fields or a string, got {type(record).__name__}")
        _check_size(item, where, limit)
        yield where, item


def parse_texts(lines: str | Sequence[str]) -> list[dict[str, Any]]:
    """Items from pasted text or a list of texts; see ``iter_texts``."""
    items = [fields for _, fields in iter_texts(lines)]
    if not items:
        raise JobInputError("no items: the text is empty")
    return items


def parse_records(records: Sequence[Mapping[str, Any] | str]) -> list[dict[str, Any]]:
    """Items from dicts of fields; see ``iter_records``."""
    items = [fields for _, fields in iter_records(records)]
    if not items:
        raise JobInputError("no items: no records were given")
    return items


# --- files -----------------------------------------------------------------------


def detect_format(name: str | None, fmt: str | None = None) -> str:
    """``fmt`` when given, else the format named by the file's extension."""
    if fmt:
        fmt = fmt.lower().lstrip(".")
        if fmt == "tsv":
            return "csv"
        if fmt not in FORMATS:
            raise JobInputError(f"unknown format {fmt!r}: use one of {', '.join(FORMATS)}")
        return fmt
    ext = os.path.splitext(name or "")[1].lower()
    if ext in _EXTENSIONS:
        return _EXTENSIONS[ext]
    shown = repr(name) if name else "the file (it has no name)"
    raise JobInputError(
        f"can't tell the format of {shown} from its extension: use a .csv, .jsonl or .txt file, or choose the format"
    )


def _byte_size(data: bytes | IO[bytes]) -> int | None:
    if isinstance(data, (bytes, bytearray, memoryview)):
        return len(data)
    size = getattr(data, "size", None)
    if isinstance(size, int):
        return size
    try:
        position = data.tell()
        end = data.seek(0, io.SEEK_END)
        data.seek(position)
        return end - position
    except (AttributeError, OSError, ValueError):
        return None


def _head(data: bytes | IO[bytes], n: int = 4) -> bytes:
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data[:n])
    try:
        position = data.tell()
        head = data.read(n)
        data.seek(position)
        return head or b""
    except (AttributeError, OSError, ValueError):
        return b""


def _decoded_lines(stream: Iterable[bytes]) -> Iterator[str]:
    """UTF-8 lines (a BOM is accepted), with the line number in any decoding error."""
    for number, raw in enumerate(stream, 1):
        if number == 1:
            if raw.startswith(codecs.BOM_UTF8):
                raw = raw[len(codecs.BOM_UTF8) :]
            elif raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
                raise JobInputError("the file is UTF-16 text, not UTF-8: save it as UTF-8 (CSV UTF-8) and try again")
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise JobInputError(
                f"line {number}: the file is not UTF-8 text (byte 0x{raw[exc.start]:02x} "
                f"at column {exc.start + 1}); save it as UTF-8 and try again"
            ) from None
        if "\x00" in line:
            raise JobInputError(f"line {number}: contains a NUL character (is this a binary or UTF-16 file?)")
        yield line


def iter_file(
    *,
    name: str | None,
    data: bytes | IO[bytes],
    column: str | None = None,
    field: str | None = None,
    fmt: str | None = None,
) -> Iterator[Located]:
    """Stream items from an uploaded file's bytes (or binary file object).

    ``column`` (CSV) and ``field`` (JSONL) both name the key that becomes the
    ``text`` field; either word works for either format.
    """
    fmt = detect_format(name, fmt)
    size = _byte_size(data)
    limit = max_upload_bytes()
    if size is not None and size > limit:
        raise JobInputError(
            f"the file is {_size(size)}, over the upload limit of {_size(limit)} (LLMJOBS_MAX_UPLOAD_BYTES)"
        )
    if size == 0:
        raise JobInputError("the file is empty")
    if _head(data).startswith(b"PK\x03\x04"):
        raise JobInputError("the file is a ZIP archive (an Excel workbook?), not text: export it as CSV UTF-8")
    if column and field and column != field:
        raise JobInputError("give either a column or a field, not both")
    key = (column or field or "").strip() or None

    stream: Iterable[bytes]
    if isinstance(data, (bytes, bytearray, memoryview)):
        stream = io.BytesIO(data)  # shares the buffer: no copy
    else:
        stream = data
    lines = _decoded_lines(stream)
    if fmt == "csv":
        items = _iter_csv(lines, key)
    elif fmt == "jsonl":
        items = _iter_jsonl(lines, key)
    else:
        if key and key != "text":
            raise JobInputError(
                f"a .txt file has no columns or fields (asked for {key!r}): each line is the item's text"
            )
        items = _iter_txt(lines)
    yield from _limited(items)


def parse_file(
    *,
    name: str | None,
    data: bytes | IO[bytes],
    column: str | None = None,
    field: str | None = None,
    fmt: str | None = None,
) -> list[dict[str, Any]]:
    """All items of a file as a list of field dicts; see the module docstring."""
    items = [fields for _, fields in iter_file(name=name, data=data, column=column, field=field, fmt=fmt)]
    if not items:
        raise JobInputError("no items: the file has no data, only blank lines")
    return items


def _split_cr(line: str) -> list[str]:
    """A line split at lone CRs too (old Mac line endings, mixed into a file)."""
    line = line.rstrip("\r\n")
    return line.split("\r") if "\r" in line else [line]


# Hostile JSON: refused with a clear message instead of a RecursionError or a
# ValueError deep inside json (a 500 in a view, a traceback in a command).
MAX_JSON_DEPTH = 64
MAX_JSON_INT_DIGITS = 100


def _json_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_JSON_INT_DIGITS:
        raise JobInputError(f"a number with more than {MAX_JSON_INT_DIGITS} digits")
    return int(text)


def _json_float(text: str) -> float:
    value = float(text)
    if len(text) > MAX_JSON_INT_DIGITS * 2 or value in (float("inf"), float("-inf")):
        raise JobInputError(f"a number too large or too long ({len(text):,} characters)")
    return value


def _json_constant(name: str) -> Any:
    raise JobInputError(f"{name} is not valid JSON (use null or a string)")


def _json_depth(value: Any) -> int:
    depth, level = 0, [(value, 1)]
    while level:
        node, d = level.pop()
        if isinstance(node, (dict, list)):
            depth = max(depth, d)
            if depth > MAX_JSON_DEPTH:
                break
            level.extend((child, d + 1) for child in (node.values() if isinstance(node, dict) else node))
    return depth


def _iter_txt(lines: Iterable[str]) -> Iterator[Located]:
    limit = max_item_chars()
    for number, line in enumerate(lines, 1):
        for part in _split_cr(line):
            text = part.strip()
            if not text:
                continue
            where = f"line {number}"
            item = {"text": text}
            _check_size(item, where, limit)
            yield where, item


def _iter_jsonl(lines: Iterable[str], key: str | None) -> Iterator[Located]:
    limit = max_item_chars()
    decoder = json.JSONDecoder(parse_int=_json_int, parse_float=_json_float, parse_constant=_json_constant)
    for number, part in ((n, p) for n, line in enumerate(lines, 1) for p in _split_cr(line)):
        stripped = part.strip()
        if not stripped:
            continue
        where = f"line {number}"
        try:
            value = decoder.decode(stripped)
        except json.JSONDecodeError as exc:
            raise JobInputError(f"{where}: malformed JSON: {exc.msg} (column {exc.colno})") from None
        except JobInputError as exc:
            raise JobInputError(f"{where}: {exc}") from None
        except RecursionError:
            value = None  # reported as too deep just below
            depth = MAX_JSON_DEPTH + 1
        else:
            depth = _json_depth(value)
        if depth > MAX_JSON_DEPTH:
            raise JobInputError(f"{where}: the JSON is nested more than {MAX_JSON_DEPTH} levels deep")
        if isinstance(value, str):
            fields: dict[str, Any] = {"text": value}
        elif isinstance(value, dict):
            fields = value
        else:
            kind = {list: "an array", bool: "a boolean", type(None): "null"}.get(type(value), "a number")
            raise JobInputError(
                f"{where}: expected a JSON object or string, got {kind} (JSONL needs one object per line)"
            )
        _check_size(fields, where, limit)
        if key is not None:
            if key not in fields:
                available = ", ".join(fields) or "none"
                raise JobInputError(f"{where}: field {key!r} is missing (available: {available})")
            fields = _with_text(fields, fields[key])
        yield where, fields


def _sniff_delimiter(header_line: str) -> str:
    if "," in header_line:
        return ","
    if "\t" in header_line:
        return "\t"
    if ";" in header_line:
        return ";"
    return ","


def _iter_csv(lines: Iterator[str], key: str | None) -> Iterator[Located]:
    limit = max_item_chars()
    # A cell may be as long as an item may be: lift csv's own 128 KiB cell limit if needed.
    if csv.field_size_limit() <= limit:
        csv.field_size_limit(limit + 1)

    # Find the header (the first non-blank line) to pick the delimiter.
    skipped = 0
    first = None
    for line in lines:
        if line.strip():
            first = line
            break
        skipped += 1
    if first is None:
        raise JobInputError("the file has no data, only blank lines")

    def chained() -> Iterator[str]:
        yield first
        yield from lines

    reader = csv.reader(chained(), delimiter=_sniff_delimiter(first), strict=True)

    def where() -> str:
        return f"line {reader.line_num + skipped}"

    try:
        header = [h.strip() for h in next(reader)]
        seen: set[str] = set()
        for h in header:
            if h and h in seen:
                raise JobInputError(f"line {1 + skipped}: the header names column {h!r} twice")
            seen.add(h)
        named = [h for h in header if h]
        if not named:
            raise JobInputError(f"line {1 + skipped}: the header row has no column names")
        if key is not None and key not in seen:
            raise JobInputError(f"column {key!r} is not in the file (available: {', '.join(named)})")
        width = len(header)
        rows = 0
        for row in reader:
            if not any(cell.strip() for cell in row):
                continue
            here = where()
            if len(row) > width:
                if any(cell.strip() for cell in row[width:]):
                    raise JobInputError(f"{here}: {len(row)} values but the header has {width} columns")
                row = row[:width]
            elif len(row) < width:
                row = row + [""] * (width - len(row))
            fields: dict[str, Any] = {}
            for number, (name, cell) in enumerate(zip(header, row), 1):
                if name:
                    fields[name] = cell
                elif cell.strip():
                    raise JobInputError(f"{here}: a value in column {number}, which has no name in the header")
            _check_size(fields, here, limit)
            if key is not None:
                fields = _with_text(fields, fields[key])
            rows += 1
            yield here, fields
        if rows == 0:
            raise JobInputError("the file has a header row but no data rows")
    except csv.Error as exc:
        raise JobInputError(f"{where()}: malformed CSV: {exc}") from None
