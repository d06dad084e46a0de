// Everything besides instances: networks, security groups, images, the project (quotas against
// use, members, tokens), the audit log and the host.

import { del, get, path, post, call, session } from "./api.js";
import { canAct, isAdmin } from "./app.js";
import { clear, h, notify, size, table, when } from "./dom.js";

async function attempt(label, fn, after) {
  try {
    await fn();
    notify(`${label}: done`);
  } catch (err) {
    notify(`${label}: ${err.message}`, true);
  }
  await after();
}

export async function networks(view) {
  const box = h("div", {});
  const name = h("input", { id: "net-name", placeholder: "backend", required: true, "aria-label": "Network name" });
  const subnet = h("input", { id: "net-subnet", placeholder: "10.80.1.0/24", required: true, "aria-label": "Subnet" });
  const nat = h("input", { id: "net-nat", type: "checkbox" });
  const fill = async () => {
    const nets = await get("/v1/networks");
    clear(box).append(table(["Name", "Subnet", "Gateway", "Egress NAT", "Instances", "Created", ""],
      nets.map((n) => h("tr", {}, h("td", {}, n.name), h("td", {}, n.subnet), h("td", {}, n.gateway),
        h("td", {}, n.nat ? "yes" : "no"),
        h("td", {}, n.instances.map((i) => `${i.name} ${i.ip || ""}`).join(", ") || "-"),
        h("td", {}, when(n.created_at)),
        h("td", {}, canAct() && n.name !== "default" ? h("button", { type: "button", class: "danger", onclick: () => {
          if (window.confirm(`Delete network ${n.name}?`)) attempt(`delete ${n.name}`, () => del(path("networks", n.id)), fill);
        } }, "Delete") : null)))));
  };
  view.append(h("h1", {}, "Networks"), box,
    canAct() ? h("form", { class: "inline card", onsubmit: (ev) => {
      ev.preventDefault();
      attempt(`create ${name.value}`, () => post("/v1/networks",
        { name: name.value.trim(), subnet: subnet.value.trim(), nat: nat.checked }), fill);
    } }, h("strong", {}, "New network"), name, subnet, h("label", {}, nat, " egress NAT"),
    h("button", { type: "submit" }, "Create")) : null);
  await fill();
}

export async function secgroups(view) {
  const box = h("div", {});
  const name = h("input", { id: "sg-name", placeholder: "web", required: true, "aria-label": "Group name" });
  const fill = async () => {
    const groups = await get("/v1/secgroups");
    clear(box);
    for (const g of groups) {
      const ingress = h("input", { placeholder: "tcp/22", "aria-label": `Rule for ${g.name}: protocol/port` });
      const from = h("input", { placeholder: "0.0.0.0/0 or a group", "aria-label": `Rule for ${g.name}: from` });
      box.append(h("section", { class: "card", "aria-label": `Security group ${g.name}` },
        h("h2", {}, g.name, " ", h("span", { class: "muted" }, `(${g.instances} instances)`)),
        table(["Rule", "From", ""], g.rules.map((r) => h("tr", {},
          h("td", {}, r.text),
          h("td", {}, r.cidr || r.source_group || "-"),
          h("td", {}, canAct() ? h("button", { type: "button", class: "danger", onclick: () =>
            attempt("remove rule", () => del(path("secgroups", g.id, "rules", r.id)), fill) }, "Remove") : null))),
        "No rules: nothing comes in."),
        canAct() ? h("form", { class: "inline", onsubmit: (ev) => {
          ev.preventDefault();
          const source = from.value.trim();
          const rule = { ingress: ingress.value.trim() };
          if (/^[0-9a-f.:]+\/\d+$/i.test(source)) rule.from_cidr = source;
          else if (source) rule.from_group = source;
          attempt(`rule on ${g.name}`, () => post(path("secgroups", g.id, "rules"), rule), fill);
        } }, ingress, from, h("button", { type: "submit" }, "Add rule"),
        g.name !== "default" ? h("button", { type: "button", class: "danger", onclick: () => {
          if (window.confirm(`Delete security group ${g.name}?`)) attempt(`delete ${g.name}`, () => del(path("secgroups", g.id)), fill);
        } }, "Delete group") : null) : null));
    }
  };
  view.append(h("h1", {}, "Security groups"), box,
    canAct() ? h("form", { class: "inline card", onsubmit: (ev) => {
      ev.preventDefault();
      attempt(`create ${name.value}`, () => post("/v1/secgroups", { name: name.value.trim() }), fill);
    } }, h("strong", {}, "New group"), name, h("button", { type: "submit" }, "Create")) : null);
  await fill();
}

export async function images(view) {
  const list = await get("/v1/images");
  const rows = [];
  for (const i of list) {
    let templates = [];
    try { templates = (await get(path("images", i.name))).templates || []; } catch (_) { /* none */ }
    // A project's own image (made from one of its VMs) is its members' to delete.
    const mine = i.project_id && canAct();
    rows.push(h("tr", { dataset: { image: i.name } }, h("td", {}, i.name), h("td", {}, i.version),
      h("td", {}, i.origin), h("td", {}, i.project_id ? "this project" : "the host"),
      h("td", {}, i.boot), h("td", { class: "num" }, size(i.disk_virtual_bytes)),
      h("td", { class: "num" }, size(i.size_bytes)), h("td", {}, i.default_user || "root"),
      h("td", {}, templates.map((t) => `${t.cpus || "?"} vCPU ${t.memory_mib || "?"} MiB (${t.clones ?? 0} clones)`).join("; ") || "-"),
      h("td", {}, when(i.built_at)),
      h("td", {}, mine ? h("button", { type: "button", class: "danger", onclick: () => {
        if (window.confirm(`Delete image ${i.name}?`)) {
          attempt(`delete image ${i.name}`, () => del(path("images", i.name)), () => { clear(view); return images(view); });
        }
      } }, "Delete") : null)));
  }
  view.append(h("h1", {}, "Images and templates"),
    table(["Name", "Version", "Origin", "Owner", "Boots", "Disk", "Stored", "User", "Templates", "Built", ""], rows,
      "No images: the administrator builds them (gureum image build tiny)."),
    h("p", { class: "muted" }, "The host's images are built and their templates made by its administrator (gureum image build, gureum image template); your project's own are made from its VMs (Make image on a VM's page)."));
}

function bar(used, limit) {
  if (limit === null || limit === undefined) return h("span", { class: "muted" }, "no quota");
  const pct = Math.min(100, limit ? (100 * used) / limit : 100);
  return h("div", { class: "bar", role: "meter", "aria-valuemin": 0, "aria-valuemax": limit, "aria-valuenow": used },
    h("span", { style: null, dataset: { pct: pct.toFixed(0) } }));
}

export async function project(view) {
  const name = session.project;
  const [usage, members, tokens] = await Promise.all([
    get(path("projects", name, "usage")), get(path("projects", name, "members")), get("/v1/tokens"),
  ]);
  const quotaRows = Object.entries(usage.quotas).map(([key, limit]) => {
    const resource = { max_instances: "instances", max_cpus: "cpus", max_memory_mib: "memory_mib",
      max_disk_bytes: "disk_bytes", max_snapshots: "snapshots", max_networks: "networks", max_forwards: "forwards" }[key];
    const used = usage.allocated[resource] ?? 0;
    const show = (v) => v === null || v === undefined ? "-" : resource === "disk_bytes" ? size(v)
      : resource === "memory_mib" ? size(v * 1048576) : String(v);
    const meter = bar(used, limit);
    const fillBar = meter.querySelector("span");
    if (fillBar) fillBar.style.width = `${fillBar.dataset.pct}%`;
    return h("tr", {}, h("td", {}, resource), h("td", { class: "num" }, show(used)),
      h("td", { class: "num" }, show(limit)), h("td", {}, meter));
  });
  const tokenBox = h("div", {});
  const tokenName = h("input", { id: "token-name", placeholder: "laptop", required: true, "aria-label": "Token name" });
  const secret = h("div", { id: "token-secret" });
  const fillTokens = async (known) => {
    const mine = known || await get("/v1/tokens");
    clear(tokenBox).append(table(["Name", "User", "Created", "Expires", "Last used", ""], mine.map((t) =>
      h("tr", {}, h("td", {}, t.name), h("td", {}, t.user), h("td", {}, when(t.created_at)),
        h("td", {}, t.expires_at ? when(t.expires_at) : "never"), h("td", {}, when(t.last_used_at)),
        h("td", {}, t.revoked_at ? "revoked" : h("button", { type: "button", class: "danger", onclick: () => {
          if (window.confirm(`Revoke token ${t.name}? Whatever uses it stops working.`)) {
            attempt(`revoke ${t.name}`, () => del(path("tokens", t.id)), fillTokens);
          }
        } }, "Revoke"))))));
  };
  const roleOf = h("select", { "aria-label": "Role" }, ["viewer", "member", "admin"].map((r) => h("option", { value: r }, r)));
  const who = h("input", { placeholder: "user", "aria-label": "User to add" });
  view.append(h("h1", {}, `Project ${name}`),
    h("h2", {}, "Quotas and use"), table(["Resource", "Allocated", "Quota", ""], quotaRows),
    h("p", { class: "muted" }, `Measured now: CPU time ${usage.used.cpu_seconds ?? "-"} s, memory ${size(usage.used.memory_bytes)}, `
      + `resident ${size(usage.used.resident_bytes)}, disk ${size(usage.used.disk_bytes)}.`),
    h("h2", {}, "Members"),
    table(["User", "Role", ""], members.map((m) => h("tr", {}, h("td", {}, m.user), h("td", {}, m.role),
      h("td", {}, isAdmin() ? h("button", { type: "button", class: "danger", onclick: () =>
        attempt(`remove ${m.user}`, () => del(path("projects", name, "members", m.user)), () => project(clear(view))) }, "Remove") : null)))),
    isAdmin() ? h("form", { class: "inline", onsubmit: (ev) => {
      ev.preventDefault();
      attempt(`add ${who.value}`, () => call("PUT", path("projects", name, "members", who.value.trim()), { role: roleOf.value }),
        () => project(clear(view)));
    } }, who, roleOf, h("button", { type: "submit" }, "Add member")) : null,
    h("h2", {}, "Your tokens"), tokenBox,
    h("form", { class: "inline", onsubmit: async (ev) => {
      ev.preventDefault();
      try {
        const made = await post("/v1/tokens", { name: tokenName.value.trim() });
        clear(secret).append(h("p", {}, "The token, shown this once: copy it now."),
          h("div", { class: "secret" }, made.token));
        await fillTokens();
      } catch (err) {
        notify(`token: ${err.message}`, true);
      }
    } }, tokenName, h("button", { type: "submit" }, "Create token")), secret);
  await fillTokens(tokens);
}

export async function audit(view) {
  if (!isAdmin()) {
    view.append(h("h1", {}, "Audit log"), h("p", { class: "muted" }, "The audit log is for the project's admins."));
    return;
  }
  const user = h("input", { id: "audit-user", placeholder: "user", "aria-label": "Filter by user" });
  const action = h("input", { id: "audit-action", placeholder: "POST /v1/instances", "aria-label": "Filter by action" });
  const hours = h("select", { "aria-label": "Since" }, [1, 24, 168, 720].map((n) => h("option", { value: n }, `last ${n} h`)));
  const box = h("div", {});
  const fill = async () => {
    const q = new URLSearchParams({ project: session.project, limit: "200",
      since: String(Date.now() / 1000 - Number(hours.value) * 3600) });
    if (user.value.trim()) q.set("user", user.value.trim());
    if (action.value.trim()) q.set("action", action.value.trim());
    const entries = await get(`/v1/audit?${q}`);
    clear(box).append(table(["At", "User", "Action", "Target", "Result"], entries.map((e) => h("tr", {},
      h("td", {}, when(e.at)), h("td", {}, e.user), h("td", {}, e.action), h("td", {}, e.target || "-"),
      h("td", { class: e.result >= 400 ? "error" : "" }, e.result))), "Nothing recorded."));
  };
  view.append(h("h1", {}, "Audit log"),
    h("form", { class: "inline", onsubmit: (ev) => { ev.preventDefault(); fill(); } },
      user, action, hours, h("button", { type: "submit" }, "Filter")), box);
  await fill();
}

export async function host(view) {
  const info = await get("/v1/host");
  const facts = h("dl", { class: "kv card" });
  const pairs = [["Accelerator", `${info.accel} (${info.accel_reason})`], ["Store", info.store || "-"],
    ["Instances", info.instances], ["Committed", `${info.committed.cpus} vCPU, ${size(info.committed.memory_mib * 1048576)}`]];
  if (info.capacity && info.capacity.cpus) {
    pairs.push(["CPUs", `${info.capacity.cpus} (up to ${info.capacity.vcpu_limit} vCPUs)`],
      ["Memory", `${size(info.capacity.memory_mib * 1048576)} (guests up to ${size(info.capacity.memory_limit_mib * 1048576)})`]);
  }
  for (const [k, v] of pairs) facts.append(h("dt", {}, k), h("dd", {}, String(v)));
  view.append(h("h1", {}, "Host"), facts,
    h("p", { class: "muted" }, info.view === "host" ? "The whole host (you are its administrator)."
      : "What your projects commit; the host's size is its administrator's."));
}
