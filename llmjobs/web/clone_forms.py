"""The new-job form for a clone: the source job's data as a third source of items."""

from __future__ import annotations

from typing import Any

from django import forms

from ..models import BatchJob
from .forms import JobForm

__all__ = ["CloneJobForm"]


class CloneJobForm(JobForm):
    """``JobForm`` plus "the same data as job #N" (the default) and "only changed items"."""

    SOURCE_JOB = "job"

    only_changed = forms.BooleanField(
        label="Only changed items",
        required=False,
        initial=True,
        help_text="Items whose request (prompt, system prompt, model, max_tokens) is identical to one the "
        "source job already answered reuse that answer at no cost; only the others run.",
    )

    def __init__(self, *args: Any, source: BatchJob, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.source_job = source
        field = self.fields["source"]
        assert isinstance(field, forms.ChoiceField)
        field.choices = [
            (self.SOURCE_JOB, f"The same data as job #{source.pk} ({source.total:,} items)"),
            *list(field.choices),  # type: ignore[arg-type]
        ]
        field.initial = self.SOURCE_JOB
        if source.advice:  # e.g. "answers average 72 tokens; max_tokens 256 would run ~1.9x faster"
            self.fields["max_tokens"].help_text = f"Job #{source.pk}'s last run: {source.advice}."
        if not self.is_bound:
            self.initial.setdefault("source", self.SOURCE_JOB)

    def uses_source_data(self) -> bool:
        return self.cleaned_data.get("source") == self.SOURCE_JOB

    def clone_kwargs(self) -> dict[str, Any]:
        """``job_clone`` keywords: the form's settings (as ``service_kwargs`` builds them) without data."""
        saved = self.cleaned_data
        self.cleaned_data = {**saved, "source": self.SOURCE_PASTE, "texts": "clone"}
        try:
            kwargs = self.service_kwargs()
        finally:
            self.cleaned_data = saved
        kwargs.pop("texts", None)
        if not (saved.get("name") or "").strip():
            kwargs["name"] = f"{self.source_job.name} (copy)"[:200]
        kwargs["only_changed"] = bool(saved.get("only_changed"))
        return kwargs
