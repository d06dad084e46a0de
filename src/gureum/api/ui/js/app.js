// The console's shell: sign-in, the project, the router. Each page is a function that fills
// the main element and returns what to undo when the page is left.

import { call, get, session, ApiError } from "./api.js";
import { h, clear, notify } from "./dom.js";
import * as events from "./events.js";
import * as instances from "./instances.js";
import * as resources from "./resources.js";

const view = document.getElementById("view");
let leave = null;
export const me = { projects: [], role: null };

export function canAct() {
  return me.role === "member" || me.role === "admin";
}
export function isAdmin() {
  return me.role === "admin";
}

const routes = [
  [/^#\/instances\/([^/]+)$/, (m) => instances.detail(view, decodeURIComponent(m[1]))],
  [/^#\/console\/([^/]+)$/, (m) => instances.consoleOnly(view, decodeURIComponent(m[1]))],
  [/^#\/launch$/, () => instances.launchForm(view)],
  [/^#\/networks$/, () => resources.networks(view)],
  [/^#\/secgroups$/, () => resources.secgroups(view)],
  [/^#\/images$/, () => resources.images(view)],
  [/^#\/project$/, () => resources.project(view)],
  [/^#\/audit$/, () => resources.audit(view)],
  [/^#\/host$/, () => resources.host(view)],
  [/^#\/instances$|^#?\/?$/, () => instances.list(view)],
];

async function route() {
  if (!session.csrf) return;
  if (leave) { try { leave(); } catch (_) { /* the page is gone anyway */ } }
  leave = null;
  clear(view);
  const hash = window.location.hash || "#/instances";
  for (const a of document.querySelectorAll("header nav a")) {
    a.classList.toggle("active", hash.startsWith(a.getAttribute("href")));
    if (hash.startsWith(a.getAttribute("href"))) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  for (const [pattern, page] of routes) {
    const m = hash.match(pattern);
    if (m) {
      try {
        leave = (await page(m)) || null;
      } catch (err) {
        view.append(h("p", { class: "error" }, err.message));
      }
      return;
    }
  }
  view.append(h("p", {}, "No such page. ", h("a", { href: "#/instances" }, "Instances")));
}

async function whoami() {
  const who = await get("/v1/whoami", { project: null });
  me.projects = who.projects;
  const select = clear(document.getElementById("project"));
  const saved = window.localStorage.getItem("gureum.project");
  const names = who.projects.map((p) => p.project);
  session.project = names.includes(saved) ? saved : names.includes("default") ? "default" : names[0] || null;
  for (const p of who.projects) {
    select.append(h("option", { value: p.project, selected: p.project === session.project },
      `${p.project} (${p.role})`));
  }
  me.role = who.projects.find((p) => p.project === session.project)?.role || null;
  document.getElementById("who").textContent = who.superuser ? `${session.user} (administrator)` : session.user;
}

async function start(answer) {
  session.csrf = answer.csrf;
  session.user = answer.user;
  session.superuser = answer.superuser;
  document.getElementById("top").hidden = false;
  await whoami();
  events.connect();
  await route();
}

function signInPage(message) {
  document.getElementById("top").hidden = true;
  session.csrf = null;
  events.disconnect();
  clear(view);
  const token = h("input", { id: "token", type: "password", autocomplete: "off", required: true,
    "aria-describedby": "signin-help" });
  const problem = h("p", { class: "error", role: "alert" }, message || "");
  const form = h("form", { class: "card signin", onsubmit: async (ev) => {
    ev.preventDefault();
    try {
      await start(await call("POST", "/ui/session", { token: token.value }, { project: null }));
    } catch (err) {
      problem.textContent = err.message;
    }
  } },
  h("h1", {}, "Sign in to gureum"),
  h("p", { id: "signin-help", class: "muted" },
    "With an API token (gureum token create), or run `gureum ui`, which opens a signed-in URL."),
  h("label", { for: "token" }, "Token"), " ", token, " ",
  h("button", { class: "primary", type: "submit" }, "Sign in"),
  problem);
  view.append(form);
  token.focus();
}

window.addEventListener("gureum:signed-out", () => signInPage("Your session has ended: sign in again."));
window.addEventListener("hashchange", route);
document.getElementById("project").addEventListener("change", async (ev) => {
  session.project = ev.target.value;
  window.localStorage.setItem("gureum.project", session.project);
  me.role = me.projects.find((p) => p.project === session.project)?.role || null;
  events.restart();
  await route();
});
document.getElementById("signout").addEventListener("click", async () => {
  try { await call("DELETE", "/ui/session", undefined, { project: null }); } catch (_) { /* gone */ }
  signInPage("Signed out.");
});

async function boot() {
  const code = new URLSearchParams(window.location.hash.slice(1)).get("code");
  try {
    if (code) {
      history.replaceState(null, "", "/ui/#/instances");  // the code is used once: not kept
      // A link someone sent must not quietly replace who this browser is signed in as.
      let current = null;
      try { current = await call("GET", "/ui/session", undefined, { project: null }); } catch (_) { /* none */ }
      if (current && !window.confirm(`You are signed in as ${current.user}. Sign in with this link instead?`)) {
        await start(current);
        return;
      }
      await start(await call("POST", "/ui/session", { code }, { project: null }));
    } else {
      await start(await call("GET", "/ui/session", undefined, { project: null }));
    }
  } catch (err) {
    signInPage(err instanceof ApiError && err.status !== 401 ? err.message : code ? err.message : "");
  }
}

export { notify };
boot();
