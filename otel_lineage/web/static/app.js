// Enhancements only: every page works without this file.
// The drop zone: dropping a PDF on it fills the file field and submits the identify form.
document.addEventListener("DOMContentLoaded", () => {
  const zone = document.getElementById("drop-zone");
  const input = document.getElementById("identify-file");
  const form = document.getElementById("identify-form");
  if (!zone || !input || !form) return;
  for (const name of ["dragenter", "dragover"]) {
    zone.addEventListener(name, (event) => { event.preventDefault(); zone.classList.add("dragging"); });
  }
  for (const name of ["dragleave", "drop"]) {
    zone.addEventListener(name, () => zone.classList.remove("dragging"));
  }
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    if (!event.dataTransfer || event.dataTransfer.files.length !== 1) return;
    input.files = event.dataTransfer.files;
    form.requestSubmit();
  });
});
