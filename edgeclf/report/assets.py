"""The page's inline stylesheet and its few lines of dependency-free table sorting."""

CSS = """
:root { --fg: #1d2330; --muted: #5d6677; --line: #d9dee7; --accent: #2457c5; --bad: #a4262c; --bg2: #f5f7fa; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", "DejaVu Sans", sans-serif; color: var(--fg); }
header { padding: 20px 32px 12px; background: linear-gradient(90deg, #eef3fc, #fff); border-bottom: 1px solid var(--line); }
h1 { margin: 0 0 4px; font-size: 22px; }
h2 { margin: 28px 0 10px; padding-bottom: 4px; border-bottom: 2px solid var(--accent); font-size: 18px; }
h3 { margin: 20px 0 8px; font-size: 15px; }
.path, .small, footer { color: var(--muted); font-size: 12px; word-break: break-all; }
.cards { display: flex; flex-wrap: wrap; gap: 10px; margin-top: 12px; }
.card { border: 1px solid var(--line); border-radius: 8px; padding: 8px 14px; background: #fff; min-width: 120px; }
.card .v { font-size: 20px; font-weight: 600; color: var(--accent); }
.card .k { font-size: 12px; color: var(--muted); }
nav { position: sticky; top: 0; background: #fff; border-bottom: 1px solid var(--line); padding: 6px 32px; z-index: 1; }
nav a { margin-right: 16px; color: var(--accent); text-decoration: none; font-weight: 500; }
main { padding: 0 32px 24px; max-width: 1400px; }
footer { padding: 12px 32px 24px; }
table { border-collapse: collapse; margin: 6px 0 12px; font-size: 13px; }
th, td { border: 1px solid var(--line); padding: 3px 8px; text-align: right; vertical-align: top; }
td:not([data-v]), th:first-child { text-align: left; }
th { background: var(--bg2); cursor: pointer; user-select: none; white-space: nowrap; }
th.asc::after { content: " \\25B2"; font-size: 9px; } th.desc::after { content: " \\25BC"; font-size: 9px; }
tbody tr:nth-child(even) { background: #fafbfd; }
.plot { display: block; max-width: 100%; height: auto; margin: 8px 0; border: 1px solid var(--line); }
.plot.square { max-width: 560px; }
.thumb { width: 64px; height: 64px; image-rendering: pixelated; border: 1px solid var(--line); margin: 2px; }
.row { display: flex; flex-wrap: wrap; gap: 24px; align-items: flex-start; }
figure.samples { margin: 0 12px 4px 0; }
figure.samples figcaption { font-weight: 600; font-size: 12px; overflow-wrap: anywhere; max-width: 272px; }
.grid { display: flex; flex-wrap: wrap; gap: 8px; }
figure.wrong { margin: 0; width: 120px; font-size: 11px; text-align: center; }
.missing { color: var(--bad); font-style: italic; }
.problems { margin: 12px 32px 0; padding: 8px 14px; border: 1px solid #e8b4b6; background: #fdf1f1; border-radius: 6px; }
.problems ul { margin: 4px 0 0; padding-left: 20px; }
dl.kv { display: grid; grid-template-columns: max-content 1fr; gap: 2px 16px; margin: 4px 0; font-size: 13px; }
dl.kv dt { color: var(--muted); } dl.kv dd { margin: 0; word-break: break-all; }
"""

# Click a header to sort its table; numeric cells carry their value in data-v.
SORT_JS = """
document.querySelectorAll("table.sortable th").forEach(function (th, column) {
  th.addEventListener("click", function () {
    var table = th.closest("table"), body = table.tBodies[0];
    var index = Array.prototype.indexOf.call(th.parentNode.children, th);
    var ascending = !th.classList.contains("asc");
    table.querySelectorAll("th").forEach(function (h) { h.classList.remove("asc", "desc"); });
    th.classList.add(ascending ? "asc" : "desc");
    var key = function (row) {
      var cell = row.children[index];
      return cell.hasAttribute("data-v") ? parseFloat(cell.getAttribute("data-v")) : cell.textContent;
    };
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = key(a), y = key(b);
      var order = (typeof x === "number" && typeof y === "number") ? x - y : String(x).localeCompare(String(y));
      return ascending ? order : -order;
    });
    rows.forEach(function (row) { body.appendChild(row); });
  });
});
"""
