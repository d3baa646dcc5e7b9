"""Small security helpers shared by every surface (they import no Django)."""

from __future__ import annotations

from typing import Any

__all__ = ["FORMULA_PREFIXES", "may_act_on", "spreadsheet_safe"]

# OWASP "CSV injection": a spreadsheet treats a cell that starts with one of
# these as a formula (tab and CR can hide the real first character).
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(value: Any) -> Any:
    """``value`` with a leading ``'`` when it is text a spreadsheet would run as a formula.

    Non-strings (numbers, ``None``) pass unchanged: a negative number stays a number.
    """
    if isinstance(value, str) and value.startswith(FORMULA_PREFIXES):
        return "'" + value
    return value


def may_act_on(user: Any, job: Any) -> bool:
    """Whether ``user`` may change ``job`` (run, preview, cancel, retry): their own job,
    or anyone's with ``llmjobs.change_batchjob``. Seeing a job (``view_batchjob``) is not enough.
    """
    if user is None or not getattr(user, "is_authenticated", False):
        return False
    if job.owner_id is not None and job.owner_id == user.pk:
        return True
    return bool(user.has_perm("llmjobs.change_batchjob"))
