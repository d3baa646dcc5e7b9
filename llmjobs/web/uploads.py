"""The new-job form's upload, kept across a form error, and inspected for its columns.

A form error must not make people choose their file again. When a POST with a
file fails validation, the file is stashed server-side (a private temporary
directory, keyed by a random token that only this session knows) and the form
carries the token in a hidden field. A POST without a new file but with a
token of this session uses the stashed file. Stashes older than a day are
removed when a new one is made.

``inspect_upload`` reads the first records of a file: the CSV header's columns
(or the first JSONL record's keys) and a preview of the first rows, for the
column picker.
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from django.core.files.uploadedfile import UploadedFile
from django.http import HttpRequest

from ..exceptions import JobInputError
from ..parsing import detect_format, iter_file

__all__ = ["PREVIEW_ROWS", "inspect_upload", "restore_upload", "stash_upload"]

SESSION_KEY = "llmjobs_uploads"
PREVIEW_ROWS = 5
MAX_AGE = 24 * 3600
_ROOT = Path(tempfile.gettempdir()) / "llmjobs-uploads"


def _sweep() -> None:
    cutoff = time.time() - MAX_AGE
    for path in _ROOT.glob("*"):
        try:
            if path.stat().st_mtime < cutoff:
                path.unlink()
        except OSError:
            pass


def stash_upload(request: HttpRequest, upload: Any) -> str:
    """Keep ``upload`` for this session; returns its token."""
    _ROOT.mkdir(mode=0o700, parents=True, exist_ok=True)
    _sweep()
    token = secrets.token_urlsafe(18)
    upload.seek(0)
    with open(_ROOT / token, "wb") as out:
        shutil.copyfileobj(upload, out)
    stashes = dict(request.session.get(SESSION_KEY, {}))
    stashes[token] = os.path.basename(str(upload.name))
    request.session[SESSION_KEY] = stashes
    return token


def stashed_name(request: HttpRequest, token: str) -> str | None:
    """The file name of this session's stash ``token`` (``None`` if unknown or gone)."""
    name = request.session.get(SESSION_KEY, {}).get(token or "")
    if name is None or not (_ROOT / token).is_file():
        return None
    return str(name)


def restore_upload(request: HttpRequest, token: str) -> UploadedFile[Any] | None:
    """This session's stashed file as an upload (the caller closes it), or ``None``."""
    name = stashed_name(request, token)
    if name is None:
        return None
    path = _ROOT / token
    return UploadedFile(file=open(path, "rb"), name=name, size=path.stat().st_size)


def inspect_upload(upload: Any) -> dict[str, Any]:
    """Columns (CSV header) or keys (first JSONL record) and the first rows, or an ``error``."""
    try:
        fmt = detect_format(upload.name)
        rows = []
        for _, fields in iter_file(name=upload.name, data=upload, fmt=fmt):
            rows.append(fields)
            if len(rows) >= PREVIEW_ROWS:
                break
    except JobInputError as exc:
        return {"error": str(exc)}
    columns: list[str] = []
    for row in rows:
        for key in row:
            if key not in columns:
                columns.append(key)
    if fmt == "txt":
        columns = []
    preview = [{key: _cell(row.get(key)) for key in (columns or ["text"])} for row in rows]
    return {"format": fmt, "columns": columns, "rows": preview}


def _cell(value: Any) -> str:
    text = value if isinstance(value, str) else ("" if value is None else str(value))
    return text if len(text) <= 200 else text[:199] + "…"


STASH_FIELD = "stashed_upload"


def files_with_stash(request: HttpRequest) -> Any:
    """``request.FILES``, plus this session's stashed file when the POST names one and brings no new file."""
    files = request.FILES
    token = request.POST.get(STASH_FIELD, "")
    if "file" in files or not token:
        return files
    upload = restore_upload(request, token)
    if upload is None:
        return files
    files = files.copy()
    files["file"] = upload
    return files


def keep_for_next_post(request: HttpRequest, form: Any) -> None:
    """After a form error: stash the form's file (if any) and remember it on the form as ``form.stash``."""
    upload = form.files.get("file") if form.files else None
    if upload is None or "file" in form.errors:
        return
    token = request.POST.get(STASH_FIELD, "")
    if not (token and stashed_name(request, token) == upload.name and not request.FILES.get("file")):
        token = stash_upload(request, upload)
    form.stash = {"token": token, "name": stashed_name(request, token), "field": STASH_FIELD}
