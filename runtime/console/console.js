// The Wharf console: plain ES modules and DOM APIs, nothing to build and
// nothing fetched but the admin API of the instance that serves it. Every
// value from the API goes into the page as text (never as HTML): message
// bodies and headers come from outside.

const TOKEN = "wharf-console-token";
const TENANT = "wharf-console-tenant";
const POLL_MS = 2000;
const HISTORY = 150; // points per series: five minutes at POLL_MS

const main = document.getElementById("main");
const nav = document.getElementById("nav");
const tenantSelect = document.getElementById("tenant");
const statusLine = document.getElementById("status");

let timer = null;
// Per tenant: { at: [ms], depth: {store: [n]}, forwarded: {processor: [n]} }
const samples = new Map();

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (k === "text") node.textContent = v;
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

function say(text, isError = false) {
  statusLine.textContent = text;
  statusLine.className = isError ? "error" : "";
}

function token() {
  return sessionStorage.getItem(TOKEN) ?? "";
}

function tenant() {
  return sessionStorage.getItem(TENANT) ?? "default";
}

function base() {
  return `/api/v1/tenants/${encodeURIComponent(tenant())}`;
}

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

// Calls the admin API; the parsed JSON answer, or an ApiError with its words.
async function api(path, { method = "GET", body, raw, headers = {} } = {}) {
  const h = { ...headers };
  if (token()) h.Authorization = `Bearer ${token()}`;
  let payload = raw;
  if (body !== undefined) {
    h["Content-Type"] = "application/json";
    payload = JSON.stringify(body);
  }
  const r = await fetch(path, { method, headers: h, body: payload });
  const text = await r.text();
  let json = null;
  try {
    json = text ? JSON.parse(text) : null;
  } catch {
    json = null;
  }
  if (!r.ok) {
    const why = json?.error ?? json?.errors?.map((e) => `${e.key}: ${e.reason}`).join("; ") ?? text;
    throw new ApiError(r.status, `${r.status}: ${why}`);
  }
  return { json, headers: r.headers };
}

// In-page confirmation (a real dialog a browser test can click). One at a
// time: a new question, or leaving the page, answers the open one "no".
let pendingConfirm = null;

function confirmStep(text) {
  cancelConfirm();
  const box = document.getElementById("confirm");
  const yes = document.getElementById("confirm-yes");
  const no = document.getElementById("confirm-no");
  document.getElementById("confirm-text").textContent = text;
  box.hidden = false;
  return new Promise((resolve) => {
    const done = (answer) => {
      box.hidden = true;
      yes.removeEventListener("click", onYes);
      no.removeEventListener("click", onNo);
      pendingConfirm = null;
      resolve(answer);
    };
    const onYes = () => done(true);
    const onNo = () => done(false);
    yes.addEventListener("click", onYes);
    no.addEventListener("click", onNo);
    pendingConfirm = () => done(false);
  });
}

function cancelConfirm() {
  if (pendingConfirm) pendingConfirm();
}

// ---- log in ----

function showLogin(problem) {
  nav.hidden = true;
  stopPolling();
  main.replaceChildren(
    el("section", {},
      el("h2", { text: "Log in" }),
      el("p", { text: "An admin or read token: the operator's (server.admin_token) or a tenant's." }),
      el("form", { id: "login-form", onsubmit: login },
        el("input", { id: "token", type: "password", size: 48, autocomplete: "off", placeholder: "token" }),
        " ",
        el("button", { id: "login", type: "submit", text: "Log in" })),
      el("p", { id: "login-error", class: "failure", text: problem ?? "" })));
}

async function login(event) {
  event.preventDefault();
  const given = document.getElementById("token").value.trim();
  sessionStorage.setItem(TOKEN, given);
  sessionStorage.removeItem(TENANT);
  try {
    await start();
  } catch (e) {
    sessionStorage.removeItem(TOKEN);
    showLogin(e.status === 401 ? "That token is not accepted here." : String(e.message));
  }
}

async function start() {
  const { json: tenants } = await api("/api/v1/tenants");
  if (!tenants.length) throw new ApiError(404, "this token sees no tenant");
  tenantSelect.replaceChildren(...tenants.map((t) => el("option", { value: t.name, text: t.name })));
  if (!tenants.some((t) => t.name === tenant())) sessionStorage.setItem(TENANT, tenants[0].name);
  tenantSelect.value = tenant();
  nav.hidden = false;
  // (Without a hashchange event: that would route a second time.)
  if (!location.hash) history.replaceState(null, "", "#overview");
  await route();
}

tenantSelect.addEventListener("change", () => {
  sessionStorage.setItem(TENANT, tenantSelect.value);
  route();
});

document.getElementById("logout").addEventListener("click", () => {
  generation += 1;
  cancelConfirm();
  sessionStorage.clear();
  showLogin();
});

// ---- pages ----

const pages = {
  "#overview": overview,
  "#dead-letters": deadLetters,
  "#plugins": plugins,
  "#pipeline": pipeline,
};

// Bumped by every route: a page's late answers and timers check it and
// stop once another page (or tenant, or a log-out) has taken over.
let generation = 0;

function current(mine) {
  return mine === generation;
}

async function route() {
  generation += 1;
  stopPolling();
  cancelConfirm();
  const page = pages[location.hash] ?? overview;
  for (const a of nav.querySelectorAll("a")) a.classList.toggle("here", a.getAttribute("href") === location.hash);
  say("");
  try {
    await page();
  } catch (e) {
    if (e.status === 401) return showLogin("The token is no longer accepted.");
    say(e.message, true);
  }
}

window.addEventListener("hashchange", () => {
  if (!nav.hidden) route();
});

function stopPolling() {
  if (timer) clearTimeout(timer);
  timer = null;
}

// Overview: stores with depth, processors with state and last failure, charts.
async function overview() {
  const mine = generation;
  const stores = el("tbody");
  const processors = el("tbody");
  const depthChart = chart("depth-chart");
  const rateChart = chart("rate-chart");
  main.replaceChildren(
    el("section", {},
      el("h2", { text: "Stores" }),
      el("table", { id: "stores" },
        el("thead", {}, el("tr", {}, ["Store", "Backend", "Connected", "Depth"].map((h) => el("th", { text: h })))),
        stores),
      el("h3", { text: "Depth, last minutes" }),
      depthChart.svg),
    el("section", {},
      el("h2", { text: "Processors" }),
      el("table", { id: "processors" },
        el("thead", {}, el("tr", {}, ["Processor", "Store", "State", "Last failure", "Forwarded", "Dead-lettered", ""].map((h) => el("th", { text: h })))),
        processors),
      el("h3", { text: "Forward rate (msg/s), last minutes" }),
      rateChart.svg));

  const refresh = async () => {
    const [{ json: s }, { json: p }] = await Promise.all([api(`${base()}/stores`), api(`${base()}/processors`)]);
    if (!current(mine)) return;
    stores.replaceChildren(...s.map((store) =>
      el("tr", { "data-store": store.name },
        el("td", { text: store.name }),
        el("td", { text: store.backend }),
        el("td", { text: store.connected ? "yes" : "no" }),
        el("td", { class: "depth", text: store.depth ?? "unknown" }))));
    processors.replaceChildren(...p.map((proc) => processorRow(proc, refresh)));
    const h = record(s, p);
    depthChart.draw(h.at, h.depth);
    rateChart.draw(h.at.slice(1), rates(h));
  };
  await refresh();
  if (!current(mine)) return;
  // The console bench reads this: the first render of the overview.
  performance.mark("wharf-overview-rendered");
  // The next sample only once the last has answered.
  const poll = () => {
    timer = setTimeout(async () => {
      await refresh().catch((e) => current(mine) && say(e.message, true));
      if (current(mine)) poll();
    }, POLL_MS);
  };
  poll();
}

function processorRow(proc, refresh) {
  const deactivated = proc.state === "deactivated";
  const action = deactivated ? "activate" : "deactivate";
  return el("tr", { "data-processor": proc.name },
    el("td", { text: proc.name }),
    el("td", { text: proc.store }),
    el("td", { class: `state state-${proc.state}`, text: proc.state + (deactivated && proc.deactivated_reason ? ` (${proc.deactivated_reason})` : "") }),
    el("td", { class: "last-failure failure", text: proc.last_failure ?? "" }),
    el("td", { text: proc.forwarded }),
    el("td", { text: proc.dead_lettered }),
    el("td", {},
      el("button", {
        type: "button",
        class: "toggle",
        text: deactivated ? "Activate" : "Deactivate",
        onclick: async () => {
          try {
            await api(`${base()}/processors/${encodeURIComponent(proc.name)}/${action}`, { method: "POST" });
            say(`${proc.name}: ${action}d`);
            await refresh();
          } catch (e) {
            say(e.message, true);
          }
        },
      })));
}

function record(stores, processors) {
  let h = samples.get(tenant());
  if (!h) {
    h = { at: [], depth: {}, forwarded: {} };
    samples.set(tenant(), h);
  }
  h.at.push(Date.now());
  for (const s of stores) (h.depth[s.name] ??= []).push(s.depth ?? 0);
  for (const p of processors) (h.forwarded[p.name] ??= []).push(p.forwarded ?? 0);
  if (h.at.length > HISTORY) {
    h.at.shift();
    for (const series of [...Object.values(h.depth), ...Object.values(h.forwarded)]) series.shift();
  }
  return h;
}

function rates(h) {
  const out = {};
  for (const [name, series] of Object.entries(h.forwarded)) {
    out[name] = series.slice(1).map((n, i) => {
      const seconds = (h.at[i + 1] - h.at[i]) / 1000;
      return seconds > 0 ? Math.max(0, n - series[i]) / seconds : 0;
    });
  }
  return out;
}

const COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf"];

// A small SVG line chart of several series over the same times.
function chart(id) {
  const NS = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(NS, "svg");
  svg.setAttribute("id", id);
  svg.setAttribute("class", "chart");
  svg.setAttribute("width", "600");
  svg.setAttribute("height", "120");
  const legend = el("p", { class: "legend" });
  const draw = (at, series) => {
    svg.replaceChildren();
    legend.replaceChildren(...Object.keys(series).map((name, i) =>
      el("span", { class: `series c${i % COLOURS.length}`, text: `■ ${name}` })));
    const all = Object.values(series).flat();
    const top = Math.max(1, ...all);
    const label = document.createElementNS(NS, "text");
    label.setAttribute("x", "4");
    label.setAttribute("y", "12");
    label.setAttribute("font-size", "10");
    label.textContent = `max ${Math.round(top * 10) / 10}`;
    svg.append(label);
    Object.entries(series).forEach(([name, values], i) => {
      if (values.length < 2) return;
      const points = values.map((v, j) => `${(j / (values.length - 1)) * 596 + 2},${118 - (v / top) * 100}`).join(" ");
      const line = document.createElementNS(NS, "polyline");
      line.setAttribute("points", points);
      line.setAttribute("fill", "none");
      line.setAttribute("stroke", COLOURS[i % COLOURS.length]);
      line.setAttribute("data-series", name);
      const title = document.createElementNS(NS, "title");
      title.textContent = name;
      line.append(title);
      svg.append(line);
    });
  };
  const box = el("div", {}, svg, legend);
  return { svg: box, draw };
}

// Dead letters: browse with filters, look at one, replay, purge.
async function deadLetters() {
  const mine = generation;
  const { json: stores } = await api(`${base()}/stores`);
  if (!current(mine)) return;
  const params = new URLSearchParams(location.search);
  const field = (id, label, placeholder) =>
    el("label", {}, label, el("input", { id, placeholder, value: params.get(id) ?? "" }));
  const storeSelect = el("select", { id: "dl-store" }, stores.map((s) => el("option", { value: s.name, text: s.name })));
  const preferred = stores.find((s) => /dl|dead/i.test(s.name));
  if (preferred) storeSelect.value = preferred.name;
  const results = el("tbody");
  const detail = el("div", { id: "dl-detail" });
  const job = el("p", { id: "dl-job" });
  const more = el("button", { id: "dl-more", type: "button", text: "More", hidden: true });
  let cursor = null;

  const filter = () => {
    const f = {};
    for (const key of ["since", "until", "status", "processor"]) {
      const v = document.getElementById(`dl-${key}`).value.trim();
      if (v) f[key] = v;
    }
    return f;
  };
  const path = () => `${base()}/stores/${encodeURIComponent(storeSelect.value)}`;

  const find = async (append) => {
    const q = new URLSearchParams({ limit: "50", ...filter() });
    if (append && cursor) q.set("cursor", cursor);
    const { json, headers } = await api(`${path()}/messages?${q}`);
    cursor = headers.get("wharf-next-cursor");
    more.hidden = !cursor;
    const rows = json.map((m) =>
      el("tr", { class: "pick", "data-id": m.id, onclick: () => show(m.id) },
        el("td", { text: m.id }),
        el("td", { text: new Date(m.received_at).toISOString() }),
        el("td", { text: m.failure?.processor ?? "" }),
        el("td", { class: "failure", text: m.failure ? (m.failure.last_status ?? m.failure.kind) : "" }),
        el("td", { text: m.failure?.attempts ?? "" })));
    if (append) results.append(...rows);
    else results.replaceChildren(...rows);
    say(append ? "" : `${results.children.length}${cursor ? "+" : ""} found`);
  };

  const show = async (id) => {
    const { json: m } = await api(`${path()}/messages/${encodeURIComponent(id)}`);
    const headers = Object.entries(m.headers ?? {}).map(([k, v]) => `${k}: ${v}`).join("\n");
    const trail = m.failure;
    detail.replaceChildren(
      el("h3", { text: `Message ${m.id}` }),
      el("p", { text: `${m.method} ${m.path}, received ${new Date(m.received_at).toISOString()}` }),
      el("h4", { text: "Headers" }), el("pre", { class: "headers", text: headers }),
      el("h4", { text: m.body_base64 ? "Body (base64)" : "Body" }), el("pre", { class: "body", text: m.body }),
      trail ? el("div", { class: "trail" },
        el("h4", { text: "Failure trail" }),
        el("p", { class: "failure", text: `${trail.processor}: ${trail.attempts} attempts, ${trail.kind}${trail.last_status ? ` ${trail.last_status}` : ""} — ${trail.last_error ?? ""}` }),
        trail.last_response_body ? el("pre", { class: "response", text: trail.last_response_body }) : null,
        el("table", {},
          el("thead", {}, el("tr", {}, el("th", { text: "At" }), el("th", { text: "Status" }), el("th", { text: "Error" }))),
          el("tbody", {}, (trail.attempt_log ?? []).map((a) =>
            el("tr", {}, el("td", { text: a.at }), el("td", { text: a.status ?? "" }), el("td", { text: a.error ?? "" })))))) : null,
      el("button", { id: "dl-replay-one", type: "button", text: "Replay this one", onclick: () => act("replay", { ids: [m.id] }) }),
      " ",
      el("button", { id: "dl-purge-one", type: "button", text: "Purge this one", onclick: () => act("purge", { ids: [m.id] }) }));
  };

  // A dry run first (how many), a confirmation, then the job, followed to its end.
  const act = async (kind, body) => {
    try {
      const replay = kind === "replay";
      const url = replay ? `${path()}/replay` : `${path()}/messages`;
      const method = replay ? "POST" : "DELETE";
      const { json: dry } = await api(`${url}?dry_run=true`, { method, body });
      const ok = await confirmStep(`${replay ? "Replay" : "Purge"} ${dry.matched} message(s) of ${storeSelect.value}?`
        + (replay && dry.targets ? ` To: ${Object.entries(dry.targets).map(([s, n]) => `${s} (${n})`).join(", ")}.` : ""));
      if (!ok) return say("Nothing was changed.");
      const mine = generation;
      let { json: j } = await api(url, { method, body });
      while (j.state === "running") {
        if (!current(mine)) return; // the job goes on; its page has gone
        job.textContent = `${j.kind} ${j.state}: ${j.done} of ${j.total ?? "?"}`;
        await new Promise((r) => setTimeout(r, 300));
        ({ json: j } = await api(`${base()}/jobs/${encodeURIComponent(j.id)}`));
      }
      job.textContent = `${j.kind} ${j.state}: ${j.done} moved${j.in_flight ? `, ${j.in_flight} in flight` : ""}${j.error ? ` — ${j.error}` : ""}`;
      detail.replaceChildren();
      await find(false);
    } catch (e) {
      say(e.message, true);
    }
  };

  main.replaceChildren(
    el("section", {},
      el("h2", { text: "Dead letters" }),
      el("form", { class: "filters", onsubmit: (e) => { e.preventDefault(); find(false).catch((x) => say(x.message, true)); } },
        el("label", {}, "Store", storeSelect),
        field("dl-status", "Status", "5xx, 503, transport"),
        field("dl-processor", "Processor", "name"),
        field("dl-since", "Since", "2h or RFC 3339"),
        field("dl-until", "Until", "RFC 3339"),
        el("button", { id: "dl-find", type: "submit", text: "Find" }),
        el("button", { id: "dl-replay", type: "button", text: "Replay matching", onclick: () => act("replay", matching()) }),
        el("button", { id: "dl-purge", type: "button", text: "Purge matching", onclick: () => act("purge", matching()) })),
      job,
      el("table", { id: "dl-results" },
        el("thead", {}, el("tr", {}, ["Id", "Received", "Processor", "Last status", "Attempts"].map((h) => el("th", { text: h })))),
        results),
      more),
    el("section", {}, detail));
  more.addEventListener("click", () => find(true).catch((e) => say(e.message, true)));
  storeSelect.addEventListener("change", () => find(false).catch((e) => say(e.message, true)));

  function matching() {
    const f = filter();
    return Object.keys(f).length ? f : { all: true };
  }
  await find(false);
}

// Plugins: versions, which is live, deploy, rollback.
async function plugins() {
  const mine = generation;
  const { json: list } = await api(`${base()}/plugins`);
  if (!current(mine)) return;
  const rows = list.map((p) =>
    el("tr", { "data-plugin": p.name },
      el("td", { text: p.name }),
      el("td", { text: p.world }),
      el("td", { class: "live", text: p.live ?? "none" }),
      el("td", { text: p.versions.map((v) => `v${v.version} ${v.sha256.slice(0, 12)} ${v.deployed_at}`).join("\n") }),
      el("td", {},
        el("button", {
          type: "button",
          class: "rollback",
          text: "Roll back",
          disabled: p.versions.length < 2,
          onclick: async () => {
            if (!(await confirmStep(`Make the version before v${p.live} of ${p.name} live?`))) return;
            try {
              const { json } = await api(`${base()}/plugins/${encodeURIComponent(p.name)}/rollback`, { method: "POST" });
              say(`${p.name}: v${json.version} is live`);
              await plugins();
            } catch (e) {
              say(e.message, true);
            }
          },
        }))));
  const name = el("input", { id: "deploy-name", placeholder: "plugin name" });
  const file = el("input", { id: "deploy-file", type: "file", accept: ".wasm" });
  main.replaceChildren(
    el("section", {},
      el("h2", { text: "Plugins" }),
      el("table", { id: "plugins" },
        el("thead", {}, el("tr", {}, ["Plugin", "World", "Live", "Versions", ""].map((h) => el("th", { text: h })))),
        el("tbody", {}, rows))),
    el("section", {},
      el("h2", { text: "Deploy" }),
      name, " ", file, " ",
      el("button", {
        id: "deploy",
        type: "button",
        text: "Deploy",
        onclick: async () => {
          const bytes = file.files[0];
          if (!name.value.trim() || !bytes) return say("Give a name and a component file.", true);
          try {
            const { json } = await api(`${base()}/plugins/${encodeURIComponent(name.value.trim())}`, {
              method: "PUT",
              raw: await bytes.arrayBuffer(),
              headers: { "Content-Type": "application/wasm" },
            });
            say(`${json.name}: v${json.version} deployed and live`);
            await plugins();
          } catch (e) {
            say(e.message, true);
          }
        },
      })));
}

// Pipeline: the live document, its revisions, and the diff of an apply.
async function pipeline() {
  const mine = generation;
  const [{ json: live }, { json: revisions }] = await Promise.all([
    api(`${base()}/pipeline`),
    api(`${base()}/pipeline/revisions`),
  ]);
  if (!current(mine)) return;
  const edit = el("textarea", { id: "pipeline-edit", rows: 16, cols: 100 });
  edit.value = JSON.stringify(live.document, null, 2);
  const diff = el("pre", { id: "pipeline-diff" });
  const apply = async (dryRun) => {
    try {
      const { json } = await api(`${base()}/pipeline${dryRun ? "?dry_run=true" : ""}`, {
        method: "PUT",
        raw: edit.value,
        headers: { "Content-Type": edit.value.trim().startsWith("{") ? "application/json" : "application/toml" },
      });
      diff.textContent = JSON.stringify(json.diff, null, 2);
      say(dryRun ? "Dry run: nothing changed." : `Revision ${json.revision} is live.`);
      if (!dryRun) await pipeline();
    } catch (e) {
      diff.textContent = e.message;
      say(e.message, true);
    }
  };
  main.replaceChildren(
    el("section", {},
      el("h2", {}, "Pipeline, revision ", el("span", { id: "pipeline-revision", text: live.revision })),
      el("pre", { id: "pipeline-document", text: JSON.stringify(live.document, null, 2) })),
    el("section", {},
      el("h2", { text: "Revisions" }),
      el("table", { id: "revisions" },
        el("thead", {}, el("tr", {}, ["Revision", "Applied", "Source", "Live"].map((h) => el("th", { text: h })))),
        el("tbody", {}, revisions.map((r) =>
          el("tr", {}, el("td", { text: r.revision }), el("td", { text: r.applied_at }), el("td", { text: r.source }), el("td", { text: r.live ? "live" : "" })))))),
    el("section", {},
      el("h2", { text: "Apply" }),
      edit,
      el("p", {},
        el("button", { id: "pipeline-dry-run", type: "button", text: "Dry run", onclick: () => apply(true) }),
        " ",
        el("button", { id: "pipeline-apply", type: "button", text: "Apply", onclick: () => apply(false) })),
      el("h3", { text: "Diff" }),
      diff));
}

// ---- start ----

start().catch((e) => showLogin(e.status === 401 || e.status === 403 ? undefined : e.message));
