"""The admin's job form: the same checks as the web form (``forms.JobForm``) and ``job_create``.

A template must compile and every placeholder must be in every item's data; the
model must be one the site offers (or the one the job already has); limits on
``max_tokens`` and ``concurrency`` are the web form's.
"""

from __future__ import annotations

from typing import Any

from django import forms

from .exceptions import JobInputError
from .models import BatchJob
from .prompts import compile_template
from .web.forms import CONCURRENCY_LIMIT, MAX_TOKENS_LIMIT, model_choices

__all__ = ["BatchJobAdminForm"]

CHECK_CHUNK = 2000  # items read per query when checking a template against the data


class BatchJobAdminForm(forms.ModelForm[BatchJob]):
    class Meta:
        model = BatchJob
        fields = (
            "name",
            "owner",
            "model",
            "system_prompt",
            "prompt_template",
            "max_tokens",
            "stop_sequences",
            "concurrency",
            "rate_limit_rpm",
        )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if "model" in self.fields:
            choices = model_choices()
            current = self.instance.model if self.instance.pk else ""
            if current and current not in dict(choices):
                choices.insert(0, (current, f"{current} (current)"))
            self.fields["model"] = forms.ChoiceField(choices=choices, initial=current or None)
        if "max_tokens" in self.fields:
            self.fields["max_tokens"].validators.append(_at_most(MAX_TOKENS_LIMIT))
            self.fields["max_tokens"].widget.attrs["max"] = MAX_TOKENS_LIMIT
        if "concurrency" in self.fields:
            self.fields["concurrency"].validators.append(_at_least_one)
            self.fields["concurrency"].validators.append(_at_most(CONCURRENCY_LIMIT))

    def clean_prompt_template(self) -> str:
        template = self.cleaned_data.get("prompt_template") or ""
        try:
            compiled = compile_template(template)
            if self.instance.pk:  # every item must fill it, as job_create checks on creation
                inputs = self.instance.items.order_by("position").values_list("position", "input")
                for position, fields in inputs.iterator(chunk_size=CHECK_CHUNK):
                    compiled.check(fields if isinstance(fields, dict) else {}, f"item {position}")
        except JobInputError as exc:
            raise forms.ValidationError(str(exc)) from None
        return template

    def clean_stop_sequences(self) -> Any:
        stops = self.cleaned_data.get("stop_sequences") or []
        if not isinstance(stops, list) or not all(isinstance(s, str) and s.strip() for s in stops):
            raise forms.ValidationError('Stop sequences are a JSON list of non-blank strings, e.g. ["END"].')
        return stops


def _at_most(limit: int) -> Any:
    def check(value: Any) -> None:
        if value is not None and value > limit:
            raise forms.ValidationError(f"Ensure this value is less than or equal to {limit}.")

    return check


def _at_least_one(value: Any) -> None:
    if value is not None and value < 1:
        raise forms.ValidationError("Ensure this value is greater than or equal to 1.")
