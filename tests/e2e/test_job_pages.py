"""Issue 16 in a real browser: live progress to the end and the item page, filter and search,
clone with only changed items, Run (Resume) on a stopped job, the column picker after upload.

Set ``LLMJOBS_SCREENSHOTS=docs`` to save docs/job.png, docs/item.png and docs/form.png.
"""

from __future__ import annotations

import re

from .conftest import login, screenshot


def _new_job(page, name: str, lines: list[str], template: str, action: str = "run", concurrency: str = "") -> int:
    page.goto("/jobs/new/")
    page.fill("#id_name", name)
    page.fill("#id_texts", "\n".join(lines))
    page.fill("#id_prompt_template", template)
    page.fill("#id_max_tokens", "40")
    page.fill("#id_concurrency", concurrency)
    page.click(f"button[name=action][value={action}]")
    page.wait_for_url(re.compile(r"/jobs/\d+/$"))
    return int(re.search(r"/jobs/(\d+)/$", page.url).group(1))


def _wait_results(page, count: int) -> None:
    for _ in range(400):  # bounded
        if (
            page.locator("#results-body tr[data-position]").count() == count
            and page.get_attribute("#results", "data-loading") is None
        ):
            return
        page.wait_for_timeout(25)
    raise AssertionError(f"expected {count} rows, saw {page.locator('#results-body tr[data-position]').count()}")


def test_live_progress_to_the_end_then_the_item_page(page, live_app, sim):
    sim.configure(ttft=0.2, tps=80.0)  # 24 items, 4 at a time: about 1.5 s to watch
    login(page, "alice")
    lines = [f"Review {i}: the owl lamp is {'great' if i % 2 else 'broken'} and arrived on time." for i in range(24)]
    job_id = _new_job(page, "Lamp reviews", lines, "Classify as positive or negative: {text}", concurrency="4")
    assert "is queued" in page.inner_text(".messages")
    assert "Classify as positive or negative:" in page.inner_text("#settings")
    assert page.inner_text("#settings mark.ph") == "{text}"
    page.wait_for_selector("#live-dot.on")
    worker = live_app.start_worker()
    try:
        seen = set()
        for _ in range(800):  # bounded
            seen.add(page.inner_text("#percent"))
            if page.get_attribute("#job", "data-finished") == "1":
                break
            page.wait_for_timeout(25)
        page.wait_for_selector("#job[data-finished='1']")
        assert worker.wait(timeout=60) == 0
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
        worker.stderr.close()
    assert page.inner_text("#percent") == "100%" and len(seen) >= 2
    page.wait_for_selector("#job[data-refreshed='1']")  # results, buttons and timeline swapped in place
    _wait_results(page, 24)  # the table reloaded over fetch after the job finished
    assert page.locator("#results-body td.output pre").count() == 24
    timeline = page.inner_text("#timeline").lower()
    assert "queued" in timeline and "finished" in timeline and "\u2013" not in timeline
    assert page.locator("#clone-button").is_visible()
    page.wait_for_timeout(600)  # cosmetic only: let the progress bar's CSS transition end before the screenshot
    screenshot(page, "job.png", full_page=True)

    page.click("#results-body tr[data-position='3'] a")
    page.wait_for_url(f"**/jobs/{job_id}/items/3/")
    assert "Review 3: the owl lamp is great" in page.inner_text("#i-prompt")
    assert page.inner_text("#i-prompt").startswith("Classify as positive or negative:")
    assert page.inner_text("#i-output-text")
    assert page.inner_text("#i-stop") in {"end_turn", "max_tokens"}
    assert re.fullmatch(r"\d+ / \d+", page.inner_text("#i-tokens"))
    assert page.inner_text("#i-cost").startswith("$")
    screenshot(page, "item.png", full_page=True)
    page.click("#next-item")
    page.wait_for_url(f"**/jobs/{job_id}/items/4/")


def test_filter_search_and_sort_the_results(page, live_app, sim):
    login(page, "alice")
    lines = [f"Bird {i}: {'an owl hoots at night' if i % 3 == 0 else 'a robin sings at dawn'}" for i in range(60)]
    job_id = _new_job(page, "Birds", lines, "Name the bird: {text}")
    live_app.run_worker()
    page.goto(f"/jobs/{job_id}/")
    _wait_results(page, 50)  # one page of 50, then "Load more"
    assert page.locator("#results-more").is_visible()
    page.click("#results-more")
    _wait_results(page, 60)
    page.fill("#r-search", "owl hoots")
    _wait_results(page, 20)
    positions = [
        int(p)
        for p in page.locator("#results-body tr[data-position]").evaluate_all("rs => rs.map(r => r.dataset.position)")
    ]
    assert positions == list(range(0, 60, 3))
    page.select_option("#r-status", "failed")
    for _ in range(200):
        if page.locator("#results-body td.muted").count() == 1:
            break
        page.wait_for_timeout(25)
    assert page.inner_text("#results-body") == "No items match."
    page.select_option("#r-status", "succeeded")
    page.fill("#r-search", "")
    page.select_option("#r-sort", "tokens")
    _wait_results(page, 50)


def test_clone_with_only_changed_items_pays_only_for_the_rest(page, live_app, sim):
    login(page, "alice")
    lines = [f"Question {i}: how far can an owl see?" for i in range(12)]
    source_id = _new_job(page, "Owl questions", lines, "Answer briefly: {text}", action="draft")
    assert "Not started" in page.inner_text("#status")
    page.click("text=Preview 5")  # the first 5 items are answered now
    page.wait_for_selector(".messages")
    sim.reset()
    page.click("#clone-button")
    page.wait_for_url(f"**/jobs/{source_id}/clone/")
    assert page.input_value("#id_prompt_template") == "Answer briefly: {text}"
    assert page.is_checked("#id_only_changed")
    assert page.is_checked("input[name=source][value=job]")
    page.click("button[name=action][value=run]")
    page.wait_for_url(re.compile(r"/jobs/\d+/$"))
    clone_id = int(re.search(r"/jobs/(\d+)/$", page.url).group(1))
    assert clone_id != source_id
    assert "5 unchanged item(s) reuse the answers" in page.inner_text(".messages")
    live_app.run_worker()
    page.goto(f"/jobs/{clone_id}/")
    assert "Succeeded" in page.inner_text("#status")
    assert sim.stats()["requests"] == 7  # only the 7 unanswered items were sent
    _wait_results(page, 12)
    assert page.locator("#results-body div:text('reused')").count() == 5


def test_run_on_a_stopped_job(page, live_app, sim):
    login(page, "alice")
    job_id = _new_job(page, "Stopped", [f"Line {i} about owls" for i in range(8)], "Echo: {text}", action="draft")
    live_app.manage(
        "shell",
        "-c",
        f"from llmjobs.jobs import job_cancel; from llmjobs.models import BatchJob; job_cancel(job=BatchJob.objects.get(pk={job_id}))",
    )
    page.goto(f"/jobs/{job_id}/")
    assert "Cancelled" in page.inner_text("#status")
    assert page.inner_text("#run-button") == "Resume"
    page.click("#run-button")
    page.wait_for_selector(".messages")
    assert "queued again: 8 stopped item(s)" in page.inner_text(".messages")
    live_app.run_worker()
    page.goto(f"/jobs/{job_id}/")
    assert "Succeeded" in page.inner_text("#status")
    assert page.inner_text("#s-done") == "8 / 8"
    assert page.locator("#run-button").count() == 0


def test_column_picker_after_upload_and_a_form_error_keeps_the_file(page, live_app, sim):
    login(page, "alice", next_url="/jobs/new/")
    page.check("input[name=source][value=file]")
    csv = "id,review,stars\n" + "".join(f"{i},The owl lamp number {i} is lovely,{i % 5 + 1}\n" for i in range(8))
    page.set_input_files("#id_file", {"name": "reviews.csv", "mimeType": "text/csv", "buffer": csv.encode()})
    page.wait_for_selector("select#id_column")
    options = page.locator("select#id_column option").all_inner_texts()
    assert options[1:] == ["id", "review", "stars"]
    assert page.input_value("select#id_column") == "review"  # guessed from the name
    assert page.locator("#file-preview tbody tr").count() == 5
    assert "The owl lamp number 0 is lovely" in page.inner_text("#file-preview")
    page.fill("#id_prompt_template", "Classify as positive or negative: {text} ({stars} stars)")
    screenshot(page, "form.png", full_page=True)
    page.fill("#id_prompt_template", "Classify: {text} ({stars} stars) {missing}")
    page.click("button[name=action][value=draft]")
    page.wait_for_selector(".errors-form")
    assert "missing" in page.inner_text(".errors-form")
    assert "reviews.csv" in page.inner_text("#stashed-file")  # the file is kept
    page.fill("#id_prompt_template", "Classify: {text} ({stars} stars)")
    page.check("input[name=source][value=file]")
    page.click("button[name=action][value=draft]")
    page.wait_for_url(re.compile(r"/jobs/\d+/$"))
    assert "saved (not started yet)" in page.inner_text(".messages")
    assert "8" in page.inner_text("#s-done")
