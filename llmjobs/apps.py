from django.apps import AppConfig


class LlmjobsConfig(AppConfig):
    name = "llmjobs"
    verbose_name = "LLM jobs"
    default_auto_field = "django.db.models.BigAutoField"
