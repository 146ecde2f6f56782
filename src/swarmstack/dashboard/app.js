// The Swarm dashboard: a plan's DAG by waves, its agents and what needs attention, kept live by
// the event stream. The admin token lives in this tab's session storage; it goes to the API as a
// bearer token and to the WebSocket as its first message, never into a URL.
"use strict";

const TOKEN_KEY = "swarm.token";
const STATES = ["draft", "pending", "ready", "claimed", "merging", "done", "failed", "dead", "cancelled"];
const BY_EVENT = {
  "ticket.ready": "ready", "ticket.claimed": "claimed", "ticket.merging": "merging",
  "ticket.done": "done", "ticket.failed": "failed", "ticket.dead": "dead",
  "ticket.cancelled": "cancelled", "ticket.released": "ready", "ticket.expired": "ready",
};
const NODE = { w: 112, h: 22, gapX: 44, gapY: 6, pad: 8 };
const SVG_NS = "http://www.w3.org/2000/svg";

const AGENTS_POLL_MS = 2000;
const REFRESH_MS = 200; // how often a burst of events is shown

const view = {
  plan: null, tickets: new Map(), byKey: new Map(), critical: new Set(),
  lastSeq: 0, socket: null, applied: 0, seqs: [], cost: 0, attention: new Map(),
  doneTimes: [], selected: null, retryTimer: null, dirty: false,
  agents: new Map(), agentsTimer: null, draft: false, sandboxes: [], generation: 0,
  unpainted: new Set(), refreshTimer: null, waveRows: [], agentRows: new Map(),
  attentionShown: null, run: null,
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
  clearTimeout(view.agentsTimer);
  Object.assign(view, {
    tickets: new Map(), byKey: new Map(), critical: new Set(), lastSeq: 0, applied: 0,
    seqs: [], cost: 0, attention: new Map(), doneTimes: [], agents: new Map(), draft: false,
    unpainted: new Set(), run: null,
  });
  // A newer load (another plan chosen, the plan approved) makes this one give up.
  const generation = ++view.generation;
  const plan = await api(`/v1/plans/${planId}`);
  if (generation !== view.generation) return;
  view.plan = plan;
  $("plan-title").textContent = plan.title;
  if (plan.status === "draft") {
    const spec = await api(`/v1/plans/${planId}/spec`);
    if (generation !== view.generation) return;
    loadDraft(spec);
  } else {
    let after = 0;
    for (;;) {
      const page = await api(`/v1/tickets?plan_id=${planId}&limit=5000&after_id=${after}`);
      if (generation !== view.generation) return;
      for (const t of page.tickets) { view.tickets.set(t.id, t); view.byKey.set(t.key, t); }
      if (page.next_after_id === null) break;
      after = page.next_after_id;
    }
    for (const t of view.tickets.values()) {
      if (t.state === "dead") view.attention.set(t.id, deadReason(t.last_error));
      else if (t.fix && t.state !== "done") view.attention.set(t.id, fixReason(t.fix));
    }
  }
  if (plan.status === "active" || plan.status === "draft") {
    const waves = await api(`/v1/plans/${planId}/waves`);
    if (generation !== view.generation) return;
    view.critical = new Set(waves.critical_path);
  }
  view.cost = view.plan.spent_usd || 0;
  showPlanControls();
  drawDag();
  refresh();
  connect();
  pollAgents();
}

// A draft has no tickets yet: it is drawn from its plan file, every ticket "draft".
function loadDraft(spec) {
  view.draft = true;
  const wave = new Map();
  const byId = new Map(spec.tickets.map((t) => [t.id, t]));
  const waveOf = (t) => {
    if (!wave.has(t.id)) {
      wave.set(t.id, 0);
      const deps = t.depends_on.map((d) => byId.get(d)).filter(Boolean);
      wave.set(t.id, deps.length ? 1 + Math.max(...deps.map(waveOf)) : 0);
    }
    return wave.get(t.id);
  };
  spec.tickets.forEach((t, n) => {
    const ticket = {
      id: -(n + 1), key: t.id, title: t.title, depends_on: t.depends_on, wave: waveOf(t),
      rank: 0, state: "draft", acceptance: t.acceptance || [], body: t.body || "", attempts: 0,
    };
    view.tickets.set(ticket.id, ticket);
    view.byKey.set(ticket.key, ticket);
  });
}

function showPlanControls() {
  const plan = view.plan;
  $("plan-approve").hidden = plan.status !== "draft";
  $("plan-pause").hidden = plan.status !== "active" && plan.status !== "draft";
  $("plan-pause").textContent = plan.paused ? "Resume" : "Pause";
  $("paused").hidden = !plan.paused;
  showRun();
}

// The plan's newest run: agents the control plane puts on it (POST /v1/plans/{id}/run).
function showRun() {
  const run = view.run;
  const going = Boolean(run && run.state === "running");
  const startable = view.plan.status === "active" && !view.draft && !going;
  $("run-agents").hidden = !startable;
  $("run-start").hidden = !startable;
  $("run-stop").hidden = !going;
  $("run-state").hidden = !run;
  $("run-state").dataset.state = run ? run.state : "";
  $("run-state").textContent = !run ? ""
    : !going ? `last run ${run.state}${run.reason ? `: ${run.reason}` : ""}`
    : run.held_by ? `${run.agents} ${run.agents === 1 ? "agent" : "agents"} (${run.backend})`
    : "run waiting for a control plane";
  $("run-state").title = going && run.held_by ? `worked by ${run.held_by}` : "";
}

$("run-start").addEventListener("click", () => runAction("POST"));
$("run-stop").addEventListener("click", () => runAction("DELETE"));

async function runAction(method) {
  $("plan-error").textContent = "";
  const planId = view.plan.id;
  const button = $(method === "POST" ? "run-start" : "run-stop");
  button.disabled = true; // stopping answers once every agent has handed its ticket back
  try {
    const body = method === "POST"
      ? JSON.stringify({ agents: Number($("run-agents").value) || 1 }) : undefined;
    const run = await api(`/v1/plans/${planId}/run`, {
      method, body, headers: body ? { "Content-Type": "application/json" } : {},
    });
    if (view.plan && view.plan.id === planId) { view.run = run; showRun(); }
  } catch (error) {
    $("plan-error").textContent = `${method === "POST" ? "start agents" : "stop agents"}: ${error.message}`;
  } finally {
    button.disabled = false;
  }
}

$("plan-approve").addEventListener("click", () => planAction("approve"));
$("plan-pause").addEventListener("click", () => planAction(view.plan.paused ? "resume" : "pause"));

async function planAction(action) {
  $("plan-error").textContent = "";
  try {
    const plan = await api(`/v1/plans/${view.plan.id}/${action}`, { method: "POST" });
    if (action === "approve") { await load(plan.id); return; }
    view.plan = { ...view.plan, ...plan };
    showPlanControls();
  } catch (error) {
    $("plan-error").textContent = `${action}: ${error.message}`;
  }
}

// -- agents and their sandboxes: polled, since a heartbeat is not an event ------------------

async function pollAgents() {
  clearTimeout(view.agentsTimer);
  const planId = view.plan && view.plan.id;
  if (!planId || view.draft || !token()) return;
  try {
    const [agents, sandboxes, runs] = await Promise.all([
      api(`/v1/agents?plan_id=${planId}`), api("/v1/vms").catch(() => []),
      api(`/v1/runs?plan_id=${planId}`).catch(() => []),
    ]);
    if (!view.plan || view.plan.id !== planId) return;
    view.agents = new Map(agents.map((a) => [a.ticket_id, a]));
    view.sandboxes = sandboxes;
    view.run = runs.length ? runs[runs.length - 1] : null;
    showRun();
    drawSandboxes();
    refresh();
  } catch (_) { /* the connection badge says when the control plane is away */ }
  view.agentsTimer = setTimeout(pollAgents, AGENTS_POLL_MS);
}

// The sandboxes this control plane runs itself (the VM API's: a person's or a tool's), beside
// the agents' sandboxes, which their hosts run and report through their heartbeats.
function drawSandboxes() {
  const now = Date.now() / 1000;
  const boxes = view.sandboxes || [];
  $("sandboxes").hidden = boxes.length === 0;
  $("sandbox-rows").replaceChildren(...boxes.map((b) => {
    const row = document.createElement("tr");
    row.dataset.sandbox = b.id;
    const limits = b.spec.limits || {};
    const cells = [
      b.id, b.backend, b.state, ago(now - b.created_at), mib(b.memory_bytes),
      limits.memory_mib ? `${limits.memory_mib} MiB` : "", limits.cpus ? String(limits.cpus) : "",
    ];
    for (const value of cells) { const td = document.createElement("td"); td.textContent = value; row.append(td); }
    const actions = document.createElement("td");
    actions.append(rowButton("Destroy", "End every process in this sandbox and remove its files",
      () => destroySandbox(b.id)));
    row.append(actions);
    return row;
  }));
}

async function destroySandbox(id) {
  try {
    await api(`/v1/vms/${encodeURIComponent(id)}`, { method: "DELETE" });
    view.sandboxes = (view.sandboxes || []).filter((b) => b.id !== id);
    drawSandboxes();
  } catch (error) {
    $("plan-error").textContent = `destroy ${id}: ${error.message}`;
  }
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

function deadReason(reason) {
  const text = reason || "dead";
  return text.startsWith("over budget") ? text : `dead: ${text}`;
}

function fixReason(fix) {
  if (fix.reason === "conflict") {
    return `conflict with ${fix.base} in ${(fix.conflicts || []).join(", ") || "its files"}: being fixed`;
  }
  if (fix.reason === "checks") return `the checks failed on the merge into ${fix.base}: being fixed`;
  return `the merge failed: being fixed`;
}

// A merge that conflicted or failed its checks sent the ticket back: what to fix is in the
// ticket (its paths and git's words), not in the event.
async function sentBack(ticket) {
  try {
    const fresh = await api(`/v1/tickets/${ticket.id}`);
    ticket.fix = fresh.fix;
    if (fresh.fix && fresh.state !== "done" && fresh.state !== "dead") {
      view.attention.set(ticket.id, fixReason(fresh.fix));
    }
    refresh();
  } catch (_) { /* the next event or reload shows it */ }
}

function applyPlanEvent(event) {
  if (event.kind === "plan.approved") { load(view.plan.id); return; }
  if (event.kind === "plan.paused") view.plan.paused = true;
  if (event.kind === "plan.resumed") view.plan.paused = false;
  showPlanControls();
}

function apply(event) {
  view.applied += 1;
  const ticket = view.tickets.get(event.ticket_id);
  if (event.kind === "llm.usage") view.cost += event.data.cost_usd || 0;
  if (event.kind.startsWith("plan.") && view.plan) applyPlanEvent(event);
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
      if (state === "done") {
        view.doneTimes.push(event.ts);
        view.attention.delete(ticket.id);
        ticket.fix = null;
      }
      if (state === "dead") view.attention.set(ticket.id, deadReason(event.data.reason));
      if (event.kind === "ticket.retried" || event.kind === "ticket.cancelled") {
        view.attention.delete(ticket.id);
      }
      if (state !== "claimed") view.agents.delete(ticket.id);
      view.unpainted.add(ticket);
    }
    if (event.kind === "ticket.ready" && event.data.fix) sentBack(ticket);
    if (view.selected === ticket.id && event.kind.startsWith("agent.")) addLogLine(event);
  }
  scheduleRefresh();
}

// Events come by the hundred a second with a hundred agents at work: the page shows them in
// batches, a few times a second, and changes only what changed. (A repaint of a 1,000-box SVG
// and a rebuilt table on every frame cost more than a frame.)
function scheduleRefresh() {
  if (view.refreshTimer === null) view.refreshTimer = setTimeout(refresh, REFRESH_MS);
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
  makeWaveRows(cols);
  view.agentRows = new Map();
  $("agents").replaceChildren();
  view.attentionShown = null;
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
  if (!t.node || t.node.dataset.state === t.state) return;
  t.node.dataset.state = t.state;
  t.node.firstChild.setAttribute("fill", `var(--${t.state})`);
}

// -- totals, agents, attention -----------------------------------------------------------

function setText(element, text) {
  if (element.textContent !== text) element.textContent = text;
}

function refresh() {
  clearTimeout(view.refreshTimer);
  view.refreshTimer = null;
  for (const t of view.unpainted) paintTicket(t);
  view.unpainted.clear();
  const tickets = [...view.tickets.values()];
  const counts = new Map();
  for (const t of tickets) counts.set(t.state, (counts.get(t.state) || 0) + 1);
  const count = (s) => counts.get(s) || 0;
  const done = count("done");
  setText($("done-count"), `${done}/${tickets.length}`);
  setText($("working-count"), String(count("claimed") + count("merging")));
  const budget = view.plan && view.plan.budget_usd;
  setText($("cost"), `$${view.cost.toFixed(2)}`);
  setText($("budget"), budget ? `spent of $${budget.toFixed(2)}` : "spent");
  const times = view.doneTimes;
  if (times.length >= 2) {
    const hours = (times.at(-1) - times[0]) / 3600;
    const rate = hours > 0 ? (times.length - 1) / hours : 0;
    setText($("rate"), rate ? rate.toFixed(0) : "–");
    const left = tickets.length - done;
    setText($("eta"), rate && left ? new Date(Date.now() + (left / rate) * 3600e3).toLocaleTimeString() : "–");
  }
  drawStates(count);
  drawWaves();
  drawAgents(tickets);
  drawAttention(budget);
}

function drawStates(count) {
  const box = $("states");
  for (const s of STATES) {
    let chip = box.querySelector(`[data-state="${s}"]`);
    if (!chip && count(s)) {
      chip = document.createElement("span");
      chip.className = "chip";
      chip.dataset.state = s;
      const swatch = document.createElement("i");
      swatch.style.background = `var(--${s})`;
      chip.append(swatch, document.createElement("span"));
      box.append(chip);
    }
    if (!chip) continue;
    chip.hidden = !count(s);
    setText(chip.lastChild, `${s} ${count(s)}`);
  }
  // keep the chips in the order of STATES
  const order = STATES.map((s) => box.querySelector(`[data-state="${s}"]`)).filter(Boolean);
  order.forEach((chip, n) => { if (box.children[n] !== chip) box.insertBefore(chip, box.children[n] || null); });
}

// One bar per wave, made with the DAG (drawDag), updated in place.
function drawWaves() {
  view.waveRows.forEach(({ tickets, fill, figure }) => {
    const finished = tickets.filter((t) => t.state === "done").length;
    const width = `${(100 * finished) / tickets.length}%`;
    if (fill.style.width !== width) fill.style.width = width;
    setText(figure, `${finished}/${tickets.length}`);
  });
}

function makeWaveRows(cols) {
  view.waveRows = cols.map((col, n) => {
    const row = document.createElement("div");
    row.className = "wave";
    row.dataset.wave = n;
    const bar = document.createElement("div");
    bar.className = "bar";
    const fill = document.createElement("b");
    bar.append(fill);
    const label = document.createElement("span");
    label.textContent = `wave ${n + 1}`;
    const figure = document.createElement("span");
    row.append(label, bar, figure);
    return { row, tickets: col, fill, figure };
  });
  $("waves").replaceChildren(...view.waveRows.map((w) => w.row));
}

function rowButton(text, title, onClick) {
  const button = document.createElement("button");
  button.type = "button";
  button.className = "stop";
  button.textContent = text;
  button.title = title;
  button.addEventListener("click", onClick);
  return button;
}

const plural = (n, noun) => `${n} ${noun}${n === 1 ? "" : "s"}`;
const ago = (seconds) => `${Math.max(0, Math.round(seconds))}s`;
const mib = (bytes) => (bytes === undefined || bytes === null ? "" : `${Math.round(bytes / 2 ** 20)} MiB`);

function drawAgents(tickets) {
  const now = Date.now() / 1000;
  const busy = tickets.filter((t) => t.state === "claimed" || t.state === "merging");
  busy.sort((a, b) => (a.state < b.state ? -1 : a.state > b.state ? 1 : a.id - b.id));
  setText($("agents-count"), busy.length ? `(${busy.length})` : "");
  $("agents-none").hidden = busy.length > 0;
  const body = $("agents");
  const rows = view.agentRows;
  const keep = new Set(busy.map((t) => t.id));
  for (const [id, row] of rows) if (!keep.has(id)) { row.remove(); rows.delete(id); }
  busy.forEach((t, n) => {
    let row = rows.get(t.id);
    if (!row) {
      row = document.createElement("tr");
      row.dataset.ticket = t.id;
      for (let c = 0; c < 10; c += 1) row.append(document.createElement("td"));
      rows.set(t.id, row);
    }
    const seen = t.state === "claimed" ? view.agents.get(t.id) : null;
    const box = (seen && seen.sandbox) || {};
    const since = (seen && seen.claimed_at) || t.claimed_at || t.updated_at;
    const cells = [
      t.state === "claimed" ? (seen && seen.agent) || t.lease_agent || "" : "merge queue",
      t.key,
      t.state === "merging" ? "merging" : t.fix ? "fixing" : "working",
      since ? ago(now - since) : "",
      seen ? `${ago(now - seen.last_heartbeat_at)} ago` : "",
      box.backend || "",
      mib(box.memory_bytes),
      box.cpu_percent === undefined || box.cpu_percent === null ? "" : `${Math.round(box.cpu_percent)}%`,
      String(t.attempts),
    ];
    cells.forEach((value, c) => setText(row.children[c], value));
    const stale = Boolean(seen && seen.stale);
    if (row.classList.contains("stale") !== stale) row.classList.toggle("stale", stale);
    const actions = row.children[9];
    const stoppable = t.state === "claimed";
    if (stoppable !== Boolean(actions.firstChild)) {
      actions.replaceChildren(...(stoppable ? [rowButton("Stop",
        "Stop this agent: its sandbox is replaced and the ticket goes to another agent",
        () => stopAgent(t.id))] : []));
    }
    if (body.children[n] !== row) body.insertBefore(row, body.children[n] || null);
  });
}

function drawAttention(budget) {
  const items = [];
  if (budget && view.cost >= budget) {
    items.push(["budget", `the plan has spent $${view.cost.toFixed(2)} of its $${budget.toFixed(2)} budget`]);
  }
  for (const [id, reason] of view.attention) {
    const t = view.tickets.get(id);
    items.push([id, `${t ? t.key : id}: ${reason}`]);
  }
  for (const a of view.agents.values()) {
    if (a.stale) items.push([a.ticket_id, `${a.ticket_key}: agent ${a.agent} is stale (no heartbeat for ${ago(Date.now() / 1000 - a.last_heartbeat_at)})`]);
  }
  $("attention").hidden = items.length === 0;
  const digest = items.map(([id, text]) => `${id}\u0000${text}`).join("\u0001");
  if (digest === view.attentionShown) return;
  view.attentionShown = digest;
  $("attention-list").replaceChildren(...items.map(([id, text]) => {
    const li = document.createElement("li");
    li.textContent = text;
    if (typeof id === "number" && id > 0) {
      li.className = "link";
      li.addEventListener("click", () => openTicket(id));
    }
    return li;
  }));
}

async function stopAgent(ticketId) {
  try {
    await api(`/v1/tickets/${ticketId}/stop`, { method: "POST" });
    view.agents.delete(ticketId);
    pollAgents();
  } catch (error) {
    $("plan-error").textContent = `stop: ${error.message}`;
  }
}

// -- one ticket --------------------------------------------------------------------------

async function openTicket(id) {
  view.selected = id;
  const draft = id < 0;
  const t = draft ? view.tickets.get(id) : await api(`/v1/tickets/${id}`);
  $("details").hidden = false;
  $("d-title").textContent = `${t.key}: ${t.title}`;
  $("d-meta").textContent = draft ? "in the draft: no ticket until the plan is approved" :
    `${t.state}, attempt ${t.attempts} of ${t.max_attempts}` + (t.last_error ? ` — ${t.last_error}` : "");
  $("d-fix").textContent = t.fix && t.state !== "done" ? fixReason(t.fix) : "";
  const acceptance = t.acceptance.length ? t.acceptance : ["(none given)"];
  $("d-acceptance").replaceChildren(...acceptance.map((a) => {
    const li = document.createElement("li"); li.textContent = a; return li;
  }));
  $("d-retry").hidden = draft || !["failed", "dead", "cancelled"].includes(t.state);
  $("d-cancel").hidden = draft || ["done", "cancelled"].includes(t.state);
  $("d-stop").hidden = draft || t.state !== "claimed";
  $("d-error").textContent = "";
  $("d-log").replaceChildren();
  $("d-attempts").replaceChildren();
  $("d-cost").textContent = "";
  $("d-pr").textContent = "";
  $("d-diff").textContent = "";
  if (draft) return;
  const [page, usage, pull, attempts] = await Promise.all([
    api(`/v1/events?ticket_id=${id}&limit=1000`),
    api(`/v1/usage?ticket_id=${id}`),
    api(`/v1/pulls/${id}`).catch(() => null),
    api(`/v1/tickets/${id}/attempts`),
  ]);
  if (view.selected !== id) return;
  $("d-attempts").replaceChildren(...attempts.map((a) => {
    const li = document.createElement("li");
    const took = a.ended_at ? `${ago(a.ended_at - a.claimed_at)}, ${a.outcome}` : "going on";
    li.textContent = `${a.agent}: ${took}${a.error ? ` — ${a.error}` : ""}`;
    return li;
  }));
  for (const event of page.events) if (event.kind.startsWith("agent.")) addLogLine(event);
  $("d-cost").textContent = `$${usage.cost_usd.toFixed(4)} in ${usage.calls} model calls ` +
    `(${usage.input_tokens} tokens in, ${usage.output_tokens} out)`;
  if (pull) {
    const where = pull.url ? ` — ${pull.url}` : "";
    $("d-pr").textContent = `${pull.head} into ${pull.base}, ${pull.state}: ` +
      `${plural(pull.files_changed, "file")}, +${pull.insertions} −${pull.deletions}${where}`;
    const diff = await api(`/v1/pulls/${id}/diff`).catch((error) => `(no diff: ${error.message})`);
    if (view.selected === id) $("d-diff").textContent = diff;
  } else {
    $("d-pr").textContent = "no pull request yet";
  }
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
$("d-stop").addEventListener("click", () => act(`/v1/tickets/${view.selected}/stop`));
$("close-details").addEventListener("click", () => { $("details").hidden = true; view.selected = null; });

if (token()) start().catch((error) => showLogin(error.message)); else showLogin();
