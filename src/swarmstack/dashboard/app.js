// The Swarm dashboard: a plan's DAG by waves, its agents and what needs attention, kept live by
// the event stream. The admin token lives in this tab's session storage; it goes to the API as a
// bearer token and to the WebSocket as its first message, never into a URL.
"use strict";

const TOKEN_KEY = "swarm.token";
const STATES = ["pending", "ready", "claimed", "merging", "done", "failed", "dead", "cancelled"];
const BY_EVENT = {
  "ticket.ready": "ready", "ticket.claimed": "claimed", "ticket.merging": "merging",
  "ticket.done": "done", "ticket.failed": "failed", "ticket.dead": "dead",
  "ticket.cancelled": "cancelled", "ticket.released": "ready", "ticket.expired": "ready",
};
const NODE = { w: 112, h: 22, gapX: 44, gapY: 6, pad: 8 };
const SVG_NS = "http://www.w3.org/2000/svg";

const view = {
  plan: null, tickets: new Map(), byKey: new Map(), critical: new Set(),
  lastSeq: 0, socket: null, applied: 0, seqs: [], cost: 0, attention: new Map(),
  doneTimes: [], selected: null, retryTimer: null, dirty: false,
};
window.swarmDashboard = view; // what the browser tests read

const $ = (id) => document.getElementById(id);
const token = () => sessionStorage.getItem(TOKEN_KEY);

async function api(path, options = {}) {
  const headers = { Authorization: `Bearer ${token()}`, ...(options.headers || {}) };
  const response = await fetch(path, { ...options, headers });
  if (response.status === 401) {
    signOut("The token was refused.");
    throw new Error("unauthorized");
  }
  if (!response.ok) {
    let message = `${response.status}`;
    try { message = (await response.json()).message || message; } catch (_) { /* not JSON */ }
    throw new Error(message);
  }
  const type = response.headers.get("content-type") || "";
  return type.includes("json") ? response.json() : response.text();
}

// -- signing in --------------------------------------------------------------------------

function showLogin(message = "") {
  $("board").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = message;
  $("token").focus();
}

function signOut(message = "") {
  sessionStorage.removeItem(TOKEN_KEY);
  if (view.socket) { view.socket.onclose = null; view.socket.close(); view.socket = null; }
  showLogin(message);
}

$("login-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const value = $("token").value.trim();
  $("token").value = "";
  const check = await fetch("/v1/plans", { headers: { Authorization: `Bearer ${value}` } });
  if (!check.ok) {
    $("login-error").textContent = check.status === 401 ? "That token is not known." :
      "That token may not watch the swarm: it needs an admin token.";
    return;
  }
  sessionStorage.setItem(TOKEN_KEY, value);
  start();
});
$("logout").addEventListener("click", () => signOut());

// -- loading a plan ----------------------------------------------------------------------

async function start() {
  $("login").hidden = true;
  $("board").hidden = false;
  const plans = await api("/v1/plans");
  const select = $("plan-select");
  select.replaceChildren(...plans.map((p) => new Option(`${p.id}: ${p.title}`, p.id)));
  const active = plans.filter((p) => p.status === "active");
  const chosen = (active.length ? active : plans).at(-1);
  if (!chosen) { $("plan-title").textContent = "No plan yet"; return; }
  select.value = chosen.id;
  await load(chosen.id);
}

$("plan-select").addEventListener("change", (e) => load(Number(e.target.value)));

async function load(planId) {
  if (view.socket) { view.socket.onclose = null; view.socket.close(); view.socket = null; }
  Object.assign(view, {
    tickets: new Map(), byKey: new Map(), critical: new Set(), lastSeq: 0, applied: 0,
    seqs: [], cost: 0, attention: new Map(), doneTimes: [],
  });
  view.plan = await api(`/v1/plans/${planId}`);
  $("plan-title").textContent = view.plan.title;
  let after = 0;
  for (;;) {
    const page = await api(`/v1/tickets?plan_id=${planId}&limit=5000&after_id=${after}`);
    for (const t of page.tickets) { view.tickets.set(t.id, t); view.byKey.set(t.key, t); }
    if (page.next_after_id === null) break;
    after = page.next_after_id;
  }
  if (view.plan.status === "active") {
    const waves = await api(`/v1/plans/${planId}/waves`);
    view.critical = new Set(waves.critical_path);
  }
  view.cost = view.plan.spent_usd || 0;
  drawDag();
  refresh();
  connect();
}

// -- the event stream --------------------------------------------------------------------

function connect() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const url = `${scheme}://${location.host}/v1/events/ws?after=${view.lastSeq}&plan_id=${view.plan.id}`;
  const socket = new WebSocket(url);
  view.socket = socket;
  setConnection("connecting");
  socket.onopen = () => { socket.send(JSON.stringify({ token: token() })); setConnection("live"); };
  socket.onmessage = (message) => {
    const event = JSON.parse(message.data);
    if (event.kind === "keepalive") return;
    if (event.seq <= view.lastSeq) return; // already seen before a reconnect
    view.lastSeq = event.seq;
    view.seqs.push(event.seq);
    apply(event);
  };
  socket.onclose = (closed) => {
    if (view.socket !== socket) return;
    view.socket = null;
    if (closed.code === 4401 || closed.code === 4403) { signOut(closed.reason); return; }
    setConnection("lost");
    clearTimeout(view.retryTimer);
    view.retryTimer = setTimeout(connect, 1000); // it resumes after the last event it saw
  };
}

function setConnection(state) {
  const badge = $("connection");
  badge.dataset.state = state;
  badge.textContent = state === "live" ? "live" : state === "lost" ? "reconnecting…" : "connecting";
}

function apply(event) {
  view.applied += 1;
  const ticket = view.tickets.get(event.ticket_id);
  if (event.kind === "llm.usage") view.cost += event.data.cost_usd || 0;
  if (ticket) {
    const state = event.kind === "ticket.retried" ? event.data.state : BY_EVENT[event.kind];
    if (state) {
      ticket.state = state;
      ticket.updated_at = event.ts;
      if (state === "claimed") {
        ticket.lease_agent = event.data.agent;
        ticket.attempts = event.data.attempt;
        ticket.claimed_at = event.ts;
      }
      if (state === "done") { view.doneTimes.push(event.ts); view.attention.delete(ticket.id); }
      if (state === "dead") view.attention.set(ticket.id, event.data.reason || "dead");
      if (state === "ready" && view.attention.has(ticket.id) && event.kind !== "ticket.ready") {
        view.attention.delete(ticket.id);
      }
      paintTicket(ticket);
    }
    if (event.kind === "merge.conflict" || event.kind === "merge.checks") {
      ticket.fix = event.data;
    }
    if (view.selected === ticket.id && event.kind.startsWith("agent.")) addLogLine(event);
  }
  if (!view.dirty) { view.dirty = true; requestAnimationFrame(() => { view.dirty = false; refresh(); }); }
}

// -- the DAG -----------------------------------------------------------------------------

function columns() {
  const waves = new Map();
  for (const t of view.tickets.values()) {
    if (!waves.has(t.wave)) waves.set(t.wave, []);
    waves.get(t.wave).push(t);
  }
  return [...waves.keys()].sort((a, b) => a - b).map((w) => waves.get(w).sort((a, b) => b.rank - a.rank || a.id - b.id));
}

function drawDag() {
  const svg = $("dag");
  svg.replaceChildren();
  const cols = columns();
  const place = new Map();
  cols.forEach((col, x) => col.forEach((t, y) => place.set(t.key, {
    x: NODE.pad + x * (NODE.w + NODE.gapX), y: NODE.pad + y * (NODE.h + NODE.gapY),
  })));
  const tallest = Math.max(1, ...cols.map((c) => c.length));
  const width = NODE.pad * 2 + cols.length * (NODE.w + NODE.gapX) - NODE.gapX;
  svg.setAttribute("width", Math.max(width, 100));
  svg.setAttribute("height", NODE.pad * 2 + tallest * (NODE.h + NODE.gapY));
  const edges = document.createElementNS(SVG_NS, "g");
  for (const t of view.tickets.values()) {
    const to = place.get(t.key);
    for (const dep of t.depends_on) {
      const from = place.get(dep);
      if (!from) continue;
      const path = document.createElementNS(SVG_NS, "path");
      const x1 = from.x + NODE.w, y1 = from.y + NODE.h / 2, x2 = to.x, y2 = to.y + NODE.h / 2;
      const mid = (x1 + x2) / 2;
      path.setAttribute("d", `M${x1},${y1} C${mid},${y1} ${mid},${y2} ${x2},${y2}`);
      path.setAttribute("class", view.critical.has(dep) && view.critical.has(t.key) ? "edge critical" : "edge");
      edges.append(path);
    }
  }
  svg.append(edges);
  for (const t of view.tickets.values()) {
    const at = place.get(t.key);
    const g = document.createElementNS(SVG_NS, "g");
    g.setAttribute("class", view.critical.has(t.key) ? "ticket critical" : "ticket");
    g.setAttribute("transform", `translate(${at.x},${at.y})`);
    g.dataset.key = t.key;
    g.dataset.id = t.id;
    g.dataset.wave = t.wave;
    const rect = document.createElementNS(SVG_NS, "rect");
    rect.setAttribute("width", NODE.w);
    rect.setAttribute("height", NODE.h);
    const text = document.createElementNS(SVG_NS, "text");
    text.setAttribute("x", 6);
    text.setAttribute("y", 15);
    text.textContent = t.key.length > 16 ? `${t.key.slice(0, 15)}…` : t.key;
    const title = document.createElementNS(SVG_NS, "title");
    title.textContent = `${t.key}: ${t.title}`;
    g.append(rect, text, title);
    g.addEventListener("click", () => openTicket(t.id));
    svg.append(g);
    t.node = g;
    paintTicket(t);
  }
}

function paintTicket(t) {
  if (!t.node) return;
  t.node.dataset.state = t.state;
  t.node.querySelector("rect").setAttribute("fill", `var(--${t.state})`);
}

// -- totals, agents, attention -----------------------------------------------------------

function refresh() {
  const tickets = [...view.tickets.values()];
  const count = (s) => tickets.filter((t) => t.state === s).length;
  const done = count("done");
  $("done-count").textContent = `${done}/${tickets.length}`;
  $("working-count").textContent = count("claimed") + count("merging");
  const budget = view.plan && view.plan.budget_usd;
  $("cost").textContent = `$${view.cost.toFixed(2)}`;
  $("budget").textContent = budget ? `spent of $${budget.toFixed(2)}` : "spent";
  const times = view.doneTimes;
  if (times.length >= 2) {
    const hours = (times.at(-1) - times[0]) / 3600;
    const rate = hours > 0 ? (times.length - 1) / hours : 0;
    $("rate").textContent = rate ? rate.toFixed(0) : "–";
    const left = tickets.length - done;
    $("eta").textContent = rate && left ? new Date(Date.now() + (left / rate) * 3600e3).toLocaleTimeString() : "–";
  }
  $("states").replaceChildren(...STATES.filter(count).map((s) => {
    const chip = document.createElement("span");
    chip.className = "chip";
    chip.dataset.state = s;
    const swatch = document.createElement("i");
    swatch.style.background = `var(--${s})`;
    chip.append(swatch, `${s} ${count(s)}`);
    return chip;
  }));
  $("waves").replaceChildren(...columns().map((col, n) => {
    const finished = col.filter((t) => t.state === "done").length;
    const row = document.createElement("div");
    row.className = "wave";
    row.dataset.wave = n;
    const bar = document.createElement("div");
    bar.className = "bar";
    const fill = document.createElement("b");
    fill.style.width = `${(100 * finished) / col.length}%`;
    bar.append(fill);
    const label = document.createElement("span");
    label.textContent = `wave ${n + 1}`;
    const figure = document.createElement("span");
    figure.textContent = `${finished}/${col.length}`;
    row.append(label, bar, figure);
    return row;
  }));
  const now = Date.now() / 1000;
  const busy = tickets.filter((t) => t.state === "claimed" || t.state === "merging");
  $("agents").replaceChildren(...busy.map((t) => {
    const row = document.createElement("tr");
    const since = t.claimed_at || t.updated_at;
    const cells = [
      t.state === "claimed" ? t.lease_agent || "" : "merge queue", `${t.key}`,
      t.state === "merging" ? "merging" : t.fix ? "fixing" : "working",
      since ? `${Math.max(0, Math.round(now - since))}s` : "", String(t.attempts),
    ];
    for (const value of cells) { const td = document.createElement("td"); td.textContent = value; row.append(td); }
    return row;
  }));
  const attention = [...view.attention.entries()];
  $("attention").hidden = attention.length === 0;
  $("attention-list").replaceChildren(...attention.map(([id, reason]) => {
    const li = document.createElement("li");
    const t = view.tickets.get(id);
    li.textContent = `${t ? t.key : id}: ${reason}`;
    return li;
  }));
}

// -- one ticket --------------------------------------------------------------------------

async function openTicket(id) {
  view.selected = id;
  const t = await api(`/v1/tickets/${id}`);
  $("details").hidden = false;
  $("d-title").textContent = `${t.key}: ${t.title}`;
  $("d-meta").textContent = `${t.state}, attempt ${t.attempts} of ${t.max_attempts}` +
    (t.last_error ? ` — ${t.last_error}` : "");
  $("d-acceptance").replaceChildren(...t.acceptance.map((a) => {
    const li = document.createElement("li"); li.textContent = a; return li;
  }));
  $("d-error").textContent = "";
  $("d-log").replaceChildren();
  const page = await api(`/v1/events?ticket_id=${id}&limit=1000`);
  for (const event of page.events) if (event.kind.startsWith("agent.")) addLogLine(event);
}

function addLogLine(event) {
  const d = event.data;
  const text = d.text || d.output || (d.name ? `${d.name}: ${JSON.stringify(d.input || {}).slice(0, 300)}` : "");
  const li = document.createElement("li");
  li.textContent = `${event.kind.slice(6)}  ${String(text).slice(0, 2000)}`;
  $("d-log").append(li);
}

async function act(path) {
  try {
    await api(path, { method: "POST", headers: { "Content-Type": "application/json" }, body: "{}" });
  } catch (error) {
    $("d-error").textContent = error.message;
  }
}

$("d-retry").addEventListener("click", () => act(`/v1/tickets/${view.selected}/retry`));
$("d-cancel").addEventListener("click", () => act(`/v1/tickets/${view.selected}/cancel`));
$("close-details").addEventListener("click", () => { $("details").hidden = true; view.selected = null; });

if (token()) start().catch((error) => showLogin(error.message)); else showLogin();
