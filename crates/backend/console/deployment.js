// A deployment's page: status, its latest run followed live (progress bar and streaming log),
// machines, runs with their logs, commands, and the actions (cancel, retry, scale, replace,
// destroy).

import * as api from "./api.js";
import { h, fill, badge, time, showProblem } from "./dom.js";
import { follow } from "./stream.js";
import { commandPanel } from "./command.js";
import { plan } from "./create.js";

const ACTIVE = ["queued", "running"];

export async function deploymentView(main, [id], signal) {
  let d = await api.deployment(id);
  const head = h("div");
  const actions = h("div", { class: "row actions", id: "actions" });
  const out = h("div", { id: "action-out" });
  const progress = h("progress", { id: "run-progress", max: 1, value: 0 });
  const progressText = h("span", { id: "run-progress-text" }, "");
  const log = h("pre", { id: "run-log", class: "log", tabindex: 0, "aria-label": "Run log" });
  const machines = h("div", { id: "machines" });
  const runs = h("div", { id: "runs" });
  const commands = commandPanel(id, () => d, signal);

  const render = () => {
    fill(head, h("div", { class: "row spread" },
      h("h1", {}, d.name, " ", badge(d.status)),
      h("span", { class: "muted" }, `${d.provider} · ${d.id}`)),
      d.status_reason ? h("p", { class: "problem" }, d.status_reason) : "");
    renderActions();
    fill(machines, machineTable(d));
  };
  const act = async (what) => {
    try { fill(out); await what(); await reload(); } catch (err) { showProblem(out, err, actions); }
  };
  // Rebuilt only when what they offer changes: a reload every few seconds must not wipe the
  // name being typed into the destroy form, or pull a button from under a click.
  let actionsKey = "";
  const renderActions = () => {
    const key = [d.status, d.latest_run?.id, d.latest_run?.status, d.machines?.length].join("|");
    if (key === actionsKey) return;
    actionsKey = key;
    const live = d.status !== "destroyed";
    const run = d.latest_run;
    const items = [];
    if (run && ACTIVE.includes(run.status))
      items.push(h("button", { type: "button", id: "cancel-run", onclick: () => act(() => api.cancelRun(id, run.id)) }, `Cancel ${run.kind} run`));
    if (d.status === "failed")
      items.push(h("button", { type: "button", id: "retry", onclick: () => act(() => api.retry(id)) }, "Retry"));
    if (d.status === "ready") items.push(scaleForm());
    if (live && d.status !== "destroying") items.push(destroyForm());
    fill(actions, items);
  };
  const scaleForm = () => {
    const count = h("input", { name: "machine_count", type: "number", min: 1, value: d.machines?.length ?? 1, "aria-label": "Machine count" });
    const send = (dryRun) => act(async () => {
      const answer = await api.update(id, { machine_count: Number(count.value) }, dryRun);
      if (dryRun) fill(out, plan(answer));
    });
    return h("span", { class: "row" }, h("label", { class: "inline" }, "Machines ", count),
      h("button", { type: "button", class: "secondary", onclick: () => send(true) }, "Preview scale"),
      h("button", { type: "button", onclick: () => send(false) }, "Scale"));
  };
  const destroyForm = () => {
    const confirm = h("input", { name: "confirm-name", placeholder: `type ${d.name} to destroy`, "aria-label": "Type the deployment's name to destroy it", autocomplete: "off" });
    const button = h("button", { type: "submit", id: "destroy", class: "danger", disabled: true }, "Destroy");
    confirm.addEventListener("input", () => { button.disabled = confirm.value !== d.name; });
    return h("form", { class: "row", onsubmit: (e) => { e.preventDefault(); if (confirm.value === d.name) act(() => api.destroy(id)); } }, confirm, button);
  };
  const machineTable = (dep) => {
    const list = dep.machines ?? [];
    if (!list.length) return h("p", { class: "muted" }, "No machines.");
    return h("div", { class: "scroll" }, h("table", { id: "machine-table" },
      h("thead", {}, h("tr", {}, ["Machine", "Address", "Health", "Last seen", "System", ""].map((t) => h("th", {}, t)))),
      h("tbody", {}, list.map((m) => h("tr", { "data-machine": m.name },
        h("td", {}, m.name), h("td", {}, m.public_ip ?? m.private_ip ?? "—", m.agent_port ? `:${m.agent_port}` : ""),
        h("td", {}, badge(m.status)), h("td", {}, time(m.last_seen_at)), h("td", {}, system(m.info)),
        h("td", {}, dep.status === "ready" ? h("button", { type: "button", class: "secondary small", onclick: () => act(() => api.replace(id, m.name)) }, "Replace") : ""))))));
  };
  const reload = async () => {
    d = await api.deployment(id);
    render();
    fill(runs, await runList());
    commands.refresh();
  };
  const runList = async () => {
    const page = await api.runs(id);
    return h("ul", { class: "runs" }, page.items.map((r) => {
      const detail = h("pre", { class: "log", hidden: true });
      return h("li", {}, badge(r.status), ` ${r.kind} · ${time(r.created_at)} · ${r.progress.done}/${r.progress.total} resources `,
        r.error ? h("span", { class: "muted" }, r.error) : "",
        h("button", { type: "button", class: "secondary small", onclick: async () => {
          if (!detail.hidden) { detail.hidden = true; return; }
          const full = await api.run(id, r.id);
          fill(detail, full.events.filter((e) => e.kind === "log").map((e) => `${e.data.message}\n`));
          detail.hidden = false;
        } }, "Log"), detail);
    }));
  };

  fill(main, head, actions, out,
    h("section", { class: "card" }, h("h2", {}, "Live run"), h("div", { class: "row" }, progress, progressText), log),
    h("section", { class: "card" }, h("h2", {}, "Machines"), machines),
    commands.element,
    h("section", { class: "card" }, h("h2", {}, "Runs"), runs));
  await reload();

  let runId = null;
  follow(id, ({ event, data }) => {
    if (data.run_id !== runId) { runId = data.run_id; log.replaceChildren(); progress.value = 0; progressText.textContent = ""; }
    if (event === "log") {
      log.append(`${data.message}\n`);
      log.scrollTop = log.scrollHeight;
    } else if (event === "progress") {
      progress.max = Math.max(1, data.total);
      progress.value = data.done;
      progressText.textContent = `${data.done}/${data.total} resources`;
    } else if (event === "status" || event === "run_finished") {
      if (event === "run_finished") log.append(`run ${data.status}${data.error ? `: ${data.error}` : ""}\n`);
      reload().catch(() => {});
    }
    return false;
  }, signal);
  const timer = setInterval(() => reload().catch(() => {}), 5000);
  signal.addEventListener("abort", () => clearInterval(timer));
}

function system(info) {
  if (!info) return "—";
  const mem = info.memory_bytes ?? info.memory_total_bytes;
  const gpus = Array.isArray(info.gpus) && info.gpus.length ? `, ${info.gpus.length} GPU` : "";
  return `${info.os ?? info.os_name ?? ""}${info.cpus ? `, ${info.cpus} CPU` : ""}${mem ? `, ${(mem / 2 ** 30).toFixed(1)} GiB` : ""}${gpus}`;
}
