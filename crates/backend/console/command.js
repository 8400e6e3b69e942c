// Run a command on all or chosen machines (argv or shell, timeout, concurrency), see each
// machine's result side by side while it runs, cancel it, and browse the history.

import * as api from "./api.js";
import { h, fill, badge, time, showProblem } from "./dom.js";

export function commandPanel(id, deployment, signal) {
  const out = h("div", { id: "command-out" });
  const results = h("div", { id: "command-results", class: "results" });
  const history = h("ul", { id: "command-history", class: "runs" });
  const machines = h("div", { class: "row machines-pick", id: "command-machines" });
  const form = h("form", { id: "command-form" },
    h("div", { class: "row" },
      h("label", { class: "inline" }, h("input", { type: "radio", name: "mode", value: "shell", checked: true }), " shell"),
      h("label", { class: "inline" }, h("input", { type: "radio", name: "mode", value: "argv" }), " argv (one argument per line)")),
    h("label", {}, "Command", h("textarea", { name: "shell", rows: 3, required: true, spellcheck: "false" })),
    h("div", { class: "row" },
      h("label", { class: "inline" }, "Timeout (s) ", h("input", { name: "timeout_s", type: "number", min: 1, max: 3600, value: 60 })),
      h("label", { class: "inline" }, "Concurrency ", h("input", { name: "max_concurrency", placeholder: "64 or 25%", size: 8 }))),
    machines,
    h("div", { class: "row" }, h("button", { type: "submit", id: "run-command" }, "Run"),
      h("button", { type: "button", id: "cancel-command", class: "secondary", hidden: true }, "Cancel command")),
    out);
  let polling = null;
  const cancel = form.querySelector("#cancel-command");

  const show = (c) => {
    fill(results, h("p", {}, badge(c.status), ` ${c.request.shell ?? (c.request.argv ?? []).join(" ")} · ${summary(c.summary)}`),
      h("div", { class: "grid" }, (c.results ?? []).map(result)));
    cancel.hidden = c.status !== "running";
    cancel.onclick = () => api.cancelCommand(id, c.id).catch((err) => showProblem(out, err));
  };
  const watch = async (cid) => {
    clearTimeout(polling);
    const c = await api.command(id, cid);
    show(c);
    if (c.status === "running" && !signal.aborted) polling = setTimeout(() => watch(cid).catch(() => {}), 500);
    else refresh();
  };
  const refresh = async () => {
    const d = deployment();
    if (!machines.childElementCount && d.machines?.length)
      fill(machines, h("span", {}, "Machines (none ticked: all) "), d.machines.map((m) =>
        h("label", { class: "inline" }, h("input", { type: "checkbox", name: "machine", value: m.name }), ` ${m.name}`)));
    try {
      const page = await api.commands(id);
      fill(history, page.items.map((c) => h("li", {}, badge(c.status), ` ${time(c.created_at)} `,
        h("code", {}, c.request.shell ?? (c.request.argv ?? []).join(" ")), ` · ${summary(c.summary)} `,
        h("button", { type: "button", class: "secondary small", onclick: () => watch(c.id) }, "Results"))));
    } catch { /* shown by the page's own reload */ }
  };
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const f = new FormData(form);
    const text = f.get("shell");
    const body = f.get("mode") === "argv" ? { argv: text.split("\n").filter((l) => l !== "") } : { shell: text };
    if (f.get("timeout_s")) body.timeout_s = Number(f.get("timeout_s"));
    const conc = String(f.get("max_concurrency") ?? "").trim();
    if (conc) body.max_concurrency = /%$/.test(conc) ? conc : Number(conc);
    const chosen = f.getAll("machine");
    if (chosen.length) body.machines = chosen;
    try {
      fill(out);
      const c = await api.sendCommand(id, body);
      await watch(c.id);
    } catch (err) { showProblem(out, err, form); }
  });
  signal.addEventListener("abort", () => clearTimeout(polling));
  const element = h("section", { class: "card" }, h("h2", {}, "Run a command"), form, results,
    h("h3", {}, "History"), history);
  return { element, refresh };
}

function summary(s) {
  return Object.entries(s ?? {}).filter(([k, v]) => k !== "total" && v).map(([k, v]) => `${v} ${k}`).join(", ") || "—";
}

function result(r) {
  return h("article", { class: "result", "data-machine": r.machine },
    h("header", {}, h("strong", {}, r.machine), " ", badge(r.status)),
    h("p", { class: "muted" }, `exit ${r.exit_code ?? "—"}${r.signal ? ` (signal ${r.signal})` : ""} · ${r.duration_ms ?? "—"} ms${r.truncated ? " · truncated" : ""}`),
    r.error ? h("p", { class: "problem" }, r.error) : "",
    h("pre", { class: "stdout" }, r.stdout ?? ""),
    r.stderr ? h("pre", { class: "stderr" }, r.stderr) : "");
}
