// The apps page (/cpanel/apps): installed apps and versions, their live
// workers, upload by drag and drop, delete a version.  Everything goes
// through the core API (GET /api/apps, POST /api/apps/upload,
// DELETE /api/apps/:scope/:name/:version); workers come from the metrics
// plugin's snapshot when it is loaded.

import { api, confirmDialog, count, duration, every, getJson, h, icon, toast, withToken } from "../lib.js";

const METRICS = "@buntime/plugin-metrics";
const ARCHIVE = /\.(zip|tgz|tar\.gz)$/i;

/** The DELETE path of one version: unscoped names take "_" as their scope. */
export function versionPath(name, version) {
  const [scope, short] = name.startsWith("@") ? [name.slice(1, name.indexOf("/")), name.slice(name.indexOf("/") + 1)] : ["_", name];
  return `/apps/${encodeURIComponent(scope)}/${encodeURIComponent(short)}/${encodeURIComponent(version)}`;
}

function workerSummary(workers) {
  if (!workers.length) return { text: "None", note: "starts on the first request", live: false };
  const byStatus = {};
  for (const worker of workers) byStatus[worker.status] = (byStatus[worker.status] || 0) + 1;
  const requests = workers.reduce((sum, worker) => sum + (worker.requestCount || 0), 0);
  const parts = Object.entries(byStatus).map(([status, n]) => `${n} ${status}`);
  return { text: `${workers.length} live`, note: `${parts.join(", ")} · ${count(requests)} request${requests === 1 ? "" : "s"}`, live: true };
}

export function appsPage(container, { plugins, shellApp }) {
  const metrics = plugins.find((plugin) => plugin.name === METRICS && plugin.base);
  let apps = [];
  let workers = null; // null: unknown (no metrics plugin)
  let filter = "";
  let fresh = null; // "name@version" just installed, highlighted once

  const input = h("input", { type: "file", accept: ".zip,.tgz,.tar.gz,application/zip,application/gzip", hidden: true, id: "upload-input" });
  const search = h("input", { type: "search", class: "search", placeholder: "Filter apps", "aria-label": "Filter apps" });
  const dropText = h("div", { class: "drop-text" },
    h("strong", {}, "Drop an app archive here"),
    h("span", { class: "muted" }, "or ", h("button", { type: "button", class: "link", onclick: () => input.click() }, "choose a file"),
      " · .zip, .tgz or .tar.gz with a manifest.yaml naming the app and its version"));
  const dropStatus = h("div", { class: "drop-status", "aria-live": "polite" });
  const zone = h("section", { class: "card dropzone", id: "dropzone", tabindex: "0", role: "button", "aria-label": "Upload an app archive" },
    h("div", { class: "drop-icon" }, icon("upload")), dropText, dropStatus);
  const table = h("tbody", { id: "apps-rows" });
  const summary = h("span", { class: "muted", id: "apps-summary" }, "Loading…");
  const page = h("div", { class: "page" },
    h("div", { class: "toolbar" },
      h("div", { class: "search-wrap" }, icon("search"), search),
      h("button", { type: "button", class: "button primary", id: "upload-button", onclick: () => input.click() }, icon("upload"), "Upload app"),
      input),
    zone,
    h("section", { class: "section" },
      h("div", { class: "section-head" }, h("h2", {}, "Installed"), summary),
      h("div", { class: "card table-card" },
        h("table", { class: "table apps-table" },
          h("thead", {}, h("tr", {}, h("th", {}, "App"), h("th", {}, "Versions"), h("th", {}, "Workers"), h("th", {}, "Location"))),
          table))));
  container.append(page);

  function workersOf(name) {
    return (workers || []).filter((worker) => worker.app === name);
  }

  function workerCell(name) {
    if (workers === null) return h("span", { class: "muted" }, "—");
    const found = workersOf(name);
    const about = workerSummary(found);
    const title = found.map((w) => `${w.id}: ${w.version} ${w.status}, ${w.requestCount} requests, up ${duration(w.ageMs)}`).join("\n");
    return h("span", { class: "workers", title: title || undefined },
      h("span", { class: `dot ${about.live ? "dot-live" : ""}` }),
      h("span", {}, h("strong", {}, about.text), h("span", { class: "muted block" }, about.note)));
  }

  function row(app) {
    const versions = app.versions || [];
    const chips = versions.map((version) => {
      const label = `${app.name}@${version}`;
      return h("span", { class: `chip ${fresh === label ? "chip-new" : ""}`, "data-version": version },
        h("a", { href: `/${app.name}@${version}/`, target: "_blank", rel: "noopener", title: `Open ${label}` }, version),
        app.name === shellApp
          ? null // the shell does not delete itself
          : h("button", { type: "button", class: "chip-delete", "aria-label": `Delete ${label}`, title: `Delete ${label}`, onclick: () => remove(app, version) }, icon("x")));
    });
    return h("tr", { "data-app": app.name },
      h("td", { "data-label": "App" },
        h("a", { class: "app-name", href: `/${app.name}/`, target: "_blank", rel: "noopener" }, app.name, icon("external", "icon icon-small")),
        app.name === shellApp ? h("span", { class: "badge" }, "this console") : null),
      h("td", { "data-label": "Versions" }, h("div", { class: "chips" }, chips)),
      h("td", { "data-label": "Workers", class: "workers-cell" }, workerCell(app.name)),
      h("td", { "data-label": "Location" }, h("code", { class: "path", title: app.path }, app.path)));
  }

  function draw() {
    const shown = apps.filter((app) => app.name.toLowerCase().includes(filter));
    const versions = apps.reduce((sum, app) => sum + (app.versions || []).length, 0);
    summary.textContent = `${apps.length} app${apps.length === 1 ? "" : "s"}, ${versions} version${versions === 1 ? "" : "s"}`;
    if (!shown.length) {
      table.replaceChildren(h("tr", {}, h("td", { colspan: "4", class: "empty muted" },
        apps.length ? "No app matches the filter." : "No app is installed yet. Drop an archive above to deploy one.")));
      return;
    }
    table.replaceChildren(...shown.map(row));
  }

  function drawWorkers() {
    for (const tr of table.querySelectorAll("tr[data-app]")) {
      tr.querySelector(".workers-cell").replaceChildren(workerCell(tr.dataset.app));
    }
  }

  async function refresh() {
    const latest = await api("/apps");
    if (JSON.stringify(latest) !== JSON.stringify(apps) || fresh) {
      apps = latest;
      draw();
      fresh = null;
    }
  }

  async function upload(file) {
    if (!file) return;
    if (!ARCHIVE.test(file.name)) {
      dropStatus.className = "drop-status error";
      dropStatus.textContent = `${file.name} is not an app archive: use .zip, .tgz or .tar.gz.`;
      return;
    }
    const body = new FormData();
    body.append("file", file, file.name);
    zone.classList.add("busy");
    dropStatus.className = "drop-status";
    dropStatus.replaceChildren(h("span", { class: "progress" }), `Uploading ${file.name}…`);
    try {
      const answer = await withToken(() => api("/apps/upload", { method: "POST", body }));
      const installed = answer.data.app;
      fresh = `${installed.name}@${installed.version}`;
      dropStatus.className = "drop-status success";
      dropStatus.textContent = `Installed ${fresh}.`;
      toast(`Installed ${fresh}`, "success");
      await refresh();
    } catch (error) {
      dropStatus.className = "drop-status error";
      dropStatus.textContent = `${file.name}: ${error.message}`;
      toast(`Upload failed: ${error.message}`, "error");
    } finally {
      zone.classList.remove("busy");
      input.value = "";
    }
  }

  async function remove(app, version) {
    const label = `${app.name}@${version}`;
    const live = workersOf(app.name).filter((worker) => worker.version === version).length;
    const confirmed = await confirmDialog({
      title: `Delete ${label}?`,
      body: `Its files are removed from the disk${live ? ` and its ${live} live worker${live === 1 ? "" : "s"} stop after their requests` : ""}. This cannot be undone.`,
      confirm: "Delete version",
    });
    if (!confirmed) return;
    try {
      await withToken(() => api(versionPath(app.name, version), { method: "DELETE" }));
      toast(`Deleted ${label}`, "success");
      await refresh();
    } catch (error) {
      toast(`Could not delete ${label}: ${error.message}`, "error");
    }
  }

  input.addEventListener("change", () => upload(input.files[0]));
  search.addEventListener("input", () => {
    filter = search.value.trim().toLowerCase();
    draw();
  });
  zone.addEventListener("keydown", (event) => {
    if (event.target === zone && (event.key === "Enter" || event.key === " ")) {
      event.preventDefault();
      input.click();
    }
  });
  // the whole page takes the drop; the zone shows it is armed
  let depth = 0;
  const over = (event) => {
    if (![...(event.dataTransfer?.types || [])].includes("Files")) return;
    event.preventDefault();
    event.dataTransfer.dropEffect = "copy";
  };
  const enter = (event) => {
    if (![...(event.dataTransfer?.types || [])].includes("Files")) return;
    depth += 1;
    zone.classList.add("armed");
  };
  const leave = () => {
    depth = Math.max(0, depth - 1);
    if (!depth) zone.classList.remove("armed");
  };
  const drop = (event) => {
    if (!event.dataTransfer || !event.dataTransfer.files.length) return;
    event.preventDefault();
    depth = 0;
    zone.classList.remove("armed");
    upload(event.dataTransfer.files[0]);
  };
  container.addEventListener("dragover", over);
  container.addEventListener("dragenter", enter);
  container.addEventListener("dragleave", leave);
  container.addEventListener("drop", drop);

  const stopApps = every(10000, () => refresh().catch((error) => {
    summary.textContent = `Could not read the apps: ${error.message}`;
  }));
  const stopWorkers = metrics
    ? every(2000, async () => {
        const snapshot = await getJson(`${metrics.base.replace(/\/$/, "")}/api/`);
        if (snapshot && Array.isArray(snapshot.workers)) {
          workers = snapshot.workers;
          drawWorkers();
        }
      })
    : () => {};
  return () => {
    stopApps();
    stopWorkers();
    container.removeEventListener("dragover", over);
    container.removeEventListener("dragenter", enter);
    container.removeEventListener("dragleave", leave);
    container.removeEventListener("drop", drop);
  };
}
