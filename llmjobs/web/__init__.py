"""The browser and HTTP surfaces: views, forms, URLs, the SSE helpers, the live
progress stream and the streaming playground.

Surfaces only parse input, call one service (``llmjobs.jobs``) and render the
result. Templates stay under ``llmjobs/templates/llmjobs/`` (their names are
``llmjobs/<page>.html``).
"""
