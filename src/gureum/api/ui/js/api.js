// The API, as the CLI uses it: the same routes, with the session cookie (sent by the browser,
// unreadable to scripts) and the session's CSRF value in a header on every change.

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

export const session = { csrf: null, user: null, superuser: false, project: null };

export async function call(method, path, body, { project = session.project, raw = false } = {}) {
  const headers = { Accept: "application/json" };
  if (project) headers["X-Gureum-Project"] = project;
  if (method !== "GET" && session.csrf) headers["X-CSRF-Token"] = session.csrf;
  const init = { method, headers, credentials: "same-origin" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const resp = await fetch(path, init);
  if (resp.status === 401 && !path.startsWith("/ui/session")) {
    window.dispatchEvent(new CustomEvent("gureum:signed-out"));
  }
  if (!resp.ok) {
    let code = "http-error", message = `${resp.status} ${resp.statusText}`;
    try {
      const err = (await resp.json()).error;
      code = err.code;
      message = err.message;
    } catch (_) { /* not JSON */ }
    throw new ApiError(resp.status, code, message);
  }
  if (raw) return resp;
  const kind = resp.headers.get("content-type") || "";
  return kind.startsWith("application/json") ? resp.json() : resp.text();
}

export const get = (path, opts) => call("GET", path, undefined, opts);
export const post = (path, body, opts) => call("POST", path, body ?? {}, opts);
export const del = (path, opts) => call("DELETE", path, undefined, opts);

export function path(...parts) {
  return "/v1/" + parts.map((p) => encodeURIComponent(p)).join("/");
}

// A WebSocket to the service (same origin: the browser sends the cookie; the project goes in
// the query, as a browser cannot set headers on one).
export function socket(route, params = {}) {
  const url = new URL(route, window.location.href);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  if (session.project) url.searchParams.set("project", session.project);
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null) url.searchParams.set(k, v);
  return new WebSocket(url);
}

// Wait for an operation to end, calling onProgress with each new progress line.
export async function finish(op, onProgress = () => {}) {
  let seen = 0;
  for (;;) {
    const now = await get(`/v1/operations/${encodeURIComponent(op.id)}`);
    for (const line of now.progress.slice(seen)) onProgress(line.message, line.fraction);
    seen = now.progress.length;
    if (now.status !== "running") {
      if (now.status === "failed") throw new ApiError(409, now.error?.code, now.error?.message || "failed");
      return now;
    }
    await new Promise((r) => setTimeout(r, 400));
  }
}
