// The shell's icons: small stroke drawings, drawn here so nothing loads from a CDN.
// A menu's `icon` is a name from this set (a "set:" prefix such as "lucide:" is
// ignored), an image URL, or anything else: then the title's first letter shows.

const PATHS = {
  home: '<path d="M3 10.5 12 3l9 7.5V20a1 1 0 0 1-1 1h-5v-6H9v6H4a1 1 0 0 1-1-1z"/>',
  box: '<path d="M21 8 12 3 3 8v8l9 5 9-5z"/><path d="m3 8 9 5 9-5M12 13v8"/>',
  chart: '<path d="M3 21h18"/><path d="M6 17v-5M11 17V6M16 17v-8M21 17v-3"/>',
  activity: '<path d="M22 12h-4l-3 9L9 3l-3 9H2"/>',
  list: '<path d="M9 6h12M9 12h12M9 18h12M4 6h.01M4 12h.01M4 18h.01"/>',
  file: '<path d="M14 3H6a2 2 0 0 0-2 2v14a2 2 0 0 0 2 2h12a2 2 0 0 0 2-2V9z"/><path d="M14 3v6h6M8 13h8M8 17h6"/>',
  shuffle: '<path d="M16 3h5v5M4 20 21 3M21 16v5h-5M15 15l6 6M4 4l5 5"/>',
  shield: '<path d="M12 22s8-4 8-10V5l-8-3-8 3v7c0 6 8 10 8 10z"/>',
  globe: '<circle cx="12" cy="12" r="9.5"/><path d="M2.5 12h19M12 2.5a14 14 0 0 1 0 19M12 2.5a14 14 0 0 0 0 19"/>',
  settings: '<circle cx="12" cy="12" r="3"/><path d="M12 2v3M12 19v3M4.9 4.9 7 7M17 17l2.1 2.1M2 12h3M19 12h3M4.9 19.1 7 17M17 7l2.1-2.1"/>',
  server: '<rect x="3" y="3" width="18" height="8" rx="2"/><rect x="3" y="13" width="18" height="8" rx="2"/><path d="M7 7h.01M7 17h.01"/>',
  database: '<ellipse cx="12" cy="5" rx="8" ry="3"/><path d="M4 5v14c0 1.7 3.6 3 8 3s8-1.3 8-3V5M4 12c0 1.7 3.6 3 8 3s8-1.3 8-3"/>',
  key: '<circle cx="7.5" cy="15.5" r="4.5"/><path d="M10.7 12.3 21 2M16 7l3 3M19 4l2 2"/>',
  lock: '<rect x="4" y="11" width="16" height="10" rx="2"/><path d="M8 11V7a4 4 0 0 1 8 0v4"/>',
  users: '<circle cx="9" cy="8" r="4"/><path d="M2 21v-1a6 6 0 0 1 12 0v1M16 4a4 4 0 0 1 0 8M22 21v-1a6 6 0 0 0-4-5.7"/>',
  hand: '<path d="M8 12V5a1.8 1.8 0 0 1 3.6 0v6M11.6 10.5V3.8a1.8 1.8 0 0 1 3.6 0v6.7M15.2 10.5V6a1.8 1.8 0 0 1 3.6 0v8.5A7.5 7.5 0 0 1 11.3 22h-.6a7 7 0 0 1-5.9-3.3l-2.5-4a1.8 1.8 0 0 1 3-2L8 15"/>',
  upload: '<path d="M21 15v4a2 2 0 0 1-2 2H5a2 2 0 0 1-2-2v-4M17 8l-5-5-5 5M12 3v12"/>',
  trash: '<path d="M3 6h18M8 6V4h8v2M19 6l-1 14a2 2 0 0 1-2 2H8a2 2 0 0 1-2-2L5 6M10 11v6M14 11v6"/>',
  menu: '<path d="M3 6h18M3 12h18M3 18h18"/>',
  x: '<path d="M18 6 6 18M6 6l12 12"/>',
  external: '<path d="M14 3h7v7M10 14 21 3M19 14v5a2 2 0 0 1-2 2H5a2 2 0 0 1-2-2V7a2 2 0 0 1 2-2h5"/>',
  refresh: '<path d="M21 12a9 9 0 1 1-3-6.7L21 8M21 3v5h-5"/>',
  book: '<path d="M4 19.5A2.5 2.5 0 0 1 6.5 17H20V3H6.5A2.5 2.5 0 0 0 4 5.5zM4 19.5A2.5 2.5 0 0 0 6.5 22H20v-5"/>',
  cpu: '<rect x="6" y="6" width="12" height="12" rx="2"/><path d="M9 2v4M15 2v4M9 18v4M15 18v4M2 9h4M2 15h4M18 9h4M18 15h4"/>',
  plug: '<path d="M9 2v6M15 2v6M6 8h12v4a6 6 0 0 1-12 0zM12 18v4"/>',
  chevron: '<path d="m9 6 6 6-6 6"/>',
  search: '<circle cx="11" cy="11" r="7"/><path d="m21 21-4.3-4.3"/>',
  layers: '<path d="m12 2 10 5-10 5L2 7z"/><path d="m2 17 10 5 10-5M2 12l10 5 10-5"/>',
  gauge: '<path d="m12 14 4-4"/><path d="M3.3 19a10 10 0 1 1 17.4 0"/>',
  alert: '<circle cx="12" cy="12" r="10"/><path d="M12 8v4M12 16h.01"/>',
  check: '<path d="M20 6 9 17l-5-5"/>',
  compass: '<circle cx="12" cy="12" r="10"/><path d="m16.2 7.8-2.1 6.3-6.3 2.1 2.1-6.3z"/>',
};

const ALIASES = {
  apps: "box", package: "box", cube: "box",
  "bar-chart": "chart", "chart-bar": "chart", metrics: "chart", stats: "chart",
  pulse: "activity", logs: "list", "list-ul": "list", scroll: "file", "file-text": "file", docs: "book",
  redirect: "shuffle", redirects: "shuffle", proxy: "shuffle", route: "shuffle", arrows: "shuffle",
  gateway: "shield", security: "shield", world: "globe", network: "globe", vhosts: "globe",
  gear: "settings", cog: "settings", storage: "database", db: "database", auth: "key",
  wave: "hand", "hand-wave": "hand", delete: "trash", close: "x", reload: "refresh",
  "external-link": "external", dashboard: "gauge", warning: "alert", error: "alert",
};

/** The SVG markup of a known icon name, else null. */
export function iconSvg(name, className = "icon") {
  const key = String(name || "").toLowerCase().replace(/^[a-z-]+:/, "");
  const paths = PATHS[key] || PATHS[ALIASES[key]];
  if (!paths) return null;
  return `<svg class="${className}" viewBox="0 0 24 24" fill="none" stroke="currentColor" stroke-width="1.8" stroke-linecap="round" stroke-linejoin="round" aria-hidden="true">${paths}</svg>`;
}

function letter(title) {
  const span = document.createElement("span");
  span.className = "icon icon-letter";
  span.setAttribute("aria-hidden", "true");
  span.textContent = (String(title || "?").trim()[0] || "?").toUpperCase();
  return span;
}

/**
 * An element for a menu's icon: a drawn icon, an image (for a URL), or the
 * title's first letter when the name is unknown or the image fails to load.
 */
export function iconElement(icon, title) {
  const value = typeof icon === "string" ? icon.trim() : "";
  if (/^(https?:|\/|\.\/|data:image\/)/.test(value) || /\.(svg|png|webp|gif|jpe?g)$/i.test(value)) {
    const img = document.createElement("img");
    img.className = "icon icon-image";
    img.alt = "";
    img.addEventListener("error", () => img.replaceWith(letter(title)));
    img.src = value;
    return img;
  }
  const svg = iconSvg(value);
  if (!svg) return letter(title);
  const template = document.createElement("template");
  template.innerHTML = svg;
  return template.content.firstElementChild;
}
