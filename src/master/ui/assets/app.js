// dist-traceroute dashboard: opens a matrix cell's series on a click and keeps the overview
// current from the live stream (GET /api/v1/stream), without reloading the page.
"use strict";

function seriesHref(slave, target) {
  return "/ui/series?slave=" + encodeURIComponent(slave) + "&target=" + encodeURIComponent(target);
}

function ms(ns) {
  const v = ns / 1e6;
  return v < 10 ? v.toFixed(2) : v < 100 ? v.toFixed(1) : v.toFixed(0);
}

function latencyClass(v) {
  return v < 5 ? "l0" : v < 20 ? "l1" : v < 50 ? "l2" : v < 100 ? "l3" : v < 200 ? "l4" : "l5";
}

// The destination's RTT of a result as the results API gives it: its last hop when it
// reached, else none.
function destinationRtt(r) {
  if (!r.success || !r.hops || r.hops.length === 0) return null;
  let last = r.hops[0];
  for (const h of r.hops) if (h.ttl > last.ttl) last = h;
  return last.rtt_ns;
}

function setupMatrix(table) {
  const columns = new Map();
  const heads = table.tHead.rows[0].cells;
  for (let i = 1; i < heads.length; i++) columns.set(heads[i].dataset.t, i);
  const rows = new Map();
  for (const tr of table.tBodies[0].rows) rows.set(tr.dataset.s, tr);

  table.addEventListener("click", (ev) => {
    const td = ev.target.closest("td");
    if (!td || td.textContent === "") return;
    const tr = td.parentElement;
    const th = heads[td.cellIndex];
    if (tr.dataset.s && th && th.dataset.t) location.href = seriesHref(tr.dataset.s, th.dataset.t);
  });

  function cell(slave, target) {
    const tr = rows.get(slave);
    const col = columns.get(target);
    if (!tr || col === undefined) return null;
    return tr.cells[col];
  }

  function onResult(r) {
    const td = cell(r.slave, r.target_id);
    if (!td) return;
    const rtt = destinationRtt(r);
    const changed = td.classList.contains("c");
    td.className = r.success ? "r" : "u";
    if (rtt !== null) td.classList.add(latencyClass(rtt / 1e6));
    if (changed) td.classList.add("c");
    td.textContent = String(r.hop_count);
    if (rtt !== null) {
      const i = document.createElement("i");
      i.textContent = ms(rtt);
      td.appendChild(i);
    }
    td.classList.add("flash");
    setTimeout(() => td.classList.remove("flash"), 1500);
    const tr = rows.get(r.slave);
    const small = tr && tr.cells[0].querySelector("small");
    const dot = tr && tr.cells[0].querySelector(".dot");
    if (small) small.textContent = "just now";
    if (dot) dot.className = "dot on";
  }

  function onEvent(e) {
    if (e.kind === "path-change") {
      const td = cell(e.slave, e.target_id);
      if (td) td.classList.add("c");
    }
    const list = document.getElementById("events");
    if (!list) return;
    const none = list.querySelector(".none");
    if (none) none.remove();
    const li = document.createElement("li");
    li.className = "ev " + e.kind;
    const time = document.createElement("time");
    time.textContent = String(e.at).replace("T", " ").replace(/\.\d+Z$/, "Z");
    const b = document.createElement("b");
    b.textContent = e.kind;
    li.append(time, " ", b, " " + e.slave + " → " + e.target_name);
    list.prepend(li);
    while (list.children.length > 50) list.lastElementChild.remove();
  }

  const live = document.getElementById("live");
  const source = new EventSource("/api/v1/stream");
  source.addEventListener("open", () => {
    if (live) { live.textContent = "live"; live.className = "live on"; }
  });
  source.addEventListener("error", () => {
    if (live) { live.textContent = "live: reconnecting"; live.className = "live off"; }
  });
  source.addEventListener("result", (m) => onResult(JSON.parse(m.data)));
  source.addEventListener("event", (m) => onEvent(JSON.parse(m.data)));
  source.addEventListener("reset", () => location.reload());
}

document.addEventListener("DOMContentLoaded", () => {
  const matrix = document.getElementById("matrix");
  if (matrix) setupMatrix(matrix);
});
