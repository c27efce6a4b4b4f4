/* vlmbench leaderboard tables: sort by column, filter rows. No network, no innerHTML: untrusted
   names only ever pass through textContent and data-* attributes. Without JavaScript the tables are
   plain HTML in rank order and the controls stay hidden. */
(function () {
  "use strict";

  function sortKey(cell, numeric) {
    var raw = cell.getAttribute("data-sort");
    if (numeric) {
      if (raw === null || raw === "") return null;
      var x = parseFloat(raw);
      return isNaN(x) ? null : x;
    }
    return (raw !== null ? raw : cell.textContent).trim().toLowerCase();
  }

  function compare(a, b, numeric, dir) {
    if (a === null && b === null) return 0;
    if (a === null) return 1; /* missing values last, whatever the direction */
    if (b === null) return -1;
    var c = numeric ? a - b : a.localeCompare(b);
    return dir === "ascending" ? c : -c;
  }

  function sortBy(table, th, col) {
    var numeric = th.getAttribute("data-type") === "num";
    var current = th.getAttribute("aria-sort");
    var dir = current === "ascending" ? "descending" : current === "descending" ? "ascending"
      : (th.getAttribute("data-first") || (numeric ? "descending" : "ascending"));
    var heads = table.tHead.rows[0].cells;
    for (var i = 0; i < heads.length; i++) {
      if (heads[i].hasAttribute("data-type")) heads[i].setAttribute("aria-sort", "none");
    }
    th.setAttribute("aria-sort", dir);
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    var keyed = rows.map(function (row, i) {
      return { row: row, i: i, key: sortKey(row.cells[col], numeric) };
    });
    keyed.sort(function (a, b) { return compare(a.key, b.key, numeric, dir) || a.i - b.i; });
    keyed.forEach(function (k) { body.appendChild(k.row); });
  }

  function applyFilters(table, box) {
    var text = box.querySelector("[data-filter=text]");
    var query = text ? text.value.trim().toLowerCase() : "";
    var selects = box.querySelectorAll("select[data-filter]");
    var ranked = box.querySelector("[data-filter=ranked]");
    var rows = table.tBodies[0].rows, shown = 0;
    for (var i = 0; i < rows.length; i++) {
      var row = rows[i], ok = !query || row.textContent.toLowerCase().indexOf(query) >= 0;
      for (var j = 0; ok && j < selects.length; j++) {
        var want = selects[j].value, field = selects[j].getAttribute("data-filter");
        if (!want) continue;
        if (field === "state") {
          var sep = want.indexOf(":"), kind = want.slice(0, sep), value = want.slice(sep + 1);
          ok = kind === "status" ? row.getAttribute("data-status") === value
            : (row.getAttribute("data-flags") || "").indexOf("|" + value + "|") >= 0;
        } else {
          ok = row.getAttribute("data-" + field) === want;
        }
      }
      if (ok && ranked && ranked.checked) ok = row.getAttribute("data-ranked") === "1";
      row.hidden = !ok;
      if (ok) shown++;
    }
    var out = box.querySelector("output");
    if (out) out.textContent = shown + " of " + rows.length + " rows shown";
  }

  function setup(table) {
    var heads = table.tHead.rows[0].cells;
    Array.prototype.forEach.call(heads, function (th, col) {
      if (!th.hasAttribute("data-type")) return;
      th.setAttribute("aria-sort", "none");
      th.tabIndex = 0;
      th.classList.add("sortable");
      th.addEventListener("click", function () { sortBy(table, th, col); });
      th.addEventListener("keydown", function (e) {
        if (e.key === "Enter" || e.key === " ") { e.preventDefault(); sortBy(table, th, col); }
      });
    });
    var box = document.querySelector('.controls[data-for="' + table.id + '"]');
    if (!box) return;
    box.hidden = false;
    box.addEventListener("input", function () { applyFilters(table, box); });
    box.addEventListener("change", function () { applyFilters(table, box); });
    applyFilters(table, box);
  }

  var tables = document.querySelectorAll("table.sortable-table");
  for (var i = 0; i < tables.length; i++) setup(tables[i]);
})();
