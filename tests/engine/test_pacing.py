"""The engine's client: one TLS context per process (issue 17: loop lag)."""

from __future__ import annotations

from llmjobs.engine import make_client


def test_clients_share_one_tls_context(monkeypatch):
    import httpcore2

    made = []
    real = httpcore2.default_ssl_context  # what loads the CA bundle
    monkeypatch.setattr(httpcore2, "default_ssl_context", lambda **k: made.append(1) or real(**k))
    from llmjobs.engine import client as client_module

    client_module._ssl_context.cache_clear()
    for _ in range(3):
        make_client(base_url="http://127.0.0.1:9", api_key="k")
    assert len(made) == 1  # not one CA-bundle load (20-40 ms on the loop) per client
