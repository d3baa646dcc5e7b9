"""Security hardening (issue 13): each finding has a test here that failed before the fix.

HTTP-level tests log in as the relevant user and go through the real app with
Django's test client (the whole middleware stack, CSRF included).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import CommandError, call_command
from django.urls import reverse

from llmjobs.jobs import JobInputError
from llmjobs.models import BatchJob, Item
from llmjobs.prompts import compile_template
from llmjobs.security import spreadsheet_safe

from .test_views import finish, form_data, make_job


@pytest.fixture(autouse=True)
def fast_passwords(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def alice_user(db):
    return get_user_model().objects.create_user("alice", password="pw-alice-123")


@pytest.fixture
def alice(client, alice_user):
    client.force_login(alice_user)
    return client


# --- hostile uploads: a form error or a one-line command error, never a 500 ---------------

TEN_MB = 10 * 1024 * 1024
HOSTILE_JSONL: dict[str, tuple[bytes, str]] = {
    "deep-object": (b'{"a":' * 10_000 + b"1" + b"}" * 10_000 + b"\n", "nested more than"),
    "deep-array": (b'{"a":' + b"[" * 10_000 + b"]" * 10_000 + b"}\n", "nested more than"),
    "nan": (b'{"text": NaN}\n', "NaN is not valid JSON"),
    "infinity": (b'{"text": "x", "score": -Infinity}\n', "-Infinity is not valid JSON"),
    "huge-int": (b'{"text": "x", "n": ' + b"9" * 5_000 + b"}\n", "more than 100 digits"),
    "huge-float": (b'{"text": "x", "n": 1' + b"0" * 400 + b".5}\n", "too large or too long"),
    "invalid-utf8": (b'{"text": "ok"}\n{"text": "\xff\xfe"}\n', "line 2: the file is not UTF-8"),
    "10mb-line": (b'{"text": "' + b"a" * TEN_MB + b'"}\n', "over the limit"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_JSONL))
def test_hostile_jsonl_upload_is_a_form_error(alice, case):
    data, message = HOSTILE_JSONL[case]
    upload = SimpleUploadedFile("hostile.jsonl", data)
    response = alice.post(reverse("llmjobs:job_new"), form_data(source="file", texts="", file=upload, action="draft"))
    assert response.status_code == 400
    assert message in response.content.decode()
    assert not BatchJob.objects.exists()


@pytest.mark.parametrize("case", sorted(HOSTILE_JSONL))
def test_hostile_jsonl_submit_job_is_a_one_line_error(db, tmp_path, case):
    data, message = HOSTILE_JSONL[case]
    path = tmp_path / "hostile.jsonl"
    path.write_bytes(data)
    with pytest.raises(CommandError) as caught:
        call_command("submit_job", str(path), "--template", "Summarize: {text}")
    text = str(caught.value)
    assert message in text and "\n" not in text and len(text) < 300
    assert not BatchJob.objects.exists()


OTHER_HOSTILE_FILES: dict[str, tuple[str, bytes, str]] = {
    "zip-as-jsonl": ("data.jsonl", b"PK\x03\x04" + b"\x00" * 200, "ZIP archive"),
    "zip-bomb-as-csv": ("bomb.csv", b"PK\x03\x04\x14\x00" + b"\x00" * 1000, "ZIP archive"),
    "gzip": ("data.txt", b"\x1f\x8b\x08\x00" + b"\xff" * 100, "not UTF-8"),
    "utf16": ("data.txt", "hello\n".encode("utf-16"), "UTF-16"),
    "10mb-txt-line": ("big.txt", b"a" * TEN_MB + b"\n", "over the limit"),
    "10mb-csv-cell": ("big.csv", b"text\n" + b"a" * TEN_MB + b"\n", "line 2"),
    "nul": ("data.txt", b"ok\nbad\x00line\n", "NUL"),
}


@pytest.mark.parametrize("case", sorted(OTHER_HOSTILE_FILES))
def test_other_hostile_files_are_form_errors(alice, case):
    name, data, message = OTHER_HOSTILE_FILES[case]
    response = alice.post(
        reverse("llmjobs:job_new"),
        form_data(source="file", texts="", file=SimpleUploadedFile(name, data), action="draft"),
    )
    assert response.status_code == 400 and message in response.content.decode()
    assert not BatchJob.objects.exists()


@pytest.mark.parametrize(
    ("name", "data", "texts"),
    [
        ("bom.jsonl", b'\xef\xbb\xbf{"text": "one"}\n{"text": "two"}\n', ["one", "two"]),
        ("mixed.jsonl", b'{"text": "a"}\r\n{"text": "b"}\n{"text": "c"}\r{"text": "d"}', ["a", "b", "c", "d"]),
        ("mixed.txt", b"a\r\nb\nc\rd\r", ["a", "b", "c", "d"]),
        ("bom.csv", b"\xef\xbb\xbftext\r\none\r\ntwo\n", ["one", "two"]),
    ],
)
def test_bom_and_mixed_line_endings_are_read_as_lines(alice, name, data, texts):
    upload = SimpleUploadedFile(name, data)
    response = alice.post(reverse("llmjobs:job_new"), form_data(source="file", texts="", file=upload, action="draft"))
    assert response.status_code == 302, response.content.decode()[:2000]
    job = BatchJob.objects.get()
    assert [i["text"] for i in job.items.order_by("position").values_list("input", flat=True)] == texts


def test_bom_and_mixed_line_endings_through_submit_job(db, tmp_path):
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"text": "a"}\r\n{"text": "b"}\r{"text": "c"}\n')
    out = io.StringIO()
    call_command("submit_job", str(path), "--template", "Summarize: {text}", stdout=out)
    job = BatchJob.objects.get(pk=int(out.getvalue().strip()))
    assert [i["text"] for i in job.items.order_by("position").values_list("input", flat=True)] == ["a", "b", "c"]


# --- template error messages ----------------------------------------------------------------


def test_template_brace_errors_show_the_braces_to_type():
    with pytest.raises(JobInputError) as unclosed:
        compile_template("Summarize {text")
    assert "write '{{' for a literal brace" in str(unclosed.value) and "{{{{" not in str(unclosed.value)
    with pytest.raises(JobInputError) as single:
        compile_template("Summarize {text} }")
    assert "write '}}' for a literal brace" in str(single.value) and "}}}}" not in str(single.value)


# --- CSV formula injection --------------------------------------------------------------------

FORMULAS = ['=HYPERLINK("http://evil","x")', "+1+1", "-2+3", "@SUM(A1)", "\tx", "\rx"]


@pytest.mark.parametrize(
    ("value", "safe"),
    [(f, "'" + f) for f in FORMULAS] + [("plain", "plain"), ("", ""), (-5, -5), (None, None), ("a=b", "a=b")],
)
def test_spreadsheet_safe(value, safe):
    assert spreadsheet_safe(value) == safe


def _job_with_formula_outputs(owner) -> BatchJob:
    job = finish(make_job(owner, n=len(FORMULAS)))
    items = list(job.items.order_by("position"))
    for item, formula in zip(items, FORMULAS):
        item.output = formula
        item.error_message = formula
    Item.objects.bulk_update(items, ["output", "error_message"])
    return job


def _csv_rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text, newline="")))


def _assert_neutralised(rows: list[dict[str, str]]) -> None:
    assert [r["output"] for r in rows] == ["'" + f for f in FORMULAS]
    assert [r["error"] for r in rows] == ["'" + f for f in FORMULAS]
    for row in rows:
        for value in row.values():
            assert not value.startswith(("=", "+", "-", "@", "\t", "\r")), row


def test_csv_export_neutralises_formulas_on_the_job_page(alice, alice_user):
    job = _job_with_formula_outputs(alice_user)
    response = alice.get(reverse("llmjobs:job_export", args=[job.pk, "csv"]))
    _assert_neutralised(_csv_rows(b"".join(response.streaming_content).decode()))


def test_csv_export_neutralises_formulas_in_the_admin(client, db):
    root = get_user_model().objects.create_superuser("root", "root@example.com", "pw")
    client.force_login(root)
    job = _job_with_formula_outputs(root)
    response = client.post(
        reverse("admin:llmjobs_batchjob_changelist"),
        {"action": "export_csv", "_selected_action": [job.pk], "index": 0},
    )
    _assert_neutralised(_csv_rows(b"".join(response.streaming_content).decode()))


def test_csv_export_neutralises_formulas_in_export_job(db, tmp_path: Path):
    job = _job_with_formula_outputs(None)
    out = tmp_path / "out.csv"
    call_command("export_job", str(job.pk), "--format", "csv", "-o", str(out), stdout=io.StringIO())
    with out.open(encoding="utf-8", newline="") as f:
        _assert_neutralised(list(csv.DictReader(f)))


# --- admin actions follow permissions and ownership; visibility follows permissions -------

CHANGELIST = "admin:llmjobs_batchjob_changelist"


def _staff(username: str, *codenames: str):
    from django.contrib.auth.models import Permission

    user = get_user_model().objects.create_user(username, password="pw", is_staff=True)
    user.user_permissions.add(*Permission.objects.filter(content_type__app_label="llmjobs", codename__in=codenames))
    return user


def _act(client, action: str, *jobs: BatchJob):
    return client.post(
        reverse(CHANGELIST), {"action": action, "_selected_action": [j.pk for j in jobs], "index": 0}, follow=True
    )


def _snapshot(job: BatchJob) -> tuple:
    job.refresh_from_db()
    statuses = tuple(job.items.order_by("position").values_list("status", "output"))
    return (job.status, job.task_id, job.cancelled_count, statuses)


@pytest.mark.django_db(transaction=True)
def test_view_only_staff_cannot_preview_cancel_run_or_retry_from_the_changelist(client, sim, settings):
    settings.ANTHROPIC_API_KEY = ""
    settings.LLMJOBS_SIMULATOR_URL = sim.base_url
    owner = get_user_model().objects.create_user("owner")
    viewer = _staff("viewer", "view_batchjob")
    client.force_login(viewer)
    draft = make_job(owner, n=6, name="draft")
    failed = finish(make_job(owner, n=3, name="failed"), failed=2)
    page = client.get(reverse(CHANGELIST)).content.decode()
    assert "draft" in page and 'value="export_csv"' in page  # they may look and export
    for action in ("run_in_background", "cancel_jobs", "retry_failed", "preview"):
        assert f'value="{action}"' not in page, action  # the actions are not offered...
    before = {job.pk: _snapshot(job) for job in (draft, failed)}
    for action in ("preview", "cancel_jobs", "run_in_background", "retry_failed"):
        response = _act(client, action, draft, failed)  # ...and a forged POST does nothing
        assert response.status_code == 200
        assert "No action selected" in response.content.decode(), action
    assert {job.pk: _snapshot(job) for job in (draft, failed)} == before
    assert sim.stats()["by_status"] == {}  # nothing was spent


def test_staff_who_may_run_acts_only_on_their_own_jobs_without_change_permission(client, db):
    runner = _staff("runner", "view_batchjob", "run_batchjob", "cancel_batchjob")
    other = get_user_model().objects.create_user("other")
    client.force_login(runner)
    mine, theirs = make_job(runner, name="mine"), make_job(other, name="theirs")
    response = _act(client, "cancel_jobs", mine, theirs)
    text = response.content.decode()
    assert "1 job(s) cancelled" in text and f"#{theirs.pk}: not yours" in text
    mine.refresh_from_db(), theirs.refresh_from_db()
    assert mine.status == BatchJob.Status.CANCELLED and theirs.status == BatchJob.Status.DRAFT
    # With change_batchjob too, others' jobs are theirs to act on.
    boss = _staff("boss", "view_batchjob", "change_batchjob", "cancel_batchjob")
    client.force_login(boss)
    assert "1 job(s) cancelled" in _act(client, "cancel_jobs", theirs).content.decode()
    theirs.refresh_from_db()
    assert theirs.status == BatchJob.Status.CANCELLED


def test_is_staff_alone_does_not_show_others_jobs_on_the_pages(client, db):
    owner = get_user_model().objects.create_user("owner")
    staff = get_user_model().objects.create_user("staffer", is_staff=True)
    theirs = make_job(owner, name="owners-secret-job")
    client.force_login(staff)
    assert "owners-secret-job" not in client.get(reverse("llmjobs:job_list")).content.decode()
    assert client.get(reverse("llmjobs:job_detail", args=[theirs.pk])).status_code == 404
    assert list(BatchJob.objects.for_user(staff)) == []


def test_viewing_others_jobs_does_not_allow_acting_on_them_on_the_pages(client, db):
    owner = get_user_model().objects.create_user("owner")
    viewer = _staff("viewer", "view_batchjob")
    job = make_job(owner, name="owners-job")
    failed = finish(make_job(owner, name="failed-job"), failed=1)
    client.force_login(viewer)
    page = client.get(reverse("llmjobs:job_detail", args=[job.pk])).content.decode()
    assert "owners-job" in page and "Preview 5" not in page
    for name in ("job_run", "job_preview", "job_cancel", "job_retry"):
        for target in (job, failed):
            assert client.post(reverse(f"llmjobs:{name}", args=[target.pk])).status_code == 403, name
    job.refresh_from_db(), failed.refresh_from_db()
    assert job.status == BatchJob.Status.DRAFT and failed.status == BatchJob.Status.PARTIALLY_FAILED


# --- login throttling (django-axes, enabled as in production) -------------------------------


@pytest.mark.parametrize("login_url", ["/accounts/login/", "/admin/login/"])
def test_login_locks_out_a_username_and_ip_after_the_failure_limit(client, db, settings, login_url):
    from django.test import Client

    assert settings.AXES_ENABLED and settings.AXES_FAILURE_LIMIT == 5
    get_user_model().objects.create_user("victim", password="right-password-1", is_staff=True)
    get_user_model().objects.create_user("bystander", password="right-password-2", is_staff=True)
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        response = client.post(login_url, {"username": "victim", "password": "guess"})
        assert response.status_code == 200  # the form again, with an error
    locked = client.post(login_url, {"username": "victim", "password": "guess"})
    assert locked.status_code == 429
    text = locked.content.decode()
    assert "Too many failed logins" in text and "Try again in 15 minutes" in text
    # Now even the right password is refused for this username from this address...
    again = client.post(login_url, {"username": "victim", "password": "right-password-1"})
    assert again.status_code == 429 and "_auth_user_id" not in client.session
    # ...but another username from the same address, and the same username from another, still log in.
    assert client.post(login_url, {"username": "bystander", "password": "right-password-2"}).status_code == 302
    elsewhere = Client(REMOTE_ADDR="203.0.113.9")
    assert elsewhere.post(login_url, {"username": "victim", "password": "right-password-1"}).status_code == 302


def test_a_successful_login_resets_the_failure_count(client, db, settings):
    get_user_model().objects.create_user("ann", password="right-password-1")
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        client.post("/accounts/login/", {"username": "ann", "password": "guess"})
    assert client.post("/accounts/login/", {"username": "ann", "password": "right-password-1"}).status_code == 302
    client.logout()
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        assert client.post("/accounts/login/", {"username": "ann", "password": "guess"}).status_code == 200


# --- anonymous pages and /healthz tell nothing of the configuration ----------------------------


def test_anonymous_home_and_healthz_reveal_nothing_about_the_api_target(client, db, settings):
    settings.ANTHROPIC_API_KEY = ""
    settings.LLMJOBS_SIMULATOR_URL = "http://10.9.8.7:8765"
    for url in ("/", "/healthz", reverse("login"), "/admin/login/"):
        body = client.get(url).content.decode().lower()
        for secret in ("10.9.8.7", "simulator", "anthropic api", "api.anthropic.com", "sqlite"):
            assert secret not in body, (url, secret)
    assert client.get("/healthz").json() == {"status": "ok", "database": True}
    settings.ANTHROPIC_API_KEY = "sk-ant-secret"
    settings.ANTHROPIC_BASE_URL = "https://llm-gateway.internal.example"
    for url in ("/", "/healthz"):
        body = client.get(url).content.decode()
        assert "llm-gateway" not in body and "Anthropic" not in body and "sk-ant" not in body, url


def test_detailed_health_is_for_staff_only(client, db, settings):
    settings.ANTHROPIC_API_KEY = ""
    settings.LLMJOBS_SIMULATOR_URL = "http://10.9.8.7:8765"
    url = reverse("healthz_details")
    anonymous = client.get(url)
    assert anonymous.status_code == 302 and "/admin/login/" in anonymous["Location"]
    client.force_login(get_user_model().objects.create_user("plain"))
    assert client.get(url).status_code == 302  # logged in, but not staff
    client.force_login(get_user_model().objects.create_user("ops", is_staff=True))
    details = client.get(url).json()
    assert details["status"] == "ok" and details["database"]["ok"] is True
    assert details["api"] == {
        "target": "embedded simulator at http://10.9.8.7:8765 (no ANTHROPIC_API_KEY set)",
        "simulator": True,
    }
    assert "sk-" not in str(details)


# --- preview says "authentication failed" in plain words (a real 401 from the simulator) --------


@pytest.fixture(scope="module")
def keyed_simulator():
    from llmjobs.simulator.server import SimulatorProcess

    with SimulatorProcess("--api-key", "the-right-key") as server:
        yield server


@pytest.fixture
def wrong_key(settings, keyed_simulator):
    settings.ANTHROPIC_API_KEY = "a-wrong-key"
    settings.ANTHROPIC_BASE_URL = keyed_simulator.base_url
    return keyed_simulator


def _messages(response) -> list[str]:
    return [str(m) for m in response.context["messages"]]


def _assert_plain_auth_error(text: str) -> None:
    assert "Preview failed" in text or "preview failed" in text
    assert "rejected the server's API key (authentication failed)" in text
    assert "invalid x-api-key" in text  # the API's own words are kept
    assert "a-wrong-key" not in text and "the-right-key" not in text
    assert "no pending items" not in text


@pytest.mark.django_db(transaction=True)
def test_preview_on_the_job_page_shows_an_authentication_error_in_plain_words(client, wrong_key):
    user = get_user_model().objects.create_user("ann")
    client.force_login(user)
    job = make_job(user, n=7)
    response = client.post(reverse("llmjobs:job_preview", args=[job.pk]), follow=True)
    errors = [m for m in _messages(response) if "review failed" in m]
    assert len(errors) == 1
    _assert_plain_auth_error(errors[0])
    job.refresh_from_db()
    assert job.status == BatchJob.Status.DRAFT and job.items.filter(status=Item.Status.PENDING).count() == 7


@pytest.mark.django_db(transaction=True)
def test_preview_5_on_the_new_job_form_shows_an_authentication_error_in_plain_words(client, wrong_key):
    client.force_login(get_user_model().objects.create_user("ann"))
    response = client.post(reverse("llmjobs:job_new"), form_data(action="preview"), follow=True)
    _assert_plain_auth_error(" ".join(_messages(response)))


@pytest.mark.django_db(transaction=True)
def test_admin_preview_shows_an_authentication_error_in_plain_words(client, wrong_key):
    root = get_user_model().objects.create_superuser("root", "root@example.com", "pw")
    client.force_login(root)
    job = make_job(root, n=3)
    response = _act(client, "preview", job)
    _assert_plain_auth_error(" ".join(_messages(response)))


# --- the admin change form: the web form's validation; a job that ran is read-only -------------


def _change_form_data(job: BatchJob, **kw) -> dict:
    data = {
        "name": job.name,
        "owner": job.owner_id or "",
        "model": job.model,
        "system_prompt": job.system_prompt,
        "prompt_template": job.prompt_template,
        "max_tokens": job.max_tokens,
        "stop_sequences": "[]",
        "concurrency": "",
        "rate_limit_rpm": "",
        "_save": "Save",
    }
    data.update(kw)
    return data


@pytest.fixture
def root_client(client, db):
    root = get_user_model().objects.create_superuser("root", "root@example.com", "pw")
    client.force_login(root)
    client.user = root
    return client


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"prompt_template": "Summarize {text"}, "is never closed"),
        ({"prompt_template": "About {topic}: {text}"}, "placeholder {topic} is not in the data"),
        ({"model": "gpt-4"}, "Select a valid choice"),
        ({"max_tokens": "10000000"}, "less than or equal to 64000"),
        ({"concurrency": "0"}, "greater than or equal to 1"),
        ({"stop_sequences": '["", 3]'}, "non-blank strings"),
    ],
)
def test_admin_change_form_validates_as_the_web_form(root_client, changes, message):
    job = make_job(root_client.user, n=2)
    url = reverse("admin:llmjobs_batchjob_change", args=[job.pk])
    response = root_client.post(url, _change_form_data(job, **changes))
    assert response.status_code == 200  # the form again, not a redirect
    assert message in response.content.decode()
    job.refresh_from_db()
    assert job.prompt_template == "Summarize: {text}" and job.model == "claude-haiku-4-5" and job.max_tokens == 1024


def test_admin_change_form_saves_a_valid_draft(root_client):
    job = make_job(root_client.user, n=2)
    url = reverse("admin:llmjobs_batchjob_change", args=[job.pk])
    response = root_client.post(url, _change_form_data(job, prompt_template="Classify: {text}", max_tokens="50"))
    assert response.status_code == 302
    job.refresh_from_db()
    assert job.prompt_template == "Classify: {text}" and job.max_tokens == 50


def test_a_finished_jobs_template_model_and_inputs_are_read_only_in_the_admin(root_client):
    job = finish(make_job(root_client.user, n=2))
    url = reverse("admin:llmjobs_batchjob_change", args=[job.pk])
    page = root_client.get(url).content.decode()
    for field in ("prompt_template", "model", "system_prompt", "max_tokens", "stop_sequences"):
        assert f'name="{field}"' not in page, field
    assert 'name="name"' in page  # the name can still be changed
    response = root_client.post(
        url, _change_form_data(job, name="renamed", prompt_template="Hacked {text}", model="claude-opus-4-6")
    )
    assert response.status_code == 302
    job.refresh_from_db()
    assert job.name == "renamed" and job.prompt_template == "Summarize: {text}" and job.model == "claude-haiku-4-5"
