"""The admin: job list and change page, read-only items, and every action."""

from __future__ import annotations

import csv
import io
import json

import pytest
from django.contrib.auth import get_user_model
from django.urls import reverse

from llmjobs.models import BatchJob, Item

from .test_views import XSS, finish, make_job

CHANGELIST = "admin:llmjobs_batchjob_changelist"


@pytest.fixture(autouse=True)
def fast_passwords(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def admin_user_(db):
    return get_user_model().objects.create_superuser("root", "root@example.com", "pw")


@pytest.fixture
def admin(client, admin_user_):
    client.force_login(admin_user_)
    return client


def act(client, action: str, *jobs: BatchJob, follow: bool = True):
    return client.post(
        reverse(CHANGELIST),
        {"action": action, "_selected_action": [j.pk for j in jobs], "index": 0},
        follow=follow,
    )


def texts_of_messages(response) -> list[str]:
    return [str(m) for m in response.context["messages"]]


def test_changelist_shows_progress_counts_tokens_cost_filters_and_search(admin, admin_user_):
    done = finish(make_job(admin_user_, n=4, name="finished-one"), failed=1)
    make_job(None, n=2, name="draft-two")
    page = admin.get(reverse(CHANGELIST)).content.decode()
    for text in ("finished-one", "draft-two", "Partially failed", "100%", "4 / 1 / 4", "40 / 20", "claude-haiku-4-5"):
        assert text in page, text
    for filter_title in ("By status", "By model", "By owner"):
        assert filter_title in page
    found = admin.get(reverse(CHANGELIST) + "?q=finished").content.decode()
    assert "finished-one" in found and "draft-two" not in found
    filtered = admin.get(reverse(CHANGELIST) + "?status__exact=draft").content.decode()
    assert "draft-two" in filtered and "finished-one" not in filtered
    assert done.pk


def test_change_page_links_to_items_instead_of_inlines(admin, admin_user_):
    job = make_job(admin_user_, n=30)
    page = admin.get(reverse("admin:llmjobs_batchjob_change", args=[job.pk])).content.decode()
    items_url = reverse("admin:llmjobs_item_changelist") + f"?job__id__exact={job.pk}"
    assert items_url.replace("&", "&amp;") in page or items_url in page
    assert "View the 30 items" in page
    assert "document number 7" not in page  # no inline rows
    listing = admin.get(items_url).content.decode()
    assert "document number 7" in listing
    other = make_job(admin_user_, n=1, texts=["another job's item"])
    assert "another job" not in listing and other.pk


def test_items_are_read_only_and_output_is_escaped(admin, admin_user_):
    job = finish(make_job(admin_user_, n=1, texts=[XSS]), output=XSS)
    item = job.items.get()
    for url in (
        reverse("admin:llmjobs_item_changelist"),
        reverse("admin:llmjobs_item_change", args=[item.pk]),
    ):
        page = admin.get(url).content.decode()
        assert XSS not in page
        assert "&lt;script&gt;" in page
    change = admin.get(reverse("admin:llmjobs_item_change", args=[item.pk])).content.decode()
    assert 'name="output"' not in change  # no editable field
    response = admin.post(reverse("admin:llmjobs_item_change", args=[item.pk]), {"output": "hacked"})
    assert response.status_code == 403
    assert admin.get(reverse("admin:llmjobs_item_add")).status_code == 403
    assert admin.get(reverse("admin:llmjobs_item_delete", args=[item.pk])).status_code == 403
    item.refresh_from_db()
    assert item.output == XSS
    failed = admin.get(reverse("admin:llmjobs_item_changelist") + "?status__exact=failed").content.decode()
    assert "&lt;script&gt;" not in failed  # the status filter works: the item succeeded


def test_run_in_background_action_enqueues(admin, admin_user_, django_capture_on_commit_callbacks):
    jobs = [make_job(admin_user_), make_job(admin_user_)]
    with django_capture_on_commit_callbacks(execute=True):
        response = act(admin, "run_in_background", *jobs)
    assert "2 job(s) queued" in " ".join(texts_of_messages(response))
    for job in jobs:
        job.refresh_from_db()
        assert job.status == BatchJob.Status.QUEUED and job.task_id
    finished = finish(make_job(admin_user_))
    response = act(admin, "run_in_background", finished)
    assert "no pending items" in " ".join(texts_of_messages(response))


def test_cancel_action(admin, admin_user_):
    job = make_job(admin_user_, n=3)
    response = act(admin, "cancel_jobs", job)
    job.refresh_from_db()
    assert job.status == BatchJob.Status.CANCELLED and job.cancelled_count == 3
    assert "1 job(s) cancelled" in " ".join(texts_of_messages(response))
    done = finish(make_job(admin_user_))
    assert "already finished" in " ".join(texts_of_messages(act(admin, "cancel_jobs", done)))


def test_retry_failed_action(admin, admin_user_, django_capture_on_commit_callbacks):
    job = finish(make_job(admin_user_, n=4), failed=2)
    with django_capture_on_commit_callbacks(execute=True):
        response = act(admin, "retry_failed", job)
    job.refresh_from_db()
    # Retry is one rule on every surface, failed and cancelled items (issue 10): the messages say so.
    assert "2 failed or cancelled item(s) queued again" in " ".join(texts_of_messages(response))
    assert job.status == BatchJob.Status.QUEUED
    assert job.items.filter(status=Item.Status.PENDING).count() == 2
    clean = finish(make_job(admin_user_))
    assert "no failed or cancelled items" in " ".join(texts_of_messages(act(admin, "retry_failed", clean)))


def test_export_actions(admin, admin_user_):
    job = finish(make_job(admin_user_, n=3), output="out")
    response = act(admin, "export_csv", job, follow=False)
    assert response["Content-Disposition"] == f'attachment; filename="{job.name}.csv"'  # named after the job
    rows = list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert [(r["text"], r["output"]) for r in rows] == [(f"document number {i}", "out") for i in range(3)]
    response = act(admin, "export_jsonl", job, follow=False)
    lines = b"".join(response.streaming_content).decode().splitlines()
    assert [json.loads(line)["status"] for line in lines] == ["succeeded"] * 3
    two = act(admin, "export_csv", job, make_job(admin_user_))
    assert "exactly one job" in " ".join(texts_of_messages(two))


@pytest.mark.django_db(transaction=True)
def test_preview_action_runs_five_items_now_and_shows_outputs(client, sim, settings):
    settings.ANTHROPIC_API_KEY = ""
    settings.LLMJOBS_SIMULATOR_URL = sim.base_url
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    user = get_user_model().objects.create_superuser("root", "root@example.com", "pw")
    client.force_login(user)
    job = make_job(user, n=8, name="owls")
    response = act(client, "preview", job)
    previews = [m for m in texts_of_messages(response) if "Preview of item" in m]
    assert len(previews) == 5
    assert previews[0].startswith(f"#{job.pk} owls: Preview of item 0: ")
    assert len(previews[0]) > len(f"#{job.pk} owls: Preview of item 0: ") + 5
    job.refresh_from_db()
    assert job.status == BatchJob.Status.DRAFT  # a preview leaves the job as it was
    assert job.items.filter(status=Item.Status.SUCCEEDED).count() == 5
    assert sim.stats()["by_status"] == {"200": 5}


@pytest.mark.django_db(transaction=True)
def test_preview_output_is_escaped_in_admin_messages(client, settings, monkeypatch):
    from llmjobs import runner
    from llmjobs.engine import Outcome

    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    user = get_user_model().objects.create_superuser("root", "root@example.com", "pw")
    client.force_login(user)
    job = make_job(user, n=1)
    item = job.items.get()
    monkeypatch.setattr(
        runner, "preview_job", lambda job_id, count: [(item, Outcome(key=item.pk, status="succeeded", text=XSS))]
    )
    page = act(client, "preview", job).content.decode()
    assert XSS not in page and "&lt;script&gt;" in page


def test_non_staff_cannot_open_the_admin(client, db):
    user = get_user_model().objects.create_user("plain", password="pw")
    client.force_login(user)
    response = client.get(reverse(CHANGELIST))
    assert response.status_code == 302 and "/admin/login/" in response["Location"]
