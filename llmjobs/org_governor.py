"""One org-wide rate limit shared by every process (issue 12 part 3): the Django side.

A row per (keyed hash of base URL + API key, model family) in the database the workers
already share (``OrgGovernor``), and a row per engine run drawing from it
(``OrgGovernorMember``). :func:`share_limits` runs beside a job's engine (one task in
the runner): :class:`llmjobs.engine.shared.SharedLimits` calls :class:`OrgExchange`
on a thread of its own every ~0.3 s (every second while it is alone on the row) and
at once after a 429. One exchange is one short transaction: lock the row, refresh this member, merge the learned limits and the pause,
count the live members (seen within ``LIVE_SECONDS``) and their calls in flight. Each
live member gets 1/N of the limits. Alone on the row (one process, SQLite) the share
is 1: the run paces exactly as it would alone, for one small transaction a second.

The API key is never stored: ``key_hash`` is HMAC-SHA256 of (base URL + key) keyed
with ``SECRET_KEY``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
import uuid
from dataclasses import dataclass

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Count, Sum
from django.utils import timezone

from .conf import api_target, llmjobs_settings
from .engine.governor import Governor
from .engine.shared import Grant, LocalState, SharedLimits
from .org_models import OrgGovernor, OrgGovernorMember
from .workers import worker_identity

__all__ = ["OrgExchange", "OrgState", "key_hash", "key_in_use", "model_family", "org_state", "share_limits"]

LIVE_SECONDS = 3.0  # a member not seen for this long no longer takes a share
STALE_SECONDS = 60.0  # ... and is deleted after this long
_FAMILY = re.compile(r"(haiku|sonnet|opus)", re.IGNORECASE)


def key_hash(base_url: str | None, api_key: str) -> str:
    """HMAC-SHA256 (keyed with SECRET_KEY) of base URL + API key: the key itself is never stored."""
    msg = f"{base_url or ''}\n{api_key}".encode()
    return hmac.new(settings.SECRET_KEY.encode(), msg, hashlib.sha256).hexdigest()


def model_family(model: str) -> str:
    """The family the API's limits apply to (haiku, sonnet, opus); else the model name."""
    found = _FAMILY.search(model or "")
    return found.group(1).lower() if found else (model or "")[:64]


def _ts(value: dt.datetime | None) -> float:
    return value.timestamp() if value is not None else 0.0


class OrgExchange:
    """``exchange(local_state) -> grant`` for one engine run (called on the shared thread)."""

    def __init__(self, *, key: str, family: str, job_id: int | None = None) -> None:
        self.key = key
        self.family = family
        self.job_id = job_id
        self.member_id = uuid.uuid4().hex
        self._row_id: int | None = None
        self._calls = 0

    def __call__(self, state: LocalState) -> Grant:
        try:
            return self._exchange(state)
        except Exception:
            connection.close()  # a fresh connection on the next try
            raise
        finally:
            if state.leaving:
                connection.close()  # this thread's own connection

    def _exchange(self, state: LocalState) -> Grant:
        now = timezone.now()
        if self._row_id is None:
            row, _ = OrgGovernor.objects.get_or_create(key_hash=self.key, family=self.family)
            self._row_id = row.pk
        self._calls += 1
        with transaction.atomic():
            row = OrgGovernor.objects.select_for_update().get(pk=self._row_id)
            members = OrgGovernorMember.objects.filter(governor_id=row.pk)
            if state.leaving:
                members.filter(member_id=self.member_id).delete()
            elif not members.filter(member_id=self.member_id).update(seen_at=now, in_flight=state.in_flight):
                me = worker_identity()
                OrgGovernorMember.objects.create(
                    governor=row,
                    member_id=self.member_id,
                    job_id=self.job_id,
                    worker_host=me["worker_host"],
                    worker_pid=me["worker_pid"],
                    in_flight=state.in_flight,
                    seen_at=now,
                )
            fields = []
            for name in ("rpm", "itpm", "otpm"):
                value = getattr(state, name)
                if value and value != getattr(row, name):
                    setattr(row, name, value)
                    fields.append(name)
            if state.paused_until > _ts(row.paused_until):
                row.paused_until = dt.datetime.fromtimestamp(state.paused_until, dt.UTC)
                fields.append("paused_until")
            if fields:  # (nothing learned: no write; ``updated_at`` is when the row last changed)
                row.updated_at = now
                row.save(update_fields=[*fields, "updated_at"])
            live = members.filter(seen_at__gte=now - dt.timedelta(seconds=LIVE_SECONDS)).aggregate(
                n=Count("id"), flying=Sum("in_flight")
            )
            if self._calls % 100 == 1:
                members.filter(seen_at__lt=now - dt.timedelta(seconds=STALE_SECONDS)).delete()
        n = max(1, live["n"] or 0)
        return Grant(
            share=1.0 / n,
            paused_until=_ts(row.paused_until),
            members=n,
            in_flight=live["flying"] or 0,
            rpm=row.rpm,
            itpm=row.itpm,
            otpm=row.otpm,
        )


async def share_limits(governor: Governor, *, model: str, job_id: int | None = None) -> None:
    """Keep ``governor`` on its share of the org's limits until cancelled (the run ended).
    A no-op with ``LLMJOBS_SHARED_GOVERNOR`` off."""
    if not llmjobs_settings().shared_governor:
        return
    target = api_target()
    exchange = OrgExchange(key=key_hash(target.base_url, target.api_key), family=model_family(model), job_id=job_id)
    await SharedLimits(governor, exchange).run()


@dataclass(frozen=True, slots=True)
class OrgState:
    """The shared governor of one key + model family, for people (job_status, the job page)."""

    family: str
    rpm: float | None
    itpm: float | None
    otpm: float | None
    paused_for: float  # seconds of the org's pause left (0: none)
    in_flight: int  # calls in flight across the live members
    members: int  # runs sharing it now

    def describe(self) -> str:
        def fmt(v: float | None, unit: str) -> str:
            return f"{v:,.0f} {unit}" if v else f"? {unit}"

        pause = f"paused {self.paused_for:.1f} s" if self.paused_for > 0 else "not paused"
        return (
            f"{self.family}: {fmt(self.rpm, 'RPM')}, {fmt(self.itpm, 'ITPM')}, {fmt(self.otpm, 'OTPM')} learned; "
            f"{pause}; {self.in_flight} in flight across {self.members} run(s)"
        )


def key_in_use(model: str) -> bool:
    """Whether the org governor shows live runs on this key + model family now."""
    state = org_state(model)
    return state is not None and state.members > 0


def org_state(model: str) -> OrgState | None:
    """The shared governor the current API target uses for ``model``, or None (never used)."""
    target = api_target()
    row = OrgGovernor.objects.filter(
        key_hash=key_hash(target.base_url, target.api_key), family=model_family(model)
    ).first()
    if row is None:
        return None
    now = timezone.now()
    live = row.members.filter(seen_at__gte=now - dt.timedelta(seconds=LIVE_SECONDS)).aggregate(
        n=Count("id"), flying=Sum("in_flight")
    )
    return OrgState(
        family=row.family,
        rpm=row.rpm,
        itpm=row.itpm,
        otpm=row.otpm,
        paused_for=max(0.0, _ts(row.paused_until) - now.timestamp()),
        in_flight=live["flying"] or 0,
        members=live["n"] or 0,
    )
