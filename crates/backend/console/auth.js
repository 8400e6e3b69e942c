// Sign up and log in (the backend's /auth/*, the same shape with built-in auth and Supabase).

import { signUp, logIn } from "./api.js";
import { h, fill, showProblem } from "./dom.js";

export async function authView(main) {
  const out = h("div", { class: "out" });
  const form = h("form", { id: "auth-form", class: "card narrow" },
    h("h1", {}, "Sign in to nim"),
    h("label", {}, "Email", h("input", { name: "email", type: "email", autocomplete: "email", required: true })),
    h("label", {}, "Password", h("input", { name: "password", type: "password", autocomplete: "current-password", required: true, minlength: 8 })),
    h("div", { class: "row" },
      h("button", { type: "submit", name: "login" }, "Log in"),
      h("button", { type: "submit", name: "signup", class: "secondary" }, "Sign up")),
    out);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const { email, password } = Object.fromEntries(new FormData(form));
    try {
      if (event.submitter?.name === "signup") {
        const r = await signUp(email, password);
        if (r.confirmation_required) { fill(out, h("p", {}, "Check your email to confirm the account, then log in.")); return; }
        if (!r.session) await logIn(email, password);
      } else {
        await logIn(email, password);
      }
      location.hash = "#/";
    } catch (err) { showProblem(out, err, form); }
  });
  fill(main, form);
}
