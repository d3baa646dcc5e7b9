"""The streaming views over a real socket, against the real app under uvicorn."""

from __future__ import annotations

import http.client
import time

from .conftest import HttpSession, read_event


def wait_for(predicate, timeout: float = 5.0) -> bool:
    """Poll until true; a bounded wait, not a timing assertion."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_closing_the_connection_cancels_the_upstream_request(live_app, sim):
    # A long answer: ~40 tokens/s for up to 2,000 tokens would take most of a minute.
    sim.configure(ttft=0.05, tps=40.0)
    session = HttpSession(live_app)
    session.login("alice")
    conn, response = session.open_stream(
        "/playground/stream",
        {"prompt": "Write a very long essay about owls.", "model": "claude-haiku-4-5", "max_tokens": "2000"},
    )
    try:
        assert response.status == 200
        assert response.getheader("Content-Type").startswith("text/event-stream")
        names = []
        while names.count("token") < 5:  # past the first events: the coalesced part of the stream
            names.append(read_event(response)[0])
        assert names[:2] == ["start", "ttft"]
        assert sim.stats(brief=True)["in_flight"] == 1  # the upstream call is streaming
    finally:
        conn.sock.close()  # the browser tab goes away mid-answer
        conn.close()
    assert wait_for(lambda: sim.stats(brief=True)["in_flight"] == 0), sim.stats(brief=True)
    assert sim.stats(brief=True)["requests"] == 1


def test_progress_stream_over_http_ends_when_the_job_is_finished(live_app, sim):
    session = HttpSession(live_app)
    session.login("alice")
    status, _ = session.request(
        "POST",
        "/jobs/new/",
        {
            "csrfmiddlewaretoken": session.cookies["csrftoken"],
            "source": "paste",
            "texts": "a\nb\nc",
            "prompt_template": "Say: {text}",
            "model": "claude-haiku-4-5",
            "max_tokens": "16",
            "action": "run",
            "name": "http job",
        },
    )
    assert status == 302
    job_id = int(session.location.strip("/").split("/")[-1])
    live_app.run_worker()
    conn, response = session.open_stream(f"/jobs/{job_id}/events", {})  # POST is refused...
    assert response.status == 405
    conn.close()
    conn = http.client.HTTPConnection(live_app.host, live_app.port, timeout=30)
    try:
        conn.request(
            "GET", f"/jobs/{job_id}/events", headers={"Cookie": session._cookie_header(), "Accept-Encoding": "gzip"}
        )
        response = conn.getresponse()
        assert response.status == 200 and response.getheader("Content-Encoding") == "identity"
        events = []
        while not events or events[-1][0] != "done":
            events.append(read_event(response))
        assert events[-1][1]["status"] == "succeeded" and events[-1][1]["percent"] == 100.0
        assert response.read() == b""  # and the stream is over
    finally:
        conn.close()
    staff = HttpSession(live_app)
    staff.login("admin")
    assert staff.request("GET", f"/jobs/{job_id}/events")[0] == 200  # staff see every job
    assert HttpSession(live_app).request("GET", f"/jobs/{job_id}/events")[0] == 302  # to the login page
