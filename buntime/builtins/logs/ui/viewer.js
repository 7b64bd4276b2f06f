// The log viewer: the latest messages from /logs/api/ and then live from
// /logs/api/sse, filtered by level and text; a click on a request "follows
// its task" (every message of that request's eliot task, the runtime's and
// its worker's).  In the shell's frame the shell may call follow(requestId),
// filter({level, search}) and entries(), and hears "selected" when a task is
// followed; opened alone it works the same.
import { frameSDK } from "/.well-known/buntime/ui/frame-sdk.js";

const MAX_ROWS = 1000;
const LOAD_LIMIT = 300;
const base = location.pathname.replace(/\/+$/, ""); // "/logs", wherever the plugin is mounted
const body = document.getElementById("entries");
const state = { level: "info", search: "", task: null, request: null, paused: false };
let source = null;
let loading = Promise.resolve();
let generation = 0; // a newer load makes an older one's answer stale

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

function clock(timestamp) {
  const time = new Date(timestamp * 1000);
  const pad = (n, size = 2) => String(n).padStart(size, "0");
  return `${pad(time.getHours())}:${pad(time.getMinutes())}:${pad(time.getSeconds())}.${pad(time.getMilliseconds(), 3)}`;
}

/** runtime, plugin:logs, worker:hello@1.0.0: what kind of source said it. */
function sourceTag(context) {
  const text = String(context || "runtime");
  const kind = text.split(":")[0];
  return el("span", { class: `source-tag source-${kind}`, title: text }, text);
}

function requestCell(entry) {
  const cell = el("td", { class: "request" });
  const id = entry.request_id;
  const task = entry.task_uuid;
  if (!id && !task) return cell;
  const text = id || `task ${String(task).slice(0, 8)}`;
  const title = `Follow this request's task${task ? ` (${task})` : ""}`;
  cell.append(el("button", { type: "button", class: "link", title, "data-request": id || "", "data-task": task || "", onclick: () => (task ? followTask(task, id || null) : follow(id)) }, text));
  return cell;
}

function row(entry, fresh) {
  const tr = el(
    "tr",
    { class: `entry level-row-${entry.level}${fresh ? " fresh" : ""}${state.task ? " in-task" : ""}`, "data-id": entry.id, "data-level": entry.level, "data-context": entry.context || "runtime" },
    el("td", { class: "time", title: new Date(entry.timestamp * 1000).toISOString() }, clock(entry.timestamp)),
    el("td", {}, el("span", { class: `level level-${entry.level}` }, entry.level)),
    el("td", { class: "source" }, sourceTag(entry.context)),
    el("td", { class: "message" }, String(entry.message ?? "")),
    requestCell(entry),
  );
  tr.entry = entry;
  return tr;
}

function counted() {
  const shown = body.rows.length;
  $("empty").hidden = shown > 0;
  $("count").textContent = `${shown} message${shown === 1 ? "" : "s"} shown${state.task ? " of this task" : ""}`;
}

/** Add entries (oldest first) at the top, newest first. */
function add(entries, fresh = false) {
  for (const entry of entries) body.prepend(row(entry, fresh));
  while (body.rows.length > MAX_ROWS) body.lastChild.remove();
  counted();
}

function params() {
  const query = new URLSearchParams({ level: state.level });
  if (state.task) query.set("task", state.task);
  if (state.search) query.set("search", state.search);
  return query;
}

function live(kind, text) {
  $("live").className = `pill ${kind}`;
  $("live").querySelector(".label").textContent = text;
}

function closeStream() {
  if (source) source.close();
  source = null;
}

function openStream(after) {
  closeStream();
  if (state.paused) {
    live("paused", "Paused");
    return;
  }
  const query = params();
  if (after !== undefined) query.set("after", String(after)); // what the query saw: no gap
  source = new EventSource(`${base}/api/sse?${query}`);
  source.onopen = () => live("live", "Live");
  source.onmessage = (event) => add([JSON.parse(event.data)], true);
  source.onerror = () => live("down", "Reconnecting…");
}

/** The latest messages that match the filters, then the live ones. */
function load() {
  const mine = ++generation;
  closeStream();
  const query = params();
  query.set("limit", String(LOAD_LIMIT));
  loading = fetch(`${base}/api/?${query}`)
    .then((answer) => answer.json())
    .then((data) => {
      if (mine !== generation) return;
      body.replaceChildren();
      add(data.entries || []);
      openStream(data.total);
    })
    .catch((error) => {
      if (mine === generation) live("down", `Could not read the logs: ${error.message}`);
    });
  return loading;
}

/** Keep the filters in the page's address (the shell's address follows it). */
function remember() {
  const query = new URLSearchParams();
  if (state.level !== "info") query.set("level", state.level);
  if (state.search) query.set("search", state.search);
  if (state.task) query.set("task", state.task);
  if (state.request) query.set("request", state.request);
  const search = query.toString();
  const address = `${location.pathname}${search ? `?${search}` : ""}`;
  if (address !== location.pathname + location.search) history.replaceState(null, "", address);
}

function showTask() {
  $("task-bar").hidden = !state.task;
  $("task-id").textContent = state.task ? state.task.slice(0, 8) : "";
  $("task-id").title = state.task || "";
  $("task-request").textContent = state.request ? ` (request ${state.request})` : "";
}

/** Show every message of the eliot task `task` (one request, across runtime and worker). */
async function followTask(task, requestId = null) {
  state.task = task;
  state.request = requestId;
  if (state.level === "info") setLevel("debug", false); // a task's story includes its details
  showTask();
  remember();
  frameSDK.emit("selected", { task, requestId });
  await load();
  return summary();
}

/** Follow the task of the request `requestId` (its x-request-id). */
async function follow(requestId) {
  const query = new URLSearchParams({ request_id: String(requestId), limit: "1" });
  const data = await (await fetch(`${base}/api/?${query}`)).json();
  const entry = (data.entries || [])[0];
  if (!entry || !entry.task_uuid) throw new Error(`No message of the request ${requestId} is kept`);
  return followTask(entry.task_uuid, String(requestId));
}

function unfollow() {
  state.task = null;
  state.request = null;
  showTask();
  remember();
  frameSDK.emit("selected", null);
  return load();
}

function summary() {
  const entries = [...body.rows].map((tr) => tr.entry);
  return {
    task: state.task,
    requestId: state.request,
    count: entries.length,
    sources: [...new Set(entries.map((entry) => entry.context || "runtime"))].sort(),
  };
}

function setLevel(level, reload = true) {
  state.level = level;
  for (const input of document.querySelectorAll("input[name=level]")) input.checked = input.value === level;
  if (reload) {
    remember();
    return load();
  }
  return loading;
}

function setPaused(paused) {
  state.paused = paused;
  const button = $("follow");
  button.textContent = paused ? "Follow" : "Pause";
  button.setAttribute("aria-pressed", String(!paused));
  if (paused) openStream(); // closes it and says so
  else load(); // catch up on what came meanwhile
}

function applyTheme(theme) {
  document.documentElement.dataset.theme = theme === "dark" ? "dark" : "light";
}

// -- wiring -----------------------------------------------------------------------

let typing = null;
$("search").addEventListener("input", () => {
  clearTimeout(typing);
  typing = setTimeout(() => {
    state.search = $("search").value.trim();
    remember();
    load();
  }, 250);
});
$("filters").addEventListener("submit", (event) => event.preventDefault());
for (const input of document.querySelectorAll("input[name=level]")) input.addEventListener("change", () => setLevel(input.value));
$("follow").addEventListener("click", () => setPaused(!state.paused));
$("clear-view").addEventListener("click", () => {
  body.replaceChildren();
  counted();
});
$("clear-log").addEventListener("click", async () => {
  if (!confirm("Forget every log message the runtime keeps? Other viewers lose them too.")) return;
  await fetch(`${base}/api/clear`, { method: "POST" });
  load();
});
$("unfollow").addEventListener("click", unfollow);

frameSDK.register("follow", (requestId) => follow(requestId));
frameSDK.register("filter", async ({ level, search } = {}) => {
  if (typeof search === "string") $("search").value = state.search = search;
  await setLevel(level || state.level);
  return summary();
});
frameSDK.register("entries", () => [...body.rows].map((tr) => tr.entry));
frameSDK.watch("theme", applyTheme);

// the address may carry filters: a deep link into a followed task
const given = new URLSearchParams(location.search);
if (["debug", "info", "warn", "error"].includes(given.get("level"))) setLevel(given.get("level"), false);
if (given.get("search")) $("search").value = state.search = given.get("search");
if (given.get("task")) {
  followTask(given.get("task"), given.get("request"));
} else {
  load();
}

if (frameSDK.inFrame) {
  frameSDK
    .initialize()
    .then((props) => applyTheme(props.theme))
    .catch((error) => console.warn(error.message));
}
