// The console's entry point: a hash router that shows one view at a time. Each view gets an
// AbortSignal that ends its polling and streams when the user moves on.

import { session, scheduleRefresh, logOut } from "./api.js";
import { h, fill } from "./dom.js";
import { authView } from "./auth.js";
import { listView } from "./list.js";
import { createView } from "./create.js";
import { deploymentView } from "./deployment.js";

const routes = [
  [/^#\/login$/, authView, false],
  [/^#\/new$/, createView, true],
  [/^#\/d\/([0-9a-f-]+)$/, deploymentView, true],
  [/^(#\/?)?$/, listView, true],
];

let current;

async function route() {
  current?.abort();
  current = new AbortController();
  const main = document.getElementById("main");
  const hash = location.hash;
  const [pattern, view, needsSession] = routes.find(([p]) => p.test(hash)) ?? routes[3];
  if (needsSession && !session()) { location.hash = "#/login"; return; }
  nav();
  fill(main, h("p", {}, "Loading…"));
  try {
    await view(main, hash.match(pattern).slice(1), current.signal);
  } catch (err) {
    if (!current.signal.aborted) fill(main, h("div", { class: "problem", role: "alert" }, String(err.message ?? err)));
  }
  main.focus({ preventScroll: true });
}

function nav() {
  const s = session();
  fill(document.getElementById("nav"), s
    ? [h("a", { href: "#/" }, "Deployments"), h("a", { href: "#/new" }, "New deployment"),
      h("span", { class: "who" }, s.user?.email ?? ""),
      h("button", { type: "button", id: "logout", onclick: async () => { await logOut().catch(() => {}); location.hash = "#/login"; } }, "Log out")]
    : []);
}

window.addEventListener("hashchange", route);
scheduleRefresh();
route();
