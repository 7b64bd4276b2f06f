// A tiny client-side router.  The runtime injects <base href="/spa-demo@…/">,
// so every route is relative to it and the app works under any mount path.
const base = new URL(document.baseURI).pathname.replace(/\/$/, "");

const items = [
  { id: 1, name: "Twisted", text: "An event-driven networking engine." },
  { id: 2, name: "Klein", text: "A micro web framework on Twisted." },
  { id: 3, name: "attrs", text: "Classes without boilerplate." },
];

const escape = (s) =>
  String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);

const routes = [
  [/^\/$/, () => `<h1>Home</h1><p>This page is rendered in the browser. Follow a link, then reload: the runtime answers unknown paths with <code>index.html</code>.</p>`],
  [/^\/items\/?$/, () => `<h1>Items</h1><ul>${items.map((i) => `<li><a href="items/${i.id}" data-link>${escape(i.name)}</a></li>`).join("")}</ul>`],
  [/^\/items\/(\d+)\/?$/, (id) => {
    const item = items.find((i) => i.id === Number(id));
    return item
      ? `<h1>${escape(item.name)}</h1><p>${escape(item.text)}</p><p><a href="items" data-link>← all items</a></p>`
      : notFound();
  }],
  [/^\/about\/?$/, () => `<h1>About</h1><p>Mounted at <code>${escape(base || "/")}</code>.</p>`],
];

function notFound() {
  return `<h1>Not found</h1><p>No route for <code>${escape(currentPath())}</code>.</p>`;
}

function currentPath() {
  const path = location.pathname.startsWith(base) ? location.pathname.slice(base.length) : location.pathname;
  return path || "/";
}

function render() {
  const path = currentPath();
  for (const [pattern, view] of routes) {
    const match = path.match(pattern);
    if (match) {
      document.getElementById("view").innerHTML = view(...match.slice(1));
      markCurrent(path);
      return;
    }
  }
  document.getElementById("view").innerHTML = notFound();
  markCurrent(path);
}

function markCurrent(path) {
  for (const link of document.querySelectorAll("nav a")) {
    const target = new URL(link.getAttribute("href"), document.baseURI).pathname.slice(base.length) || "/";
    link.toggleAttribute("aria-current", target === "/" ? path === "/" : path.startsWith(target));
  }
}

document.addEventListener("click", (event) => {
  const link = event.target.closest("a[data-link]");
  if (!link || event.metaKey || event.ctrlKey || event.shiftKey || event.button !== 0) return;
  event.preventDefault();
  const url = new URL(link.getAttribute("href"), document.baseURI);
  if (url.pathname !== location.pathname) history.pushState({}, "", url);
  render();
});

window.addEventListener("popstate", render);
render();
