// Create a deployment: a form generated from GET /providers (type, default, description,
// required; sensitive variables as password fields), a dry-run preview, then the deployment's
// page, which follows the run live.

import { providers, provision } from "./api.js";
import { h, fill, showProblem } from "./dom.js";

export async function createView(main) {
  const { providers: list } = await providers();
  const out = h("div", { id: "create-out" });
  const vars = h("fieldset", { id: "variables" });
  const provider = h("select", { name: "provider", required: true }, list.map((p) => h("option", { value: p.name }, p.name)));
  const form = h("form", { id: "create-form", class: "card" },
    h("h1", {}, "New deployment"),
    h("label", {}, "Name", h("input", { name: "name", required: true, pattern: "[a-z][a-z0-9-]{0,62}", autocomplete: "off" }),
      h("small", {}, "1-63 lowercase letters, digits and hyphens, starting with a letter")),
    h("label", {}, "Provider", provider), vars,
    h("div", { class: "row" },
      h("button", { type: "submit", name: "preview", class: "secondary" }, "Preview (dry run)"),
      h("button", { type: "submit", name: "create" }, "Create")),
    out);
  const showVars = () => {
    const p = list.find((x) => x.name === provider.value);
    fill(vars, h("legend", {}, "Variables"), [...(p?.variables ?? [])].filter((v) => !v.backend_filled)
      .sort((a, b) => (b.required - a.required) || a.name.localeCompare(b.name)).map(field));
  };
  provider.addEventListener("change", showVars);
  showVars();
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const dryRun = event.submitter?.name === "preview";
    let body;
    try { body = { name: form.elements.name.value, provider: provider.value, variables: values(vars) }; }
    catch (err) { showProblem(out, err, form); return; }
    fill(out, h("p", { class: "muted" }, dryRun ? "Planning…" : "Creating…"));
    try {
      const answer = await provision(body, dryRun);
      if (dryRun) fill(out, plan(answer));
      else location.hash = `#/d/${answer.deployment.id}`;
    } catch (err) { showProblem(out, err, form); }
  });
  fill(main, form);
}

/** One variable's input, by its Terraform type. */
function field(v) {
  const attrs = { name: v.name, "data-type": v.type, required: v.required, "aria-describedby": `help-${v.name}` };
  const def = v.default;
  let input;
  if (v.type === "bool") input = h("input", { ...attrs, type: "checkbox", checked: def === true, required: false });
  else if (v.type === "number") input = h("input", { ...attrs, type: "number", step: "any", value: def ?? "" });
  else if (v.type === "string") input = h("input", { ...attrs, type: v.sensitive ? "password" : "text", autocomplete: v.sensitive ? "new-password" : "off", value: v.sensitive ? "" : def ?? "" });
  else input = h("textarea", { ...attrs, rows: 2, placeholder: "JSON" }, def === null || def === undefined ? "" : JSON.stringify(def));
  return h("label", { class: v.type === "bool" ? "check" : "" },
    h("span", {}, v.name, v.required ? h("abbr", { title: "required" }, " *") : "", h("code", {}, ` ${v.type}`)),
    input, h("small", { id: `help-${v.name}` }, v.description ?? ""));
}

/** The variables the user set (empty fields are left to the module's defaults). */
function values(fieldset) {
  const out = {};
  for (const input of fieldset.querySelectorAll("[name]")) {
    const type = input.dataset.type;
    if (type === "bool") { out[input.name] = input.checked; continue; }
    if (input.value === "") continue;
    if (type === "number") out[input.name] = Number(input.value);
    else if (type === "string") out[input.name] = input.value;
    else {
      try { out[input.name] = JSON.parse(input.value); } catch {
        throw { problem: { title: "Invalid value", detail: "a field is not valid JSON", errors: [{ field: input.name, message: "not valid JSON" }] } };
      }
    }
  }
  return out;
}

/** A dry run's plan: counts and each resource's action. */
export function plan(p) {
  return h("div", { class: "plan", id: "plan" },
    h("p", {}, `Plan: ${p.add} to add, ${p.change} to change, ${p.destroy} to destroy.`),
    h("ul", {}, p.resources.map((r) => h("li", {}, h("code", {}, r.address), ` ${r.action}`))));
}
