// The dashboard's one page: HTML, CSS and plain JavaScript, no framework and nothing fetched from
// elsewhere. It renders DashboardSnapshot (from /api/snapshot, then each server-sent event of
// /api/stream) with textContent and SVG elements only, never innerHTML, so no event text can inject
// markup. Every member is an element with `data-id` and `data-status` (the browser test reads those).

enum DashboardPage {
    /// The page with `snapshot` (its JSON) embedded, so the first view renders as the page loads. Every
    /// `<`, `>` and `&` in the JSON is escaped as `\u00XX` (still the same JSON), so no text in it can
    /// close the script element.
    static func render(snapshotJSON: String) -> String {
        var safe = ""
        safe.reserveCapacity(snapshotJSON.utf8.count)
        for c in snapshotJSON.unicodeScalars {
            switch c {
            case "<": safe += "\\u003c"
            case ">": safe += "\\u003e"
            case "&": safe += "\\u0026"
            case "\u{2028}": safe += "\\u2028"
            case "\u{2029}": safe += "\\u2029"
            default: safe.unicodeScalars.append(c)
            }
        }
        return html.replacingOccurrences(of: "__INITIAL_SNAPSHOT__", with: safe)
    }

    static let html = #"""
<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Mycelium dashboard</title>
<style>
:root { --bg:#0f1417; --panel:#172026; --ink:#dfe7ea; --dim:#8ba0a8; --ok:#3fbf7f; --warn:#e0a030; --bad:#e5484d; --left:#6b7780; --acc:#6cb6ff; }
* { box-sizing: border-box; }
body { margin:0; font:14px/1.4 system-ui, sans-serif; background:var(--bg); color:var(--ink); }
header { display:flex; flex-wrap:wrap; gap:4px 18px; align-items:baseline; padding:10px 16px; background:#0b1013; border-bottom:1px solid #24313a; }
header h1 { font-size:17px; margin:0; }
header .kv { color:var(--dim); } header .kv b { color:var(--ink); font-weight:600; }
#banner { display:none; padding:8px 16px; background:#5a1d1f; }
#banner.show { display:block; }
nav { padding:6px 16px; display:flex; gap:14px; flex-wrap:wrap; font-size:13px; }
nav a { color:var(--acc); text-decoration:none; }
main { display:grid; grid-template-columns: 1fr; gap:12px; padding:12px 16px; }
@media (min-width: 1400px) { main { grid-template-columns: 3fr 2fr; } #map-panel { grid-row: span 2; } }
section { background:var(--panel); border:1px solid #24313a; border-radius:6px; padding:10px 12px; min-width:0; }
section h2 { font-size:15px; margin:0 0 8px; }
svg text { fill:var(--ink); font-size:12px; }
#map { width:100%; height:auto; max-height:72vh; display:block; }
.member circle.body { stroke:#0b1013; stroke-width:2; }
.member[data-status=alive] circle.body { fill:var(--ok); }
.member[data-status=suspect] circle.body { fill:var(--warn); }
.member[data-status=failed] circle.body { fill:var(--bad); }
.member[data-status=left] circle.body { fill:var(--left); }
.member .ring { fill:none; stroke:var(--acc); stroke-width:3; }
.member .learner { stroke-dasharray:4 3; }
.member .cross { stroke:#fff; stroke-width:3; }
.link { stroke:#3a4b55; stroke-width:1.5; }
.link.down { stroke:var(--bad); stroke-dasharray:6 4; }
.link.link-up { stroke:var(--ok); stroke-opacity:0.7; stroke-width:2; }
.link.link-silent { stroke:var(--warn); stroke-dasharray:3 3; stroke-width:2; }
.link.link-down { stroke:var(--bad); stroke-dasharray:6 4; stroke-width:2; }
.link.link-none { stroke:#52636d; stroke-dasharray:1 5; }
.legend { color:var(--dim); font-size:12px; display:flex; gap:12px; flex-wrap:wrap; margin-top:6px; }
.dot { display:inline-block; width:10px; height:10px; border-radius:50%; margin-right:4px; vertical-align:middle; }
table { border-collapse:collapse; width:100%; font-size:13px; }
th, td { text-align:left; padding:3px 6px; border-bottom:1px solid #24313a; white-space:nowrap; }
td.wrap { white-space:normal; word-break:break-word; }
.scroll { overflow:auto; max-height:320px; }
.st-alive { color:var(--ok); } .st-suspect { color:var(--warn); } .st-failed { color:var(--bad); font-weight:700; } .st-left { color:var(--left); }
.none { color:var(--dim); font-style:italic; }
.filters { display:flex; flex-wrap:wrap; gap:6px 10px; margin-bottom:6px; font-size:13px; }
.filters input[type=text] { background:#0b1013; color:var(--ink); border:1px solid #33444f; border-radius:4px; padding:2px 6px; }
.kind { font-size:11px; padding:1px 6px; border-radius:8px; background:#24313a; color:var(--dim); }
.kind-failure, .kind-slashing { background:#5a1d1f; color:#ffd1d2; } .kind-vote { background:#1d3a5a; color:#cfe4ff; }
.kind-election, .kind-handoff { background:#3d3a1d; color:#fff0c0; } .kind-admission { background:#1d4a33; color:#c8f5dc; }
#trust { width:100%; height:auto; }
footer { color:var(--dim); font-size:12px; padding:0 16px 14px; }
</style>
</head>
<body>
<header>
  <h1>Mycelium</h1>
  <span class="kv">network <b id="h-network">–</b></span>
  <span class="kv">observer <b id="h-observer">–</b></span>
  <span class="kv">leader <b id="h-leader">–</b></span>
  <span class="kv">term <b id="h-term">–</b></span>
  <span class="kv">health <b id="h-health">–</b></span>
  <span class="kv">members <b id="h-count">–</b></span>
  <span class="kv">live <b id="h-live">connecting</b></span>
</header>
<div id="banner"></div>
<nav><a href="#map-panel">Network map</a><a href="#timeline-panel">Timeline</a><a href="#trust-panel">Trust and votes</a><a href="#workloads-panel">Workloads</a><a href="#datapath-panel">Datapath</a></nav>
<main>
  <section id="map-panel">
    <h2>Network map</h2>
    <svg id="map" viewBox="0 0 1000 700" role="img" aria-label="members of the network"></svg>
    <div class="legend">
      <span><span class="dot" style="background:var(--ok)"></span>alive</span>
      <span><span class="dot" style="background:var(--warn)"></span>suspect</span>
      <span><span class="dot" style="background:var(--bad)"></span>failed (crossed)</span>
      <span><span class="dot" style="background:var(--left)"></span>left</span>
      <span>blue ring: sclerotium (dashed: learner) · ★ leader · size: trust</span>
      <span id="map-links">lines: the leader's links (red dashed: down; beyond 24 members only those)</span>
    </div>
    <div class="scroll"><table id="members"><thead><tr><th>member</th><th>status</th><th>role</th><th>raft</th><th>trust</th><th>address</th></tr></thead><tbody></tbody></table></div>
  </section>
  <section id="timeline-panel">
    <h2>Timeline</h2>
    <div class="filters" id="kinds"></div>
    <div class="filters"><input type="text" id="q" placeholder="filter text" aria-label="filter text"></div>
    <div class="scroll"><table id="timeline"><thead><tr><th>#</th><th>at</th><th>kind</th><th>event</th></tr></thead><tbody></tbody></table></div>
  </section>
  <section id="trust-panel">
    <h2>Trust and votes</h2>
    <svg id="trust" viewBox="0 0 600 170" role="img" aria-label="trust over time"></svg>
    <h2>Vote rounds</h2>
    <div class="scroll"><table id="votes"><thead><tr><th>#</th><th>question</th><th>voters</th><th>tolerates</th><th>state</th><th>evidence</th><th>latency here</th></tr></thead><tbody></tbody></table></div>
  </section>
  <section id="workloads-panel">
    <h2>Workloads</h2>
    <h3>VMs</h3><div id="vms"></div>
    <h3>Services</h3><div id="services"></div>
    <h3>Volumes</h3><div id="volumes"></div>
  </section>
  <section id="datapath-panel">
    <h2>Datapath</h2>
    <div id="datapath"></div>
  </section>
</main>
<script id="initial" type="application/json">__INITIAL_SNAPSHOT__</script>
<footer>Read-only: this first version offers no actions (vote, drain, migrate). Data: the local agent's API, polled every second.</footer>
<script>
"use strict";
const SVG = "http://www.w3.org/2000/svg";
const KINDS = ["admission","election","failure","vote","slashing","handoff","workload","other"];
const shown = new Set(KINDS);
let last = null;

function el(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  for (const k of kids) e.append(k instanceof Node ? k : document.createTextNode(String(k)));
  return e;
}
function sv(tag, attrs, ...kids) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  for (const k of kids) e.append(k instanceof Node ? k : document.createTextNode(String(k)));
  return e;
}
function short(id) { return id && id.startsWith("node-") ? id.slice(5, 13) : (id || "–"); }
function fill(tbody, rows) { tbody.replaceChildren(...rows); }
function table(headers, rows) {
  return el("table", {}, el("thead", {}, el("tr", {}, ...headers.map(h => el("th", {}, h)))), el("tbody", {}, ...rows));
}
function panel(id, items, headers, row, why) {
  const box = document.getElementById(id);
  if (items === null || items === undefined) { box.replaceChildren(el("p", {class: "none"}, "not available: " + (why || "no answer"))); return; }
  if (items.length === 0) { box.replaceChildren(el("p", {class: "none", "data-empty": id}, "none yet")); return; }
  box.replaceChildren(el("div", {class: "scroll"}, table(headers, items.map(row))));
}

function renderMap(s) {
  const map = document.getElementById("map");
  const kids = [];
  const leader = s.members.find(m => m.leader);
  const observer = s.members.find(m => m.id === s.observer);
  const note = document.getElementById("map-links");
  if (s.links && observer) {
    // The observer's own connections, as its agent sees them: the dashboard reads one agent.
    const byId = new Map(s.members.map(m => [m.id, m]));
    for (const l of s.links) {
      const m = byId.get(l.to);
      if (!m || (s.members.length > 24 && l.state === "up")) continue;
      kids.push(sv("line", {class: "link link-" + l.state, "data-link": l.to, "data-state": l.state, x1: observer.x, y1: observer.y, x2: m.x, y2: m.y}, sv("title", {}, l.detail)));
    }
    note.textContent = "lines: the links of " + short(s.observer) + " (the agent this dashboard reads; others may see theirs differently): green up, amber dashed silent, red dashed down, grey dotted not connected yet" + (s.members.length > 24 ? "; beyond 24 members only those not up" : "");
  } else if (leader) {
    note.textContent = "lines: the leader's links (red dashed: down; beyond 24 members only those); this agent does not report its own links";
    // Beyond 24 members only the links that are down are drawn: 100 lines would hide the map.
    for (const m of s.members) if (m !== leader && (s.members.length <= 24 || m.status !== "alive"))
      kids.push(sv("line", {class: "link" + (m.status === "alive" ? "" : " down"), x1: leader.x, y1: leader.y, x2: m.x, y2: m.y}));
  }
  for (const m of s.members) {
    const r = m.r * (0.6 + 0.4 * Math.max(0, Math.min(1, m.trust)));
    const g = sv("g", {class: "member", "data-id": m.id, "data-status": m.status, "data-leader": String(m.leader), "data-sclerotium": String(m.sclerotium)});
    g.append(sv("title", {}, m.id + " — " + m.status + (m.sclerotium ? ", sclerotium" : "") + (m.leader ? ", leader" : "") + ", trust " + m.trust.toFixed(2)));
    if (m.sclerotium) g.append(sv("circle", {class: "ring" + (m.raft === "learner" ? " learner" : ""), cx: m.x, cy: m.y, r: m.r + 5}));
    g.append(sv("circle", {class: "body", cx: m.x, cy: m.y, r: r}));
    if (m.status === "failed" || m.status === "left") {
      const d = r * 0.6;
      g.append(sv("line", {class: "cross", x1: m.x - d, y1: m.y - d, x2: m.x + d, y2: m.y + d}));
      g.append(sv("line", {class: "cross", x1: m.x - d, y1: m.y + d, x2: m.x + d, y2: m.y - d}));
    }
    const fs = Math.max(10, Math.min(20, m.r * 0.55));
    g.append(sv("text", {x: m.x, y: m.y + m.r + fs + 4, "text-anchor": "middle", style: "font-size:" + fs + "px"}, (m.leader ? "★ " : "") + m.label));
    kids.push(g);
  }
  map.replaceChildren(...kids);
  fill(document.querySelector("#members tbody"), s.members.map(m => el("tr", {"data-member": m.id, "data-status": m.status},
    el("td", {}, m.id), el("td", {class: "st-" + m.status}, m.status + (m.jailed ? " (jailed)" : "") + (m.revoked ? " (revoked)" : "")),
    el("td", {}, (m.leader ? "leader " : "") + (m.sclerotium ? "sclerotium" : "member")), el("td", {}, m.raft),
    el("td", {}, m.trust.toFixed(3)), el("td", {}, m.addresses.join(", ")))));
}

function renderTimeline(s) {
  const q = document.getElementById("q").value.toLowerCase();
  const rows = s.events.filter(e => shown.has(e.kind) && (!q || e.text.toLowerCase().includes(q))).slice().reverse()
    .map(e => el("tr", {"data-kind": e.kind}, el("td", {}, e.seq), el("td", {}, e.at), el("td", {}, el("span", {class: "kind kind-" + e.kind}, e.kind)), el("td", {class: "wrap"}, e.text)));
  fill(document.querySelector("#timeline tbody"), rows.length ? rows : [el("tr", {}, el("td", {colspan: 4, class: "none"}, "no events match"))]);
}

function renderTrust(s) {
  const svg = document.getElementById("trust");
  const W = 600, H = 170, L = 34, B = 20, T = 8;
  const series = Object.entries(s.trust).sort();
  const tmax = Math.max(10, s.t), tmin = Math.max(0, tmax - 600);
  const x = t => L + (W - L - 6) * (t - tmin) / Math.max(1, tmax - tmin);
  const y = v => T + (H - T - B) * (1 - v);
  const kids = [sv("line", {x1: L, y1: y(0), x2: W - 6, y2: y(0), stroke: "#33444f"}), sv("line", {x1: L, y1: y(1), x2: W - 6, y2: y(1), stroke: "#33444f"}),
    sv("text", {x: 2, y: y(1) + 4}, "1.0"), sv("text", {x: 2, y: y(0) + 4}, "0.0"), sv("text", {x: L, y: H - 4}, "last " + Math.round(tmax - tmin) + " s")];
  series.forEach(([id, pts], i) => {
    const hue = Math.round(i * 360 / Math.max(1, series.length));
    const p = pts.filter(q => q.t >= tmin).map(q => x(q.t).toFixed(1) + "," + y(q.trust).toFixed(1));
    if (pts.length) p.push(x(s.t).toFixed(1) + "," + y(pts[pts.length - 1].trust).toFixed(1));
    kids.push(sv("polyline", {points: p.join(" "), fill: "none", stroke: "hsl(" + hue + ",70%,60%)", "stroke-width": 2, "data-trust": id}, sv("title", {}, id)));
  });
  svg.replaceChildren(...kids);
  const votes = s.votes.map(v => el("tr", {"data-vote": v.sequence, "data-state": v.state}, el("td", {}, v.sequence), el("td", {class: "wrap", title: v.kind + " of " + v.node}, v.question || (v.kind + " " + short(v.node))),
    el("td", {class: "wrap"}, v.voters + (v.voterLabels && v.voterLabels.length ? ": " + v.voterLabels.join(", ") : "")), el("td", {}, v.tolerates), el("td", {class: v.open ? "st-suspect" : ""}, v.state),
    el("td", {class: "wrap" + (v.evidence && v.evidence.length ? " st-failed" : ""), "data-evidence": String(v.evidence ? v.evidence.length : 0)}, v.evidence && v.evidence.length ? v.evidence.join("; ") : "none"), el("td", {}, v.latencyMs == null ? "–" : v.latencyMs.toFixed(1) + " ms")));
  fill(document.querySelector("#votes tbody"), votes.length ? votes : [el("tr", {}, el("td", {colspan: 7, class: "none"}, "none yet"))]);
}

function renderWorkloads(s) {
  const pe = s.panelErrors || {};
  panel("vms", s.vms, ["VM", "primary", "replica", "protection", "RPO", "pause p99", "migration"],
    v => el("tr", {}, el("td", {}, v.name), el("td", {}, short(v.primary)), el("td", {}, short(v.replica)), el("td", {"data-sync": v.sync || ""}, v.protection + (v.sync ? " (syncing " + v.sync + ")" : "")),
      el("td", {}, v.rpoMs == null ? "–" : v.rpoMs.toFixed(0) + " ms"), el("td", {}, v.pauseP99Ms == null ? "–" : v.pauseP99Ms.toFixed(1) + " ms"), el("td", {}, v.migration || "–")), pe.vms);
  panel("services", s.services, ["service", "driver", "serving", "instances", "endpoints", "pending"],
    v => el("tr", {}, el("td", {}, v.name), el("td", {}, v.driver), el("td", {}, v.serving + "/" + v.replicas), el("td", {class: "wrap"}, v.instances.join("; ")),
      el("td", {class: "wrap"}, v.endpoints.join(", ") || "–"), el("td", {class: "wrap"}, v.pending || "–")), pe.services);
  panel("volumes", s.volumes, ["volume", "size", "class", "state", "home", "used by"],
    v => el("tr", {}, el("td", {}, v.name), el("td", {}, (v.sizeBytes / 1048576).toFixed(0) + " MiB"), el("td", {}, v.dataClass), el("td", {}, v.state),
      el("td", {}, short(v.home)), el("td", {}, v.usedBy || "–")), pe.volumes);
  const reasons = ["policy", "no-endpoint", "spoofed", "malformed", "fib"];
  panel("datapath", s.datapath, ["endpoint", "net", "tx pkts", "tx bytes", "rx pkts", "rx bytes", ...reasons.map(r => "drop " + r)],
    r => el("tr", {}, el("td", {}, r.endpoint), el("td", {}, r.networkID || "–"), el("td", {}, r.txPackets), el("td", {}, r.txBytes), el("td", {}, r.rxPackets),
      el("td", {}, r.rxBytes), ...reasons.map(k => el("td", {}, (r.drops || {})[k] || 0))), pe.datapath);
}

function render(s) {
  last = s;
  document.body.setAttribute("data-version", s.version);
  const set = (id, v) => { document.getElementById(id).textContent = v; };
  set("h-network", s.network || "–"); set("h-observer", short(s.observer)); set("h-leader", short(s.leader));
  set("h-term", s.term); set("h-health", s.health || "–");
  set("h-count", s.members.filter(m => m.status === "alive").length + " alive / " + s.members.length);
  const banner = document.getElementById("banner");
  const msgs = (s.reachable ? [] : [s.error]).concat(s.warnings || []);
  banner.textContent = msgs.join(" · "); banner.className = msgs.length ? "show" : "";
  renderMap(s); renderTimeline(s); renderTrust(s); renderWorkloads(s);
}

const kindsBox = document.getElementById("kinds");
for (const k of KINDS) {
  const box = el("input", {type: "checkbox", id: "k-" + k, checked: ""});
  box.addEventListener("change", () => { box.checked ? shown.add(k) : shown.delete(k); if (last) renderTimeline(last); });
  kindsBox.append(el("label", {}, box, " " + k));
}
document.getElementById("q").addEventListener("input", () => { if (last) renderTimeline(last); });

function poll() { fetch("/api/snapshot", {cache: "no-store"}).then(r => r.json()).then(render).catch(() => {}); }
try { render(JSON.parse(document.getElementById("initial").textContent)); } catch (e) { poll(); }
if (window.EventSource) {
  const es = new EventSource("/api/stream");
  es.addEventListener("snapshot", ev => { document.getElementById("h-live").textContent = "live"; render(JSON.parse(ev.data)); });
  es.onerror = () => { document.getElementById("h-live").textContent = "reconnecting"; };
} else {
  setInterval(poll, 1000);
}
</script>
</body>
</html>
"""#
}
