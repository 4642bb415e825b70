// LatentFlow's browser view: the graph with typed ports (drawn as SVG), live node states and
// step progress from the events socket, outputs, the queue and history with cancel, and
// validation errors with line:column. No build step: one ES module, served by the binary.

const query = new URLSearchParams(location.search);
const token = query.get("token");
const $ = (id) => document.getElementById(id);
const SVG = "http://www.w3.org/2000/svg";

function withToken(path) {
  if (!token) return path;
  return path + (path.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(token);
}

async function api(path, body, method) {
  const opts = { method: method || (body === undefined ? "GET" : "POST"), headers: {} };
  if (token) opts.headers["Authorization"] = "Bearer " + token;
  if (body !== undefined) {
    opts.headers["Content-Type"] = "application/json";
    opts.body = JSON.stringify(body);
  }
  const r = await fetch(path, opts);
  const text = await r.text();
  try { return { ok: r.ok, status: r.status, json: JSON.parse(text) }; }
  catch { return { ok: r.ok, status: r.status, json: { error: text } }; }
}

const view = { plan: null, states: {}, progress: {}, job: null };

// ---- layout: columns by longest path from the sources, rows in file order ----
function layout(plan) {
  const depth = {};
  const incoming = {};
  for (const n of plan.nodes) incoming[n.id] = [];
  for (const e of plan.edges) incoming[e.to].push(e.from);
  const visit = (id, seen) => {
    if (depth[id] !== undefined) return depth[id];
    if (seen.has(id)) return 0;
    seen.add(id);
    const d = incoming[id].length ? 1 + Math.max(...incoming[id].map((p) => visit(p, seen))) : 0;
    depth[id] = d;
    return d;
  };
  plan.nodes.forEach((n) => visit(n.id, new Set()));
  const cols = {};
  const pos = {};
  for (const n of plan.nodes) {
    const c = depth[n.id];
    cols[c] = cols[c] || 0;
    const h = 52 + 15 * (n.inputs.length + n.outputs.length) + (isStepped(n) ? 16 : 0);
    pos[n.id] = { x: 20 + c * 300, y: 20 + cols[c], w: 250, h };
    cols[c] += h + 24;
  }
  return pos;
}

function isStepped(n) {
  return n.type === "samplers.sample";
}

function color(type) {
  let h = 0;
  for (const ch of (type || "").split("{")[0]) h = (h * 31 + ch.charCodeAt(0)) % 360;
  return `hsl(${h}, 55%, 42%)`;
}

function el(name, attrs, text) {
  const e = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

function draw() {
  const svg = $("graph");
  svg.replaceChildren();
  const plan = view.plan;
  if (!plan) return;
  const pos = layout(plan);
  let maxX = 0, maxY = 0;
  // Inputs first, outputs below them, each on its own row.
  const portY = (p, k) => p.y + 46 + k * 15;
  for (const e of plan.edges) {
    const a = pos[e.from], b = pos[e.to];
    const src = plan.nodes.find((n) => n.id === e.from);
    const dst = plan.nodes.find((n) => n.id === e.to);
    const i = src.outputs.findIndex((o) => o.name === e.from_port);
    const j = dst.inputs.findIndex((o) => o.name === e.to_port);
    const x1 = a.x + a.w, y1 = portY(a, src.inputs.length + i), x2 = b.x, y2 = portY(b, j);
    const mid = (x1 + x2) / 2;
    svg.appendChild(el("path", { class: "edge", d: `M${x1},${y1} C${mid},${y1} ${mid},${y2} ${x2},${y2}`, stroke: color(e.type) }));
  }
  for (const n of plan.nodes) {
    const p = pos[n.id];
    maxX = Math.max(maxX, p.x + p.w + 20);
    maxY = Math.max(maxY, p.y + p.h + 20);
    const state = view.states[n.id] || (view.job ? "queued" : "idle");
    const g = el("g", { class: `node ${state}`, "data-node": n.id, transform: `translate(${p.x},${p.y})` });
    g.appendChild(el("rect", { class: "box", width: p.w, height: p.h, rx: 6 }));
    g.appendChild(el("text", { class: "title", x: 8, y: 16 }, n.id));
    g.appendChild(el("text", { class: "type", x: 8, y: 31 }, `${n.type}  (line ${n.line}:${n.column})`));
    n.inputs.forEach((port, k) => {
      const y = 46 + k * 15;
      g.appendChild(el("circle", { cx: 0, cy: y, r: 4, fill: color(port.type) }));
      g.appendChild(el("text", { class: "port", x: 8, y: y + 4 }, `${port.name}: ${port.type}`));
    });
    n.outputs.forEach((port, k) => {
      const y = 46 + (n.inputs.length + k) * 15;
      g.appendChild(el("circle", { cx: p.w, cy: y, r: 4, fill: color(port.type) }));
      g.appendChild(el("text", { class: "port", x: p.w - 8, y: y + 4, "text-anchor": "end" }, `${port.name}: ${port.type}`));
    });
    if (isStepped(n)) {
      const pr = view.progress[n.id] || { done: 0, total: 0 };
      const frac = pr.total ? pr.done / pr.total : 0;
      const y = p.h - 14;
      g.appendChild(el("rect", { class: "bar-bg", x: 8, y, width: p.w - 60, height: 8 }));
      g.appendChild(el("rect", { class: "bar", x: 8, y, width: (p.w - 60) * frac, height: 8 }));
      g.appendChild(el("text", { class: "pct", x: p.w - 46, y: y + 8 }, `${Math.round(frac * 100)}%`));
    }
    svg.appendChild(g);
  }
  svg.setAttribute("viewBox", `0 0 ${Math.max(maxX, 400)} ${Math.max(maxY, 300)}`);
}

function showDiagnostics(list, valid) {
  const ul = $("diagnostics");
  ul.replaceChildren();
  for (const d of list || []) {
    const li = document.createElement("li");
    li.textContent = `${d.line}:${d.column}: ${d.severity}[${d.code}]: ${d.message}` + (d.hint ? `\n  hint: ${d.hint}` : "");
    ul.appendChild(li);
  }
  if (valid && !(list || []).length) {
    const li = document.createElement("li");
    li.className = "ok";
    li.textContent = "valid";
    ul.appendChild(li);
  }
}

async function replan() {
  const r = await api("api/v1/plan", { graph: $("editor").value });
  if (!r.ok) return;
  showDiagnostics(r.json.diagnostics, r.json.valid);
  if (r.json.valid) {
    view.plan = r.json;
    draw();
  }
}

async function showJob(id) {
  view.job = id;
  $("job-id").textContent = id;
  const p = await api(`api/v1/jobs/${id}/plan`);
  if (p.ok && p.json.valid) {
    view.plan = p.json;
    $("editor").value = p.json.graph || $("editor").value;
  }
  const j = await api(`api/v1/jobs/${id}`);
  if (j.ok) applyJob(j.json);
  draw();
}

function applyJob(job) {
  $("job-state").innerHTML = `<span class="state-${job.state}">${job.state}</span>` + (job.error ? ` — ${job.error}` : "");
  if (job.nodes && Object.keys(job.nodes).length) {
    for (const [id, s] of Object.entries(job.nodes)) view.states[id] = s === "ran" ? "done" : s;
    if (job.state === "succeeded" && view.plan) {
      for (const n of view.plan.nodes) if (isStepped(n)) view.progress[n.id] = { done: 1, total: 1 };
    }
  }
  const out = $("outputs");
  out.replaceChildren();
  for (const files of Object.values(job.outputs || {})) {
    for (const f of files) {
      if (!/\.(png|jpe?g|webp)$/i.test(f)) continue;
      const img = document.createElement("img");
      img.src = withToken(`api/v1/outputs/${f}`);
      img.alt = f;
      out.appendChild(img);
    }
  }
}

async function refreshLists() {
  const q = await api("api/v1/queue");
  if (q.ok) {
    const ul = $("queue");
    ul.replaceChildren();
    for (const j of [...q.json.running, ...q.json.pending]) {
      const li = document.createElement("li");
      li.textContent = `${j.number} ${j.id.slice(0, 8)} ${j.state} `;
      const b = document.createElement("button");
      b.textContent = "cancel";
      b.onclick = () => api(`api/v1/jobs/${j.id}/cancel`, {}).then(refreshLists);
      li.appendChild(b);
      ul.appendChild(li);
    }
  }
  const h = await api("api/v1/history?limit=20");
  if (h.ok) {
    const ul = $("history");
    ul.replaceChildren();
    for (const j of h.json) {
      const li = document.createElement("li");
      li.innerHTML = `${j.number} ${j.id.slice(0, 8)} <span class="state-${j.state}">${j.state}</span>`;
      li.onclick = () => showJob(j.id);
      ul.appendChild(li);
    }
  }
}

function connect() {
  const proto = location.protocol === "https:" ? "wss:" : "ws:";
  const ws = new WebSocket(withToken(`${proto}//${location.host}/api/v1/events`));
  ws.onopen = () => ($("status").textContent = "connected");
  ws.onclose = () => {
    $("status").textContent = "disconnected; retrying";
    setTimeout(connect, 1000);
  };
  ws.onmessage = (m) => {
    if (typeof m.data !== "string") return;
    const e = JSON.parse(m.data);
    if (e.event === "graph_file_changed") return loadGraphFile();
    if (e.job !== view.job) {
      if (e.event === "run_finished") refreshLists();
      return;
    }
    const set = (s) => { view.states[e.node] = s; };
    if (e.event === "node_started") set("running");
    if (e.event === "node_finished") set("done");
    if (e.event === "node_cached") set("cached");
    if (e.event === "node_failed") set("failed");
    if (e.event === "progress") view.progress[e.node] = { done: e.done, total: e.total };
    if (e.event === "run_finished") {
      api(`api/v1/jobs/${view.job}`).then((j) => j.ok && applyJob(j.json));
      refreshLists();
    }
    draw();
  };
}

async function loadGraphFile() {
  const r = await api("api/v1/graph-file");
  if (r.ok && r.json.text !== undefined) {
    $("graph-file").textContent = r.json.path;
    $("editor").value = r.json.text;
    await replan();
  }
}

let timer = null;
$("editor").addEventListener("input", () => {
  clearTimeout(timer);
  timer = setTimeout(replan, 300);
});
$("run").onclick = async () => {
  const r = await api("api/v1/jobs", { graph: $("editor").value });
  if (!r.ok) return showDiagnostics(r.json.diagnostics || [{ line: 0, column: 0, severity: "error", code: "submit", message: r.json.error }]);
  view.states = {};
  view.progress = {};
  view.job = r.json.id;
  $("job-id").textContent = r.json.id;
  $("job-state").textContent = "pending";
  $("outputs").replaceChildren();
  draw();
  refreshLists();
};

connect();
refreshLists();
if (query.get("job")) showJob(query.get("job"));
else loadGraphFile();
