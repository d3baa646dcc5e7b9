"""Small, Django-free security helpers shared by every surface."""

from __future__ import annotations

from typing import Any

__all__ = ["FORMULA_PREFIXES", "spreadsheet_safe"]

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
