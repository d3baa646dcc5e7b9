// The job page's results table over fetch: filter by status, search input and output,
// sort by #, tokens or cost, and "Load more" with a keyset cursor (the JSON endpoint's `next`).
// Without JS the server-rendered, paginated table still works. Text only: every value
// goes in with textContent, never as HTML. A static file: the CSP allows no inline script.
(function () {
  "use strict";
  let state = null;

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = text;
    return e;
  }

  function row(r) {
    const tr = el("tr");
    tr.dataset.position = r.position;
    tr.dataset.status = r.status;
    const num = el("td", "num");
    const a = el("a", null, String(r.position));
    a.href = r.url;
    num.appendChild(a);
    if (r.custom_id) num.appendChild(el("div", "small muted", r.custom_id));
    tr.appendChild(num);
    tr.appendChild(el("td", "small", r.text));
    const st = el("td");
    st.appendChild(el("span", "badge " + r.status, r.status_label));
    if (r.attempts > 1) st.appendChild(el("div", "small muted", r.attempts + " attempts"));
    if (r.reused) st.appendChild(el("div", "small muted", "reused"));
    tr.appendChild(st);
    const out = el("td", "output");
    if (r.output) out.appendChild(el("pre", null, r.output));
    if (r.error_type) {
      const err = el("div", "small", r.error_type + ": " + r.error_message);
      err.style.color = "var(--bad)";
      out.appendChild(err);
    }
    tr.appendChild(out);
    const tokens = el("td", "num small", r.output_tokens === null ? "" : r.input_tokens + " / " + r.output_tokens);
    if (r.cost !== null && r.output_tokens !== null) tokens.appendChild(el("div", "muted", "$" + Number(r.cost).toFixed(5)));
    tr.appendChild(tokens);
    const lat = el("td", "num small", r.latency_ms === null ? "" : r.latency_ms + " ms");
    if (r.ttft_ms !== null) lat.appendChild(el("div", "muted", "ttft " + r.ttft_ms + " ms"));
    tr.appendChild(lat);
    return tr;
  }

  async function load(append) {
    const s = state;
    const params = new URLSearchParams({ status: s.status.value, q: s.search.value, sort: s.sort.value });
    if (append && s.next) params.set("after", s.next);
    const seq = ++s.seq;
    s.root.dataset.loading = "1";
    let data;
    try {
      const response = await fetch(s.url + "?" + params, { credentials: "same-origin", headers: { Accept: "application/json" } });
      if (!response.ok) return;
      data = await response.json();
    } catch (e) { return; } finally { if (seq === s.seq) delete s.root.dataset.loading; }
    if (seq !== s.seq) return;  // a newer request superseded this one
    if (!append) { s.body.replaceChildren(); s.shown = 0; }
    for (const r of data.rows) s.body.appendChild(row(r));
    s.shown += data.rows.length;
    if (!s.shown) {
      const tr = el("tr"), td = el("td", "muted", "No items match.");
      td.colSpan = 6; tr.appendChild(td); s.body.appendChild(tr);
    }
    s.next = data.next;
    s.moreBox.hidden = !data.next;
    s.count.textContent = data.next ? " " + s.shown + " shown" : "";
    s.root.dataset.loaded = String(s.seq);
  }

  function init() {
    const root = document.getElementById("results");
    if (!root || !root.dataset.resultsUrl) return;
    const $ = (id) => document.getElementById(id);
    state = {
      root, url: root.dataset.resultsUrl, body: $("results-body"), next: null, seq: 0, shown: 0,
      status: $("r-status"), search: $("r-search"), sort: $("r-sort"),
      moreBox: $("results-more-box"), count: $("results-count"),
    };
    const current = new URLSearchParams(window.location.search).get("status");
    if (current) state.status.value = current;
    $("results-controls").hidden = false;
    for (const id of ["results-links", "results-pages"]) { const e = $(id); if (e) e.hidden = true; }
    let timer = null;
    state.search.addEventListener("input", () => { clearTimeout(timer); timer = setTimeout(() => load(false), 250); });
    state.status.addEventListener("change", () => load(false));
    state.sort.addEventListener("change", () => load(false));
    $("results-controls").addEventListener("submit", (ev) => { ev.preventDefault(); load(false); });
    $("results-more").addEventListener("click", () => load(true));
    load(false);
  }

  document.addEventListener("llmjobs:results-replaced", init);
  init();
})();
