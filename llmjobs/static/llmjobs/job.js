// Live progress of a job over Server-Sent Events (EventSource), no dependencies.
// The server sends `progress` events while the job runs and `done` when it stops.
// EventSource reconnects by itself when the stream drops; after `done` we close it
// (otherwise the browser would reconnect to a finished stream forever).
(function () {
  "use strict";
  const root = document.getElementById("job");
  if (!root) return;
  const $ = (id) => document.getElementById(id);
  const dot = $("live-dot"), label = $("live-label");
  const nf = new Intl.NumberFormat();
  let source = null, lastPlot = 0, wasActive = root.dataset.active === "1";

  function text(id, value) { const el = $(id); if (el) el.textContent = value; }

  function eta(seconds) {
    if (seconds === null || seconds === undefined) return "–";
    if (seconds < 60) return Math.ceil(seconds) + " s";
    if (seconds < 3600) return Math.floor(seconds / 60) + " min " + Math.round(seconds % 60) + " s";
    return Math.floor(seconds / 3600) + " h " + Math.round((seconds % 3600) / 60) + " min";
  }

  function refreshPlot(force) {
    const now = Date.now();
    if (!force && now - lastPlot < 3000) return;
    lastPlot = now;
    $("plot").src = root.dataset.plotUrl + "?t=" + now;
  }

  function render(p) {
    const status = $("status");
    status.replaceChildren();
    const badge = document.createElement("span");
    badge.className = "badge " + p.status;
    badge.textContent = p.status_label;
    status.appendChild(badge);
    text("percent", Math.floor(p.percent) + "%");
    $("bar").style.width = p.percent + "%";
    text("s-done", nf.format(p.done) + " / " + nf.format(p.total));
    text("s-succeeded", nf.format(p.succeeded));
    text("s-failed", nf.format(p.failed));
    text("s-cancelled", nf.format(p.cancelled));
    text("s-rate", p.items_per_s === null ? "–" : p.items_per_s.toFixed(1));
    text("s-eta", p.active ? eta(p.eta_s) : "–");
    let retries = p.retries === null ? "–" : nf.format(p.retries);
    if (p.rate_limited !== null && p.rate_limited !== undefined) retries = nf.format(p.rate_limited) + " 429s · " + retries;
    text("s-retries", retries);
    text("s-tokens", nf.format(p.input_tokens) + " / " + nf.format(p.output_tokens));
    text("s-cost", p.cost === "unknown" ? "unknown" : "$" + Number(p.cost).toFixed(4));
    const box = $("errors-box"), list = $("errors");
    list.replaceChildren();
    for (const e of p.errors || []) {
      const li = document.createElement("li");
      li.textContent = "item " + e.position + ": " + e.type + ": " + e.message;  // text, never HTML
      list.appendChild(li);
    }
    text("last-error", p.last_error || "");
    $("last-error").hidden = !p.last_error;
    box.hidden = !(p.last_error || (p.errors && p.errors.length));
    root.dataset.percent = p.percent;
    root.dataset.status = p.status;
    refreshPlot(false);
  }

  async function refreshResults() {
    // The job stopped: fetch this page again and swap in the results and buttons.
    try {
      const response = await fetch(window.location.href, { credentials: "same-origin" });
      if (!response.ok) return;
      const doc = new DOMParser().parseFromString(await response.text(), "text/html");
      for (const id of ["results", "job-actions", "timeline"]) {
        const fresh = doc.getElementById(id), old = document.getElementById(id);
        if (fresh && old) old.replaceWith(fresh);
      }
      document.dispatchEvent(new CustomEvent("llmjobs:results-replaced"));  // results.js takes the new table over
      root.dataset.refreshed = "1";
    } catch (e) { /* keep the old table */ }
  }

  function connect() {
    source = new EventSource(root.dataset.eventsUrl);
    source.onopen = () => { dot.classList.add("on"); label.textContent = "live"; };
    source.addEventListener("progress", (ev) => render(JSON.parse(ev.data)));
    source.addEventListener("done", (ev) => {
      const p = JSON.parse(ev.data);
      if (p.total !== undefined) render(p);
      source.close();
      dot.classList.remove("on");
      label.textContent = p.status === "draft" ? "not running" : "finished";
      root.dataset.finished = "1";
      refreshPlot(true);
      if (wasActive) refreshResults();
      wasActive = false;
    });
    source.onerror = () => {
      // The stream dropped (server restart, network): EventSource retries on its own.
      dot.classList.remove("on");
      label.textContent = "reconnecting…";
    };
  }
  connect();
})();
