"""Web pages, actions and streams through Django's test clients.

Sync pages use ``client``; the async streaming views (progress SSE, playground)
use ``AsyncClient`` and read ``streaming_content``. Streams that hit the
simulator, and the preview (whose runner writes from its own thread), need
``transaction=True``.
"""

from __future__ import annotations

import asyncio
import csv
import gc
import io
import json
import re
from decimal import Decimal

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth import get_user_model
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import AsyncClient, Client
from django.urls import reverse
from django.utils import timezone

from llmjobs.jobs import job_create
from llmjobs.models import BatchJob, Item
from llmjobs.web import playground, progress

from .fill_helpers import HeldFill

XSS = '<script>alert("pwned")</script>'


# --- fixtures ---------------------------------------------------------------------------


pytestmark = pytest.mark.usefixtures("close_async_connections")


@pytest.fixture(autouse=True)
def fast_passwords(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def users(db):
    from django.contrib.auth.models import Permission

    User = get_user_model()
    users = {
        "alice": User.objects.create_user("alice", password="pw-alice-123"),
        "bob": User.objects.create_user("bob", password="pw-bob-123"),
        "staff": User.objects.create_user("staff", password="pw-staff-123", is_staff=True),
    }
    # Seeing others' jobs is a permission, not is_staff.
    users["staff"].user_permissions.add(Permission.objects.get(codename="view_batchjob"))
    return users


@pytest.fixture
def alice(client, users):
    client.force_login(users["alice"])
    return client


def make_job(owner, n=3, **kw) -> BatchJob:
    texts = kw.pop("texts", [f"document number {i}" for i in range(n)])
    return job_create(
        name=kw.pop("name", "job"),
        template="Summarize: {text}",
        model="claude-haiku-4-5",
        owner=owner,
        texts=texts,
        **kw,
    )


def finish(job: BatchJob, output: str = "fine", failed: int = 0) -> BatchJob:
    """Mark the job's items done (without the runner) and finish the job."""
    now = timezone.now()
    items = list(job.items.order_by("position"))
    for i, item in enumerate(items):
        bad = i < failed
        item.status = Item.Status.FAILED if bad else Item.Status.SUCCEEDED
        item.output = "" if bad else output
        item.error_type = "rate_limit_error" if bad else ""
        item.error_message = "too many requests" if bad else ""
        item.attempts = 3 if bad else 1
        item.input_tokens, item.output_tokens = 10, 5
        item.finished_at = now
    Item.objects.bulk_update(
        items,
        ["status", "output", "error_type", "error_message", "attempts", "input_tokens", "output_tokens", "finished_at"],
    )
    job.started_at = now - timezone.timedelta(seconds=3)
    job.save(update_fields=["started_at"])
    job.mark_finished()
    return job


def job_urls(job_id: int) -> dict[str, tuple[str, str]]:
    """Every per-job URL with its method."""
    r = lambda name, *a: reverse(f"llmjobs:{name}", args=[job_id, *a])  # noqa: E731
    return {
        "detail": ("get", r("job_detail")),
        "throughput": ("get", r("job_throughput")),
        "csv": ("get", r("job_export", "csv")),
        "jsonl": ("get", r("job_export", "jsonl")),
        "run": ("post", r("job_run")),
        "preview": ("post", r("job_preview")),
        "cancel": ("post", r("job_cancel")),
        "retry": ("post", r("job_retry")),
    }


async def read_events(response, limit: int = 1000) -> list[tuple[str, dict]]:
    """Parse an SSE response's stream into (event, data) pairs (until it ends)."""
    buf = b""
    async for chunk in response.streaming_content:
        buf += chunk
    events = []
    for block in buf.decode().split("\n\n"):
        name = next((line[7:] for line in block.split("\n") if line.startswith("event: ")), None)
        data = next((line[6:] for line in block.split("\n") if line.startswith("data: ")), None)
        if name:
            events.append((name, json.loads(data)))
    return events[:limit]


# --- login, ownership, CSRF -------------------------------------------------------------


@pytest.mark.django_db
def test_every_page_needs_a_login(client, users):
    job = make_job(users["alice"])
    urls = [("get", reverse(n)) for n in ("llmjobs:job_list", "llmjobs:job_new", "llmjobs:playground")]
    urls += list(job_urls(job.pk).values())
    for method, url in urls:
        response = getattr(client, method)(url)
        assert response.status_code == 302, url
        assert response["Location"].startswith("/accounts/login/?next="), url
    assert client.get("/accounts/login/").status_code == 200


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_streams_need_a_login_too():
    client = AsyncClient()
    job = await sync_to_async(make_job)(None)
    for url in (reverse("llmjobs:job_events", args=[job.pk]), reverse("llmjobs:playground_stream")):
        response = await (client.get(url) if "events" in url else client.post(url, {"prompt": "hi"}))
        assert response.status_code == 302
        assert response["Location"].startswith("/accounts/login/")


def test_login_and_logout_pages(client, users):
    response = client.post("/accounts/login/", {"username": "alice", "password": "pw-alice-123"})
    assert response.status_code == 302 and response["Location"] == reverse("llmjobs:job_list")
    assert client.get(reverse("llmjobs:job_list")).status_code == 200
    assert client.post("/accounts/logout/").status_code == 302
    assert client.get(reverse("llmjobs:job_list")).status_code == 302


def test_users_see_only_their_jobs_and_staff_see_all(client, users):
    mine, theirs = make_job(users["alice"], name="alice-job"), make_job(users["bob"], name="bob-job")
    client.force_login(users["alice"])
    page = client.get(reverse("llmjobs:job_list")).content.decode()
    assert "alice-job" in page and "bob-job" not in page
    client.force_login(users["staff"])
    page = client.get(reverse("llmjobs:job_list")).content.decode()
    assert "alice-job" in page and "bob-job" in page
    assert client.get(reverse("llmjobs:job_detail", args=[mine.pk])).status_code == 200
    assert client.get(reverse("llmjobs:job_detail", args=[theirs.pk])).status_code == 200


def test_another_users_job_is_404_on_every_page_and_action(alice, users):
    theirs = finish(make_job(users["bob"]), failed=1)
    for name, (method, url) in job_urls(theirs.pk).items():
        assert getattr(alice, method)(url).status_code == 404, name
    theirs.refresh_from_db()
    assert theirs.status == BatchJob.Status.PARTIALLY_FAILED  # nothing happened to it
    assert alice.get(reverse("llmjobs:job_detail", args=[999_999])).status_code == 404


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_another_users_job_is_404_on_the_event_stream():
    User = get_user_model()
    alice = await User.objects.acreate(username="alice")
    bob = await User.objects.acreate(username="bob")
    theirs = await sync_to_async(make_job)(bob)
    client = AsyncClient()
    await client.aforce_login(alice)
    response = await client.get(reverse("llmjobs:job_events", args=[theirs.pk]))
    assert response.status_code == 404
    assert (await client.get(reverse("llmjobs:job_events", args=[987654]))).status_code == 404


def test_every_post_needs_a_csrf_token(users):
    client = Client(enforce_csrf_checks=True)
    client.force_login(users["alice"])
    job = make_job(users["alice"])
    posts = [url for method, url in job_urls(job.pk).values() if method == "post"]
    posts += [reverse("llmjobs:job_new"), reverse("llmjobs:playground_stream"), "/accounts/logout/"]
    for url in posts:
        assert client.post(url, {"texts": "a", "prompt": "hi"}).status_code == 403, url
    job.refresh_from_db()
    assert job.status == BatchJob.Status.DRAFT
    assert BatchJob.objects.count() == 1
    # The forms on the pages carry the token.
    for url in (
        reverse("llmjobs:job_new"),
        reverse("llmjobs:playground"),
        reverse("llmjobs:job_detail", args=[job.pk]),
    ):
        assert b"csrfmiddlewaretoken" in client.get(url).content


# --- the new-job form -------------------------------------------------------------------


def form_data(**kw):
    data = {
        "name": "",
        "source": "paste",
        "texts": "first line\n\nsecond line\n",
        "prompt_template": "Summarize: {text}",
        "system_prompt": "",
        "model": "claude-haiku-4-5",
        "max_tokens": "256",
        "concurrency": "",
        "action": "run",
    }
    data.update(kw)
    return data


def test_new_job_form_renders_with_models_and_automatic_concurrency(alice, settings):
    settings.LLMJOBS_MODELS = ["claude-haiku-4-5", "claude-sonnet-4-6"]
    page = alice.get(reverse("llmjobs:job_new")).content.decode()
    assert "claude-sonnet-4-6" in page and "automatic" in page
    assert 'name="action" value="preview"' in page and 'name="action" value="run"' in page


def test_submitting_pasted_lines_creates_and_queues_the_job(alice, users, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        response = alice.post(reverse("llmjobs:job_new"), form_data())
    job = BatchJob.objects.get()
    assert response.status_code == 302 and response["Location"] == reverse("llmjobs:job_detail", args=[job.pk])
    assert job.owner == users["alice"] and job.name == "first line" and job.total == 2
    assert job.max_tokens == 256 and job.concurrency is None
    assert job.status == BatchJob.Status.QUEUED and job.task_id
    assert list(job.items.values_list("input", flat=True)) == [{"text": "first line"}, {"text": "second line"}]
    page = alice.get(response["Location"]).content.decode()
    assert "is queued" in page and "Cancel" in page


def test_save_as_draft_does_not_queue(alice):
    alice.post(reverse("llmjobs:job_new"), form_data(action="draft", concurrency="4", name="d"))
    job = BatchJob.objects.get()
    assert job.status == BatchJob.Status.DRAFT and job.concurrency == 4 and job.name == "d"


# --- Run from the form: queued once the first items are in (issue 17) ----------------------


@pytest.fixture
def held_fill(monkeypatch):
    held = HeldFill(monkeypatch)
    yield held
    held.release_and_join()


@pytest.fixture
def alice_tx(transactional_db, client):
    """Alice logged in, for tests whose filler thread needs committed rows (``transaction=True``)."""
    client.force_login(get_user_model().objects.create_user("alice", password="pw-alice-123"))
    return client


LINES = "".join(f"line {i}\n" for i in range(1000))


@pytest.mark.django_db(transaction=True)
def test_run_queues_an_upload_while_its_rows_are_still_inserted(alice_tx, held_fill):
    upload = SimpleUploadedFile("docs.txt", LINES.encode(), content_type="text/plain")
    data = form_data(source="file", texts="", file=upload, dedup="on", budget_usd="5", name="big")
    response = alice_tx.post(reverse("llmjobs:job_new"), data)
    held_fill.wait_until_held()  # the response came first: the filler is still at work
    job = BatchJob.objects.get()
    assert response.status_code == 302 and response["Location"] == reverse("llmjobs:job_detail", args=[job.pk])
    assert job.status == BatchJob.Status.QUEUED and job.task_id and job.filling_until is not None
    assert (job.total, job.items.count()) == (1000, 200)  # the whole input's count from the start
    assert job.budget_usd == Decimal("5") and job.dedup and job.mode == "online"  # set before it was queued
    page = alice_tx.get(response["Location"]).content.decode()
    assert f"Job #{job.pk} is queued: 1,000 item(s)." in page
    assert "Items are still being added: 200 of 1000 so far." in page
    assert ">0 / 1000<" in page and ">0%<" in page  # items done / total: nothing looks finished
    held_fill.release_and_join()
    job.refresh_from_db()
    assert job.filling_until is None and job.status == BatchJob.Status.QUEUED
    assert (job.total, job.items.count()) == (1000, 1000)
    assert list(job.items.order_by("position").values_list("position", flat=True)) == list(range(1000))
    assert "still being added" not in alice_tx.get(response["Location"]).content.decode()


@pytest.mark.django_db(transaction=True)
def test_cancel_while_the_rows_are_inserted_stops_the_insertion(alice_tx, held_fill):
    alice_tx.post(reverse("llmjobs:job_new"), form_data(texts=LINES))
    held_fill.wait_until_held()
    job = BatchJob.objects.get()
    response = alice_tx.post(reverse("llmjobs:job_cancel", args=[job.pk]), follow=True)
    assert "is cancelled" in response.content.decode()
    held_fill.release_and_join()  # its next batch sees the cancel: rolled back, and no more
    job.refresh_from_db()
    assert job.status == BatchJob.Status.CANCELLED and job.filling_until is None
    assert (job.total, job.cancelled_count, job.items.count()) == (200, 200, 200)
    assert not job.items.unfinished().exists()


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("data", [{"mode": "batch"}, {"action": "draft"}])
def test_batch_mode_and_drafts_insert_every_row_first(alice_tx, held_fill, data):
    alice_tx.post(reverse("llmjobs:job_new"), form_data(texts=LINES, **data))
    job = BatchJob.objects.get()
    assert not held_fill.reached.is_set() and job.filling_until is None  # one transaction, no filler
    assert (job.total, job.items.count()) == (1000, 1000)
    assert job.status == (BatchJob.Status.QUEUED if data.get("mode") else BatchJob.Status.DRAFT)


@pytest.mark.django_db(transaction=True)
def test_a_quota_refuses_the_whole_upload_before_anything_is_written(alice_tx, held_fill, settings):
    settings.LLMJOBS_QUOTA_ITEMS_PER_DAY = 999
    response = alice_tx.post(reverse("llmjobs:job_new"), form_data(texts=LINES))
    assert response.status_code == 400 and "over your limit of 999 items a day" in response.content.decode()
    assert not BatchJob.objects.exists() and not Item.objects.exists()


def test_uploading_a_csv_with_a_column(alice):
    data = b"id,review,stars\nr1,great phone,5\nr2,broke in a week,1\n"
    upload = SimpleUploadedFile("reviews.csv", data, content_type="text/csv")
    response = alice.post(
        reverse("llmjobs:job_new"),
        form_data(
            source="file",
            texts="",
            file=upload,
            column="review",
            action="draft",
            prompt_template="Stars {stars}: {text}",
        ),
    )
    assert response.status_code == 302
    job = BatchJob.objects.get()
    assert job.name == "reviews.csv" and job.total == 2
    first = job.items.order_by("position").first()
    assert first.input["text"] == "great phone" and first.custom_id == "r1"


def test_uploading_jsonl_with_a_field(alice):
    data = b'{"q": "why is the sky blue?"}\n{"q": "what is 2+2?"}\n'
    upload = SimpleUploadedFile("qs.jsonl", data)
    alice.post(reverse("llmjobs:job_new"), form_data(source="file", texts="", file=upload, column="q", action="draft"))
    job = BatchJob.objects.get()
    assert [i["text"] for i in job.items.values_list("input", flat=True)] == ["why is the sky blue?", "what is 2+2?"]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (form_data(prompt_template="Summarize {text"), "brace"),
        (form_data(prompt_template="About {topic}: {text}"), "topic"),
        (form_data(texts="   \n  "), "Paste at least one line"),
        (form_data(source="file", texts=""), "Choose a file"),
        (form_data(max_tokens="0"), "greater than or equal to 1"),
        (form_data(model="gpt-4"), "Select a valid choice"),
        (form_data(concurrency="0"), "greater than or equal to 1"),
    ],
)
def test_bad_input_comes_back_as_form_errors_and_creates_nothing(alice, data, message):
    response = alice.post(reverse("llmjobs:job_new"), data)
    assert response.status_code == 400
    assert message.lower() in response.content.decode().lower()
    assert BatchJob.objects.count() == 0 and Item.objects.count() == 0


def test_item_count_and_upload_size_limits_are_form_errors(alice, settings):
    settings.LLMJOBS_MAX_ITEMS = 3
    response = alice.post(reverse("llmjobs:job_new"), form_data(texts="a\nb\nc\nd\n"))
    assert response.status_code == 400 and "too many items" in response.content.decode()
    settings.LLMJOBS_MAX_UPLOAD_BYTES = 10
    upload = SimpleUploadedFile("big.txt", b"x" * 11)
    response = alice.post(reverse("llmjobs:job_new"), form_data(source="file", texts="", file=upload))
    assert response.status_code == 400 and "over the" in response.content.decode()
    upload = SimpleUploadedFile("data.xlsx", b"PK\x03\x04")
    settings.LLMJOBS_MAX_UPLOAD_BYTES = 1000
    response = alice.post(reverse("llmjobs:job_new"), form_data(source="file", texts="", file=upload))
    assert response.status_code == 400 and "extension" in response.content.decode()
    assert BatchJob.objects.count() == 0


def test_a_bad_row_in_a_file_is_a_form_error_and_nothing_is_half_created(alice):
    upload = SimpleUploadedFile("x.jsonl", b'{"text": "ok"}\n{not json\n')
    response = alice.post(reverse("llmjobs:job_new"), form_data(source="file", texts="", file=upload))
    assert response.status_code == 400 and "line 2" in response.content.decode()
    assert BatchJob.objects.count() == 0 and Item.objects.count() == 0


@pytest.mark.django_db(transaction=True)
def test_preview_5_creates_the_job_and_shows_outputs(client, api):
    user = get_user_model().objects.create_user("p", password="x")
    client.force_login(user)
    texts = "\n".join(f"Paragraph {i} about owls" for i in range(8))
    response = client.post(reverse("llmjobs:job_new"), form_data(texts=texts, action="preview"), follow=True)
    job = BatchJob.objects.get()
    page = response.content.decode()
    assert page.count("Preview of item") == 5
    assert job.status == BatchJob.Status.DRAFT
    assert job.items.filter(status=Item.Status.SUCCEEDED).count() == 5
    assert "Paragraph 0 about owls" in page  # the simulator echoes the prompt's text


# --- the job page -----------------------------------------------------------------------


def test_output_is_always_escaped(alice, users):
    job = finish(make_job(users["alice"], texts=[XSS, "plain"], name=XSS), output=XSS)
    Item.objects.filter(job=job, position=1).update(
        status=Item.Status.FAILED, output="", error_type=XSS, error_message=XSS
    )
    for url in (reverse("llmjobs:job_detail", args=[job.pk]), reverse("llmjobs:job_list")):
        page = alice.get(url).content.decode()
        assert XSS not in page
        assert "&lt;script&gt;alert(&quot;pwned&quot;)&lt;/script&gt;" in page


def test_job_page_shows_counts_results_and_buttons(alice, users):
    job = finish(make_job(users["alice"], n=60), failed=2)
    page = alice.get(reverse("llmjobs:job_detail", args=[job.pk])).content.decode()
    assert "Partially failed" in page and "Retry failed" in page and "Cancel" not in page
    assert "Download CSV" in page and "Download JSONL" in page
    assert reverse("llmjobs:job_events", args=[job.pk]) in page  # the EventSource URL
    assert "Page 1 of 2" in page  # paginated
    failed = alice.get(reverse("llmjobs:job_detail", args=[job.pk]) + "?status=failed").content.decode()
    assert failed.count("rate_limit_error") == 2
    assert alice.get(reverse("llmjobs:job_detail", args=[job.pk]) + "?page=2").status_code == 200


def test_exports_download_in_input_order(alice, users):
    job = finish(make_job(users["alice"], n=3), output="answer, with a comma")
    response = alice.get(reverse("llmjobs:job_export", args=[job.pk, "csv"]))
    assert response["Content-Disposition"] == 'attachment; filename="job.csv"'  # named after the job
    rows = list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert [r["text"] for r in rows] == [f"document number {i}" for i in range(3)]
    assert rows[0]["output"] == "answer, with a comma"
    response = alice.get(reverse("llmjobs:job_export", args=[job.pk, "jsonl"]))
    lines = [json.loads(line) for line in b"".join(response.streaming_content).decode().splitlines()]
    assert [line["input"]["text"] for line in lines] == [f"document number {i}" for i in range(3)]
    assert alice.get(f"/jobs/{job.pk}/export.xml").status_code == 404


def test_cancel_and_retry_buttons(alice, users, django_capture_on_commit_callbacks):
    job = make_job(users["alice"], n=4)
    with django_capture_on_commit_callbacks(execute=True):
        alice.post(reverse("llmjobs:job_run", args=[job.pk]))
    job.refresh_from_db()
    assert job.status == BatchJob.Status.QUEUED
    alice.post(reverse("llmjobs:job_cancel", args=[job.pk]))
    job.refresh_from_db()
    assert job.status == BatchJob.Status.CANCELLED and job.cancelled_count == 4
    response = alice.post(reverse("llmjobs:job_cancel", args=[job.pk]), follow=True)
    assert response.status_code == 200  # cancelling twice is fine
    with django_capture_on_commit_callbacks(execute=True):
        response = alice.post(reverse("llmjobs:job_retry", args=[job.pk]), follow=True)
    job.refresh_from_db()
    assert "4 item(s) will be tried again" in response.content.decode()
    assert job.status == BatchJob.Status.QUEUED and job.items.pending().count() == 4
    # A finished job can't be cancelled: the error is a message, not a crash.
    finish(job)
    response = alice.post(reverse("llmjobs:job_cancel", args=[job.pk]), follow=True)
    assert "Could not cancel" in response.content.decode()


def test_actions_are_post_only(alice, users):
    job = make_job(users["alice"])
    for name in ("job_run", "job_preview", "job_cancel", "job_retry"):
        assert alice.get(reverse(f"llmjobs:{name}", args=[job.pk])).status_code == 405


def test_throughput_plot_is_server_side_svg(alice, users):
    job = make_job(users["alice"], n=5)
    empty = alice.get(reverse("llmjobs:job_throughput", args=[job.pk]))
    assert empty["Content-Type"] == "image/svg+xml" and b"No items finished yet" in empty.content
    finish(job, failed=2)
    svg = alice.get(reverse("llmjobs:job_throughput", args=[job.pk])).content.decode()
    assert svg.startswith("<svg") and "<rect" in svg and "items/s" in svg
    assert "<polyline" in svg  # the failed items took 3 attempts each: retries are drawn
    assert "<script" not in svg


def test_throughput_buckets_come_from_one_query(users, django_assert_num_queries):
    job = finish(make_job(users["alice"], n=10), failed=1)
    with django_assert_num_queries(1):
        buckets = progress.throughput(job)
    assert sum(b.items for b in buckets) == 10
    assert sum(b.retries for b in buckets) == 2


def test_the_api_key_never_reaches_a_page(alice, users, settings):
    settings.ANTHROPIC_API_KEY = "sk-ant-very-secret-key"
    job = finish(make_job(users["alice"]))
    for url in (
        reverse("llmjobs:playground"),
        reverse("llmjobs:job_new"),
        reverse("llmjobs:job_list"),
        reverse("llmjobs:job_detail", args=[job.pk]),
        reverse("llmjobs:home"),
    ):
        page = alice.get(url).content.decode()
        assert "sk-ant-very-secret-key" not in page
    assert "Anthropic API" in alice.get(reverse("llmjobs:playground")).content.decode()


# --- the progress stream ------------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_progress_stream_of_a_finished_job_sends_progress_then_done():
    user = await get_user_model().objects.acreate(username="alice")
    job = await sync_to_async(lambda: finish(make_job(user, n=4), failed=1))()
    client = AsyncClient()
    await client.aforce_login(user)
    response = await client.get(reverse("llmjobs:job_events", args=[job.pk]))
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/event-stream")
    assert response["Cache-Control"].startswith("no-cache")
    events = await read_events(response)
    assert [name for name, _ in events] == ["progress", "done"]
    data = events[-1][1]
    assert (data["status"], data["done"], data["total"], data["percent"]) == ("partially_failed", 4, 4, 100.0)
    assert data["failed"] == 1 and data["retries"] == 2
    assert data["errors"] == [{"position": 0, "type": "rate_limit_error", "message": "too many requests"}]


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_progress_stream_follows_a_running_job_until_it_finishes(monkeypatch):
    monkeypatch.setattr(progress, "TICK", 0.02)
    user = await get_user_model().objects.acreate(username="alice")
    job = await sync_to_async(make_job)(user, n=10)
    await BatchJob.objects.filter(pk=job.pk).aupdate(status=BatchJob.Status.RUNNING, started_at=timezone.now())
    client = AsyncClient()
    await client.aforce_login(user)
    response = await client.get(reverse("llmjobs:job_events", args=[job.pk]))
    stream = aiter(response.streaming_content)
    seen: list[dict] = []

    async def next_event() -> tuple[str, dict]:
        buf = b""
        while b"\n\n" not in buf or b"event:" not in buf:
            buf += await anext(stream)
        name = re.search(rb"event: (\w+)", buf).group(1).decode()
        return name, json.loads(re.search(rb"data: (.*)", buf).group(1))

    name, data = await next_event()
    assert (name, data["status"], data["done"], data["active"]) == ("progress", "running", 0, True)
    for done in (3, 7):
        await BatchJob.objects.filter(pk=job.pk).aupdate(succeeded_count=done)
        while True:  # bounded by the test timeout; each event is a new reading
            name, data = await next_event()
            seen.append(data)
            if data["done"] == done:
                break
    assert data["percent"] == 70.0 and data["remaining"] == 3
    await sync_to_async(finish)(job)
    while name != "done":
        name, data = await next_event()
    assert data["status"] == "succeeded" and data["percent"] == 100.0 and not data["active"]
    with pytest.raises(StopAsyncIteration):
        await anext(stream)  # the stream ends with the job


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_progress_stream_is_never_gzipped(settings):
    settings.MIDDLEWARE = ["django.middleware.gzip.GZipMiddleware", *settings.MIDDLEWARE]
    user = await get_user_model().objects.acreate(username="alice")
    job = await sync_to_async(lambda: finish(make_job(user, n=2)))()
    client = AsyncClient()
    await client.aforce_login(user)
    response = await client.get(reverse("llmjobs:job_events", args=[job.pk]), HTTP_ACCEPT_ENCODING="gzip")
    assert response["Content-Encoding"] == "identity"
    events = await read_events(response)  # plain text: it would not parse if compressed
    assert events[-1][0] == "done"


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_a_long_stream_ends_without_done_so_the_browser_reconnects(monkeypatch):
    monkeypatch.setattr(progress, "MAX_STREAM_SECONDS", 0.0)
    user = await get_user_model().objects.acreate(username="alice")
    job = await sync_to_async(make_job)(user, n=2)
    await BatchJob.objects.filter(pk=job.pk).aupdate(status=BatchJob.Status.QUEUED)
    client = AsyncClient()
    await client.aforce_login(user)
    response = await client.get(reverse("llmjobs:job_events", args=[job.pk]))
    body = b"".join([chunk async for chunk in response.streaming_content]).decode()
    assert body.startswith(f"retry: {progress.RECONNECT_MS}\n\n")  # EventSource's reconnect delay
    assert "event: progress" in body and "event: done" not in body  # still queued: the page reconnects


def test_snapshot_payload_computes_eta():
    row = {
        "status": "running",
        "total": 100,
        "succeeded_count": 40,
        "failed_count": 5,
        "cancelled_count": 5,
        "input_tokens": 1,
        "output_tokens": 2,
        "cost_estimate": "0.1",
        "last_error": "",
        "rate_limited_count": 0,
    }
    data = progress.snapshot_payload(row, items_per_s=10.0, retries=3, errors=[])
    assert (data["done"], data["remaining"], data["percent"], data["eta_s"]) == (50, 50, 50.0, 5.0)
    assert (
        progress.snapshot_payload({**row, "status": "succeeded"}, items_per_s=10.0, retries=0, errors=[])["eta_s"]
        is None
    )


# --- the playground -------------------------------------------------------------------------


def test_playground_page(alice):
    page = alice.get(reverse("llmjobs:playground")).content.decode()
    assert "time to first token" in page and 'id="answer"' in page and "csrfmiddlewaretoken" in page


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_playground_streams_tokens_through_one_shared_client(api):
    api.configure(tps=400.0)
    user = await get_user_model().objects.acreate(username="alice")
    client = AsyncClient()
    await client.aforce_login(user)
    try:
        shared = []
        for prompt in ("Tell me about owls", "Tell me about cats"):
            response = await client.post(
                reverse("llmjobs:playground_stream"),
                {"prompt": prompt, "model": "claude-haiku-4-5", "max_tokens": "60"},
            )
            assert response.status_code == 200
            assert response["Content-Type"].startswith("text/event-stream")
            events = await read_events(response)
            names = [name for name, _ in events]
            assert names[0:2] == ["start", "ttft"] and names[-1] == "done"
            tokens = [data["text"] for name, data in events if name == "token"]
            assert len(tokens) > 3  # token by token, not one blob
            done = events[-1][1]
            assert done["ttft_ms"] is not None and done["output_tokens"] > 0
            shared.append(await playground.get_client())
        assert shared[0] is shared[1]  # one client for the loop, never one per request
    finally:
        await playground.aclose_client()
    assert api.stats()["in_flight"] == 0


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_playground_reports_api_errors_and_bad_input(api):
    user = await get_user_model().objects.acreate(username="alice")
    client = AsyncClient()
    await client.aforce_login(user)
    try:
        response = await client.post(reverse("llmjobs:playground_stream"), {"prompt": "", "model": "nope"})
        assert response.status_code == 400
        assert set(json.loads(response.content)["errors"]) == {"prompt", "model", "max_tokens"}
        api.inject("529")
        response = await client.post(
            reverse("llmjobs:playground_stream"), {"prompt": "hi", "model": "claude-haiku-4-5", "max_tokens": "20"}
        )
        events = await read_events(response)
        assert events[-1][0] == "error" and events[-1][1]["type"] == "overloaded_error"
        assert (await client.get(reverse("llmjobs:playground_stream"))).status_code == 405
    finally:
        await playground.aclose_client()


@pytest.mark.asyncio
async def test_with_lifespan_warms_up_then_closes_the_shared_client_at_shutdown(settings):
    settings.LLMJOBS_SIMULATOR_URL = "http://127.0.0.1:9"
    settings.ANTHROPIC_API_KEY = ""

    async def app(scope, receive, send):  # pragma: no cover - never called for lifespan
        raise AssertionError

    client = await playground.get_client()
    messages = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    sent: list[dict] = []

    async def receive():
        return messages.pop(0)

    async def send(message):
        sent.append(message)

    try:
        await playground.with_lifespan(app)({"type": "lifespan"}, receive, send)
        assert gc.get_freeze_count() > 0  # startup froze the loaded app (warm_up): full GCs skip it
    finally:
        gc.unfreeze()
    assert [m["type"] for m in sent] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert client.is_closed()
    assert await playground.get_client() is not client  # a fresh one if asked again
    await playground.aclose_client()
    await asyncio.sleep(0)
