"""Forms: they validate what people type; services (``jobs.py``) do the work."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django import forms

from ..conf import llmjobs_settings
from ..exceptions import JobInputError
from ..parsing import detect_format, max_upload_bytes
from ..prompts import compile_template
from ..structured import FIELD_TYPES, check_schema, schema_from_fields

__all__ = ["JobForm", "PlaygroundForm", "model_choices"]

MAX_TOKENS_LIMIT = 64_000
CONCURRENCY_LIMIT = 512
SCHEMA_ROWS = 6  # rows of the output field list on the new-job form


def model_choices() -> list[tuple[str, str]]:
    conf = llmjobs_settings()
    models = list(conf.models)
    default = conf.default_model
    if default and default not in models:
        models.insert(0, default)
    return [(m, m) for m in models]


class _ModelChoiceForm(forms.Form):
    """Fills a subclass's ``model`` field with ``LLMJOBS_MODELS`` (``LLMJOBS_DEFAULT_MODEL`` first)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        choices = model_choices()
        field = self.fields["model"]
        assert isinstance(field, forms.ChoiceField)
        field.choices = choices
        field.initial = llmjobs_settings().default_model or (choices[0][0] if choices else "")


def _size(n: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:,.0f} {unit}" if unit == "bytes" else f"{n:,.1f} {unit}"
        n /= 1024
    return str(n)


class JobForm(_ModelChoiceForm):
    SOURCE_PASTE = "paste"
    SOURCE_FILE = "file"

    name = forms.CharField(max_length=200, required=False, help_text="Empty: the file's name.")
    source = forms.ChoiceField(
        choices=[(SOURCE_PASTE, "Paste lines of text"), (SOURCE_FILE, "Upload a CSV, JSONL or TXT file")],
        initial=SOURCE_PASTE,
        widget=forms.RadioSelect,
    )
    texts = forms.CharField(
        label="Items",
        required=False,
        widget=forms.Textarea(attrs={"rows": 6, "placeholder": "One item per line"}),
        help_text="One item per line; blank lines are skipped.",
    )
    file = forms.FileField(required=False, help_text="CSV (with a header row), JSONL or TXT (one item per line).")
    column = forms.CharField(
        label="CSV column / JSONL field",
        max_length=200,
        required=False,
        help_text="Which column or field is the item's {text}. Empty: every column is a {placeholder}.",
    )
    prompt_template = forms.CharField(
        label="Prompt template",
        required=False,
        initial="Summarize in one sentence:\n\n{text}",
        widget=forms.Textarea(attrs={"rows": 4}),
        help_text="{placeholders} are filled from each item's fields ({text} for pasted lines). "
        "Without any, the item's text is appended. Write {{ and }} for literal braces.",
    )
    system_prompt = forms.CharField(label="System prompt", required=False, widget=forms.Textarea(attrs={"rows": 2}))
    model = forms.ChoiceField(choices=[])
    max_tokens = forms.IntegerField(min_value=1, max_value=MAX_TOKENS_LIMIT, initial=1024)
    concurrency = forms.IntegerField(
        min_value=1,
        max_value=CONCURRENCY_LIMIT,
        required=False,
        help_text="Empty (recommended): automatic, adapted to your rate limits as the job runs.",
    )

    output_schema = forms.CharField(
        label="Output schema (JSON)",
        required=False,
        widget=forms.Textarea(attrs={"rows": 6, "spellcheck": "false", "placeholder": '{"type": "object", ...}'}),
        help_text="A JSON Schema with an object at the top level, for what the field list can't say "
        "(nested objects, arrays, patterns). When given, it replaces the field list.",
    )
    mode = forms.ChoiceField(
        choices=[("online", "Online: results as they come"), ("batch", "Batch: 50% cheaper, results within 24 h")],
        initial="online",
        required=False,
        widget=forms.RadioSelect,
    )
    budget_usd = forms.DecimalField(
        label="Budget (USD)",
        required=False,
        min_value=Decimal("0.000001"),
        max_digits=14,
        decimal_places=6,
        help_text="Optional: stop sending before the job's cost would pass it (resumable with a higher budget).",
    )
    dedup = forms.BooleanField(
        label="Send identical requests once",
        required=False,
        initial=True,
        help_text="Items whose rendered requests are identical share one answer (paid once).",
    )
    webhook_url = forms.URLField(
        label="Webhook URL",
        required=False,
        max_length=2000,
        assume_scheme="https",
        help_text="Optional: receives a signed job.finished event when the job ends.",
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # The output field list: each row is a name, a type, enum values and "required".
        types = [(t, t) for t in FIELD_TYPES]
        for i in range(SCHEMA_ROWS):
            self.fields[f"field_{i}_name"] = forms.CharField(max_length=100, required=False, label="Field name")
            self.fields[f"field_{i}_type"] = forms.ChoiceField(
                choices=types, initial="string", required=False, label="Type"
            )
            self.fields[f"field_{i}_enum"] = forms.CharField(
                max_length=2000, required=False, label="Enum values (comma-separated)"
            )
            self.fields[f"field_{i}_required"] = forms.BooleanField(required=False, initial=True, label="Required")

    @property
    def schema_rows(self) -> list[dict[str, Any]]:
        """The field list's bound fields, row by row (for the template)."""
        return [
            {part: self[f"field_{i}_{part}"] for part in ("name", "type", "enum", "required")}
            for i in range(SCHEMA_ROWS)
        ]

    def _schema(self, data: dict[str, Any]) -> dict[str, Any] | None:
        raw = (data.get("output_schema") or "").strip()
        try:
            if raw:
                return check_schema(raw)
            rows = [
                {
                    "name": data.get(f"field_{i}_name"),
                    "type": data.get(f"field_{i}_type") or "string",
                    "enum": data.get(f"field_{i}_enum"),
                    "required": data.get(f"field_{i}_required"),
                }
                for i in range(SCHEMA_ROWS)
            ]
            return schema_from_fields(rows)
        except JobInputError as exc:
            self.add_error("output_schema" if raw else None, str(exc))
            return None

    def clean_webhook_url(self) -> str:
        url = (self.cleaned_data.get("webhook_url") or "").strip()
        if url:
            from ..webhooks import check_webhook_url

            try:
                check_webhook_url(url)
            except JobInputError as exc:
                raise forms.ValidationError(str(exc)) from None
        return url

    def clean_prompt_template(self) -> str:
        template = self.cleaned_data.get("prompt_template") or ""
        try:
            compile_template(template)
        except JobInputError as exc:
            raise forms.ValidationError(str(exc)) from None
        return template

    def clean_file(self) -> Any:
        upload = self.cleaned_data.get("file")
        if upload is None:
            return None
        limit = max_upload_bytes()
        if upload.size > limit:
            raise forms.ValidationError(
                f"The file is {_size(upload.size)}, over the {_size(limit)} limit (LLMJOBS_MAX_UPLOAD_BYTES)."
            )
        try:
            detect_format(upload.name)
        except JobInputError as exc:
            raise forms.ValidationError(str(exc)) from None
        return upload

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        source = data.get("source")
        if source == self.SOURCE_PASTE and not (data.get("texts") or "").strip():
            self.add_error("texts", "Paste at least one line, or choose a file instead.")
        if source == self.SOURCE_FILE and not data.get("file") and "file" not in self.errors:
            self.add_error("file", "Choose a file to upload, or paste lines instead.")
        data["schema"] = self._schema(data)
        return data

    def cost_options(self) -> dict[str, Any]:
        """Keyword arguments for ``costs.apply_cost_options`` (after ``is_valid()``)."""
        data = self.cleaned_data
        mode = "batch" if data.get("mode") == "batch" else "online"
        return {"budget_usd": data.get("budget_usd"), "dedup": bool(data.get("dedup")), "mode": mode}

    def service_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``jobs.job_create`` (after ``is_valid()``)."""
        data = self.cleaned_data
        kwargs: dict[str, Any] = {
            "name": data.get("name") or "",
            "template": data.get("prompt_template") or "",
            "system": data.get("system_prompt") or "",
            "model": data["model"],
            "max_tokens": data["max_tokens"],
            "concurrency": data.get("concurrency"),
            "schema": data.get("schema"),
            "webhook_url": data.get("webhook_url") or "",
        }
        if data["source"] == self.SOURCE_FILE:
            upload = data["file"]
            upload.seek(0)
            # The upload object itself: parsing reads it line by line (no full copy).
            kwargs.update(file_name=upload.name, file_data=upload)
            kwargs["column"] = (data.get("column") or "").strip() or None
        else:
            kwargs["texts"] = data["texts"]
            if not kwargs["name"]:
                first = data["texts"].strip().splitlines()[0].strip()
                kwargs["name"] = (first[:60] + "…") if len(first) > 60 else first
        return kwargs


class PlaygroundForm(_ModelChoiceForm):
    prompt = forms.CharField(max_length=100_000, widget=forms.Textarea(attrs={"rows": 5}))
    system = forms.CharField(
        label="System prompt", max_length=20_000, required=False, widget=forms.Textarea(attrs={"rows": 2})
    )
    model = forms.ChoiceField(choices=[])
    max_tokens = forms.IntegerField(min_value=1, max_value=8192, initial=512)

    def params(self) -> dict[str, Any]:
        """Messages API parameters (after ``is_valid()``)."""
        data = self.cleaned_data
        params: dict[str, Any] = {
            "model": data["model"],
            "max_tokens": data["max_tokens"],
            "messages": [{"role": "user", "content": data["prompt"]}],
        }
        if data.get("system"):
            params["system"] = data["system"]
        return params
