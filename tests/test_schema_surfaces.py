"""The output schema and the API's models on the other surfaces: the new-job form (field
list and raw JSON editor), the admin (schema read-only, API tokens, the delivery log) and
``submit_job --schema``."""

from __future__ import annotations

import json

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command
from django.urls import reverse

from llmjobs.jobs import job_create
from llmjobs.models import ApiToken, BatchJob, WebhookDelivery
from llmjobs.tokens import token_hash, token_user

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def fast_passwords(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def alice(client):
    user = get_user_model().objects.create_user("alice", password="pw-alice-123")
    client.force_login(user)
    return client


@pytest.fixture
def admin(client):
    client.force_login(get_user_model().objects.create_superuser("root", "root@example.com", "pw"))
    return client


def form_data(**extra) -> dict:
    return {
        "name": "tickets",
        "source": "paste",
        "texts": "My phone broke\nI love the blender",
        "prompt_template": "Classify: {text}",
        "model": "claude-haiku-4-5",
        "max_tokens": "256",
        "action": "draft",
        **extra,
    }


def test_the_field_list_writes_the_schema(alice):
    response = alice.post(
        reverse("llmjobs:job_new"),
        form_data(
            field_0_name="sentiment",
            field_0_type="string",
            field_0_enum="positive, negative, neutral",
            field_0_required="on",
            field_1_name="score",
            field_1_type="integer",
        ),
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    job = BatchJob.objects.get()
    assert job.output_schema == {
        "type": "object",
        "properties": {
            "sentiment": {"type": "string", "enum": ["positive", "negative", "neutral"]},
            "score": {"type": "integer"},
        },
        "required": ["sentiment"],
        "additionalProperties": False,
    }


def test_the_raw_json_editor_and_its_errors(alice):
    page = alice.get(reverse("llmjobs:job_new")).content.decode()
    assert 'name="field_0_name"' in page and 'name="output_schema"' in page and 'name="webhook_url"' in page
    bad = alice.post(reverse("llmjobs:job_new"), form_data(output_schema='{"type": "array"}'))
    assert bad.status_code == 400 and "an object at the top level" in bad.content.decode()
    bad = alice.post(reverse("llmjobs:job_new"), form_data(webhook_url="http://127.0.0.1:9/x"))
    assert bad.status_code == 400 and "private or loopback" in bad.content.decode()
    assert not BatchJob.objects.exists()
    schema = {"type": "object", "properties": {"a": {"type": "object", "properties": {"b": {"type": "number"}}}}}
    ok = alice.post(reverse("llmjobs:job_new"), form_data(output_schema=json.dumps(schema), field_0_name="ignored"))
    assert ok.status_code == 302
    assert BatchJob.objects.get().output_schema == schema  # the raw JSON replaces the field list
    free = alice.post(reverse("llmjobs:job_new"), form_data(name="free"))
    assert free.status_code == 302 and BatchJob.objects.get(name="free").output_schema is None


def test_admin_shows_the_schema_read_only_and_the_delivery_log(admin):
    schema = {"type": "object", "properties": {"label": {"type": "string"}}}
    job = job_create(name="x", template="{text}", model="claude-haiku-4-5", texts=["a"], schema=schema)
    page = admin.get(reverse("admin:llmjobs_batchjob_change", args=[job.pk])).content.decode()
    assert "Output schema" in page and ("&quot;label&quot;" in page or "&#x27;label" in page or '"label"' in page)
    assert 'name="output_schema"' not in page  # read-only
    delivery = WebhookDelivery.objects.create(job=job, url="https://example.com/h", body="{}")
    page = admin.get(reverse("admin:llmjobs_webhookdelivery_change", args=[delivery.pk]))
    assert page.status_code == 200 and 'name="url"' not in page.content.decode()
    assert admin.get(reverse("admin:llmjobs_webhookdelivery_add")).status_code == 403


def test_admin_adds_a_token_and_shows_it_once(admin):
    user = get_user_model().objects.create_user("bob", password="pw-bob-123")
    response = admin.post(reverse("admin:llmjobs_apitoken_add"), {"user": user.pk, "name": "ci"}, follow=True)
    assert response.status_code == 200
    shown = [str(m) for m in response.context["messages"]]
    token = next(m for m in shown if "copy it now" in m).rsplit(" ", 1)[-1]
    row = ApiToken.objects.get(user=user)
    assert row.token_hash == token_hash(token) and row.name == "ci"
    assert token_user(token) == user


def test_submit_job_with_a_schema_file(tmp_path, capsys):
    data = tmp_path / "tickets.csv"
    data.write_text("ticket,customer\nMy phone broke,Ann\n")
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps({"type": "object", "properties": {"sentiment": {"type": "string"}}}))
    call_command("submit_job", str(data), "--template", "Classify: {ticket}", "--schema", str(schema))
    job = BatchJob.objects.get()
    assert job.output_schema["properties"] == {"sentiment": {"type": "string"}}
    assert job.input_fields == ["ticket", "customer"]
    schema.write_text('{"type": "string"}')
    with pytest.raises(CommandError, match="an object at the top level"):
        call_command("submit_job", str(data), "--template", "Classify: {ticket}", "--schema", str(schema))
    with pytest.raises(CommandError, match="no such file"):
        call_command("submit_job", str(data), "--template", "x {ticket}", "--schema", str(tmp_path / "nope.json"))
