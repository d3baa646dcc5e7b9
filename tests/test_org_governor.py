"""Issue 12 part 3: one org-wide governor shared through the database. The exchange on the
test database, the runner's wiring, job_status and the job page; and two real
`process_job` processes on PostgreSQL under one limit (skipped on SQLite)."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from django.core.management import call_command
from django.utils import timezone

from llmjobs.conf import api_target
from llmjobs.engine.shared import LocalState
from llmjobs.org_governor import OrgExchange, key_hash, model_family, org_state
from llmjobs.org_models import OrgGovernor, OrgGovernorMember
from llmjobs.runner import process_job
from tests.fault_site import FaultSite, postgres_url
from tests.org_limits_site import run_two
from tests.test_runner import make_job

postgres_only = pytest.mark.skipif(postgres_url() is None, reason="needs DATABASE_URL=postgres://...")


def state(in_flight: int = 0, rpm: float | None = None, paused_until: float = 0.0, leaving: bool = False):
    return LocalState(in_flight=in_flight, rpm=rpm, itpm=None, otpm=None, paused_until=paused_until, leaving=leaving)


def test_the_key_is_identified_by_a_keyed_hash_only(settings):
    settings.SECRET_KEY = "one-secret"
    h = key_hash("https://api.example", "sk-ant-secret-key")
    assert len(h) == 64 and "sk-ant" not in h
    assert h == key_hash("https://api.example", "sk-ant-secret-key")
    assert h != key_hash("https://other.example", "sk-ant-secret-key")
    assert h != key_hash("https://api.example", "sk-ant-other-key")
    settings.SECRET_KEY = "another-secret"
    assert h != key_hash("https://api.example", "sk-ant-secret-key")


def test_model_family():
    assert model_family("claude-haiku-4-5") == "haiku"
    assert model_family("claude-sonnet-4-6") == model_family("claude-sonnet-4-5") == "sonnet"
    assert model_family("claude-opus-4-6") == "opus"
    assert model_family("some-other-model") == "some-other-model"


@pytest.mark.django_db(transaction=True)
def test_members_split_the_limit_share_the_pause_and_leave():
    a = OrgExchange(key="k" * 64, family="haiku", job_id=None)
    b = OrgExchange(key="k" * 64, family="haiku", job_id=None)
    other = OrgExchange(key="k" * 64, family="opus", job_id=None)
    assert a(state(3, rpm=600)).share == 1.0
    grant = b(state(4))
    assert (grant.share, grant.members, grant.in_flight, grant.rpm) == (0.5, 2, 7, 600.0)
    assert other(state()).share == 1.0  # another family: another row
    pause = timezone.now().timestamp() + 5
    b(state(4, paused_until=pause))  # a 429 at b ...
    assert a(state(3)).paused_until == pytest.approx(pause)  # ... pauses a
    assert b(state(leaving=True)).members == 1
    assert a(state(3)).share == 1.0
    row = OrgGovernor.objects.get(family="haiku")
    assert (row.rpm, row.key_hash) == (600.0, "k" * 64)
    assert OrgGovernorMember.objects.filter(governor=row).count() == 1


@pytest.mark.django_db(transaction=True)
def test_a_member_not_seen_lately_takes_no_share():
    a = OrgExchange(key="k" * 64, family="haiku")
    b = OrgExchange(key="k" * 64, family="haiku")
    a(state())
    assert b(state()).share == 0.5
    OrgGovernorMember.objects.filter(member_id=a.member_id).update(seen_at=timezone.now() - dt.timedelta(seconds=10))
    assert b(state()).share == 1.0


@postgres_only  # SQLite's in-memory test database (shared cache) refuses concurrent writers at once
@pytest.mark.django_db(transaction=True)
def test_a_run_shares_its_learned_limits_and_leaves_the_row(api):
    api.configure(rpm=6000, burst=5)
    job = make_job(30)
    report = process_job(job.pk)
    assert report.succeeded == 30
    target = api_target()
    row = OrgGovernor.objects.get(key_hash=key_hash(target.base_url, target.api_key), family="haiku")
    assert row.rpm == 6000.0  # learned from the headers by the run, unscaled
    assert not OrgGovernorMember.objects.exists()  # the run left
    assert target.api_key not in json.dumps(list(OrgGovernor.objects.values()), default=str)
    out = _job_status(job.pk)
    assert "shared:    haiku: 6,000 RPM" in out and "0 in flight across 0 run(s)" in out
    data = json.loads(_job_status(job.pk, "--json"))
    assert data["shared_governor"]["rpm"] == 6000.0


@pytest.mark.django_db(transaction=True)
def test_a_run_never_depends_on_the_exchange(api):
    """On any database (even SQLite's in-memory test one, where the exchange thread may meet
    "table is locked"): every item succeeds and the key is never stored."""
    api.configure(rpm=6000, burst=5, ttft=0.05)
    job = make_job(30)
    assert process_job(job.pk).succeeded == 30
    assert api_target().api_key not in json.dumps(list(OrgGovernor.objects.values()), default=str)


@pytest.mark.django_db(transaction=True)
def test_sharing_off_writes_nothing(api, settings):
    settings.LLMJOBS_SHARED_GOVERNOR = False
    job = make_job(5)
    assert process_job(job.pk).succeeded == 5
    assert not OrgGovernor.objects.exists()
    assert "shared:" not in _job_status(job.pk)


@pytest.mark.django_db(transaction=True)
def test_the_job_page_shows_the_shared_governor(api, client, django_user_model):
    user = django_user_model.objects.create_user("olga", password="pw-olga-123")
    client.force_login(user)
    job = make_job(2, owner=user)
    target = api_target()
    gov = OrgGovernor.objects.create(key_hash=key_hash(target.base_url, target.api_key), family="haiku", rpm=600)
    OrgGovernorMember.objects.create(governor=gov, member_id="m1", in_flight=7)
    OrgGovernorMember.objects.create(governor=gov, member_id="m2", in_flight=5)
    gov.paused_until = timezone.now() + dt.timedelta(seconds=30)
    gov.save()
    page = client.get(f"/jobs/{job.pk}/").content.decode()
    assert 'id="org-governor"' in page
    assert "600 RPM" in page and "12 in flight across 2 run(s)" in page and "paused" in page
    assert org_state("claude-haiku-4-5").members == 2


def _job_status(job_id: int, *args: str) -> str:
    import io

    out = io.StringIO()
    call_command("job_status", str(job_id), *args, stdout=out)
    return out.getvalue()


# -- PostgreSQL, two real processes under one limit -------------------------------------------
@postgres_only
def test_two_processes_under_one_limit_stay_under_it(tmp_path, sim):
    site = FaultSite(tmp_path, sim)
    try:
        run = run_two(site, items=200, rpm=600, burst=5, ttft=0.3, shared=True)
    finally:
        site.close()
    assert run.returncodes == [0, 0], run.errors
    assert run.succeeded == 200
    # a count, not a timing: at most 1% of the requests (or 3) were refused
    assert run.rate_limited <= max(3, run.requests // 100), (run.rate_limited, run.requests)
    assert run.requests - run.rate_limited == 200  # nothing paid twice
