"""The cost fields of jobs and items (issue 14), as abstract models ``BatchJob`` and ``Item`` inherit."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django.db import models
from django.db.models import Q, Sum
from django.db.models.functions import Coalesce

__all__ = ["ItemCostFields", "JobCostFields"]


class JobCostFields(models.Model):
    """Mode, cache tokens, cost so far, savings, budget, estimate and dedup of a job."""

    class Mode(models.TextChoices):
        ONLINE = "online", "Online"
        BATCH = "batch", "Batch: 50% cheaper, results within 24 h"

    mode = models.CharField(max_length=8, choices=Mode.choices, default=Mode.ONLINE, db_index=True)
    cache_creation_input_tokens = models.PositiveBigIntegerField(default=0)
    cache_read_input_tokens = models.PositiveBigIntegerField(default=0)
    cost_usd = models.DecimalField(
        max_digits=14, decimal_places=6, default=Decimal(0), help_text="USD spent so far (genai-prices)."
    )
    saved_usd = models.DecimalField(
        max_digits=14, decimal_places=6, default=Decimal(0), help_text="USD saved by cache reads and dedup."
    )
    budget_usd = models.DecimalField(
        max_digits=14, decimal_places=6, null=True, blank=True, help_text="Stop dispatching before passing this."
    )
    estimated_cost_usd = models.DecimalField(
        max_digits=14, decimal_places=6, null=True, blank=True, help_text="Estimated before running."
    )
    dedup = models.BooleanField(default=True, help_text="Send identical requests once.")

    batch_state = models.JSONField(
        default=dict, blank=True, help_text="Batch mode: the Message Batches sent (ids, states, counts)."
    )
    COST_COUNTERS = ("cache_creation_input_tokens", "cache_read_input_tokens", "cost_usd")

    class Meta:
        abstract = True

    @staticmethod
    def cost_sums() -> dict[str, Any]:
        """Aggregates of the items' cache tokens and cost, for ``BatchJob._recount``."""
        paid = Q(reused=False)  # answers reused from a cloned job were paid for there
        return {
            "cache_creation": Coalesce(Sum("cache_creation_input_tokens", filter=paid), 0),
            "cache_read": Coalesce(Sum("cache_read_input_tokens", filter=paid), 0),
            "cost": Sum("cost_usd", filter=paid),
        }

    def set_costs(self, counts: dict[str, Any], table_estimate: Decimal) -> None:
        self.cache_creation_input_tokens = int(counts["cache_creation"])
        self.cache_read_input_tokens = int(counts["cache_read"])
        self.cost_usd = counts["cost"] or Decimal(0)
        self.cost_estimate = self.cost_usd or table_estimate


class ItemCostFields(models.Model):
    """Cache tokens and the cost of one item's request."""

    cache_creation_input_tokens = models.PositiveIntegerField(null=True, blank=True)
    cache_read_input_tokens = models.PositiveIntegerField(null=True, blank=True)
    cost_usd = models.DecimalField(
        max_digits=14, decimal_places=6, null=True, blank=True, help_text="USD for this request; empty: unknown."
    )

    COST_FIELDS = ("cache_creation_input_tokens", "cache_read_input_tokens", "cost_usd")

    class Meta:
        abstract = True
