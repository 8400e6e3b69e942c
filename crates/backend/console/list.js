// The deployments list: live status and health, filtered by status and name (polled every 3 s).

import { deployments, deployment } from "./api.js";
import { h, fill, badge, time, showProblem } from "./dom.js";

const STATUSES = ["", "pending", "provisioning", "ready", "updating", "destroying", "destroyed", "failed"];

export async function listView(main, _params, signal) {
  const status = h("select", { name: "status", "aria-label": "Status" }, STATUSES.map((s) => h("option", { value: s }, s || "any status")));
  const name = h("input", { name: "name", type: "search", placeholder: "name", "aria-label": "Name" });
  const body = h("tbody");
  const out = h("div");
  const load = async () => {
    try {
      const page = await deployments({ status: status.value, name: name.value.trim() });
      // Health needs each live deployment's machines.
      const rows = await Promise.all(page.items.map(async (d) =>
        d.status === "ready" ? deployment(d.id).catch(() => d) : d));
      fill(out);
      fill(body, rows.length ? rows.map(row) : h("tr", {}, h("td", { colspan: 5 }, "No deployments yet.")));
    } catch (err) { showProblem(out, err); }
  };
  status.addEventListener("change", load);
  name.addEventListener("input", load);
  fill(main, h("section", {},
    h("div", { class: "row spread" }, h("h1", {}, "Deployments"), h("a", { href: "#/new", class: "button" }, "New deployment")),
    h("div", { class: "row filters" }, status, name), out,
    h("div", { class: "scroll" }, h("table", { id: "deployments" },
      h("thead", {}, h("tr", {}, ["Name", "Provider", "Status", "Health", "Created"].map((t) => h("th", {}, t)))), body))));
  await load();
  const timer = setInterval(load, 3000);
  signal.addEventListener("abort", () => clearInterval(timer));
}

function row(d) {
  const health = d.machines
    ? `${d.machines.filter((m) => m.status === "healthy").length}/${d.machines.length} healthy`
    : "—";
  return h("tr", { "data-id": d.id },
    h("td", {}, h("a", { href: `#/d/${d.id}` }, d.name)), h("td", {}, d.provider),
    h("td", {}, badge(d.status)), h("td", {}, d.degraded ? badge("unreachable") : health),
    h("td", {}, time(d.created_at)));
}
