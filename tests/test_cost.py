"""Cost as a first-class feature (issue 14), against the real simulator over TCP."""

from __future__ import annotations

import json
from decimal import Decimal
from io import StringIO

import pytest
from django.core.management import call_command

from llmjobs.costs import apply_cost_options, job_summary, price_answer
from llmjobs.engine import Outcome
from llmjobs.estimate import job_estimate
from llmjobs.jobs import job_create
from llmjobs.models import BatchJob, Item
from llmjobs.runner import process_job
from llmjobs.writer import ITEM_FIELDS, outcome_rows

pytestmark = pytest.mark.django_db(transaction=True)


def make_job(n: int = 10, **kw) -> BatchJob:
    texts = kw.pop("texts", None) or [f"Doc {i:04d}: the quick brown fox number {i}." for i in range(n)]
    mode = kw.pop("mode", None)
    job = job_create(
        name="cost",
        template=kw.pop("template", "Summarize: {text}"),
        model=kw.pop("model", "claude-haiku-4-5"),
        texts=texts,
        **kw,
    )
    return apply_cost_options(job, mode=mode) if mode else job


def test_every_item_is_priced_and_the_job_accrues_its_cost(api):
    job = make_job(12, max_tokens=64)
    process_job(job.pk)
    job.refresh_from_db()
    items = list(job.items.all())
    assert all(i.cost_usd is not None and i.cost_usd > 0 for i in items)
    assert job.cost_usd == sum(i.cost_usd for i in items) > 0
    assert job.input_tokens == sum(i.input_tokens for i in items)
    assert job.cache_creation_input_tokens == job.cache_read_input_tokens == 0
    out = StringIO()
    call_command("job_status", str(job.pk), "--json", stdout=out)
    data = json.loads(out.getvalue())
    for key in (
        "id",
        "status",
        "mode",
        "counts",
        "input_tokens",
        "output_tokens",
        "cache_creation_input_tokens",
        "cache_read_input_tokens",
        "cost_usd",
        "estimated_cost_usd",
        "budget_usd",
        "saved_usd",
    ):
        assert key in data
    assert data["counts"]["succeeded"] == 12 and data["mode"] == "online"
    assert Decimal(data["cost_usd"]) == job.cost_usd


def test_cache_tokens_are_recorded_and_priced_below_plain_input(api):
    api.configure(cache_min_tokens=1024)
    system = "You are a careful summariser. " * 400  # well past the minimum
    job = make_job(6, max_tokens=32, system=system, concurrency=1)
    from llmjobs import prompts

    original = prompts.build_params

    def cached(job_, fields):  # mark the system prompt cacheable by hand (step 1 only records)
        params = original(job_, fields)
        params["system"] = [{"type": "text", "text": system, "cache_control": {"type": "ephemeral"}}]
        return params

    prompts.build_params = cached  # the runner renders through prompts.render_chunk
    try:
        process_job(job.pk)
    finally:
        prompts.build_params = original
    job.refresh_from_db()
    assert job.cache_creation_input_tokens > 0 and job.cache_read_input_tokens > 0
    assert job.saved_usd > 0
    first, second = job.items.order_by("position")[:2]
    assert first.cache_creation_input_tokens and second.cache_read_input_tokens
    assert second.cost_usd < first.cost_usd


def test_an_unknown_model_costs_unknown_never_zero(api):
    # the simulator refuses unknown models, so the job's rows are written as the runner would
    job = make_job(3, model="claude-made-up-9")
    ids = list(job.items.values_list("pk", flat=True))
    usage = {"input_tokens": 100, "output_tokens": 20}
    rows = outcome_rows(
        [Outcome(key=pk, status="succeeded", text="ok", usage=usage, attempts=1) for pk in ids],
        cancel=False,
        model=job.model,
    )
    assert all(item.cost_usd is None for item in rows.items)
    Item.objects.bulk_update(rows.items, ITEM_FIELDS)
    BatchJob.objects.filter(pk=job.pk).add_to_counters(**rows.counters)
    job.refresh_from_db()
    assert job.input_tokens == 300
    assert job_summary(job)["cost_usd"] is None
    out = StringIO()
    call_command("job_status", str(job.pk), stdout=out)
    assert "cost:      unknown" in out.getvalue()
    job.refresh_counters()
    assert job_summary(job)["cost_usd"] is None


def test_batch_price_is_half_the_online_price():
    usage = {"input_tokens": 10_000, "output_tokens": 2_000}
    online = price_answer("claude-haiku-4-5", usage).cost
    batch = price_answer("claude-haiku-4-5", usage, batch=True).cost
    assert online and batch and batch * 2 == online


def test_the_budget_stops_the_job_and_a_higher_budget_resumes_it(api):
    job = make_job(40, max_tokens=64, concurrency=4)
    process_job(job.pk)
    job.refresh_from_db()
    full = job.cost_usd
    assert full > 0
    # the same job again, capped at 30% of what it cost in full
    capped = make_job(40, max_tokens=64, concurrency=4)
    capped.budget_usd = (full * Decimal("0.3")).quantize(Decimal("0.000001"))
    capped.save(update_fields=["budget_usd"])
    api.reset()
    process_job(capped.pk)
    capped.refresh_from_db()
    assert capped.status == BatchJob.Status.DRAFT
    assert capped.last_error.startswith("Stopped: budget reached")
    assert 0 < capped.cost_usd <= capped.budget_usd
    assert capped.succeeded_count < 40
    assert capped.items.filter(status="pending").count() == 40 - capped.succeeded_count
    assert api.stats()["by_status"] == {"200": capped.succeeded_count}  # nothing sent past the cap
    # resumable with a higher budget
    capped.budget_usd = full * 2
    capped.save(update_fields=["budget_usd"])
    process_job(capped.pk)
    capped.refresh_from_db()
    assert capped.status == BatchJob.Status.SUCCEEDED and capped.succeeded_count == 40


def test_submit_job_takes_a_budget(tmp_path):
    path = tmp_path / "in.txt"
    path.write_text("one\ntwo\n")
    out = StringIO()
    call_command("submit_job", str(path), "--template", "Say: {text}", "--budget-usd", "0.5", "--no-dedup", stdout=out)
    job = BatchJob.objects.get(pk=int(out.getvalue().split()[0]))
    assert job.budget_usd == Decimal("0.5") and job.dedup is False


def test_the_estimate_uses_count_tokens_before_any_messages_call(api):
    job = make_job(8, max_tokens=50)
    estimate = job_estimate(job=job)
    stats = api.stats()
    assert stats["by_status"] == {}  # no Messages call: count_tokens only
    job.refresh_from_db()
    assert job.estimated_cost_usd == estimate.cost_usd > 0
    assert estimate.sampled == estimate.unique_requests == 8 and estimate.output_from == "max_tokens"
    assert job_summary(job)["estimated_cost_usd"] == str(estimate.cost_usd)
    # once answers exist, the observed output length replaces max_tokens
    process_job(job.pk)
    job.refresh_from_db()
    again = job_estimate(job=job, save=False)
    assert again.requests == 0 and again.cost_usd == job.cost_usd


def test_an_estimate_as_of_a_time_ignores_the_answers_stored_since(api):
    from django.utils import timezone

    job = make_job(8, max_tokens=50)
    before = job_estimate(job=job, save=False)
    as_of = timezone.now()
    process_job(job.pk)  # submit_job --run estimates while the run stores answers
    job.refresh_from_db()
    assert job_estimate(job=job, save=False, as_of=as_of) == before
    assert job_estimate(job=job, save=False).requests == 0


def test_the_estimate_is_close_after_a_preview(api):
    job = make_job(30, max_tokens=400)
    from llmjobs.runner import preview_job

    preview_job(job.pk, count=5)
    job.refresh_from_db()
    spent = job.cost_usd
    estimate = job_estimate(job=job)
    assert estimate.output_from == "observed" and estimate.requests == 25
    process_job(job.pk)
    job.refresh_from_db()
    assert abs(job.cost_usd - estimate.cost_usd) <= Decimal("0.25") * job.cost_usd
    assert spent < estimate.cost_usd


def test_submit_job_prints_the_estimate(api, tmp_path):
    path = tmp_path / "in.txt"
    path.write_text("one\ntwo\n")
    out, err = StringIO(), StringIO()
    call_command("submit_job", str(path), "--template", "Say: {text}", stdout=out, stderr=err)
    assert out.getvalue().strip().isdigit()
    assert err.getvalue().startswith("estimate: $")


def test_dedup_sends_each_distinct_request_once(api):
    texts = [f"Doc {i % 4}: the same few texts again." for i in range(20)]  # 4 distinct, 16 duplicates
    job = make_job(texts=texts, max_tokens=32, concurrency=3)
    estimate = job_estimate(job=job)
    assert estimate.unique_requests == 4
    process_job(job.pk)
    job.refresh_from_db()
    assert job.status == BatchJob.Status.SUCCEEDED and job.succeeded_count == 20
    assert api.stats()["by_status"] == {"200": 4}
    items = list(job.items.order_by("position"))
    assert all(item.output == items[item.position % 4].output and item.output for item in items)
    paid = [item for item in items if item.cost_usd]
    assert len(paid) == 4 and job.cost_usd == sum(item.cost_usd for item in paid)


def test_dedup_can_be_turned_off(api):
    texts = [f"Doc {i % 4}: the same few texts again." for i in range(12)]
    job = make_job(texts=texts, max_tokens=32)
    job.dedup = False
    job.save(update_fields=["dedup"])
    process_job(job.pk)
    assert api.stats()["by_status"] == {"200": 12}


def test_automatic_caching_of_a_shared_system_prompt_cuts_billed_input(api):
    system = "Rules for careful summaries, one of many. " * 300  # ~3,200 tokens: past sonnet-4-5's 1,024
    job = make_job(12, max_tokens=16, system=system, model="claude-sonnet-4-5")
    process_job(job.pk)
    job.refresh_from_db()
    assert job.status == BatchJob.Status.SUCCEEDED
    items = list(job.items.order_by("finished_at", "position"))
    writes = [i for i in items if i.cache_creation_input_tokens]
    assert len(writes) == 1  # warmed by one request, then read by every other
    prefix = writes[0].cache_creation_input_tokens
    assert prefix > 3000 and job.cache_read_input_tokens == prefix * 11
    assert job.cache_creation_input_tokens == prefix
    stats = api.stats()
    assert stats["cache_read_input_tokens"] == prefix * 11
    # what was billed as input (writes at 1.25x, reads at 0.1x) vs. the same input uncached
    uncached = (job.input_tokens + prefix * 12) * 1.0
    billed = job.input_tokens + prefix * 1.25 + prefix * 11 * 0.1
    assert billed < 0.25 * uncached
    assert job.saved_usd > 0 and job_summary(job)["saved_usd"] == str(job.saved_usd)


def test_a_short_system_prompt_is_not_marked(api):
    job = make_job(4, max_tokens=16, system="Be brief.", model="claude-sonnet-4-5")
    process_job(job.pk)
    job.refresh_from_db()
    assert job.cache_creation_input_tokens == job.cache_read_input_tokens == 0


def test_batch_mode_end_to_end_at_half_price(api):
    from llmjobs.batch_mode import run_batch_job

    api.configure(batch_seconds=0.3, batch_error=0.2, seed=3)
    job = make_job(30, max_tokens=32, mode="batch")
    job = run_batch_job(job.pk, poll_base=0.05, poll_cap=0.2, max_requests=12, retry_rounds=3)
    assert job.status == BatchJob.Status.SUCCEEDED and job.succeeded_count == 30
    items = list(job.items.order_by("position"))
    assert all(i.output.startswith(f"Doc {i.position:04d}") for i in items)  # mapped back by custom_id
    assert len(job.batch_state["batches"]) >= 3 and all(b["status"] == "collected" for b in job.batch_state["batches"])
    online = sum(
        price_answer(job.model, {"input_tokens": i.input_tokens, "output_tokens": i.output_tokens}).cost for i in items
    )
    assert job.cost_usd * 2 == online
    stats = api.stats()
    assert stats["by_status"] == {} and stats["batch"]["succeeded"] == 30


def test_batch_mode_resumes_polling_a_stored_batch(api):
    from llmjobs.batch_mode import run_batch_job

    api.configure(batch_seconds=0.2)
    job = make_job(5, max_tokens=32, mode="batch")
    # a run that died after submitting: its batch id is stored, the items are leased
    import anthropic

    client = anthropic.Anthropic(api_key="sim", base_url=api.base_url)
    from llmjobs.prompts import build_params

    rows = job.items.claim(limit=10, lease=__import__("datetime").timedelta(hours=25))
    batch = client.messages.batches.create(
        requests=[{"custom_id": f"item-{pk}", "params": build_params(job, fields)} for pk, fields in rows]
    )
    job.batch_state = {"batches": [{"id": batch.id, "status": "in_progress"}], "round": 0}
    job.save(update_fields=["batch_state"])
    job = run_batch_job(job.pk, poll_base=0.05, poll_cap=0.1)
    assert job.status == BatchJob.Status.SUCCEEDED and job.succeeded_count == 5
    assert api.stats()["batch"]["succeeded"] == 5  # submitted once, never again


def test_a_batch_mode_job_runs_through_process_job(api, tmp_path):
    path = tmp_path / "in.txt"
    path.write_text("one\ntwo\nthree\n")
    out = StringIO()
    call_command(
        "submit_job", str(path), "--template", "Say: {text}", "--mode", "batch", "--max-tokens", "16", stdout=out
    )
    job = BatchJob.objects.get(pk=int(out.getvalue().split()[0]))
    assert job.mode == "batch"
    process_job(job.pk)
    job.refresh_from_db()
    assert job.status == BatchJob.Status.SUCCEEDED and job.cost_usd > 0
    assert api.stats()["by_status"] == {}  # no Messages call: Message Batches only


def test_batch_mode_sends_duplicates_once(api):
    from llmjobs.batch_mode import run_batch_job

    api.configure(batch_seconds=0.1)
    texts = [f"Doc {i % 5}: the same few texts again." for i in range(15)]
    job = make_job(texts=texts, max_tokens=32, mode="batch")
    job = run_batch_job(job.pk, poll_base=0.05, poll_cap=0.1)
    assert job.status == BatchJob.Status.SUCCEEDED and job.succeeded_count == 15
    assert api.stats()["batch"]["succeeded"] == 5
    items = list(job.items.order_by("position"))
    assert all(i.output == items[i.position % 5].output for i in items)
