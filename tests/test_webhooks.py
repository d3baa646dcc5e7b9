"""Webhooks: a job's job.finished event, sent by a real worker (django-tasks-db's
``db_worker --batch``, in process) to a real HTTP server (``http.server`` in a
thread), signed with the owner's secret and verified here as a receiver would."""

from __future__ import annotations

import http.server
import json
import threading
import time

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command

from llmjobs.exceptions import JobInputError
from llmjobs.jobs import job_cancel, job_create, job_enqueue, job_summary
from llmjobs.models import BatchJob, WebhookDelivery
from llmjobs.webhooks import RETRY_DELAYS, check_webhook_url, deliver, sign, user_webhook_secret, verify

pytestmark = pytest.mark.django_db(transaction=True)


class Receiver:
    """A local HTTP server that records each POST; ``status`` is what it answers."""

    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.status = 200
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.requests.append((dict(self.headers.items()), body))
                self.send_response(receiver.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/llmjobs"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


@pytest.fixture
def setup(sim, settings):
    settings.ANTHROPIC_API_KEY = ""
    settings.LLMJOBS_SIMULATOR_URL = sim.base_url
    settings.LLMJOBS_WEBHOOK_ALLOW_PRIVATE = True  # the receiver is on localhost
    user = get_user_model().objects.create_user("hooks", password="pw-hooks-123")
    return user


def run_worker() -> None:
    call_command("db_worker", "--batch", "--no-startup-delay", "--queue-name", "*", "--interval", "0.05")


def test_a_finished_job_posts_a_signed_event_from_the_worker(setup, receiver):
    user = setup
    job = job_create(
        name="hooked", template="Summarize: {text}", model="claude-haiku-4-5", owner=user,
        texts=["one", "two", "three"], webhook_url=receiver.url,
    )  # fmt: skip
    job_enqueue(job=job)
    assert receiver.requests == []  # nothing is sent from the request that made the job
    run_worker()  # runs the job, then the delivery task the finish enqueued

    job.refresh_from_db()
    assert job.status == BatchJob.Status.SUCCEEDED
    assert len(receiver.requests) == 1
    headers, body = receiver.requests[0]
    secret = user_webhook_secret(user)
    timestamp, signature = headers["X-Llmjobs-Timestamp"], headers["X-Llmjobs-Signature"]
    assert signature == sign(secret, timestamp, body)  # sha256=HMAC(secret, timestamp + "." + body)
    assert signature.startswith("sha256=") and verify(secret, timestamp, body, signature)
    assert abs(int(timestamp) - time.time()) < 600
    assert not verify("whsec_wrong", timestamp, body, signature)
    assert not verify(secret, str(int(timestamp) - 3600), body, sign(secret, str(int(timestamp) - 3600), body))
    event = json.loads(body)
    assert event["event"] == "job.finished" and headers["X-Llmjobs-Event"] == "job.finished"
    assert event["job"] == job_summary(job)  # what GET /api/v1/jobs/{id} shows
    assert event["job"]["status"] == "succeeded" and event["job"]["counts"]["succeeded"] == 3

    delivery = WebhookDelivery.objects.get(job=job)
    assert (delivery.status, delivery.attempts, delivery.last_status_code) == ("delivered", 1, 200)
    assert delivery.log[0]["status_code"] == 200 and delivery.body.encode() == body


def test_a_refused_delivery_is_logged_and_scheduled_again(setup, receiver):
    receiver.status = 503
    job = job_create(
        name="down", template="{text}", model="claude-haiku-4-5", owner=setup, texts=["a"], webhook_url=receiver.url
    )
    job_cancel(job=job)  # a final state: cancelled
    delivery = WebhookDelivery.objects.get(job=job)
    run_worker()  # the first attempt; the retry is deferred (run_after), so the batch ends
    delivery.refresh_from_db()
    event = json.loads(delivery.body)
    assert event["job"]["status"] == "cancelled" and event["job"]["counts"]["cancelled"] == 1  # final counters
    assert receiver.requests[0][1] == delivery.body.encode()
    assert len(receiver.requests) == 1
    assert (delivery.status, delivery.attempts, delivery.last_status_code) == ("pending", 1, 503)
    assert delivery.last_error == "HTTP 503" and delivery.next_attempt_at is not None
    assert sum(RETRY_DELAYS) >= 24 * 3600  # retried for a day

    receiver.status = 200
    deliver(delivery.pk)  # what the deferred task does when it runs
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts, len(delivery.log)) == ("delivered", 2, 2)
    deliver(delivery.pk)  # delivered: never sent twice
    assert len(receiver.requests) == 2

    WebhookDelivery.objects.filter(pk=delivery.pk).update(status="pending", attempts=len(RETRY_DELAYS))
    receiver.status = 500
    deliver(delivery.pk)
    delivery.refresh_from_db()
    assert delivery.status == "failed" and delivery.next_attempt_at is None  # given up after a day


def test_private_and_loopback_urls_are_refused_unless_allowed(settings):
    settings.LLMJOBS_WEBHOOK_ALLOW_PRIVATE = False
    for url in ("http://127.0.0.1:8000/x", "http://localhost/x", "http://10.1.2.3/x", "http://169.254.169.254/",
                "http://[::1]/x", "http://192.168.0.10/x"):  # fmt: skip
        with pytest.raises(JobInputError, match="private or loopback"):
            check_webhook_url(url)
    with pytest.raises(JobInputError, match="http"):
        check_webhook_url("file:///etc/passwd")
    with pytest.raises(JobInputError, match="private or loopback"):
        job_create(name="x", template="{text}", model="claude-haiku-4-5", texts=["a"], webhook_url="http://127.0.0.1/")
    assert not BatchJob.objects.exists()
    settings.LLMJOBS_WEBHOOK_ALLOW_PRIVATE = True
    assert check_webhook_url("http://127.0.0.1:8000/x") == "http://127.0.0.1:8000/x"


def test_a_job_without_webhook_url_sends_nothing(setup):
    job = job_create(name="quiet", template="{text}", model="claude-haiku-4-5", owner=setup, texts=["a"])
    job_cancel(job=job)
    assert not WebhookDelivery.objects.exists()
