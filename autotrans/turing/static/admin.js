// Admin progress page: token from the URL fragment, progress counts only.
"use strict";
(function () {
  const token = decodeURIComponent(location.hash.replace(/^#/, ""));
  const body = document.querySelector("#progress tbody");
  const err = document.getElementById("admin-error");

  function cell(row, text) {
    const td = document.createElement("td");
    td.textContent = text;
    row.appendChild(td);
    return td;
  }

  async function refresh() {
    const r = await fetch("/api/admin/progress", { headers: { Authorization: "Bearer " + token } });
    if (!r.ok) {
      err.textContent = r.status === 403 ? "This admin link is not valid." : "Server error " + r.status;
      err.hidden = false;
      return;
    }
    err.hidden = true;
    const data = await r.json();
    body.replaceChildren();
    for (const p of data.readers) {
      const tr = document.createElement("tr");
      cell(tr, p.reader);
      cell(tr, p.answered + " / " + p.total);
      const bar = document.createElement("div");
      bar.className = "bar";
      const fill = document.createElement("span");
      fill.style.width = (100 * p.answered / Math.max(1, p.total)).toFixed(1) + "%";
      bar.appendChild(fill);
      cell(tr, "").appendChild(bar);
      cell(tr, p.last_answer_at ? new Date(p.last_answer_at * 1000).toLocaleString() : "-");
      body.appendChild(tr);
    }
  }
  refresh();
  setInterval(refresh, 10000);
})();
