"""Security checks against the real app under uvicorn (ASGI), over a real socket."""

from __future__ import annotations

import http.client

from .conftest import PASSWORD, HttpSession


def _attempt(session: HttpSession, path: str, username: str, password: str) -> tuple[int, bytes]:
    session.request("GET", path)
    return session.request(
        "POST", path, {"username": username, "password": password, "csrfmiddlewaretoken": session.cookies["csrftoken"]}
    )


def test_login_lockout_and_csp_under_asgi(live_app):
    # Its own user: locking out alice or admin would break the other end-to-end tests.
    live_app.manage(
        "shell",
        "-c",
        "from django.contrib.auth import get_user_model as g;"
        f"g().objects.create_user('lockme', password={PASSWORD!r}, is_staff=True)",
    )
    for path in ("/accounts/login/", "/admin/login/"):
        session = HttpSession(live_app)
        statuses = [_attempt(session, path, "lockme", "wrong")[0] for _ in range(5)]
        assert statuses == [200, 200, 200, 200, 429], (path, statuses)
        status, body = _attempt(session, path, "lockme", PASSWORD)  # even the right password, now
        assert status == 429 and b"Too many failed logins" in body and b"Try again in 15 minutes" in body
        assert "sessionid" not in session.cookies
        live_app.manage("axes_reset_username", "lockme")  # what an administrator does to unlock
        assert _attempt(HttpSession(live_app), path, "lockme", PASSWORD)[0] == 302
    # The policy is on the real responses too.
    session = HttpSession(live_app)
    session.login("alice")
    conn = http.client.HTTPConnection(live_app.host, live_app.port, timeout=30)
    try:
        conn.request("GET", "/jobs/new/", headers={"Cookie": session._cookie_header()})
        response = conn.getresponse()
        csp = response.getheader("Content-Security-Policy") or ""
        assert response.status == 200 and "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert response.getheader("X-Content-Type-Options") == "nosniff"
    finally:
        conn.close()
