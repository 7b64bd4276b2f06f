// What the shell's pages share: the runtime's API, DOM helpers, toasts, a dialog.

import { iconSvg } from "./icons.js";

/** Where the core API is (RUNTIME_API_PREFIX moves it); read once from /.well-known/buntime. */
let apiBase = "/api";
export const runtimeInfo = fetch("/.well-known/buntime", { headers: { accept: "application/json" } })
  .then((response) => (response.ok ? response.json() : {}))
  .then((info) => {
    if (info && typeof info.api === "string") apiBase = info.api;
    return { api: apiBase, version: info && info.version };
  })
  .catch(() => ({ api: apiBase, version: undefined }));

/** An error from the runtime's API, with its code (`{"error": {"code", "message"}}`). */
export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.code = code;
  }
}

async function fail(response) {
  let code = `HTTP_${response.status}`;
  let message = `${response.status} ${response.statusText}`.trim();
  try {
    const body = await response.json();
    if (body && body.error) {
      code = body.error.code || code;
      message = body.error.message || message;
    }
  } catch {
    // not JSON: keep the status line
  }
  throw new ApiError(response.status, code, message);
}

const TOKEN_KEY = "buntime.apiToken";

/** The API token this tab was given (RUNTIME_API_TOKEN), kept for the session only. */
export const apiToken = {
  get: () => sessionStorage.getItem(TOKEN_KEY),
  set: (token) => (token ? sessionStorage.setItem(TOKEN_KEY, token) : sessionStorage.removeItem(TOKEN_KEY)),
};

/**
 * `fetch` of a core API path ("/apps") as JSON; an ApiError for any non-2xx.
 * Changes carry the session's API token, when one was given.
 */
export async function api(path, options = {}) {
  await runtimeInfo;
  const headers = { accept: "application/json", ...(options.headers || {}) };
  const token = apiToken.get();
  if (token && options.method && options.method !== "GET") headers.authorization = `Bearer ${token}`;
  const response = await fetch(apiBase + path, { ...options, headers });
  if (!response.ok) await fail(response);
  return response.status === 204 ? null : response.json();
}

/**
 * `change()` (an API call that changes something); when the runtime wants its
 * API token (401), ask for it once and try again.
 */
export async function withToken(change) {
  try {
    return await change();
  } catch (error) {
    if (!(error instanceof ApiError) || error.status !== 401) throw error;
    const token = await tokenDialog(apiToken.get() ? "That token was refused." : "");
    if (!token) throw error;
    apiToken.set(token);
    return withToken(change);
  }
}

function tokenDialog(problem) {
  return new Promise((resolve) => {
    const input = h("input", { type: "password", name: "token", class: "input", autocomplete: "off", required: true, "aria-label": "API token" });
    const dialog = h("dialog", { class: "dialog", "aria-labelledby": "token-title" },
      h("form", { method: "dialog" },
        h("h2", { id: "token-title" }, "API token needed"),
        h("p", { class: "muted" }, "This runtime lets apps be changed only with its API token (RUNTIME_API_TOKEN). It is kept for this tab only."),
        problem ? h("p", { class: "form-error" }, problem) : null,
        input,
        h("div", { class: "dialog-actions" },
          h("button", { class: "button", value: "cancel", type: "submit", formnovalidate: true }, "Cancel"),
          h("button", { class: "button primary", value: "use", type: "submit" }, "Use token"))));
    document.body.append(dialog);
    dialog.addEventListener("close", () => {
      resolve(dialog.returnValue === "use" ? input.value.trim() : null);
      dialog.remove();
    });
    dialog.showModal();
    input.focus();
  });
}

/** GET a JSON URL outside the core API (a plugin's); null when it is not there. */
export async function getJson(url) {
  const response = await fetch(url, { headers: { accept: "application/json" } });
  if (!response.ok) return null;
  return response.json();
}

/** Build an element: h("p", {class: "x", onclick}, "text", child). */
export function h(tag, attributes = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") element.addEventListener(name.slice(2), value);
    else if (name === "html") element.innerHTML = value;
    else element.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    element.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return element;
}

/** An inline icon element from the shell's set. */
export function icon(name, className = "icon") {
  return h("span", { class: "icon-wrap", html: iconSvg(name, className) || "" });
}

/** A short-lived message in the corner: kind is "info", "success" or "error". */
export function toast(message, kind = "info") {
  const box = document.getElementById("toasts");
  const item = h("div", { class: `toast toast-${kind}`, role: kind === "error" ? "alert" : "status" },
    icon(kind === "error" ? "alert" : kind === "success" ? "check" : "activity"),
    h("span", {}, String(message)));
  box.append(item);
  setTimeout(() => {
    item.classList.add("leaving");
    setTimeout(() => item.remove(), 300);
  }, kind === "error" ? 7000 : 4000);
  return item;
}

/** Ask before something that cannot be undone; resolves true when confirmed. */
export function confirmDialog({ title, body, confirm = "Delete", danger = true }) {
  return new Promise((resolve) => {
    const dialog = h("dialog", { class: "dialog", "aria-labelledby": "dialog-title" },
      h("form", { method: "dialog" },
        h("h2", { id: "dialog-title" }, title),
        h("p", { class: "muted" }, body),
        h("div", { class: "dialog-actions" },
          h("button", { class: "button", value: "cancel", type: "submit" }, "Cancel"),
          h("button", { class: `button ${danger ? "danger" : "primary"}`, value: "confirm", type: "submit" }, confirm))));
    document.body.append(dialog);
    dialog.addEventListener("close", () => {
      resolve(dialog.returnValue === "confirm");
      dialog.remove();
    });
    dialog.showModal();
  });
}

/** "3 ms", "1.2 s", "4 min" ... for a duration in milliseconds. */
export function duration(ms) {
  if (!Number.isFinite(ms)) return "—";
  if (ms < 1000) return `${Math.round(ms)} ms`;
  if (ms < 60000) return `${(ms / 1000).toFixed(1)} s`;
  if (ms < 3600000) return `${Math.round(ms / 60000)} min`;
  if (ms < 86400000) return `${(ms / 3600000).toFixed(1)} h`;
  return `${(ms / 86400000).toFixed(1)} d`;
}

/** A number with thousands separators. */
export function count(value) {
  return Number.isFinite(value) ? value.toLocaleString("en-US") : "—";
}

/** Repeat `fn` every `ms` while the page is shown; returns a stop function. */
export function every(ms, fn) {
  let stopped = false;
  let timer = null;
  const tick = async () => {
    if (stopped) return;
    try {
      await fn();
    } catch (error) {
      console.warn(error);
    }
    if (!stopped) timer = setTimeout(tick, ms);
  };
  tick();
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}
