"""The domain's errors. Every message is one line meant for the person who caused it.

They live here, apart from the modules that raise them, so that any layer
(parsing, prompts, services, surfaces) can raise or catch them without
importing another layer.
"""

from __future__ import annotations

__all__ = ["JobInputError", "JobStateError", "LLMJobsError"]


class LLMJobsError(Exception):
    """Base class of the errors llmjobs raises on purpose."""


class JobInputError(LLMJobsError, ValueError):
    """Bad input for a job (a file, a template, a setting): the message says what and where."""


class JobStateError(LLMJobsError):
    """The job is not in a state that allows this operation; the message says why."""
