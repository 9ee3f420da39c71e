// Sorting and filtering without a library.
// Sorting: click a header of a table.sortable (or press Enter on it) to sort by that column,
// again to reverse. A cell's data-sort (numbers, verdict rank) wins over its text; cells with
// no number sort last.
// Filtering: every <select data-filter="KEY" data-table="ID"> hides the rows of table ID whose
// data-KEY differs from the chosen value ("" shows all); the element with data-count="ID"
// says how many rows are shown.
(function () {
  function key(cell, numeric) {
    var raw = cell.getAttribute("data-sort");
    if (raw === null) raw = cell.textContent.trim();
    if (!numeric) return raw.toLowerCase();
    var x = parseFloat(raw);
    return isNaN(x) ? null : x;
  }

  document.querySelectorAll("table.sortable").forEach(function (table) {
    var heads = table.tHead.rows[0].cells;
    Array.prototype.forEach.call(heads, function (th, col) {
      th.setAttribute("tabindex", "0");
      function sort() {
        var numeric = th.getAttribute("data-type") === "num";
        var dir = th.getAttribute("aria-sort") === "ascending" ? -1 : 1;
        Array.prototype.forEach.call(heads, function (h) { h.removeAttribute("aria-sort"); });
        th.setAttribute("aria-sort", dir === 1 ? "ascending" : "descending");
        var body = table.tBodies[0];
        var rows = Array.prototype.slice.call(body.rows);
        rows.sort(function (a, b) {
          var x = key(a.cells[col], numeric), y = key(b.cells[col], numeric);
          if (x === y) return 0;
          if (x === null) return 1;
          if (y === null) return -1;
          return (x < y ? -1 : 1) * dir;
        });
        rows.forEach(function (r) { body.appendChild(r); });
      }
      th.addEventListener("click", sort);
      th.addEventListener("keydown", function (ev) { if (ev.key === "Enter") sort(); });
    });
  });

  function applyFilters(tableId) {
    var table = document.getElementById(tableId);
    if (!table) return;
    var selects = document.querySelectorAll('select[data-table="' + tableId + '"]');
    var rows = Array.prototype.slice.call(table.tBodies[0].rows);
    var shown = 0;
    rows.forEach(function (row) {
      var keep = true;
      selects.forEach(function (sel) {
        var want = sel.value;
        if (want !== "" && row.getAttribute("data-" + sel.getAttribute("data-filter")) !== want) keep = false;
      });
      row.classList.toggle("filtered-out", !keep);
      if (keep) shown += 1;
    });
    var count = document.querySelector('[data-count="' + tableId + '"]');
    if (count) count.textContent = shown + " of " + rows.length + " rows shown";
  }

  document.querySelectorAll("select[data-filter]").forEach(function (sel) {
    sel.addEventListener("change", function () { applyFilters(sel.getAttribute("data-table")); });
  });
})();
