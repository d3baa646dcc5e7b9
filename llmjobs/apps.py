from django.apps import AppConfig


class LlmjobsConfig(AppConfig):
    name = "llmjobs"
    verbose_name = "LLM jobs"
    default_auto_field = "django.db.models.BigAutoField"

    def import_models(self) -> None:
        super().import_models()
        from . import (
            api_rate,  # noqa: F401  (ApiRateCount: the REST API's shared rate limit)
            heartbeats,  # noqa: F401  (RunnerHeartbeat: a model outside models.py, issue 12)
            org_models,  # noqa: F401  (OrgGovernor: the shared rate limit, issue 12)
        )

    def ready(self) -> None:
        from . import (
            conf,  # noqa: F401  (connects the setting_changed receiver that clears the settings cache)
            webhooks,  # noqa: F401  (connects the receiver that sends job.finished webhooks)
        )
        from .web import middleware  # noqa: F401  (registers the async middleware's deploy check)
