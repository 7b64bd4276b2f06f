// The metrics dashboard: the summaries of /metrics/api/sse as numbers, SVG
// charts and the workers of each app.  In the shell's frame it speaks the
// frame protocol: the shell may call snapshot() and select(app), and hears
// "selected" when a person picks an app; opened alone it works the same.
import { frameSDK } from "/.well-known/buntime/ui/frame-sdk.js";
import { lineChart, shortNumber } from "./chart.js";

const SLOTS = 60; // samples the charts show
const base = location.pathname.replace(/\/+$/, ""); // "/metrics", wherever the plugin is mounted
const history = { rps: [], errors: [], p50: [], p95: [], p99: [] };
let latest = null; // the last summary received
let selected = null; // the app picked in the workers list

const $ = (id) => document.getElementById(id);

function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) {
    if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  node.append(...children.filter((child) => child !== null && child !== undefined));
  return node;
}

const charts = {
  rps: lineChart($("chart-rps"), {
    label: "Requests per second",
    slots: SLOTS,
    series: [
      { name: "requests/s", color: "var(--c1)", area: true },
      { name: "5xx/s", color: "var(--c4)" },
    ],
  }),
  latency: lineChart($("chart-latency"), {
    label: "Latency percentiles in milliseconds",
    slots: SLOTS,
    unit: "ms",
    series: [
      { name: "p50", color: "var(--c1)" },
      { name: "p95", color: "var(--c2)" },
      { name: "p99", color: "var(--c3)" },
    ],
  }),
};

function ms(value) {
  if (value === null || value === undefined) return "–";
  return value >= 1000 ? `${(value / 1000).toFixed(2)} s` : `${shortNumber(value)} ms`;
}

function percent(value) {
  return `${(value * 100).toFixed(value > 0 && value < 0.01 ? 2 : 1)}%`;
}

function stat(id, value, unit, note, bad = false) {
  const card = $(id);
  const box = card.querySelector(".stat-value");
  box.replaceChildren(String(value), unit ? el("small", {}, unit) : "");
  card.querySelector(".stat-note").textContent = note;
  card.classList.toggle("bad", bad);
}

function record(rate) {
  const push = (list, value) => {
    list.push(value);
    if (list.length > SLOTS) list.shift();
  };
  push(history.rps, rate ? rate.rps : null);
  push(history.errors, rate ? rate.errors / rate.seconds : null);
  for (const key of ["p50", "p95", "p99"]) push(history[key], rate ? rate.latencyMs[key] : null);
}

function showStats(summary) {
  const { rate, http } = summary;
  const workers = summary.workers || { total: 0, byState: {} };
  if (rate) {
    stat("stat-rps", shortNumber(rate.rps), "", `${rate.requests} in the last ${+rate.seconds.toFixed(1)} s · ${http.total} in all`);
    const p = rate.latencyMs;
    const note = p.p50 === null ? "no request in this interval" : `p50 ${ms(p.p50)} · p99 ${ms(p.p99)}`;
    stat("stat-latency", p.p95 === null ? "–" : ms(p.p95), "", note);
    stat("stat-errors", percent(rate.errorRate), "", `${http.errors} of ${http.total} since start (${percent(http.errorRate)})`, rate.errorRate > 0);
  } else {
    stat("stat-rps", "–", "", `${http.total} in all · measuring…`);
    stat("stat-latency", ms(http.latencyMs.p95), "", "since start");
    stat("stat-errors", percent(http.errorRate), "", `${http.errors} of ${http.total} since start`, http.errorRate > 0);
  }
  const states = Object.entries(workers.byState || {}).map(([state, count]) => `${count} ${state}`);
  stat("stat-workers", workers.total, "", states.join(" · ") || "none running");
}

function workerRow(worker) {
  const id = String(worker.id || "").slice(0, 8);
  return el(
    "tr",
    { "data-worker": worker.id || "" },
    el("td", {}, el("code", { title: worker.id || "" }, id)),
    el("td", { class: "hide-phone" }, worker.version || ""),
    el("td", {}, el("span", { class: `state state-${worker.state}` }, worker.state)),
    el("td", { class: "n" }, String(worker.inFlight ?? 0)),
    el("td", { class: "n" }, String(worker.requestCount ?? 0)),
    el("td", { class: "n hide-phone" }, String(worker.errorCount ?? 0)),
    el("td", { class: "n hide-phone" }, ms(worker.avgResponseTimeMs)),
    el("td", { class: "n hide-phone" }, worker.rssMB ? `${shortNumber(worker.rssMB)} MB` : "–"),
  );
}

const cards = new Map(); // app name -> its card's parts, kept across updates (clicks land)

function appCard(name) {
  const head = el("tr", {}, ...["Worker", "Version", "State", "In flight", "Requests", "Errors", "Mean", "Memory"].map((text, index) =>
    el("th", { class: `${index >= 3 ? "n" : ""} ${[1, 5, 6, 7].includes(index) ? "hide-phone" : ""}`.trim() }, text)));
  const parts = { chips: el("span", { class: "states" }), served: el("span", { class: "app-served" }), rows: el("tbody") };
  parts.card = el(
    "div",
    { class: "card app", "data-app": name },
    el("div", { class: "app-head", role: "button", tabindex: "0", onclick: () => select(name), onkeydown: (event) => event.key === "Enter" && select(name) },
      el("span", { class: "app-name" }, name), parts.chips, parts.served),
    el("table", {}, el("thead", {}, head), parts.rows),
  );
  return parts;
}

function showApps(summary) {
  const apps = (summary.workers && summary.workers.byApp) || {};
  const served = (summary.http && summary.http.byApp) || {};
  const names = Object.keys(apps);
  $("workers-note").textContent = names.length ? `${names.length} app${names.length > 1 ? "s" : ""} with workers` : "";
  for (const [name, parts] of cards) if (!(name in apps)) cards.delete(name) && parts.card.remove();
  if (!names.length) {
    $("apps").replaceChildren(el("div", { class: "card empty" }, "No worker is running: a request to an app starts one."));
    return;
  }
  $("apps").querySelector(".empty")?.remove();
  for (const name of names) {
    if (!cards.has(name)) cards.set(name, appCard(name));
    const parts = cards.get(name);
    const app = apps[name];
    const total = Object.entries(served).filter(([key]) => key.split("@")[0] === name).reduce((sum, [, count]) => sum + count, 0);
    parts.card.classList.toggle("selected", selected === name);
    parts.chips.replaceChildren(...Object.entries(app.byState).map(([state, count]) => el("span", { class: `state state-${state}` }, `${count} ${state}`)));
    parts.served.textContent = `${total} request${total === 1 ? "" : "s"} answered`;
    parts.rows.replaceChildren(...app.workers.map(workerRow));
    $("apps").append(parts.card); // in order; a card already there just moves
  }
}

function bars(id, mapping, classOf = () => "") {
  const entries = Object.entries(mapping || {});
  const top = Math.max(1, ...entries.map(([, count]) => count));
  $(id).replaceChildren(
    ...(entries.length
      ? entries.map(([name, count]) => {
          const fill = el("i", { class: classOf(name), style: `width:${((count / top) * 100).toFixed(1)}%` });
          return el("div", { class: "bar-row" }, el("span", {}, name), el("span", { class: "num" }, String(count)), el("span", { class: "bar" }, fill));
        })
      : [el("p", { class: "muted" }, "No request yet.")]),
  );
}

function showPool(pool) {
  if (!pool) return;
  const rows = [
    ["Hit rate", `${pool.hitRate}%`],
    ["Worker memory", `${shortNumber(pool.memoryUsageMB)} MB`],
    ["Workers started", pool.totalWorkersCreated],
    ["Workers failed", pool.totalWorkersFailed],
    ["Workers retired", pool.totalWorkersRetired],
    ["Uptime", `${Math.round(pool.uptimeMs / 1000)} s`],
  ];
  $("pool").replaceChildren(...rows.flatMap(([name, value]) => [el("dt", {}, name), el("dd", {}, String(value))]));
}

function show(summary) {
  latest = summary;
  record(summary.rate);
  showStats(summary);
  charts.rps.update([history.rps, history.errors]);
  charts.latency.update([history.p50, history.p95, history.p99]);
  showApps(summary);
  bars("by-status", summary.http.byStatus, (name) => `s${name[0]}`);
  bars("by-app", summary.http.byApp);
  showPool(summary.pool);
}

function live(state, text) {
  $("live").className = `pill ${state}`;
  $("live").querySelector(".label").textContent = text;
}

/** Pick an app in the workers list (null: none); the shell hears it as "selected". */
function select(name) {
  selected = selected === name ? null : name;
  if (latest) showApps(latest);
  frameSDK.emit("selected", { app: selected });
  return selected;
}

/** The latest numbers, for the shell (and tests). */
function snapshot() {
  if (!latest) return null;
  const rate = latest.rate;
  return {
    requests: latest.http.total,
    errors: latest.http.errors,
    rps: rate ? rate.rps : null,
    errorRate: rate ? rate.errorRate : latest.http.errorRate,
    latencyMs: rate ? rate.latencyMs : latest.http.latencyMs,
    workers: latest.workers ? { total: latest.workers.total, byState: latest.workers.byState, apps: Object.keys(latest.workers.byApp) } : null,
    samples: history.rps.length,
  };
}

function applyTheme(theme) {
  document.documentElement.dataset.theme = theme === "dark" ? "dark" : "light";
}

frameSDK.register("snapshot", snapshot);
frameSDK.register("select", (name) => {
  selected = null;
  return select(name || null);
});
frameSDK.watch("theme", applyTheme);

const source = new EventSource(`${base}/api/sse`);
source.onopen = () => live("live", "Live");
source.onmessage = (event) => {
  show(JSON.parse(event.data));
  live("live", `Live · ${new Date().toLocaleTimeString()}`);
};
source.onerror = () => live("down", "Reconnecting…");

if (frameSDK.inFrame) {
  frameSDK
    .initialize()
    .then((props) => applyTheme(props.theme))
    .catch((error) => console.warn(error.message));
}
