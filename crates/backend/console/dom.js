// Building the page with DOM calls only: text goes in as text (never as HTML), so nothing a
// user or a machine wrote can become markup or script.

/** An element: `h("a", {href: "#/"}, "text", child)`. Attributes starting with `on` are listeners. */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key === "class") el.className = value;
    else if (value === true) el.setAttribute(key, "");
    else el.setAttribute(key, String(value));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** Replaces an element's children. */
export function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

/** A status badge (its class comes from a fixed list, its text is the status). */
export function badge(status) {
  const known = ["ready", "healthy", "succeeded", "failed", "unreachable", "destroyed",
    "cancelled", "timed_out", "partial", "running", "provisioning", "updating", "destroying",
    "queued", "pending", "interrupted", "unknown", "skipped", "rejected"];
  return h("span", { class: `badge ${known.includes(status) ? status : ""}` }, status ?? "—");
}

export function time(iso) {
  return iso ? new Date(iso).toLocaleString() : "—";
}

/** Shows a problem (or any error) where `el` is; field errors go beside the fields of `form`. */
export function showProblem(el, err, form) {
  form?.querySelectorAll(".field-error").forEach((e) => e.remove());
  const problem = err?.problem;
  const text = problem ? `${problem.title}: ${problem.detail}` : String(err?.message ?? err);
  fill(el, h("div", { class: "problem", role: "alert" }, text));
  for (const { field, message } of problem?.errors ?? []) {
    const name = field.replace(/^variables\./, "");
    const input = form?.querySelector(`[name="${CSS.escape(name)}"]`);
    const note = h("div", { class: "field-error" }, message);
    const label = input?.closest("label");
    if (label) label.append(note);
    else if (input) input.after(note);
    else el.append(h("div", { class: "field-error" }, `${field}: ${message}`));
  }
}
