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


@pytest.fixture
def api(sim, settings):
    settings.ANTHROPIC_API_KEY = ""
    settings.LLMJOBS_SIMULATOR_URL = sim.base_url
    return sim


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


def test_an_invalid_answer_is_retried_once_with_the_error_then_fails_as_invalid_output(api):
    schema = {"type": "object", "properties": {"score": {"type": "integer"}}, "required": ["score"]}
    job = job_create(
        name="scores",
        template="Summarize: {text}",  # the simulator answers free text: never valid here
        model="claude-haiku-4-5",
        texts=["one fine document", "another document"],
        schema=schema,
    )
    report = process_job(job.pk)
    job.refresh_from_db()
    assert report.status == job.status == BatchJob.Status.FAILED
    stats = api.stats()
    assert stats["by_status"] == {"200": 4}  # each item: the answer, then one repair attempt; no more
    for item in job.items.all():
        assert item.status == Item.Status.FAILED and item.error_type == "invalid_output"
        assert "not JSON" in item.error_message
        assert item.output  # the raw text is kept
        assert item.attempts == 2
        assert item.input_tokens and item.output_tokens  # both attempts were paid: both counted
    jsonl = io.StringIO()
    job_export(job=job, fmt="jsonl", out=jsonl)
    first = json.loads(jsonl.getvalue().splitlines()[0])
    assert first["status"] == "failed" and first["error"]["type"] == "invalid_output"
    assert first["text"] and "output" not in first
    rows = csv_rows(job)
    assert list(rows[0])[:3] == ["text", "score", "status"]
    assert rows[0]["score"] == "" and rows[0]["error"].startswith("invalid_output: ")
