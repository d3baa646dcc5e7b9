// Streams one answer from the playground view: a POST (with the CSRF token) whose
// body is Server-Sent Events, read with fetch() + a stream reader. Text is added
// with textContent, never as HTML. "Stop" aborts the request; the server then
// cancels the upstream API call.
(function () {
  "use strict";
  const form = document.getElementById("playground-form");
  if (!form) return;
  const $ = (id) => document.getElementById(id);
  const answer = $("answer"), status = $("pg-status"), errorBox = $("pg-error");
  let controller = null;

  function showError(message) { errorBox.textContent = message; errorBox.hidden = false; }

  function handle(name, data) {
    if (name === "ttft") $("ttft").textContent = data.ms + " ms";
    else if (name === "token") answer.textContent += data.text;
    else if (name === "done") {
      $("total").textContent = data.total_ms + " ms";
      $("tokens").textContent = (data.input_tokens ?? "?") + " in / " + (data.output_tokens ?? "?") + " out";
      status.textContent = "done (" + (data.stop_reason || "end") + ")";
      form.dataset.done = "1";
    } else if (name === "error") { showError(data.type + ": " + data.message); status.textContent = "error"; }
  }

  function parseBlock(block) {
    let name = "message", data = "";
    for (const line of block.split("\n")) {
      if (line.startsWith("event:")) name = line.slice(6).trim();
      else if (line.startsWith("data:")) data += line.slice(5).replace(/^ /, "");
    }
    if (data) handle(name, JSON.parse(data));
  }

  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    if (controller) controller.abort();
    controller = new AbortController();
    answer.textContent = ""; errorBox.hidden = true; delete form.dataset.done;
    $("ttft").textContent = $("total").textContent = $("tokens").textContent = "–";
    status.textContent = "waiting for the first token…";
    $("send").disabled = true; $("stop").disabled = false;
    try {
      const response = await fetch(form.action, {
        method: "POST", body: new FormData(form), signal: controller.signal,
        headers: { "Accept": "text/event-stream" }, credentials: "same-origin",
      });
      if (!response.ok) {
        let message = "HTTP " + response.status;
        try {
          const body = await response.json();
          message = Object.entries(body.errors || {}).map(([f, errs]) => f + ": " + errs.map(e => e.message).join(" ")).join("; ") || message;
        } catch (e) { /* not JSON */ }
        showError(message); status.textContent = "";
        return;
      }
      status.textContent = "streaming…";
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          parseBlock(buffer.slice(0, end));
          buffer = buffer.slice(end + 2);
        }
      }
    } catch (e) {
      if (e.name === "AbortError") status.textContent = "stopped";
      else showError(String(e));
    } finally {
      $("send").disabled = false; $("stop").disabled = true; controller = null;
    }
  });
  $("stop").addEventListener("click", () => { if (controller) controller.abort(); });
})();
