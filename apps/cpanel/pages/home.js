// The overview (/cpanel/): live numbers of the pool, the apps, the plugins' pages.

import { iconElement } from "../icons.js";
import { api, count, duration, every, getJson, h, icon } from "../lib.js";

const METRICS = "@buntime/plugin-metrics";

function stat(id, label, iconName) {
  return h("div", { class: "card stat", id },
    h("div", { class: "stat-head" }, h("span", { class: "stat-label" }, label), icon(iconName)),
    h("div", { class: "stat-value" }, "—"),
    h("div", { class: "stat-note muted" }, ""));
}

function setStat(container, id, value, note) {
  const card = container.querySelector(`#${id}`);
  card.querySelector(".stat-value").textContent = value;
  card.querySelector(".stat-note").textContent = note || "";
}

function drawWorkers(container, workers) {
  const rows = container.querySelector("#worker-rows");
  if (!rows) return;
  if (!workers.length) {
    rows.replaceChildren(h("tr", {}, h("td", { colspan: "6", class: "empty muted" }, "No worker is running: apps start one on their first request.")));
    return;
  }
  rows.replaceChildren(...workers.map((worker) => h("tr", { "data-worker": worker.id },
    h("td", { "data-label": "App" }, h("strong", {}, worker.app), h("span", { class: "muted" }, `@${worker.version}`)),
    h("td", { "data-label": "Status" }, h("span", { class: `status status-${worker.status}` }, worker.status)),
    h("td", { "data-label": "Requests", class: "num" }, count(worker.requestCount)),
    h("td", { "data-label": "Avg time", class: "num" }, `${worker.avgResponseTimeMs} ms`),
    h("td", { "data-label": "Memory", class: "num" }, worker.rssMB ? `${worker.rssMB} MB` : "—"),
    h("td", { "data-label": "Age", class: "num" }, duration(worker.ageMs)))));
}

export function homePage(container, { plugins, shellUrl, version }) {
  const metrics = plugins.find((plugin) => plugin.name === METRICS && plugin.base);
  const pages = plugins.filter((plugin) => plugin.base);
  const page = h("div", { class: "page" },
    h("section", { class: "stats", "aria-label": "Runtime numbers" },
      stat("stat-apps", "Apps", "box"),
      stat("stat-workers", "Live workers", "cpu"),
      stat("stat-requests", "Requests", "activity"),
      stat("stat-uptime", "Uptime", "gauge")),
    metrics
      ? h("section", { class: "section" },
          h("div", { class: "section-head" }, h("h2", {}, "Workers"), h("span", { class: "muted", id: "workers-note" }, "live")),
          h("div", { class: "card table-card" },
            h("table", { class: "table workers-table" },
              h("thead", {}, h("tr", {}, ["App", "Status", "Requests", "Avg time", "Memory", "Age"].map((title) => h("th", {}, title)))),
              h("tbody", { id: "worker-rows" }, h("tr", {}, h("td", { colspan: "6", class: "empty muted" }, "Loading…"))))))
      : null,
    h("section", { class: "section" },
      h("div", { class: "section-head" }, h("h2", {}, "Plugins"), h("span", { class: "muted" }, `${plugins.length} loaded`)),
      pages.length
        ? h("div", { class: "tiles" }, pages.map((plugin) => {
            const menu = (plugin.menus || [])[0] || {};
            return h("a", { class: "card tile", href: shellUrl(menu.path || plugin.base) },
              h("span", { class: "tile-icon" }, iconElement(menu.icon, menu.title || plugin.name)),
              h("span", { class: "tile-text" },
                h("strong", {}, menu.title || plugin.name),
                h("span", { class: "muted mono" }, plugin.base)));
          }))
        : h("p", { class: "card empty muted" }, "No plugin with a page is loaded.")),
    h("section", { class: "section" },
      h("div", { class: "section-head" }, h("h2", {}, "Next steps")),
      h("div", { class: "tiles" },
        h("a", { class: "card tile", href: shellUrl("/apps") },
          h("span", { class: "tile-icon" }, iconElement("upload")),
          h("span", { class: "tile-text" }, h("strong", {}, "Deploy an app"), h("span", { class: "muted" }, "Drop an archive on the apps page"))),
        h("a", { class: "card tile", href: document.getElementById("api-docs").href, target: "_blank", rel: "noopener" },
          h("span", { class: "tile-icon" }, iconElement("book")),
          h("span", { class: "tile-text" }, h("strong", {}, "API reference"), h("span", { class: "muted" }, `buntime ${version ? "v" + version : ""} core API`))))));
  container.append(page);

  const stopApps = every(10000, async () => {
    const apps = await api("/apps");
    const versions = apps.reduce((sum, app) => sum + (app.versions || []).length, 0);
    setStat(container, "stat-apps", count(apps.length), `${count(versions)} version${versions === 1 ? "" : "s"}`);
  });
  const stopMetrics = metrics
    ? every(2000, async () => {
        const snapshot = await getJson(`${metrics.base.replace(/\/$/, "")}/api/`);
        const pool = snapshot && snapshot.pool;
        if (!pool) return;
        setStat(container, "stat-workers", count(pool.activeWorkers), `${count(pool.totalWorkersCreated)} started, ${count(pool.memoryUsageMB)} MB`);
        setStat(container, "stat-requests", count(pool.totalRequests), `${pool.requestsPerSecond} req/s · ${pool.avgResponseTimeMs} ms avg`);
        setStat(container, "stat-uptime", duration(pool.uptimeMs), `hit rate ${pool.hitRate}%`);
        drawWorkers(container, snapshot.workers || []);
      })
    : (() => {
        for (const id of ["stat-workers", "stat-requests", "stat-uptime"]) setStat(container, id, "—", "Turn the metrics plugin on to see this");
        return () => {};
      })();
  return () => {
    stopApps();
    stopMetrics();
  };
}
