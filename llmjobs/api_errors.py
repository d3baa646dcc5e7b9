"""API errors that stop a whole run, said in plain words for the person who sees them."""

from __future__ import annotations

__all__ = ["PreviewError", "plain_api_error"]

_PLAIN = {
    "authentication_error": (
        "the API rejected the server's API key (authentication failed). "
        "An administrator must set a valid ANTHROPIC_API_KEY."
    ),
    "permission_error": (
        "the API key is not allowed to do this (permission denied): "
        "the key's workspace may not have access to this model or feature."
    ),
    "billing_error": "the API account has a billing problem: check the organisation's plan and credit balance.",
}


def plain_api_error(error_type: str, message: str) -> str:
    """``authentication_error`` + the API's message -> one plain sentence, with the API's words kept."""
    plain = _PLAIN.get(error_type, f"the API stopped the run ({error_type})")
    detail = message.strip()
    return f"{plain} The API said: {detail}" if detail else plain


class PreviewError(RuntimeError):
    """A preview that could not run at all; the message is meant for people."""
