"""Structured extraction end to end: a job with an output schema, run by the real runner
against the real simulator (the SDK over TCP), exported as split CSV columns."""

from __future__ import annotations

import csv
import io
import json

import pytest
from jsonschema import Draft202012Validator

from llmjobs.jobs import export_columns, job_create, job_export
from llmjobs.models import BatchJob, Item
from llmjobs.runner import process_job

pytestmark = pytest.mark.django_db(transaction=True)

TICKETS = [
    {"ticket": "My Acme Phone broke after two days. Terrible.", "customer": "Ann Lee"},
    {"ticket": '=HYPERLINK("http://evil") The Zeta Blender is great, love it!', "customer": "Bo Chan"},
    {"ticket": "Where is my order of the Acme Phone? Email me at bo@example.com", "customer": "Cy Diaz"},
]
NULLABLE = {"type": ["string", "null"]}
SCHEMA = {
    "type": "object",
    "properties": {"sentiment": NULLABLE, "product": NULLABLE, "reason": NULLABLE},
    "required": ["sentiment", "product", "reason"],
}


def csv_rows(job: BatchJob) -> list[dict[str, str]]:
    out = io.StringIO(newline="")
    job_export(job=job, fmt="csv", out=out)
    return list(csv.DictReader(io.StringIO(out.getvalue(), newline="")))


def test_extraction_job_validates_every_answer_and_exports_one_column_per_field(api):
    job = job_create(
        name="Support tickets / March",
        template="Extract the sentiment, product and reason from this ticket: {ticket}",
        model="claude-haiku-4-5",
        records=TICKETS,
        schema=SCHEMA,
    )
    report = process_job(job.pk)
    job.refresh_from_db()
    assert report.status == job.status == BatchJob.Status.SUCCEEDED
    validator = Draft202012Validator(SCHEMA)
    for item in job.items.order_by("position"):
        assert item.status == Item.Status.SUCCEEDED
        assert not list(validator.iter_errors(json.loads(item.output)))
    # The CSV: input columns split as they came in, one column per output field, then the rest.
    columns = export_columns(job)[2]
    assert columns == [
        "ticket",
        "customer",
        "sentiment",
        "product",
        "reason",
        "status",
        "error",
        "stop_reason",
        "input_tokens",
        "output_tokens",
        "cost_usd",
    ]
    rows = csv_rows(job)
    assert list(rows[0]) == columns
    assert [r["customer"] for r in rows] == ["Ann Lee", "Bo Chan", "Cy Diaz"]
    assert rows[1]["ticket"].startswith("'=HYPERLINK")  # formula neutralised
    assert all(r["status"] == "succeeded" and r["error"] == "" and int(r["input_tokens"]) > 0 for r in rows)
    assert float(rows[0]["cost_usd"]) > 0


SCORE = {"type": "object", "properties": {"score": {"type": "integer"}}, "required": ["score"]}


def score_job(n: int) -> BatchJob:
    return job_create(
        name="scores",
        template="Rate this document from 1 to 5: {text}",
        model="claude-haiku-4-5",
        texts=[f"document {i}: a fine text" for i in range(n)],
        schema=SCORE,
    )


def test_an_invalid_answer_is_retried_once_with_the_error_then_fails_as_invalid_output(api):
    job = score_job(1)
    api.inject("invalid_output", "invalid_output")  # the answer and its repair both break the schema
    report = process_job(job.pk)
    job.refresh_from_db()
    assert report.status == job.status == BatchJob.Status.FAILED
    assert api.stats()["by_status"] == {"200": 2}  # the answer, then one repair attempt; no more
    item = job.items.get()
    assert item.status == Item.Status.FAILED and item.error_type == "invalid_output"
    assert "after one repair attempt" in item.error_message
    assert item.output  # the raw text is kept
    assert item.attempts == 2
    jsonl = io.StringIO()
    job_export(job=job, fmt="jsonl", out=jsonl)
    first = json.loads(jsonl.getvalue())
    assert first["status"] == "failed" and first["error"]["type"] == "invalid_output"
    assert first["text"] == item.output and "output" not in first
    rows = csv_rows(job)
    assert list(rows[0])[:3] == ["text", "score", "status"]
    assert rows[0]["score"] == "" and rows[0]["error"].startswith("invalid_output: ")


def test_a_repaired_answer_succeeds_and_both_attempts_are_counted(api):
    job = score_job(6)
    api.inject("invalid_output")  # the first request's answer breaks the schema; its repair does not
    report = process_job(job.pk)
    job.refresh_from_db()
    assert report.status == job.status == BatchJob.Status.SUCCEEDED
    assert api.stats()["by_status"] == {"200": 7}
    repaired = job.items.get(attempts=2)
    others = job.items.exclude(pk=repaired.pk)
    assert repaired.input_tokens > max(o.input_tokens for o in others)  # two requests, one longer
    rows = csv_rows(job)
    assert all(r["status"] == "succeeded" and r["score"].isdigit() for r in rows)


def test_random_invalid_output_every_item_valid_or_failed_with_the_reason(api):
    api.configure(invalid_output=0.3, seed=7)
    try:
        job = score_job(40)
        process_job(job.pk)
    finally:
        api.configure(invalid_output=0.0)
    validator = Draft202012Validator(SCORE)
    items = list(job.items.all())
    for item in items:
        if item.status == Item.Status.SUCCEEDED:
            assert not list(validator.iter_errors(json.loads(item.output)))
        else:
            assert (item.status, item.error_type, item.attempts) == (Item.Status.FAILED, "invalid_output", 2)
    assert api.stats()["by_status"]["200"] == sum(item.attempts for item in items)
    assert any(i.attempts == 2 and i.status == Item.Status.SUCCEEDED for i in items)  # repairs worked


@pytest.mark.parametrize("max_tokens", [300, 32_000], ids=["plain", "streamed"])  # 32k: sent as a stream
@pytest.mark.parametrize("tool", [False, True], ids=["output_config", "forced_tool"])
def test_structured_answers_plain_and_streamed_with_output_config_or_a_forced_tool(api, monkeypatch, tool, max_tokens):
    from llmjobs import structured

    if tool:  # a model without output_config.format gets one strict tool it is forced to call
        monkeypatch.setattr(structured, "WITHOUT_OUTPUT_FORMAT", ("claude-haiku-4-5",))
    job = job_create(
        name="tool",
        template="Extract the sentiment, product and reason from this ticket: {ticket}",
        model="claude-haiku-4-5",
        records=TICKETS,
        schema=SCHEMA,
        max_tokens=max_tokens,
    )
    assert process_job(job.pk).status == BatchJob.Status.SUCCEEDED
    assert api.stats()["structured"]["tool_use"] == (3 if tool else 0)
    assert api.stats()["by_status"] == {"200": 3}
    for item in job.items.all():
        assert set(json.loads(item.output)) == {"sentiment", "product", "reason"}
