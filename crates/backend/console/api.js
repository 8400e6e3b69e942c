// The API client: one function per call the console makes, the session (kept per tab in
// sessionStorage, refreshed a minute before it expires), and problem+json turned into errors.

const KEY = "nim.session";
let refreshTimer;

export class ApiError extends Error {
  constructor(status, problem) {
    super(problem?.detail ?? `HTTP ${status}`);
    this.status = status;
    this.problem = problem;
  }
}

export function session() {
  try { return JSON.parse(sessionStorage.getItem(KEY)); } catch { return null; }
}

function save(s) {
  clearTimeout(refreshTimer);
  if (!s) { sessionStorage.removeItem(KEY); return; }
  sessionStorage.setItem(KEY, JSON.stringify(s));
  scheduleRefresh();
}

/** Refreshes the session shortly before its access token expires (refresh tokens are single-use). */
export function scheduleRefresh() {
  clearTimeout(refreshTimer);
  const s = session();
  if (!s) return;
  const due = Math.max(5_000, s.expires_at * 1000 - Date.now() - 60_000);
  refreshTimer = setTimeout(() => refresh().catch(() => save(null)), due);
}

async function refresh() {
  const s = session();
  if (!s) throw new ApiError(401, null);
  save(await call("POST", "/auth/refresh", { refresh_token: s.refresh_token }, { auth: false }));
}

/** One request; problem+json answers throw `ApiError`. A 401 is retried once after a refresh. */
export async function call(method, path, body, { auth = true, retried = false } = {}) {
  const headers = {};
  if (body !== undefined) headers["content-type"] = "application/json";
  const token = session()?.access_token;
  if (auth && token) headers.authorization = `Bearer ${token}`;
  const response = await fetch(path, {
    method, headers, body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (response.status === 401 && auth && !retried && session()) {
    try { await refresh(); } catch { save(null); location.hash = "#/login"; throw new ApiError(401, null); }
    return call(method, path, body, { auth, retried: true });
  }
  const text = await response.text();
  const json = text ? JSON.parse(text) : null;
  if (!response.ok) throw new ApiError(response.status, json);
  return json;
}

export const signUp = async (email, password) => {
  const r = await call("POST", "/auth/signup", { email, password }, { auth: false });
  if (r.session) save(r.session);
  return r;
};
export const logIn = async (email, password) =>
  save(await call("POST", "/auth/login", { email, password }, { auth: false }));
export const logOut = async () => {
  try { await call("POST", "/auth/logout"); } finally { save(null); }
};

const q = (params) => {
  const s = new URLSearchParams(Object.entries(params).filter(([, v]) => v)).toString();
  return s ? `?${s}` : "";
};
const d = (id) => `/infrastructure/${encodeURIComponent(id)}`;

export const providers = () => call("GET", "/providers");
export const deployments = (filter = {}) => call("GET", `/infrastructure${q(filter)}`);
export const deployment = (id) => call("GET", d(id));
export const provision = (body, dryRun) => call("POST", `/provision${dryRun ? "?dry_run=true" : ""}`, body);
export const destroy = (id) => call("DELETE", d(id));
export const runs = (id) => call("GET", `${d(id)}/runs`);
export const run = (id, runId) => call("GET", `${d(id)}/runs/${runId}`);
export const cancelRun = (id, runId) => call("POST", `${d(id)}/runs/${runId}/cancel`);
export const sendCommand = (id, body) => call("POST", `${d(id)}/command?wait=false`, body);
export const commands = (id) => call("GET", `${d(id)}/commands`);
export const command = (id, cid) => call("GET", `${d(id)}/commands/${cid}`);
export const cancelCommand = (id, cid) => call("POST", `${d(id)}/commands/${cid}/cancel`);
// Changes to a live deployment (issue 18): each answers {deployment, run}; a PATCH dry run a plan.
export const update = (id, variables, dryRun) =>
  call("PATCH", `${d(id)}${dryRun ? "?dry_run=true" : ""}`, { variables });
export const retry = (id) => call("POST", `${d(id)}/retry`);
export const replace = (id, machine) =>
  call("POST", `${d(id)}/machines/${encodeURIComponent(machine)}/replace`);
