// The shell's 404: a route that is neither one of its pages nor under a plugin.

import { h, icon } from "../lib.js";

export function notFoundPage(container, { route, shellUrl }) {
  container.append(
    h("div", { class: "page" },
      h("div", { class: "card empty-state not-found" },
        h("div", { class: "empty-icon" }, icon("compass")),
        h("p", { class: "eyebrow" }, "404"),
        h("h2", {}, "This page does not exist"),
        h("p", { class: "muted" }, "Nothing in the shell or in a loaded plugin answers ", h("code", {}, route), "."),
        h("div", { class: "actions" },
          h("a", { class: "button primary", href: shellUrl("/") }, "Go to the overview"),
          h("a", { class: "button", href: shellUrl("/apps") }, "See the apps")))));
  return () => {};
}
