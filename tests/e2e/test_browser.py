"""In a real browser (headless chromium): submit a job and watch it finish live,
download the results, stream in the playground, preview from the admin."""

from __future__ import annotations

import csv
import io
import re

from .conftest import login, screenshot


def test_submit_a_job_watch_it_live_to_100_percent_and_download(page, live_app, sim):
    # Slow enough to watch: each answer streams for about half a second, 5 at a time.
    sim.configure(ttft=0.05, tps=80.0)
    login(page, "alice")
    page.click("text=New job")
    page.fill("#id_name", "Owl facts")
    lines = "\n".join(f"Fact {i}: owls can turn their heads about 270 degrees." for i in range(40))
    page.fill("#id_texts", lines)
    page.fill("#id_prompt_template", "Rewrite as a short headline: {text}")
    page.fill("#id_max_tokens", "40")
    page.fill("#id_concurrency", "5")
    page.click("button[name=action][value=run]")
    page.wait_for_url(re.compile(r"/jobs/\d+/$"))
    assert "is queued" in page.inner_text(".messages")
    page.evaluate("window.__sameDocument = true")  # survives only if the page never reloads
    page.wait_for_selector("#live-dot.on")  # the EventSource is connected

    worker = live_app.start_worker()
    try:
        seen: set[str] = set()
        for _ in range(600):  # bounded: the worker finishes in a few seconds
            seen.add(page.inner_text("#percent"))
            if page.get_attribute("#job", "data-finished") == "1":
                break
            page.wait_for_timeout(25)
        page.wait_for_selector("#job[data-finished='1']")
        assert worker.wait(timeout=60) == 0, worker.stderr.read()
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
        worker.stderr.close()

    assert page.evaluate("window.__sameDocument") is True  # no reload happened
    assert page.inner_text("#percent") == "100%"
    assert page.inner_text("#s-done") == "40 / 40"
    assert "Succeeded" in page.inner_text("#status")
    print("percent readings seen live:", sorted(seen, key=lambda s: int(s.rstrip("%"))))
    assert len(seen) >= 3, seen  # it moved while we watched
    page.wait_for_selector("#results td.output pre")  # the results table refreshed in place
    assert page.locator("#results td.output pre").count() == 40
    screenshot(page, "job.png")

    with page.expect_download() as download_info:
        page.click("#download-csv")
    download = download_info.value
    assert download.suggested_filename == "Owl-facts.csv"  # named after the job
    with open(download.path(), encoding="utf-8") as f:
        rows = list(csv.DictReader(io.StringIO(f.read())))
    assert [r["text"] for r in rows] == lines.splitlines()  # input order, input columns split
    assert all(r["status"] == "succeeded" and r["output"] for r in rows)
    with page.expect_download() as download_info:
        page.click("#download-jsonl")
    assert download_info.value.suggested_filename.endswith(".jsonl")


def test_playground_streams_text(page, live_app, sim):
    sim.configure(ttft=0.1, tps=60.0)
    login(page, "alice", next_url="/playground/")
    page.fill("#id_prompt", "Explain in two sentences why asyncio helps with slow network calls.")
    page.fill("#id_max_tokens", "80")
    page.click("#send")
    # Text arrives while the answer is still streaming, then the stream completes.
    # Polled from Python: the page's CSP forbids eval, which wait_for_function's string needs.
    partial = ""
    for _ in range(2000):
        partial = page.inner_text("#answer")
        if partial and page.get_attribute("#playground-form", "data-done") is None:
            break
        page.wait_for_timeout(10)
    page.wait_for_selector("#playground-form[data-done='1']")
    final = page.inner_text("#answer")
    assert len(final) > len(partial) > 0
    assert re.fullmatch(r"\d+ ms", page.inner_text("#ttft"))
    assert "done" in page.inner_text("#pg-status")
    screenshot(page, "playground.png")


def test_admin_preview_action_shows_outputs(page, live_app, sim):
    login(page, "admin", next_url="/jobs/new/")
    page.fill("#id_name", "Preview me")
    page.fill("#id_texts", "\n".join(f"Question {i}: what do owls eat?" for i in range(12)))
    page.click("button[name=action][value=draft]")
    page.wait_for_url(re.compile(r"/jobs/\d+/$"))
    job_id = re.search(r"/jobs/(\d+)/$", page.url).group(1)

    page.goto("/admin/llmjobs/batchjob/")
    page.check(f"input[name=_selected_action][value='{job_id}']")
    page.select_option("select[name=action]", "preview")
    page.click("button[name=index]")
    messages = page.locator("ul.messagelist li")
    messages.first.wait_for()
    texts = [t for t in messages.all_inner_texts() if "Preview of item" in t]
    assert len(texts) == 5
    assert texts[0].startswith(f"#{job_id} Preview me: Preview of item 0: ")
    assert all(len(t) > len(f"#{job_id} Preview me: Preview of item 0: ") for t in texts)
    assert "5 / 0 / 12" in page.inner_text("#result_list")  # the previewed answers are kept
