"""Issue 16 on the pages: job settings and timeline, Run/Resume/Retry/Clone, the results JSON
(keyset pages, filter, search, sort), the item page, clone with reused answers, the form's
upload stash and column inspection, and the throughput plot after Cancel."""

from __future__ import annotations

import json

import pytest
from django.contrib.auth import get_user_model
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from llmjobs.clone import job_clone, request_key
from llmjobs.jobs import job_cancel, job_create
from llmjobs.models import BatchJob, Item
from llmjobs.results import results_page, structured_output
from llmjobs.resume import job_resume
from llmjobs.web.progress import throughput


@pytest.fixture(autouse=True)
def fast_passwords(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def users(db):
    User = get_user_model()
    return {
        "alice": User.objects.create_user("alice", password="pw-alice-123"),
        "bob": User.objects.create_user("bob", password="pw-bob-123"),
    }


@pytest.fixture
def alice(client, users):
    client.force_login(users["alice"])
    return client


def make_job(owner, n=3, template="Summarize: {text}", **kw) -> BatchJob:
    texts = kw.pop("texts", [f"document number {i}" for i in range(n)])
    return job_create(
        name=kw.pop("name", "job"), template=template, model="claude-haiku-4-5", owner=owner, texts=texts, **kw
    )


def answer_all(job: BatchJob, *, failed=(), tokens=lambda i: (10, 5)) -> BatchJob:
    now = timezone.now()
    items = list(job.items.order_by("position"))
    for item in items:
        bad = item.position in failed
        item.status = Item.Status.FAILED if bad else Item.Status.SUCCEEDED
        item.output = "" if bad else f"answer {item.position}"
        item.error_type = "api_error" if bad else ""
        item.error_message = "boom" if bad else ""
        item.attempts = 1
        item.input_tokens, item.output_tokens = tokens(item.position)
        item.finished_at = now
    Item.objects.bulk_update(
        items,
        ["status", "output", "error_type", "error_message", "attempts", "input_tokens", "output_tokens", "finished_at"],
    )
    job.started_at = now
    job.save(update_fields=["started_at"])
    job.mark_finished()
    return job


# --- the job page ---------------------------------------------------------------------


def test_job_page_shows_settings_with_placeholders_timeline_and_not_started(alice, users):
    job = make_job(users["alice"], template="Classify {text} <b>now</b>", system="Be terse.")
    page = alice.get(reverse("llmjobs:job_detail", args=[job.pk])).content.decode()
    assert '<mark class="ph">{text}</mark>' in page
    assert "&lt;b&gt;now&lt;/b&gt;" in page  # the template is escaped
    assert "Be terse." in page and "claude-haiku-4-5" in page
    assert "Not started" in page and "Draft" not in page
    assert 'id="timeline"' in page and "created" in page and "queued" in page
    assert ">Run</button>" in page and ">Clone</a>" in page


def test_buttons_follow_the_state(alice, users, django_capture_on_commit_callbacks):
    job = answer_all(make_job(users["alice"], n=4), failed=(1, 2))
    page = alice.get(reverse("llmjobs:job_detail", args=[job.pk])).content.decode()
    assert "Retry failed (2)" in page and 'id="run-button"' not in page

    stopped = make_job(users["alice"], n=4)
    job_cancel(job=stopped)
    page = alice.get(reverse("llmjobs:job_detail", args=[stopped.pk])).content.decode()
    assert ">Resume</button>" in page and "Retry failed &amp; cancelled (4)" in page
    assert reverse("llmjobs:job_resume", args=[stopped.pk]) in page

    interrupted = make_job(users["alice"], n=2)
    interrupted.started_at = timezone.now()
    interrupted.save(update_fields=["started_at"])
    interrupted.mark_interrupted()
    page = alice.get(reverse("llmjobs:job_detail", args=[interrupted.pk])).content.decode()
    assert ">Resume</button>" in page


def test_resume_puts_a_stopped_jobs_cancelled_items_back_and_queues_it(users, django_capture_on_commit_callbacks):
    job = make_job(users["alice"], n=5)
    answer_all(job)
    Item.objects.filter(job=job, position__gte=2).update(status=Item.Status.PENDING, output="")
    BatchJob.objects.filter(pk=job.pk).update(status=BatchJob.Status.RUNNING)
    job.refresh_from_db()
    job_cancel(job=job)
    assert job.status == BatchJob.Status.CANCELLED and job.cancelled_count == 3
    with django_capture_on_commit_callbacks(execute=False):
        assert job_resume(job=job) == 3
    job.refresh_from_db()
    assert job.status == BatchJob.Status.QUEUED and job.queued_at is not None
    assert job.items.filter(status=Item.Status.PENDING).count() == 3
    assert job.items.filter(status=Item.Status.SUCCEEDED).count() == 2  # never paid twice


def test_the_plot_has_no_spike_after_cancel_and_counts_are_fresh(users):
    job = make_job(users["alice"], n=50)
    answer_all(job)
    Item.objects.filter(job=job, position__gte=5).update(status=Item.Status.PENDING, output="", finished_at=None)
    BatchJob.objects.filter(pk=job.pk).update(
        status=BatchJob.Status.RUNNING, started_at=timezone.now() - timezone.timedelta(seconds=30), finished_at=None
    )
    job.refresh_from_db()
    job_cancel(job=job)
    job.refresh_from_db()
    assert (job.succeeded_count, job.cancelled_count, job.done_count) == (5, 45, 50)
    assert sum(b.items for b in throughput(job)) == 5  # the 45 cancelled items are not "finished work"


# --- results over fetch -------------------------------------------------------------------


def test_results_json_pages_with_a_keyset_cursor(alice, users):
    job = answer_all(make_job(users["alice"], n=23))
    url = reverse("llmjobs:job_results", args=[job.pk])
    seen, after = [], ""
    for _ in range(10):
        data = alice.get(url, {"size": 10, "after": after}).json()
        seen += [r["position"] for r in data["rows"]]
        after = data["next"]
        if not after:
            break
    assert seen == list(range(23))
    row = alice.get(url).json()["rows"][0]
    assert row["url"] == reverse("llmjobs:item_detail", args=[job.pk, 0]) and row["cost"] is not None


def test_keyset_pages_use_no_offset(users):
    job = answer_all(make_job(users["alice"], n=30))
    first = results_page(job, size=10)
    with CaptureQueriesContext(connection) as queries:
        later = results_page(job, size=10, cursor=first.next_cursor or "")
    assert [r["position"] for r in later.rows] == list(range(10, 20))
    sql = " ".join(q["sql"] for q in queries.captured_queries).upper()
    assert "OFFSET" not in sql and '"POSITION" >' in sql.replace("`", '"')


def test_results_filter_search_and_sort(alice, users):
    job = make_job(users["alice"], texts=["apples are red", "bananas are yellow", "cherries are red too"])
    answer_all(job, failed=(1,), tokens=lambda i: (30 * i, 100 - 20 * i))
    url = reverse("llmjobs:job_results", args=[job.pk])
    assert [r["position"] for r in alice.get(url, {"status": "failed"}).json()["rows"]] == [1]
    assert [r["position"] for r in alice.get(url, {"q": "RED"}).json()["rows"]] == [0, 2]  # input text
    assert [r["position"] for r in alice.get(url, {"q": "answer 2"}).json()["rows"]] == [2]  # output text
    assert [r["position"] for r in alice.get(url, {"sort": "tokens"}).json()["rows"]] == [2, 1, 0]
    by_cost = alice.get(url, {"sort": "cost"}).json()["rows"]
    assert [r["position"] for r in by_cost] == [0, 1, 2]  # output tokens cost 5x input on haiku
    paged = alice.get(url, {"sort": "tokens", "size": 1}).json()
    second = alice.get(url, {"sort": "tokens", "size": 1, "after": paged["next"]}).json()
    assert [paged["rows"][0]["position"], second["rows"][0]["position"]] == [2, 1]


def test_another_users_results_and_items_are_404(client, users):
    job = answer_all(make_job(users["alice"]))
    client.force_login(users["bob"])
    for url in (
        reverse("llmjobs:job_results", args=[job.pk]),
        reverse("llmjobs:item_detail", args=[job.pk, 0]),
        reverse("llmjobs:job_clone", args=[job.pk]),
    ):
        assert client.get(url).status_code == 404
    assert client.post(reverse("llmjobs:job_resume", args=[job.pk])).status_code == 404


# --- the item page ----------------------------------------------------------------------------


def test_item_page_shows_everything_about_the_item(alice, users):
    job = make_job(users["alice"], texts=["<script>x</script> owl"], template="Describe: {text}")
    answer_all(job)
    Item.objects.filter(job=job).update(
        output=json.dumps({"animal": "owl", "legs": 2}), stop_reason="end_turn", attempts=2
    )
    page = alice.get(reverse("llmjobs:item_detail", args=[job.pk, 0])).content.decode()
    assert "Describe: &lt;script&gt;x&lt;/script&gt; owl" in page  # the rendered prompt, escaped
    assert "<script>x</script>" not in page
    assert "<th>animal</th><td>owl</td>" in page  # structured output as a table
    assert "end_turn" in page and "10 / 5" in page and 'id="i-attempts">2<' in page
    assert "$0.000035" in page  # 10 in + 5 out on haiku 4.5
    assert "not recorded" in page  # the worker, when the runner doesn't record it


def test_failed_item_page_shows_the_error(alice, users):
    job = answer_all(make_job(users["alice"], n=2), failed=(0,))
    page = alice.get(reverse("llmjobs:item_detail", args=[job.pk, 0])).content.decode()
    assert "api_error" in page and "boom" in page
    assert alice.get(reverse("llmjobs:item_detail", args=[job.pk, 9])).status_code == 404


def test_structured_output_is_detected_only_for_objects():
    assert structured_output('{"a": 1}') == {"a": 1}
    assert structured_output('[{"a": 1}, {"a": 2}]') == [{"a": 1}, {"a": 2}]
    assert structured_output("[1, 2]") is None and structured_output("hello") is None


# --- clone -----------------------------------------------------------------------------------


def test_clone_form_is_prefilled_with_the_settings_and_data(alice, users):
    job = make_job(users["alice"], n=4, template="Tag: {text}", system="Short.")
    page = alice.get(reverse("llmjobs:job_clone", args=[job.pk])).content.decode()
    assert "The same data as job #%d (4 items)" % job.pk in page
    assert "Tag: {text}" in page and "Short." in page and "Only changed items" in page
    assert f"{job.name} (copy)" in page


def test_a_runs_max_tokens_hint_shows_on_the_job_page_and_the_clone_form(alice, users):
    """The runner stores the hint (tests/test_commands.py runs it against the simulator);
    the page shows it next to max_tokens, and the clone form under its max_tokens field."""
    job = make_job(users["alice"], n=2)
    assert 'id="advice"' not in alice.get(reverse("llmjobs:job_detail", args=[job.pk])).content.decode()
    hint = "answers average 72 tokens; max_tokens 256 would run ≈ 1.9\u00d7 faster"
    BatchJob.objects.filter(pk=job.pk).update(advice=hint)
    assert hint in alice.get(reverse("llmjobs:job_detail", args=[job.pk])).content.decode()
    page = alice.get(reverse("llmjobs:job_clone", args=[job.pk])).content.decode()
    assert f"Job #{job.pk}&#x27;s last run: {hint}." in page


def test_clone_with_only_changed_items_reuses_identical_requests(alice, users, django_capture_on_commit_callbacks):
    source = answer_all(make_job(users["alice"], texts=["same", "same", "other"], template="Tag: {text}"))
    with django_capture_on_commit_callbacks(execute=False):
        response = alice.post(
            reverse("llmjobs:job_clone", args=[source.pk]),
            {
                "name": "",
                "source": "job",
                "prompt_template": "Tag: {text}",
                "system_prompt": "",
                "model": "claude-haiku-4-5",
                "max_tokens": str(source.max_tokens),
                "concurrency": "",
                "only_changed": "on",
                "action": "run",
            },
        )
    clone = BatchJob.objects.exclude(pk=source.pk).get()
    assert response.status_code == 302 and clone.source_job_id == source.pk
    assert clone.status == BatchJob.Status.SUCCEEDED  # nothing changed: nothing to run
    assert clone.items.filter(reused=True).count() == 3
    outputs = list(clone.items.order_by("position").values_list("output", flat=True))
    assert outputs == ["answer 0", "answer 0", "answer 2"]  # identical requests share one answer
    assert clone.input_tokens == 0 and clone.cost_estimate == 0  # paid for by the source


def test_clone_runs_only_what_changed(users):
    source = answer_all(make_job(users["alice"], texts=["a", "b", "c"], template="Tag: {text}"), failed=(2,))
    clone = job_clone(
        source=source,
        owner=users["alice"],
        only_changed=True,
        name="",
        template="Tag: {text}",
        model="claude-haiku-4-5",
        max_tokens=source.max_tokens,
    )
    statuses = list(clone.items.order_by("position").values_list("status", "reused"))
    assert statuses == [("succeeded", True), ("succeeded", True), ("pending", False)]  # a failed answer isn't reused
    changed = job_clone(
        source=source,
        owner=users["alice"],
        only_changed=True,
        name="x",
        template="Label: {text}",
        model="claude-haiku-4-5",
    )
    assert not changed.items.filter(reused=True).exists()  # another prompt: every request differs
    plain = job_clone(
        source=source,
        owner=users["alice"],
        name="y",
        template="Tag: {text}",
        model="claude-haiku-4-5",
        max_tokens=source.max_tokens,
    )
    assert plain.items.filter(status=Item.Status.PENDING).count() == 3  # without the option, all run


def test_request_key_covers_model_system_and_max_tokens(users):
    job = make_job(users["alice"])
    base = request_key(job, {"text": "x"})
    job.max_tokens = 7
    assert request_key(job, {"text": "x"}) != base
    job.max_tokens, job.system_prompt = 1024, "S"
    assert request_key(job, {"text": "x"}) != base


# --- the form ----------------------------------------------------------------------------------


def _form(**kw):
    data = {
        "name": "",
        "source": "file",
        "texts": "",
        "prompt_template": "Review: {text}",
        "system_prompt": "",
        "model": "claude-haiku-4-5",
        "max_tokens": "256",
        "concurrency": "",
        "action": "draft",
    }
    data.update(kw)
    return data


def test_inspect_returns_csv_columns_and_jsonl_keys_with_a_preview(alice):
    url = reverse("llmjobs:upload_inspect")
    csv_file = SimpleUploadedFile("r.csv", b"id,review,stars\n1,great,5\n2,bad,1\n")
    data = alice.post(url, {"file": csv_file}).json()
    assert data["format"] == "csv" and data["columns"] == ["id", "review", "stars"]
    assert data["rows"][1] == {"id": "2", "review": "bad", "stars": "1"}
    jsonl = SimpleUploadedFile("r.jsonl", b'{"body": "hi", "n": 1}\n{"body": "yo", "n": 2}\n')
    data = alice.post(url, {"file": jsonl}).json()
    assert data["format"] == "jsonl" and data["columns"] == ["body", "n"] and len(data["rows"]) == 2
    bad = alice.post(url, {"file": SimpleUploadedFile("r.csv", b"")})
    assert bad.status_code == 400 and "empty" in bad.json()["error"]


def test_a_form_error_keeps_the_uploaded_file(alice):
    csv_file = SimpleUploadedFile("reviews.csv", b"review,stars\ngreat,5\nbad,1\n")
    response = alice.post(reverse("llmjobs:job_new"), _form(file=csv_file, column="nope"))
    assert response.status_code == 400
    page = response.content.decode()
    assert "Using <b>reviews.csv</b>" in page
    token = response.context["stash"]["token"]
    # Fix the column and post again without choosing the file again.
    response = alice.post(reverse("llmjobs:job_new"), _form(column="review", stashed_upload=token))
    assert response.status_code == 302
    job = BatchJob.objects.get()
    assert job.name == "reviews.csv" and job.total == 2
    assert job.items.get(position=0).input["text"] == "great"


def test_another_sessions_stash_token_is_ignored(client, users):
    client.force_login(users["alice"])
    response = client.post(
        reverse("llmjobs:job_new"), _form(file=SimpleUploadedFile("a.csv", b"review\nx\n"), column="no")
    )
    token = response.context["stash"]["token"]
    client.force_login(users["bob"])  # a new session
    response = client.post(reverse("llmjobs:job_new"), _form(column="review", stashed_upload=token))
    assert response.status_code == 400 and not BatchJob.objects.exists()


def _write_late_answer(job_id: int) -> None:
    from django.db import transaction

    with transaction.atomic():
        Item.objects.filter(job_id=job_id, position=0).update(
            status=Item.Status.SUCCEEDED, lease_expires_at=None, output="late answer"
        )
        BatchJob.objects.get(pk=job_id).refresh_counters()


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_the_stream_keeps_counting_a_cancelled_job_until_its_runner_settles():
    from asgiref.sync import sync_to_async

    from llmjobs.web.progress import progress_events

    user = await get_user_model().objects.acreate(username="carol")
    job = await sync_to_async(make_job)(user, n=3)
    lease = timezone.now() + timezone.timedelta(seconds=60)
    await Item.objects.filter(job=job, position=0).aupdate(status=Item.Status.RUNNING, lease_expires_at=lease)
    await BatchJob.objects.filter(pk=job.pk).aupdate(status=BatchJob.Status.RUNNING, started_at=timezone.now())
    await sync_to_async(job_cancel)(job=job)  # item 0 is still in flight at a live runner
    events = progress_events(job.pk, tick=0.01)
    names = []
    updated = False
    async for raw in events:
        if raw.startswith(b"event: "):
            names.append(raw.split(b"\n", 1)[0][7:].decode())
            if not updated:
                updated = True
                assert names == ["progress"]  # not done while the answer is on its way
                # the runner writes its in-flight answer and the counters in one transaction
                # (as JobRunner._write does): the poller never sees the one without the other
                await sync_to_async(_write_late_answer)(job.pk)
            if names[-1] == "done":
                payload = json.loads(raw.split(b"data: ", 1)[1])
                break
    assert names[-1] == "done"
    assert (payload["succeeded"], payload["cancelled"], payload["done"]) == (1, 2, 3)
    from django.db import connections

    await sync_to_async(connections.close_all)()  # the ORM thread's connection (PostgreSQL drops the test db)
