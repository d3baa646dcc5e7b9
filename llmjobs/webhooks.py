"""Webhooks: a signed ``job.finished`` event POSTed to a job's ``webhook_url``.

- When a job reaches a final state (succeeded, partially failed, failed, cancelled,
  or stopped by an aborted run), a ``WebhookDelivery`` row is written in the same
  transaction and ``deliver_webhook_task`` is enqueued after commit: the event is
  sent by a worker, never from a request.
- The body is ``{"event": "job.finished", "job": jobs.job_summary(job)}``. Headers:
  ``X-Llmjobs-Timestamp: <unix seconds>`` and ``X-Llmjobs-Signature:
  sha256=<hex HMAC-SHA256(secret, timestamp + "." + body)>``, the secret being the
  job owner's webhook secret (``manage.py api_token USER --json`` shows it). A
  receiver recomputes it over the raw body and refuses old timestamps (replay).
- A failed attempt (no 2xx, a network error, a timeout) is tried again with growing
  delays (``RETRY_DELAYS``, about a day in all), then the delivery is marked failed.
  Every attempt is logged on the delivery (admin, read-only).
- SSRF: URLs whose host resolves to a private, loopback, link-local, reserved or
  multicast address are refused, when the job is created and again before each
  attempt, unless ``LLMJOBS_WEBHOOK_ALLOW_PRIVATE``; redirects are not followed.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import ipaddress
import json
import logging
import secrets
import socket
import time
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import urlsplit

from django.db import transaction
from django.db.models.signals import post_save
from django.dispatch import receiver
from django.utils import timezone

from .conf import llmjobs_settings
from .exceptions import JobInputError
from .models import BatchJob, WebhookDelivery, WebhookSecret

__all__ = [
    "EVENT_FINISHED",
    "RETRY_DELAYS",
    "check_webhook_url",
    "deliver",
    "sign",
    "user_webhook_secret",
    "verify",
]

log = logging.getLogger(__name__)

EVENT_FINISHED = "job.finished"
SIGNATURE_HEADER = "X-Llmjobs-Signature"
TIMESTAMP_HEADER = "X-Llmjobs-Timestamp"
TIMEOUT = 10.0  # seconds per attempt
# Seconds before each retry: ~24 h in all, then the delivery is marked failed.
RETRY_DELAYS = (10, 30, 60, 300, 900, 1800, 3600, 7200, 14400, 28800, 28800, 3600)
USER_AGENT = "llmjobs-webhooks/1"


# --- signing ------------------------------------------------------------------------------


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """``sha256=<hex HMAC-SHA256(secret, timestamp + "." + body)>``."""
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def verify(secret: str, timestamp: str, body: bytes, signature: str, *, tolerance: float = 300.0) -> bool:
    """What a receiver does: the signature matches and the timestamp is recent."""
    try:
        age = abs(time.time() - int(timestamp))
    except ValueError:
        return False
    return age <= tolerance and hmac.compare_digest(sign(secret, timestamp, body), signature)


def user_webhook_secret(user: Any, *, rotate: bool = False) -> str:
    """The user's signing secret (made on first use; ``rotate`` makes a new one)."""
    if rotate:
        row, _ = WebhookSecret.objects.update_or_create(
            user=user, defaults={"secret": "whsec_" + secrets.token_hex(24)}
        )
        return row.secret
    row, _ = WebhookSecret.objects.get_or_create(user=user, defaults={"secret": "whsec_" + secrets.token_hex(24)})
    return row.secret


# --- SSRF ---------------------------------------------------------------------------------


def _is_public(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return not (
        ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_reserved or ip.is_multicast or ip.is_unspecified
    )


def check_webhook_url(url: str) -> str:
    """``url`` if a webhook may be sent there; else ``JobInputError`` (one line)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise JobInputError(f"webhook_url must be an http(s) URL with a host, got {url!r}")
    if len(url) > 2000:
        raise JobInputError("webhook_url is over 2000 characters")
    if llmjobs_settings().webhook_allow_private:
        return url
    try:
        infos = socket.getaddrinfo(parts.hostname, parts.port or (443 if parts.scheme == "https" else 80))
    except (socket.gaierror, UnicodeError) as exc:
        raise JobInputError(f"webhook_url: cannot resolve {parts.hostname!r} ({exc})") from None
    for info in infos:
        address = str(info[4][0])
        if not _is_public(address):
            raise JobInputError(
                f"webhook_url: {parts.hostname} resolves to {address}, a private or loopback address "
                "(set LLMJOBS_WEBHOOK_ALLOW_PRIVATE to allow it)"
            )
    return url


# --- the event ----------------------------------------------------------------------------


@receiver(post_save, sender=BatchJob, dispatch_uid="llmjobs-webhook-job-finished")
def _job_saved(sender: Any, instance: BatchJob, update_fields: Any = None, **kwargs: Any) -> None:
    """A job state change that finished it (``mark_finished``, ``mark_cancelled``, ``mark_failed``)."""
    if not instance.webhook_url or not update_fields or "status" not in update_fields:
        return
    if instance.status not in BatchJob.FINISHED_STATUSES or "finished_at" not in update_fields:
        return
    job_finished(instance)


def job_finished(job: BatchJob) -> WebhookDelivery | None:
    """Record a ``job.finished`` delivery for ``job`` and enqueue it after commit. The body
    is written by the first attempt, after commit, so it shows the job's final counters."""
    if not job.webhook_url:
        return None
    delivery = WebhookDelivery.objects.create(job=job, event=EVENT_FINISHED, url=job.webhook_url, body="")
    transaction.on_commit(lambda: _enqueue(delivery.pk))
    return delivery


def event_body(job: BatchJob, event: str = EVENT_FINISHED) -> str:
    """The JSON body of an event: ``{"event", "job": jobs.job_summary(job)}`` (compact)."""
    from .jobs import job_summary

    return json.dumps({"event": event, "job": job_summary(job)}, ensure_ascii=False, separators=(",", ":"))


def _enqueue(delivery_id: int, run_after: datetime.datetime | None = None) -> bool:
    from .tasks import deliver_webhook_task

    task = deliver_webhook_task
    if run_after is not None:
        if not task.get_backend().supports_defer:
            log.warning("webhook delivery %s: the task backend cannot defer a retry", delivery_id)
            return False
        task = task.using(run_after=run_after)
    try:
        task.enqueue(delivery_id)
    except Exception:
        log.exception("could not enqueue webhook delivery %s", delivery_id)
        return False
    return True


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # a redirect is an answer (3xx), never followed


_opener = urllib.request.build_opener(_NoRedirect)


def _post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int | None, str]:
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with _opener.open(request, timeout=TIMEOUT) as response:
            return int(response.status), ""
    except urllib.error.HTTPError as exc:
        return int(exc.code), f"HTTP {exc.code}"
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return None, f"{type(exc).__name__}: {reason}"[:500]


def deliver(delivery_id: int) -> WebhookDelivery | None:
    """One attempt at ``delivery_id`` (the task's body); schedules the next one on failure."""
    delivery = WebhookDelivery.objects.select_related("job").filter(pk=delivery_id).first()
    if delivery is None or delivery.status != WebhookDelivery.Status.PENDING:
        return delivery
    owner = delivery.job.owner
    if not delivery.body:  # the first attempt: the job as it is now, kept for every retry
        delivery.body = event_body(delivery.job, delivery.event)
    body = delivery.body.encode()
    now = timezone.now()
    code: int | None = None
    if owner is None:
        error = "the job has no owner, so there is no webhook secret to sign with"
    else:
        try:
            check_webhook_url(delivery.url)
        except JobInputError as exc:
            error = str(exc)
        else:
            timestamp = str(int(time.time()))
            headers = {
                "Content-Type": "application/json",
                "User-Agent": USER_AGENT,
                "X-Llmjobs-Event": delivery.event,
                "X-Llmjobs-Delivery": str(delivery.pk),
                TIMESTAMP_HEADER: timestamp,
                SIGNATURE_HEADER: sign(user_webhook_secret(owner), timestamp, body),
            }
            code, error = _post(delivery.url, body, headers)
    delivery.attempts += 1
    delivery.last_status_code = code
    delivery.last_error = error
    delivery.log = [*delivery.log, {"at": now.isoformat(), "status_code": code, "error": error}][-50:]
    if code is not None and 200 <= code < 300:
        delivery.status = WebhookDelivery.Status.DELIVERED
        delivery.delivered_at = now
        delivery.next_attempt_at = None
    elif delivery.attempts > len(RETRY_DELAYS) or owner is None:
        delivery.status = WebhookDelivery.Status.FAILED
        delivery.next_attempt_at = None
    else:
        delivery.next_attempt_at = now + datetime.timedelta(seconds=RETRY_DELAYS[delivery.attempts - 1])
    delivery.save()
    if delivery.status == WebhookDelivery.Status.PENDING and delivery.next_attempt_at is not None:
        when = delivery.next_attempt_at
        transaction.on_commit(lambda: _enqueue(delivery.pk, run_after=when))
    return delivery
