// New job form: show the paste box or the file fields, as the chosen source says
// (works without JS too). After a file is chosen, ask the server for its columns
// (CSV header, or the first JSONL record's keys) and turn the column box into a
// picker, with a preview of the first rows. A static file, not an inline script:
// the CSP allows no inline script.
(function () {
  const form = document.getElementById("job-form");
  if (!form) return;
  function sync() {
    const src = (form.querySelector("input[name=source]:checked") || {}).value || "paste";
    form.querySelectorAll(".src-paste").forEach(el => el.style.display = src === "paste" ? "contents" : "none");
    form.querySelectorAll(".src-file").forEach(el => el.style.display = src === "file" ? "contents" : "none");
  }
  form.addEventListener("change", sync);
  sync();

  const fileInput = form.querySelector("input[type=file][name=file]");
  const preview = document.getElementById("file-preview");
  if (!fileInput || !preview || !form.dataset.inspectUrl) return;

  function el(tag, text) { const e = document.createElement(tag); if (text !== undefined) e.textContent = text; return e; }

  function columnPicker(columns, format) {
    const current = form.querySelector("[name=column]");
    const chosen = current ? current.value : "";
    const select = el("select");
    select.name = "column";
    select.id = "id_column";
    select.appendChild(new Option(format === "jsonl" ? "(every field is a {placeholder})" : "(every column is a {placeholder})", ""));
    for (const c of columns) select.appendChild(new Option(c, c));
    const guess = columns.find(c => c === chosen) || columns.find(c => /^(text|review|body|content|document|message)$/i.test(c));
    if (guess) select.value = guess;
    if (current) current.replaceWith(select);
    const label = form.querySelector("label[for=id_column]");
    if (label) label.textContent = format === "jsonl" ? "JSONL field" : "CSV column";
  }

  function showPreview(data) {
    preview.replaceChildren();
    if (data.error) { preview.appendChild(el("p", data.error)).className = "errorlist"; preview.hidden = false; return; }
    const cols = data.columns.length ? data.columns : ["text"];
    const table = el("table");
    table.className = "preview";
    const head = el("tr");
    for (const c of cols) head.appendChild(el("th", c));
    table.appendChild(el("thead")).appendChild(head);
    const body = el("tbody");
    for (const r of data.rows) {
      const tr = el("tr");
      for (const c of cols) tr.appendChild(el("td", r[c] === undefined ? "" : r[c]));
      body.appendChild(tr);
    }
    table.appendChild(body);
    preview.appendChild(el("p", "First " + data.rows.length + " row(s) of the " + data.format.toUpperCase() + " file:"));
    preview.appendChild(table);
    preview.hidden = false;
  }

  fileInput.addEventListener("change", async () => {
    const file = fileInput.files && fileInput.files[0];
    if (!file) return;
    const body = new FormData();
    body.append("file", file);
    body.append("csrfmiddlewaretoken", form.querySelector("[name=csrfmiddlewaretoken]").value);
    try {
      const response = await fetch(form.dataset.inspectUrl, { method: "POST", body, credentials: "same-origin" });
      const data = await response.json();
      if (!data.error && data.columns.length) columnPicker(data.columns, data.format);
      showPreview(data);
      form.dataset.inspected = "1";
    } catch (e) { /* the free-text column box still works */ }
  });
  sync();
})();
