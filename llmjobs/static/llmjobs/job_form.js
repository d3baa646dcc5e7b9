// New job form: show the paste box or the file fields, as the chosen source says
// (works without JS too). A static file, not an inline script: the CSP allows no inline script.
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
})();
