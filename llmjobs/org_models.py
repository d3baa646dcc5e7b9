"""The shared governor's models (issue 12 part 3; the logic is in ``llmjobs.org_governor``).
A module of its own, imported by ``apps.LlmjobsConfig.import_models`` next to ``models``."""

from __future__ import annotations

from django.db import models
from django.utils import timezone

__all__ = ["OrgGovernor", "OrgGovernorMember"]


class OrgGovernor(models.Model):
    """One org-wide rate limit: what every process using the same API key (and base URL) and
    model family learned and must respect. The key is never stored: ``key_hash`` is
    HMAC-SHA256 of (base URL + key) with ``SECRET_KEY``."""

    key_hash = models.CharField(max_length=64)
    family = models.CharField(max_length=64, help_text="Model family (haiku, sonnet, opus...).")
    rpm = models.FloatField(null=True, blank=True, help_text="Learned requests per minute.")
    itpm = models.FloatField(null=True, blank=True, help_text="Learned input tokens per minute.")
    otpm = models.FloatField(null=True, blank=True, help_text="Learned output tokens per minute.")
    paused_until = models.DateTimeField(null=True, blank=True, help_text="The org's pause after a 429.")
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["key_hash", "family"], name="llmjobs_orggovernor_key_family")]

    def __str__(self) -> str:
        return f"org governor {self.family} {self.key_hash[:8]}"


class OrgGovernorMember(models.Model):
    """One engine run drawing its share of an ``OrgGovernor``: refreshed every exchange, deleted
    when the run ends; a row not seen for a few seconds belongs to a dead or stuck process."""

    governor = models.ForeignKey(OrgGovernor, on_delete=models.CASCADE, related_name="members")
    member_id = models.CharField(max_length=64, unique=True)
    job_id = models.BigIntegerField(null=True, blank=True)
    worker_host = models.CharField(max_length=255, blank=True, default="")
    worker_pid = models.PositiveIntegerField(null=True, blank=True)
    in_flight = models.PositiveIntegerField(default=0)
    seen_at = models.DateTimeField(default=timezone.now, db_index=True)

    def __str__(self) -> str:
        return f"member {self.member_id} of {self.governor_id}"
