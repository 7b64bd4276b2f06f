// The shell: layout, navigation from the loaded plugins' menus, and the router.
//
// Shell paths are /cpanel/<route>: "/" the overview, "/apps" the apps page,
// "/<plugin base>/..." that plugin's UI in a <z-frame>, anything else the 404
// page.  When the runtime's shell routing serves this page at a plugin's own
// path (/metrics/), the address is rewritten to /cpanel/metrics.

import { iconElement, iconSvg } from "./icons.js";
import { api, every, h, runtimeInfo, toast } from "./lib.js";
import { appsPage } from "./pages/apps.js";
import { homePage } from "./pages/home.js";
import { notFoundPage } from "./pages/notfound.js";

const base = new URL(document.baseURI).pathname.replace(/\/?$/, "/"); // "/cpanel/"
const content = document.getElementById("content");
const layout = document.getElementById("layout");
const state = { plugins: [], route: null, page: null, cleanup: null, frame: null, version: undefined };

/** The route ("/apps") of a path in the address bar. */
export function routeOf(pathname) {
  if (pathname === base.slice(0, -1) || pathname.startsWith(base)) return "/" + pathname.slice(base.length);
  return pathname || "/";
}

/** The address ("/cpanel/apps") of a route. */
export function shellUrl(route) {
  return base + String(route).replace(/^\//, "");
}

function under(path, prefix) {
  const clean = prefix.replace(/\/$/, "");
  return clean !== "" && (path === clean || path.startsWith(clean + "/") || path.startsWith(clean + "?"));
}

function menusOf(plugin) {
  const found = [];
  const walk = (items) => {
    for (const item of items || []) {
      if (item && typeof item.path === "string") found.push(item);
      if (item && Array.isArray(item.items)) walk(item.items);
    }
  };
  walk(plugin.menus);
  return found;
}

/** What a route shows: {kind: "home" | "apps" | "plugin" | "notfound", title, ...}. */
function resolve(route) {
  const path = route.split(/[?#]/)[0];
  if (path === "/" || path === "") return { kind: "home", title: "Overview", subtitle: "The runtime at a glance" };
  if (path === "/apps" || path === "/apps/") return { kind: "apps", title: "Apps", subtitle: "Installed apps, their versions and workers" };
  let best = null;
  for (const plugin of state.plugins) {
    const prefixes = [plugin.base, ...menusOf(plugin).map((menu) => menu.path)].filter(Boolean);
    for (const prefix of prefixes) {
      if (under(path, prefix) && (!best || prefix.length > best.prefix.length)) best = { plugin, prefix };
    }
  }
  if (!best) return { kind: "notfound", title: "Page not found", subtitle: route };
  const { plugin } = best;
  const menu = menusOf(plugin)
    .filter((item) => under(path, item.path))
    .sort((a, b) => b.path.length - a.path.length)[0];
  const own = plugin.base && path === plugin.base.replace(/\/$/, "");
  const src = (own ? plugin.base.replace(/\/$/, "") + "/" : path) + route.slice(path.length);
  const title = (menu && menu.title) || (plugin.menus && plugin.menus[0] && plugin.menus[0].title) || plugin.name.replace(/^@[^/]+\/(plugin-)?/, "");
  return { kind: "plugin", plugin, src, title, subtitle: plugin.name };
}

/** The shell route for a path a frame reports, or null when it is not one of this plugin's. */
function frameRoute(plugin, path) {
  const pure = path.split(/[?#]/)[0];
  const pluginBase = (plugin.base || "").replace(/\/$/, "");
  if (pluginBase && pure === pluginBase + "/") return pluginBase + path.slice(pure.length);
  const found = resolve(path);
  return found.kind === "plugin" && found.plugin === plugin ? path : null;
}

/** Show another route and add it to the history. */
export function go(target, { replace = false } = {}) {
  const route = String(target).startsWith(base) ? routeOf(String(target)) : String(target);
  const url = shellUrl(route);
  if (url !== location.pathname + location.search + location.hash) {
    if (replace) history.replaceState(null, "", url);
    else history.pushState(null, "", url);
  }
  render(route);
}

function currentRoute() {
  return routeOf(location.pathname) + location.search + location.hash;
}

function setTitles(page) {
  document.getElementById("page-title").textContent = page.title;
  document.getElementById("page-subtitle").textContent = page.subtitle || "";
  document.title = page.kind === "home" ? "buntime" : `${page.title} · buntime`;
  markActive(page.kind === "plugin" ? routeOf(location.pathname) : currentRoute());
}

function render(route) {
  state.route = route;
  const page = resolve(route);
  closeNav();
  if (page.kind === "plugin" && state.page && state.page.kind === "plugin" && state.page.plugin === page.plugin && state.frame) {
    // the same plugin: move its frame only if it is not already there
    if (state.framePath !== page.src) {
      state.framePath = page.src;
      state.frame.src = page.src;
    }
    state.page = page;
    setTitles(page);
    return;
  }
  if (state.cleanup) state.cleanup();
  state.cleanup = null;
  state.frame = null;
  state.page = page;
  content.replaceChildren();
  content.className = `content content-${page.kind}`;
  const context = { plugins: state.plugins, go, shellUrl, version: state.version, shellApp: decodeURIComponent(base.split("/")[1] || "").split("@")[0] };
  if (page.kind === "home") state.cleanup = homePage(content, context);
  else if (page.kind === "apps") state.cleanup = appsPage(content, context);
  else if (page.kind === "plugin") state.cleanup = pluginPage(content, page);
  else state.cleanup = notFoundPage(content, { ...context, route });
  setTitles(page);
}

function pluginPage(container, page) {
  const { plugin } = page;
  const frame = document.createElement("z-frame");
  frame.className = "plugin-frame";
  frame.setAttribute("title", page.title);
  frame.setAttribute("ready-timeout", "10000");
  frame.props = {
    shell: { base, version: state.version, api: state.api },
    plugin: { name: plugin.name, base: plugin.base },
    theme: "light",
    navigate: (path) => go(path),
    notify: (message, kind = "info") => {
      toast(message, kind);
      return true;
    },
  };
  frame.addEventListener("navigate", (event) => {
    const route = frameRoute(plugin, event.detail.path || "");
    if (route === null) return;
    state.framePath = resolve(route).src;
    const url = shellUrl(route);
    if (url !== location.pathname + location.search + location.hash) history.replaceState(null, "", url);
    state.route = route;
    setTitles(resolve(route));
  });
  frame.addEventListener("open", (event) => go(event.detail.path));
  state.frame = frame;
  state.framePath = page.src;
  frame.src = page.src;
  container.append(frame);
  return () => frame.remove();
}

// -- navigation ---------------------------------------------------------------

function navLink(route, title, iconName, bullet = false) {
  const link = h("a", { class: "nav-link", href: shellUrl(route), "data-route": route });
  // a nested item without an icon of its own gets a bullet
  link.append(bullet ? h("span", { class: "icon icon-bullet", "aria-hidden": "true" }) : iconElement(iconName, title), h("span", { class: "nav-text" }, title));
  return link;
}

function navItem(menu, depth) {
  const item = h("li", { class: "nav-item" });
  const route = menu.path || "/";
  const link = navLink(route, menu.title || route, menu.icon, depth > 0 && !menu.icon);
  item.append(link);
  const children = Array.isArray(menu.items) ? menu.items.filter((child) => child && child.path) : [];
  if (children.length) {
    item.classList.add("has-children");
    const toggle = h("button", { class: "nav-toggle", type: "button", "aria-expanded": "false", "aria-label": `Show ${menu.title || route} pages`, html: iconSvg("chevron") });
    toggle.addEventListener("click", () => toggle.setAttribute("aria-expanded", String(item.classList.toggle("open"))));
    item.append(toggle, h("ul", { class: "nav-sub" }, children.map((child) => navItem(child, depth + 1))));
  }
  return item;
}

function buildNav() {
  const core = document.getElementById("nav-core");
  core.replaceChildren(
    h("li", { class: "nav-item" }, navLink("/", "Overview", "home")),
    h("li", { class: "nav-item" }, navLink("/apps", "Apps", "box")),
  );
  const list = document.getElementById("nav-plugins");
  const items = [];
  for (const plugin of state.plugins) for (const menu of plugin.menus || []) if (menu && menu.path) items.push(navItem(menu, 0));
  list.replaceChildren(...(items.length ? items : [h("li", { class: "nav-empty" }, "No plugin adds a page.")]));
}

function markActive(route) {
  const path = route.split(/[?#]/)[0];
  let best = null;
  for (const link of document.querySelectorAll(".nav-link")) {
    link.removeAttribute("aria-current");
    const target = link.dataset.route;
    const match = target === "/" ? path === "/" : under(path, target);
    if (match && (!best || target.length > best.dataset.route.length)) best = link;
  }
  if (!best) return;
  best.setAttribute("aria-current", "page");
  for (let item = best.closest(".nav-item"); item; item = item.parentElement.closest(".nav-item")) {
    if (item.classList.contains("has-children") && item.querySelector(":scope > .nav-sub .nav-link[aria-current]")) {
      item.classList.add("open");
      item.querySelector(":scope > .nav-toggle").setAttribute("aria-expanded", "true");
    }
  }
}

function openNav() {
  layout.classList.add("nav-open");
  document.getElementById("backdrop").hidden = false;
  document.getElementById("open-nav").setAttribute("aria-expanded", "true");
  // the keyboard goes into the drawer, not to the page behind it
  document.getElementById("close-nav").focus();
}

function closeNav() {
  const inDrawer = layout.classList.contains("nav-open") && document.getElementById("sidebar").contains(document.activeElement);
  layout.classList.remove("nav-open");
  document.getElementById("backdrop").hidden = true;
  document.getElementById("open-nav").setAttribute("aria-expanded", "false");
  if (inDrawer) document.getElementById("open-nav").focus(); // back where the drawer was opened
}

// -- start --------------------------------------------------------------------

function wire() {
  document.getElementById("open-nav").innerHTML = iconSvg("menu");
  document.getElementById("close-nav").innerHTML = iconSvg("x");
  document.getElementById("open-nav").addEventListener("click", openNav);
  document.getElementById("close-nav").addEventListener("click", closeNav);
  document.getElementById("backdrop").addEventListener("click", closeNav);
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape") closeNav();
  });
  document.addEventListener("click", (event) => {
    const link = event.target.closest("a[href]");
    if (!link || link.target || event.defaultPrevented || event.button !== 0) return;
    if (event.metaKey || event.ctrlKey || event.shiftKey || event.altKey) return;
    const url = new URL(link.href, location.href);
    if (url.origin !== location.origin || !(url.pathname.startsWith(base) || url.pathname === base.slice(0, -1))) return;
    event.preventDefault();
    go(routeOf(url.pathname) + url.search + url.hash);
  });
  window.addEventListener("popstate", () => render(currentRoute()));
}

async function health() {
  const pill = document.getElementById("health");
  try {
    const answer = await api("/health");
    pill.className = "health ok";
    pill.querySelector(".label").textContent = answer.status === "healthy" ? "Healthy" : answer.status;
  } catch {
    pill.className = "health down";
    pill.querySelector(".label").textContent = "Unreachable";
  }
}

/** Whether this page is inside another shell's frame (a plugin page that was not found). */
function nested() {
  try {
    return window.parent !== window && Boolean(window.parent.cpanel);
  } catch {
    return false; // another origin's page frames this one
  }
}

/**
 * Whether a page of another origin frames this one: it could lure clicks onto
 * the shell's buttons (clickjacking), whose requests pass the runtime's CSRF rule.
 */
function framedByAnotherSite() {
  try {
    return window.top !== window && window.top.location.origin !== location.origin;
  } catch {
    return true; // another origin's page: its location cannot be read
  }
}

async function start() {
  if (framedByAnotherSite()) {
    document.body.replaceChildren(
      h("p", { class: "nested" }, "buntime's control panel does not show inside another site. ",
        h("a", { href: location.href, target: "_blank", rel: "noopener" }, "Open it")));
    return;
  }
  if (nested()) {
    document.body.replaceChildren(h("p", { class: "nested" }, "Nothing to show here."));
    return;
  }
  wire();
  const info = await runtimeInfo;
  state.version = info.version;
  state.api = info.api;
  document.getElementById("version").textContent = info.version ? `v${info.version}` : "";
  document.getElementById("api-docs").href = `${info.api}/docs`;
  try {
    state.plugins = await api("/plugins/loaded");
  } catch (error) {
    toast(`Could not read the plugins: ${error.message}`, "error");
  }
  buildNav();
  // served at a plugin's own path by the runtime's shell routing: use the shell's address
  if (!location.pathname.startsWith(base)) history.replaceState(null, "", shellUrl(currentRoute()));
  render(currentRoute());
  every(15000, health);
  document.documentElement.dataset.shell = "ready";
}

window.cpanel = {
  go,
  get frame() {
    return state.frame;
  },
  get route() {
    return state.route;
  },
};

start();
