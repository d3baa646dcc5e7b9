"""Services: job_create's parsing and its error matrix, templates, enqueue, cancel, retry, export."""

from __future__ import annotations

import csv
import io
import json

import pytest
from django.test import override_settings
from django_tasks_db.models import DBTaskResult

from llmjobs import prompts
from llmjobs.exports import CSV_TAIL_COLUMNS, export_filename
from llmjobs.jobs import (
    JobInputError,
    JobStateError,
    job_cancel,
    job_create,
    job_enqueue,
    job_export,
    job_export_lines,
    job_retry,
)
from llmjobs.models import BatchJob, Item
from llmjobs.parsing import parse_file, parse_texts

pytestmark = pytest.mark.django_db

S = Item.Status
J = BatchJob.Status


def create(**kwargs) -> BatchJob:
    defaults = {"name": "test", "template": "Summarize: {text}", "model": "claude-haiku-4-5"}
    return job_create(**{**defaults, **kwargs})


def from_file(file_name: str, data: bytes | str, **kwargs) -> BatchJob:
    if isinstance(data, str):
        data = data.encode()
    return create(file_name=file_name, file_data=data, **kwargs)


def inputs(job: BatchJob) -> list[dict]:
    return list(job.items.order_by("position").values_list("input", flat=True))


def assert_bad_input(match: str, **kwargs) -> None:
    with pytest.raises(JobInputError, match=match):
        create(**kwargs)
    assert BatchJob.objects.count() == 0
    assert Item.objects.count() == 0


# --- the error matrix: a clear message, and nothing created ------------------------------------


def test_empty_file():
    assert_bad_input(r"the file is empty", file_name="a.csv", file_data=b"")


def test_file_with_only_blank_lines():
    assert_bad_input(r"no data, only blank lines", file_name="a.txt", file_data=b"\n  \n\n")


def test_not_utf8_names_the_line():
    data = "ok line\nstill ok\ncaf\u00e9 au lait\n".encode("latin-1")
    assert_bad_input(r"line 3: the file is not UTF-8 text \(byte 0xe9", file_name="a.txt", file_data=data)


def test_utf16_is_recognised():
    data = "text\nhello\n".encode("utf-16")
    assert_bad_input(r"UTF-16 text, not UTF-8", file_name="a.csv", file_data=data)


def test_excel_workbook_is_recognised():
    assert_bad_input(r"ZIP archive \(an Excel workbook\?\)", file_name="a.csv", file_data=b"PK\x03\x04rest")


def test_missing_column_lists_the_available_ones():
    assert_bad_input(
        r"column 'review' is not in the file \(available: id, body, rating\)",
        file_name="a.csv",
        file_data=b"id,body,rating\n1,good,5\n",
        column="review",
    )


def test_missing_jsonl_field_names_the_line_and_the_keys():
    data = b'{"id": 1, "body": "x"}\n{"id": 2, "text": "y"}\n'
    assert_bad_input(
        r"line 2: field 'body' is missing \(available: id, text\)",
        file_name="a.jsonl",
        file_data=data,
        field="body",
    )


def test_placeholder_missing_from_the_data_names_the_row():
    data = b'{"id": 1, "title": "a"}\n\n{"id": 2}\n'
    assert_bad_input(
        r"line 3: placeholder \{title\} is not in the data \(available: id\)",
        file_name="a.jsonl",
        file_data=data,
        template="Title: {title}",
    )


def test_placeholder_missing_from_csv_columns():
    assert_bad_input(
        r"line 2: placeholder \{review\} is not in the data \(available: id, body\)",
        file_name="a.csv",
        file_data=b"id,body\n1,hello\n",
        template="Rate: {review}",
    )


def test_template_without_placeholder_needs_a_text_field():
    assert_bad_input(
        r"record 1: the template has no \{placeholders\} and the data has no 'text' field",
        records=[{"id": 1}],
        template="Summarize this.",
    )


@override_settings(LLMJOBS_MAX_ITEMS=3)
def test_too_many_items_in_a_file():
    assert_bad_input(
        r"too many items: more than 3 \(the limit is LLMJOBS_MAX_ITEMS=3\)",
        file_name="a.txt",
        file_data=b"a\nb\nc\nd\n",
    )


@override_settings(LLMJOBS_MAX_ITEMS=3)
def test_too_many_texts():
    assert_bad_input(r"too many items: more than 3", texts=["a", "b", "c", "d"])


@override_settings(LLMJOBS_MAX_ITEMS=3)
def test_exactly_the_maximum_is_fine():
    assert create(texts=["a", "b", "c"]).total == 3


@override_settings(LLMJOBS_MAX_ITEM_CHARS=10)
def test_item_over_the_size_limit_names_the_line():
    assert_bad_input(
        r"line 2: the item is 11 characters long, over the limit of 10 characters",
        file_name="a.txt",
        file_data=b"short\n" + b"x" * 11 + b"\n",
    )


@override_settings(LLMJOBS_MAX_ITEM_CHARS=10)
def test_csv_row_over_the_size_limit_names_the_line():
    assert_bad_input(
        r"line 3: the item is 12 characters long",
        file_name="a.csv",
        file_data=b"a,b\nx,y\n123456,abcdef\n",
        template="{a} {b}",
    )


def test_malformed_json_names_the_line():
    data = b'{"text": "a"}\n{"text": "b"}\n\n{"text": "c"}\n{"text": "d"}\n{"text": "e"}\n{"text": oops}\n'
    assert_bad_input(r"line 7: malformed JSON: Expecting value \(column 10\)", file_name="a.jsonl", file_data=data)


def test_jsonl_line_that_is_not_an_object():
    assert_bad_input(
        r"line 1: expected a JSON object or string, got an array",
        file_name="a.jsonl",
        file_data=b'[{"text": "a"}]\n',
    )


@override_settings(LLMJOBS_MAX_UPLOAD_BYTES=100)
def test_upload_too_large():
    assert_bad_input(
        r"the file is 102 bytes, over the upload limit of 100 bytes \(LLMJOBS_MAX_UPLOAD_BYTES\)",
        file_name="a.txt",
        file_data=b"x\n" * 51,
    )


@override_settings(LLMJOBS_MAX_UPLOAD_BYTES=100)
def test_upload_too_large_as_a_file_object():
    assert_bad_input(r"over the upload limit", file_name="a.txt", file_data=io.BytesIO(b"x\n" * 51))


def test_unknown_extension():
    assert_bad_input(r"can't tell the format of 'a.xlsx'", file_name="a.xlsx", file_data=b"x")


def test_csv_row_with_too_many_values():
    assert_bad_input(
        r"line 3: 3 values but the header has 2 columns",
        file_name="a.csv",
        file_data=b"a,b\n1,2\n1,2,3\n",
        template="{a}",
    )


def test_csv_header_without_rows():
    assert_bad_input(r"header row but no data rows", file_name="a.csv", file_data=b"a,b\n\n")


def test_csv_duplicate_column():
    assert_bad_input(r"names column 'a' twice", file_name="a.csv", file_data=b"a,a\n1,2\n")


def test_csv_unclosed_quote():
    # The unclosed quote swallows the rest of the file into one cell.
    assert_bad_input(r"malformed CSV", file_name="a.csv", file_data=b'a,b\n1,"2\n3,4', template="{a}")


def test_nul_character_is_refused():
    assert_bad_input(r"line 2: contains a NUL character", file_name="a.txt", file_data=b"a\nb\x00c\n")


def test_template_syntax_errors():
    assert_bad_input(r"'\{' at position 5 is never closed", texts=["a"], template="Say {text")
    assert_bad_input(r"a single '\}' at position 4", texts=["a"], template="Say} {text}")
    assert_bad_input(r"empty placeholder", texts=["a"], template="Say {} {text}")
    assert_bad_input(
        r"is not a placeholder .* for literal braces write '\{\{' and '\}\}'",
        texts=["a"],
        template='Reply as {"label": "x"} for {text}',
    )
    # A dotted name is a plain key (never attribute access), so it is simply not in the data.
    assert_bad_input(r"placeholder \{text.__class__\} is not in the data", texts=["a"], template="{text.__class__}")
    assert prompts.render("{a.b}", {"a.b": "plain key"}) == "plain key"
    assert_bad_input(r"is not a placeholder", texts=["a"], template="{text[0]}")
    assert_bad_input(r"is not a placeholder", texts=["a"], template="{text:>10}")
    assert_bad_input(r"is not a placeholder", texts=["a"], template="{text!r}")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"model": ""}, "choose a model"),
        ({"max_tokens": 0}, "max_tokens must be at least 1"),
        ({"max_tokens": "many"}, "max_tokens must be a whole number"),
        ({"concurrency": 0}, "concurrency must be at least 1"),
        ({"rate_limit_rpm": -5}, "rate_limit_rpm must be at least 1"),
        ({"stop_sequences": [" "]}, "stop sequence must be text"),
    ],
)
def test_bad_job_settings(kwargs, match):
    assert_bad_input(match, texts=["a"], **kwargs)


def test_exactly_one_source():
    assert_bad_input("exactly one source", texts=["a"], records=[{"text": "b"}])
    assert_bad_input("exactly one source")


def test_no_texts():
    assert_bad_input(r"no items", texts=["", "  "])


def test_custom_id_too_long():
    assert_bad_input(r"record 1: custom_id is 300 characters long", records=[{"text": "a", "custom_id": "x" * 300}])


# --- happy paths ---------------------------------------------------------------------------


def test_texts_one_item_per_text_in_order():
    job = create(texts=["first", "", "second\nstill second", "third"], name="t")
    assert job.status == J.DRAFT
    assert job.total == 3 == job.items.count()
    assert inputs(job) == [{"text": "first"}, {"text": "second\nstill second"}, {"text": "third"}]
    assert list(job.items.values_list("position", flat=True)) == [0, 1, 2]


def test_pasted_text_is_one_item_per_nonblank_line():
    job = create(texts="alpha\n\n  beta  \r\ngamma\n")
    assert inputs(job) == [{"text": "alpha"}, {"text": "beta"}, {"text": "gamma"}]


def test_job_settings_are_stored():
    job = create(
        texts=["a"],
        system="You are terse.",
        max_tokens=50,
        stop_sequences=["END"],
        concurrency=4,
        rate_limit_rpm=60,
        name="  my job ",
    )
    job.refresh_from_db()
    assert (job.name, job.system_prompt, job.max_tokens, job.stop_sequences) == (
        "my job",
        "You are terse.",
        50,
        ["END"],
    )
    assert (job.concurrency, job.rate_limit_rpm, job.owner) == (4, 60, None)


def test_name_defaults_to_the_file_name():
    assert from_file("reviews.txt", "a\n", name="").name == "reviews.txt"


def test_txt_file():
    job = from_file("a.txt", "\ufeffone\r\ntwo\n\n three \n")
    assert inputs(job) == [{"text": "one"}, {"text": "two"}, {"text": "three"}]


def test_csv_all_columns_are_fields():
    data = '\ufeffid,title,body\n1,Hi,"multi\nline"\n\n2,Yo,plain\n'
    job = from_file("a.csv", data, template="{title}: {body}")
    assert inputs(job) == [
        {"id": "1", "title": "Hi", "body": "multi\nline"},
        {"id": "2", "title": "Yo", "body": "plain"},
    ]
    assert list(job.items.values_list("custom_id", flat=True)) == ["1", "2"]


def test_csv_chosen_column_is_also_the_text():
    job = from_file("a.csv", "id,review,stars\n7,great,5\n8,bad\n", column="review")
    assert inputs(job) == [
        {"text": "great", "id": "7", "review": "great", "stars": "5"},
        {"text": "bad", "id": "8", "review": "bad", "stars": ""},  # short row padded
    ]


def test_csv_semicolon_and_tab_delimiters():
    assert inputs(from_file("a.csv", "text;n\nhello, world;1\n")) == [{"text": "hello, world", "n": "1"}]
    assert inputs(from_file("a.tsv", "text\tn\nhi\t2\n")) == [{"text": "hi", "n": "2"}]


def test_jsonl_all_keys_and_strings():
    data = '{"id": "a1", "text": "x", "meta": {"k": 1}}\n\n"just a string"\n'
    job = from_file("a.jsonl", data)
    assert inputs(job) == [{"id": "a1", "text": "x", "meta": {"k": 1}}, {"text": "just a string"}]
    assert list(job.items.values_list("custom_id", flat=True)) == ["a1", ""]


def test_jsonl_chosen_field_is_also_the_text():
    job = from_file("a.ndjson", '{"body": "hello", "n": 3}\n{"body": 42}\n', field="body")
    assert inputs(job) == [{"text": "hello", "body": "hello", "n": 3}, {"text": "42", "body": 42}]


def test_explicit_format_overrides_extension():
    job = from_file("upload.bin", '{"text": "x"}\n', fmt="jsonl")
    assert inputs(job) == [{"text": "x"}]


def test_records_and_custom_id():
    job = create(records=[{"text": "a", "custom_id": "doc-1"}, "plain", {"text": "c", "id": 9}])
    assert inputs(job)[1] == {"text": "plain"}
    assert list(job.items.values_list("custom_id", flat=True)) == ["doc-1", "", "9"]


def test_file_object_source(tmp_path):
    path = tmp_path / "in.txt"
    path.write_bytes(b"one\ntwo\n")
    with path.open("rb") as fh:
        job = create(file_name="in.txt", file_data=fh)
    assert job.total == 2


def test_many_items_are_written_in_batches(django_assert_max_num_queries):
    texts = [f"t{i}" for i in range(4500)]
    with django_assert_max_num_queries(10):
        job = create(texts=texts)
    assert job.items.count() == 4500
    assert job.items.get(position=4499).input == {"text": "t4499"}


def test_created_items_have_the_model_defaults():
    job = create(records=[{"text": "a", "custom_id": "x1"}])
    item = job.items.get()
    expected = Item(job=job, position=0, input={"text": "a", "custom_id": "x1"}, custom_id="x1")
    for field in Item._meta.concrete_fields:
        if not field.primary_key:
            assert getattr(item, field.attname) == getattr(expected, field.attname), field.name
    assert item.status == S.PENDING and item.attempts == 0 and item.lease_expires_at is None


def test_parse_helpers():
    assert parse_texts("a\n\nb") == [{"text": "a"}, {"text": "b"}]
    assert parse_file(name="x.csv", data=b"a,b\n1,2\n", column="b") == [{"text": "2", "a": "1", "b": "2"}]
    with pytest.raises(JobInputError, match="not both"):
        parse_file(name="x.csv", data=b"a,b\n1,2\n", column="a", field="b")


# --- templates ------------------------------------------------------------------------------


def test_render_fills_placeholders_and_escapes():
    assert prompts.render("Hi {name}, {{literal}} {{", {"name": "Ann"}) == "Hi Ann, {literal} {"
    assert prompts.render("{ text }|{review text}", {"text": "a", "review text": "b"}) == "a|b"
    assert prompts.render("{n} {obj} {none}", {"n": 3, "obj": {"a": [1]}, "none": None}) == '3 {"a": [1]} '
    assert prompts.render('Answer as {{"label": "..."}}: {text}', {"text": "x"}) == 'Answer as {"label": "..."}: x'


def test_render_without_placeholder_appends_the_text():
    assert prompts.render("Summarize this.", {"text": "Body"}) == "Summarize this.\n\nBody"
    assert prompts.render("", {"text": "Body"}) == "Body"


def test_template_fields_and_validate():
    assert prompts.template_fields("{a} and {b} and {a}") == {"a", "b"}
    prompts.validate_template("{a}", {"a", "b"})
    prompts.validate_template("{a}", [{"a": 1}, {"a": 2}])
    with pytest.raises(JobInputError, match=r"^placeholder \{foo\} is not in the data \(available: text, id\)$"):
        prompts.validate_template("{foo}", ["text", "id"])
    with pytest.raises(JobInputError, match=r"^item 2: placeholder \{foo\} is not in the data \(available: text\)"):
        prompts.validate_template("{foo}", [{"foo": 1}, {"text": "x"}])


def test_build_params_has_no_temperature():
    job = create(texts=["hello"], system="Be brief.", stop_sequences=["###"], max_tokens=64)
    item = job.items.get()
    params = prompts.build_params(job, item.input)
    assert params == {
        "model": "claude-haiku-4-5",
        "max_tokens": 64,
        "messages": [{"role": "user", "content": "Summarize: hello"}],
        "system": "Be brief.",
        "stop_sequences": ["###"],
    }
    bare = create(texts=["x"], template="{text}")
    params = prompts.build_params(bare, {"text": "x"})
    assert set(params) == {"model", "max_tokens", "messages"}
    assert not {"temperature", "top_p", "top_k"} & set(params)


# --- enqueue / cancel / retry ------------------------------------------------------------------


def test_job_enqueue_runs_after_commit_and_creates_a_task_row(django_capture_on_commit_callbacks):
    job = create(texts=["a", "b"])
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        job_enqueue(job=job)
    assert len(callbacks) == 1
    assert DBTaskResult.objects.count() == 0  # nothing before the commit
    job.refresh_from_db()
    assert job.status == J.QUEUED and job.task_id == ""

    callbacks[0]()
    job.refresh_from_db()
    task = DBTaskResult.objects.get()
    assert job.task_id == str(task.id)
    assert task.task_path == "llmjobs.tasks.process_job_task"
    assert task.args_kwargs == {"args": [job.pk], "kwargs": {}}


def test_job_enqueue_is_idempotent_when_queued_and_refused_when_running(django_capture_on_commit_callbacks):
    job = create(texts=["a"])
    with django_capture_on_commit_callbacks(execute=True):
        job_enqueue(job=job)
    assert job.task_id and job.status == J.QUEUED
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        job_enqueue(job=job)
    assert callbacks == [] and DBTaskResult.objects.count() == 1

    job.mark_running()
    with pytest.raises(JobStateError, match="already running"):
        job_enqueue(job=job)
    with django_capture_on_commit_callbacks(execute=True):
        job_enqueue(job=job, force=True)  # recovery of a dead runner
    assert DBTaskResult.objects.count() == 2


def test_job_enqueue_refuses_a_finished_job_with_nothing_pending():
    job = create(texts=["a"])
    job.items.update(status=S.SUCCEEDED)
    job.mark_finished()
    with pytest.raises(JobStateError, match="no pending items"):
        job_enqueue(job=job)


def test_job_enqueue_backend_failure_puts_the_job_back_to_draft(django_capture_on_commit_callbacks, monkeypatch):
    from llmjobs import tasks

    def boom(*args, **kwargs):
        raise ConnectionError("broker down")

    monkeypatch.setattr(type(tasks.process_job_task), "enqueue", boom)
    job = create(texts=["a"])
    with pytest.raises(JobStateError, match="could not enqueue the job: ConnectionError: broker down"):
        with django_capture_on_commit_callbacks(execute=True):
            job_enqueue(job=job)
    job.refresh_from_db()
    assert job.status == J.DRAFT and "broker down" in job.last_error


def test_job_cancel_cancels_pending_and_stale_items_only():
    from datetime import timedelta

    from django.utils import timezone

    job = create(texts=["a", "b", "c", "d", "e"])
    now = timezone.now()
    Item.objects.filter(job=job, position=0).update(status=S.SUCCEEDED)
    Item.objects.filter(job=job, position=1).update(status=S.RUNNING, lease_expires_at=now + timedelta(seconds=30))
    Item.objects.filter(job=job, position=2).update(status=S.RUNNING, lease_expires_at=now - timedelta(seconds=30))
    job.mark_running()
    job_cancel(job=job)
    job.refresh_from_db()
    statuses = list(job.items.order_by("position").values_list("status", flat=True))
    assert statuses == [S.SUCCEEDED, S.RUNNING, S.CANCELLED, S.CANCELLED, S.CANCELLED]
    assert job.status == J.CANCELLED
    assert (job.succeeded_count, job.cancelled_count, job.total) == (1, 3, 5)
    assert job.finished_at is not None
    job_cancel(job=job)  # again: nothing changes


def test_job_cancel_refuses_a_finished_job():
    job = create(texts=["a"])
    job.items.update(status=S.SUCCEEDED)
    job.mark_finished()
    with pytest.raises(JobStateError, match="already finished"):
        job_cancel(job=job)


def test_job_retry_resets_failed_and_cancelled_items_and_keeps_attempts():
    job = create(texts=["a", "b", "c", "d"])
    Item.objects.filter(job=job, position=0).update(status=S.SUCCEEDED, output="ok", attempts=1)
    Item.objects.filter(job=job, position__in=[1, 2]).update(
        status=S.FAILED, error_type="timeout", error_message="took too long", attempts=3, latency_ms=60000
    )
    Item.objects.filter(job=job, position=3).update(status=S.CANCELLED)
    job.mark_finished()
    assert job.status == J.CANCELLED

    # One rule on every surface: failed and cancelled items are retried (issue 10;
    # this test used to retry failed items first and cancelled ones with an option).
    assert job_retry(job=job) == 3
    job.refresh_from_db()
    assert job.status == J.DRAFT and job.finished_at is None
    assert (job.failed_count, job.cancelled_count, job.succeeded_count) == (0, 0, 1)
    retried = job.items.filter(position__in=[1, 2])
    assert set(retried.values_list("status", "error_type", "error_message", "attempts", "latency_ms")) == {
        (S.PENDING, "", "", 3, None)
    }
    assert job.items.get(position=0).output == "ok"
    assert job.items.pending().count() == 3
    assert job_retry(job=job) == 0


def test_job_retry_failed_refused_while_running():
    job = create(texts=["a"])
    job.mark_running()
    with pytest.raises(JobStateError, match="is running"):
        job_retry(job=job)


def test_job_retry_then_enqueue(django_capture_on_commit_callbacks):
    job = create(texts=["a"])
    job.items.update(status=S.FAILED, error_type="api_error")
    job.mark_finished()
    assert job.status == J.FAILED
    job_retry(job=job)
    with django_capture_on_commit_callbacks(execute=True):
        job_enqueue(job=job)
    assert job.status == J.QUEUED and job.task_id


def test_job_retry_with_enqueue_queues_the_job_in_one_call(django_capture_on_commit_callbacks, monkeypatch):
    job = create(texts=["a", "b"])
    job.items.update(status=S.CANCELLED)
    job.mark_finished()
    with django_capture_on_commit_callbacks(execute=True):
        assert job_retry(job=job, enqueue=True) == 2
    assert job.status == J.QUEUED and job.task_id
    assert job_retry(job=job, enqueue=True) == 0  # nothing to retry: nothing queued again

    from llmjobs import tasks

    def boom(*args, **kwargs):
        raise ConnectionError("broker down")

    monkeypatch.setattr(type(tasks.process_job_task), "enqueue", boom)
    other = create(texts=["a"])
    other.items.update(status=S.FAILED)
    other.mark_finished()
    # (in autocommit the message starts "1 item(s) reset, but: "; in a test transaction the
    # on-commit enqueue fails when the transaction ends, after job_retry has returned)
    with pytest.raises(JobStateError, match="could not enqueue the job: ConnectionError: broker down"):
        with django_capture_on_commit_callbacks(execute=True):
            job_retry(job=other, enqueue=True)
    assert other.items.pending().count() == 1  # reset, ready for the next run


@pytest.mark.django_db(transaction=True)
def test_job_retry_with_enqueue_says_what_was_reset_when_queueing_fails(monkeypatch):
    from llmjobs import tasks

    def boom(*args, **kwargs):
        raise ConnectionError("broker down")

    monkeypatch.setattr(type(tasks.process_job_task), "enqueue", boom)
    job = create(texts=["a", "b"])
    job.items.update(status=S.FAILED)
    job.mark_finished()
    with pytest.raises(JobStateError, match=r"^2 item\(s\) reset, but: could not enqueue the job: ConnectionError"):
        job_retry(job=job, enqueue=True)
    job.refresh_from_db()
    assert job.status == J.DRAFT and job.items.pending().count() == 2


# --- export -------------------------------------------------------------------------------------


@pytest.fixture
def finished_job() -> BatchJob:
    job = create(records=[{"text": "zero", "custom_id": "c0"}, {"text": "one"}, {"text": 'two, "quoted"'}])
    Item.objects.filter(job=job, position=0).update(
        status=S.SUCCEEDED,
        output="out 0",
        stop_reason="end_turn",
        input_tokens=10,
        output_tokens=3,
        latency_ms=120,
        ttft_ms=40,
        attempts=1,
    )
    Item.objects.filter(job=job, position=1).update(
        status=S.FAILED, error_type="rate_limit_error", error_message="429 after 5 tries", attempts=5
    )
    Item.objects.filter(job=job, position=2).update(status=S.SUCCEEDED, output='line1\nline2, "q"', attempts=1)
    return job


def test_job_export_csv_in_input_order_with_errors(finished_job):
    out = io.StringIO(newline="")
    assert job_export(job=finished_job, fmt="csv", out=out) == 3
    rows = list(csv.DictReader(io.StringIO(out.getvalue(), newline="")))
    # The input's columns split as they came in, the output, then status, error, stop_reason, tokens, cost.
    assert list(rows[0]) == ["text", "custom_id", "output", *CSV_TAIL_COLUMNS]
    assert [r["text"] for r in rows] == ["zero", "one", 'two, "quoted"']  # input order
    assert rows[0]["custom_id"] == "c0"
    assert (rows[0]["output"], rows[0]["input_tokens"], rows[0]["stop_reason"]) == ("out 0", "10", "end_turn")
    assert float(rows[0]["cost_usd"]) > 0
    assert (rows[1]["status"], rows[1]["error"]) == ("failed", "rate_limit_error: 429 after 5 tries")
    assert rows[1]["output"] == "" and rows[1]["input_tokens"] == "" and rows[1]["cost_usd"] == ""
    assert rows[2]["output"] == 'line1\nline2, "q"'


def test_job_export_jsonl_in_input_order_with_errors(finished_job):
    out = io.StringIO()
    assert job_export(job=finished_job, fmt="jsonl", out=out) == 3
    rows = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [r["index"] for r in rows] == [0, 1, 2]
    assert rows[0]["input"] == {"text": "zero", "custom_id": "c0"}
    assert rows[0]["text"] == "out 0" and rows[0]["usage"] == {"input_tokens": 10, "output_tokens": 3}
    assert rows[1]["status"] == "failed" and rows[1]["error"]["type"] == "rate_limit_error"
    assert rows[1]["usage"]["output_tokens"] is None and rows[1]["attempts"] == 5
    assert rows[2]["text"] == 'line1\nline2, "q"'


def test_job_export_neutralises_formulas_and_is_named_after_the_job(finished_job):
    Item.objects.filter(job=finished_job, position=0).update(output="=1+2")
    out = io.StringIO(newline="")
    job_export(job=finished_job, fmt="csv", out=out)
    rows = list(csv.DictReader(io.StringIO(out.getvalue(), newline="")))
    assert rows[0]["output"] == "'=1+2"
    finished_job.name = "Tickets: March / 2026"
    assert export_filename(finished_job, "csv") == "Tickets-March-2026.csv"
    finished_job.name = "///"
    assert export_filename(finished_job, "jsonl") == f"job-{finished_job.pk}.jsonl"


def test_job_export_lines_streams_and_rejects_unknown_formats(finished_job):
    lines = job_export_lines(finished_job, "csv")
    assert next(lines).startswith("text,custom_id,output,status,error,")
    with pytest.raises(JobInputError, match="unknown export format"):
        job_export(job=finished_job, fmt="xml", out=io.StringIO())  # type: ignore[arg-type]
