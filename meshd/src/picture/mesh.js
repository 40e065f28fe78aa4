// The picture of the mesh: fetches mesh.json (the whole cluster as this node sees it) every
// few seconds and draws it in plain SVG. No framework, nothing fetched but mesh.json.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const REFRESH_MS = 2000;
const RADIUS = 60;
const svg = document.getElementById("mesh");

function el(name, attrs, parent, text) {
  const e = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v !== undefined && v !== null) e.setAttribute(k, v);
  }
  if (text !== undefined) e.textContent = text;
  if (parent) parent.appendChild(e);
  return e;
}

function title(parent, text) {
  el("title", {}, parent, text);
}

// Nodes on an ellipse as wide as the view allows, this node at the top, the others in name
// order.
function layout(nodes, w, h) {
  const pos = new Map();
  const ry = Math.max(RADIUS * 2, h / 2 - RADIUS - 30);
  const rx = Math.max(RADIUS * 2, Math.min(w / 2 - RADIUS - 40, ry * 1.7));
  const cx = w / 2, cy = h / 2;
  const ordered = nodes.filter(n => n.state === "self").concat(nodes.filter(n => n.state !== "self"));
  ordered.forEach((n, i) => {
    const a = -Math.PI / 2 + (2 * Math.PI * i) / Math.max(1, ordered.length);
    pos.set(n.name, ordered.length === 1 ? { x: cx, y: cy } : { x: cx + rx * Math.cos(a), y: cy + ry * Math.sin(a) });
  });
  return pos;
}

function rtt(v) {
  return v.rtt_ms === null || v.rtt_ms === undefined ? "" : " " + v.rtt_ms.toFixed(2) + " ms";
}

function viewText(v) {
  const route = v.route && v.route !== "direct" ? " " + v.route : "";
  const said = v.age_secs === 0 ? "now" : v.age_secs + " s ago";
  return v.reporter + " → " + v.peer + ", as " + v.reporter + " reports (" + said + "): " +
    v.path + route + rtt(v) + ", MTU " + v.mtu + ", " + v.health + (v.reason ? ": " + v.reason : "");
}

function drawPair(p, pos, many) {
  const a = pos.get(p.a), b = pos.get(p.b);
  if (!a || !b) return;
  const mid = { x: (a.x + b.x) / 2, y: (a.y + b.y) / 2 };
  const g = el("g", { class: "pair", "data-a": p.a, "data-b": p.b, "data-health": p.health }, svg);
  title(g, p.a + " — " + p.b + ": " + p.health + (p.reason ? " (" + p.reason + ")" : ""));
  for (const [end, other, at] of [[p.a, p.b, a], [p.b, p.a, b]]) {
    const v = p.views.find(x => x.reporter === end);
    const health = p.health === "down" ? "down" : (v ? v.health : "unknown");
    const line = el("line", {
      class: "half " + health, x1: at.x, y1: at.y, x2: mid.x, y2: mid.y,
      "data-reporter": end, "data-path": v ? v.path : "", "data-health": health,
    }, g);
    title(line, v ? viewText(v) : end + " → " + other + ": no report from " + end +
      (p.reason ? " (" + p.reason + ")" : ""));
    // Each end's word beside its own half, a third of the way along.
    if (!many && v && p.health !== "down") {
      const far = end === p.a ? b : a;
      const t = Math.min(0.36, (RADIUS + 70) / Math.max(1, Math.hypot(far.x - at.x, far.y - at.y)));
      const x = at.x + (far.x - at.x) * t, y = at.y + (far.y - at.y) * t;
      el("text", { class: "label", x: x, y: y - 5 }, g, v.path + rtt(v));
    }
  }
  if (!many && (p.health === "down" || p.views.length === 0)) {
    el("text", { class: "label", x: mid.x, y: mid.y - 6 }, g, p.health);
  }
}

function drawNode(n, at) {
  const g = el("g", { class: "node " + n.state, "data-name": n.name, "data-state": n.state }, svg);
  el("circle", { cx: at.x, cy: at.y, r: RADIUS }, g);
  el("text", { class: "name", x: at.x, y: at.y - 4 }, g, n.name);
  el("text", { class: "sub", x: at.x, y: at.y + 13 }, g, n.subnet || "no subnet");
  el("text", { class: "sub state", x: at.x, y: at.y + RADIUS + 15 }, g, n.state + (n.since ? " since " + n.since : ""));
  const summary = n.state === "self" ? "this node" :
    (n.summary_age_secs === null || n.summary_age_secs === undefined ? "no path summary from it" :
      "its path summary is " + n.summary_age_secs + " s old" + (n.omitted ? ", " + n.omitted + " peers left out" : ""));
  title(g, n.name + " (" + n.state + (n.since ? " since " + n.since : "") + ")\n" +
    (n.subnet || "no subnet") + (n.address ? ", at " + n.address : "") + "\n" + summary);
}

function draw(m) {
  while (svg.firstChild) svg.removeChild(svg.firstChild);
  const w = svg.clientWidth || 1000, h = svg.clientHeight || 700;
  svg.setAttribute("viewBox", "0 0 " + w + " " + h);
  const pos = layout(m.nodes, w, h);
  const many = m.pairs.length > 60;
  for (const p of m.pairs) drawPair(p, pos, many);
  for (const n of m.nodes) drawNode(n, pos.get(n.name));
  document.getElementById("title").textContent = "the mesh as " + m.viewer + " sees it";
  const count = h => m.pairs.filter(p => p.health === h).length;
  document.getElementById("counts").textContent = m.nodes.length + " nodes, " + m.pairs.length +
    " pairs: " + count("ok") + " ok, " + count("degraded") + " degraded, " + count("down") + " down, " +
    count("unknown") + " unknown";
}

function status(text, stale) {
  const s = document.getElementById("status");
  s.textContent = text;
  s.className = stale ? "stale" : "";
}

async function refresh() {
  try {
    const r = await fetch("mesh.json", { cache: "no-store" });
    if (!r.ok) throw new Error("HTTP " + r.status);
    const m = await r.json();
    draw(m);
    status("as of " + m.at + " UTC, refreshed every " + REFRESH_MS / 1000 + " s", false);
  } catch (e) {
    status("meshd does not answer (" + e.message + "): the picture is as it was last", true);
  }
}

refresh();
setInterval(refresh, REFRESH_MS);
