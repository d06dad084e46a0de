// Instances: the live list, the launch form, an instance's page and its pop-out console.

import { ApiError, call, del, finish, get, path, post, session } from "./api.js";
import { canAct } from "./app.js";
import { drawLines } from "./chart.js";
import { openConsole, popOutButton } from "./console.js";
import { clear, h, notify, size, stateBadge, table, when } from "./dom.js";
import { onEvent } from "./events.js";

function addresses(inst) {
  return inst.nics.map((n) => n.ip).filter(Boolean).join(", ") || "-";
}

// Run an action that answers with an operation; report how it ended.
async function act(label, fn, after = () => {}) {
  try {
    const answer = await fn();
    if (answer && answer.operation) await finish(answer.operation);
    else if (answer && answer.id && answer.kind && answer.status) await finish(answer);
    notify(`${label}: done`);
  } catch (err) {
    notify(`${label}: ${err.message}`, true);
  }
  after();
}

function actions(inst, refresh) {
  if (!canAct()) return h("span", { class: "muted" }, "view only");
  const ref = inst.id, name = inst.name;
  const running = ["running", "starting", "paused"].includes(inst.state);
  const b = (label, handler, cls = "", enabled = true) =>
    h("button", { type: "button", class: cls, disabled: !enabled, dataset: { action: label.toLowerCase() },
      "aria-label": `${label} ${name}`, onclick: handler }, label);
  return h("div", { class: "actions" },
    b("Start", () => act(`start ${name}`, () => post(path("instances", ref, "start")), refresh), "", !running),
    b("Stop", () => act(`stop ${name}`, () => post(path("instances", ref, "stop")), refresh), "", running),
    b("Restart", () => act(`restart ${name}`, () => post(path("instances", ref, "restart")), refresh), "", running),
    b("Snapshot", () => {
      const snap = window.prompt(`Name of the new snapshot of ${name}`, `snap-${Date.now() % 100000}`);
      if (snap) act(`snapshot ${name}`, () => post(path("instances", ref, "snapshots"), { name: snap }), refresh);
    }),
    b("Clone", () => {
      const copy = window.prompt(`Name of the clone of ${name} (a disk snapshot is taken first and kept)`);
      if (!copy) return;
      act(`clone ${name}`, async () => {
        const op = await post(path("instances", ref, "snapshots"), { name: `for-${copy}` });
        if (op.operation || op.status) await finish(op.operation || op);
        return post(path("instances", ref, "snapshots", `for-${copy}`, "clone"), { name: copy });
      }, refresh);
    }),
    b("Delete", () => {
      if (window.confirm(`Delete ${name} and its disks? This cannot be undone.`)) {
        act(`delete ${name}`, () => del(`${path("instances", ref)}?force=true`), refresh);
      }
    }, "danger"));
}

export async function list(view) {
  const body = h("tbody", {});
  const holder = h("div", {});
  view.append(h("h1", {}, "Instances"),
    canAct() ? h("p", {}, h("a", { href: "#/launch" }, "Launch an instance")) : null, holder);
  let rows = new Map();
  let timer = null;
  const refresh = async () => {
    const items = await get("/v1/instances");
    rows = new Map();
    clear(body);
    for (const inst of items) {
      const usage = inst.usage && inst.state === "running" ? inst.usage : null;
      const row = h("tr", { dataset: { instance: inst.name } },
        h("td", {}, h("a", { href: `#/instances/${encodeURIComponent(inst.id)}` }, inst.name)),
        h("td", {}, inst.type),
        h("td", { class: "state-cell" }, stateBadge(inst.state)),
        h("td", {}, addresses(inst)),
        h("td", { class: "num" }, usage && usage.cpu_percent !== null ? `${usage.cpu_percent.toFixed(1)} %` : "-"),
        h("td", { class: "num" }, usage ? size(usage.memory_bytes) : "-"),
        h("td", {}, `${inst.cpus} vCPU, ${size(inst.memory_mib * 1048576)}`),
        h("td", {}, inst.image),
        h("td", {}, actions(inst, () => schedule())));
      rows.set(inst.id, row);
      body.append(row);
    }
    clear(holder).append(items.length
      ? h("table", {}, h("thead", {}, h("tr", {}, ["Name", "Type", "State", "Address", "CPU", "Memory",
        "Size", "Image", "Actions"].map((c) => h("th", { scope: "col" }, c)))), body)
      : h("p", { class: "muted" }, "No instances in this project."));
  };
  const schedule = () => { clearTimeout(timer); timer = setTimeout(() => refresh().catch(() => {}), 250); };
  await refresh();
  const stop = onEvent((ev) => {
    if (ev.kind === "gap") return schedule();
    if (ev.kind !== "instance") return;
    const row = rows.get(ev.instance_id);
    if (row && ev.state) clear(row.querySelector(".state-cell")).append(stateBadge(ev.state));
    schedule();
  });
  const poll = setInterval(schedule, 15000);  // CPU and memory figures move without events
  return () => { stop(); clearInterval(poll); clearTimeout(timer); };
}

export async function launchForm(view) {
  view.append(h("h1", {}, "Launch an instance"));
  if (!canAct()) {
    view.append(h("p", { class: "muted" }, "Your role in this project is viewer: you cannot launch."));
    return;
  }
  const [images, networks, secgroups, keypairs] = await Promise.all([
    get("/v1/images"), get("/v1/networks"), get("/v1/secgroups"), get("/v1/keypairs"),
  ]);
  const field = (id, label, input) => [h("label", { for: id }, label), input];
  const image = h("select", { id: "f-image", required: true },
    images.map((i) => h("option", { value: i.name }, `${i.name} (${i.version})`)));
  const name = h("input", { id: "f-name", required: true, pattern: "[a-z0-9][a-z0-9\\-]{0,62}",
    placeholder: "web1", autocomplete: "off" });
  const cpus = h("input", { id: "f-cpus", type: "number", min: 1, max: 64, value: 1 });
  const memory = h("input", { id: "f-memory", type: "number", min: 64, step: 64, value: 256 });
  const disk = h("input", { id: "f-disk", type: "number", min: 0.1, step: 0.1, placeholder: "the image's" });
  const nets = h("select", { id: "f-networks", multiple: true, size: Math.min(4, networks.length || 1) },
    networks.map((n) => h("option", { value: n.name, selected: n.name === "default" }, `${n.name} ${n.subnet}`)));
  const groups = h("select", { id: "f-secgroups", multiple: true, size: Math.min(4, secgroups.length || 1) },
    secgroups.map((g) => h("option", { value: g.name, selected: g.name === "default" }, g.name)));
  const keypair = h("select", { id: "f-keypair" }, h("option", { value: "" }, "(none)"),
    keypairs.map((k) => h("option", { value: k.name }, `${k.name} ${k.fingerprint}`)));
  const sshKey = h("textarea", { id: "f-sshkey", rows: 2, placeholder: "ssh-ed25519 AAAA... (optional)" });
  const userData = h("textarea", { id: "f-userdata", placeholder: "#cloud-config (optional)" });
  const kind = h("select", { id: "f-type" }, h("option", { value: "vm" }, "Virtual machine"),
    h("option", { value: "container" }, "System container"));
  const progress = h("div", { class: "progress", id: "launch-progress", role: "log", "aria-live": "polite" });
  const submit = h("button", { type: "submit", class: "primary" }, "Launch");
  const form = h("form", { class: "grid card", onsubmit: async (ev) => {
    ev.preventDefault();
    submit.disabled = true;
    clear(progress);
    const chosen = (sel) => [...sel.selectedOptions].map((o) => o.value);
    const body = {
      name: name.value.trim(), image: image.value, cpus: Number(cpus.value),
      memory_mib: Number(memory.value), networks: chosen(nets), secgroups: chosen(groups),
      container: kind.value === "container",
    };
    if (disk.value) body.disk_gib = Number(disk.value);
    if (keypair.value) body.keypairs = [keypair.value];
    if (sshKey.value.trim()) body.ssh_keys = [sshKey.value.trim()];
    if (userData.value.trim()) body.user_data = userData.value;
    try {
      const answer = await post("/v1/instances", body);
      progress.append(h("div", {}, `launching ${answer.instance.name} (${answer.instance.id})`));
      await finish(answer.operation, (message) => progress.append(h("div", {}, message)));
      progress.append(h("div", {}, "running"));
      window.location.hash = `#/instances/${encodeURIComponent(answer.instance.id)}`;
    } catch (err) {
      progress.append(h("div", { class: "error", role: "alert" }, err.message));
    } finally {
      submit.disabled = false;
    }
  } },
  field("f-image", "Image", image), field("f-name", "Name", name), field("f-type", "Type", kind),
  field("f-cpus", "vCPUs", cpus), field("f-memory", "Memory (MiB)", memory),
  field("f-disk", "Disk (GiB)", disk), field("f-networks", "Networks", nets),
  field("f-secgroups", "Security groups", groups), field("f-keypair", "Key pair", keypair),
  field("f-sshkey", "SSH public key", sshKey), field("f-userdata", "User data", userData),
  h("div", { class: "wide" }, submit), h("div", { class: "wide" }, progress));
  view.append(form);
  name.focus();
}

function graphs(ref) {
  const specs = [
    ["CPU", [["cpu_percent", "CPU %", "#2457c5"]], (v) => `${v.toFixed(0)} %`],
    ["Memory", [["memory_bytes", "host RSS", "#7a3fb0"], ["guest_memory_used_bytes", "guest used", "#1b7f3b"]], size],
    ["Disk", [["disk_read_bps", "read/s", "#2457c5"], ["disk_write_bps", "write/s", "#b3261e"]], size],
    ["Network", [["net_rx_bps", "rx/s", "#2457c5"], ["net_tx_bps", "tx/s", "#a15c00"]], size],
  ];
  const canvases = specs.map(() => h("canvas", { role: "img" }));
  const box = h("div", { class: "graphs" }, specs.map(([title], i) =>
    h("div", { class: "graph card" }, h("h3", {}, title), canvases[i])));
  const draw = async () => {
    const data = await get(`${path("instances", ref, "metrics")}`);
    specs.forEach(([title, lines, unit], i) => {
      canvases[i].setAttribute("aria-label", `${title} over the last hour`);
      drawLines(canvases[i], lines.map(([key, label, color]) => ({
        label, color, points: data.points.map((p) => [p.t, p[key]]),
      })), { unit });
    });
  };
  return { box, draw };
}

export async function detail(view, ref) {
  let inst;
  try {
    inst = await get(path("instances", ref));
  } catch (err) {
    view.append(h("h1", {}, "Instance"), h("p", { class: "error" }, err.message));
    return;
  }
  const title = h("h1", {}, inst.name, " ", h("span", { id: "detail-state" }, stateBadge(inst.state)));
  const actionsBox = h("div", {}, actions(inst, () => reload()));
  const facts = h("dl", { class: "kv card" });
  const timeline = h("div", {});
  const snapshots = h("div", {});
  const network = h("div", {});
  const logBox = h("pre", { class: "log", id: "console-log" });
  const { box: graphBox, draw } = graphs(inst.id);
  const termBox = h("div", { class: "terminal-box", id: "terminal" });
  const termStatus = h("span", { class: "muted", id: "terminal-status" }, "");
  let term = null;

  const fillFacts = () => {
    clear(facts);
    const pairs = [["ID", inst.id], ["Type", inst.type], ["Image", `${inst.image} ${inst.image_version}`],
      ["Size", `${inst.cpus} vCPU, ${size(inst.memory_mib * 1048576)}, disk ${inst.disk_gib} GiB`],
      ["Addresses", addresses(inst)], ["Accelerator", inst.accel || "-"],
      ["Security groups", inst.secgroups.join(", ") || "-"], ["Created", when(inst.created_at)],
      ["Reason", inst.state_reason || "-"]];
    for (const [k, v] of pairs) facts.append(h("dt", {}, k), h("dd", {}, v));
    clear(timeline).append(table(["Boot event", "At", "Since previous"], inst.boot.phases.map((p) =>
      h("tr", {}, h("td", {}, p.event), h("td", {}, p.at ? new Date(p.at * 1000).toLocaleTimeString() : "-"),
        h("td", { class: "num" }, p.since_previous_s !== null ? `${p.since_previous_s.toFixed(2)} s` : "-")))),
    h("p", { class: "muted" }, inst.boot.total_s ? `ready in ${inst.boot.total_s.toFixed(2)} s` : ""));
  };
  const fillSnapshots = async () => {
    const snaps = await get(path("instances", inst.id, "snapshots"));
    const rows = snaps.map((s) => h("tr", { dataset: { snapshot: s.name } },
      h("td", {}, s.name), h("td", {}, s.memory ? "disk + memory" : "disk"), h("td", {}, s.consistency),
      h("td", { class: "num" }, size(s.size_bytes)), h("td", {}, when(s.created_at)),
      h("td", {}, canAct() ? h("div", { class: "actions" },
        h("button", { type: "button", onclick: () => {
          if (window.confirm(`Restore ${inst.name} to ${s.name}? (a running VM restarts on a disk snapshot)`)) {
            act(`restore ${s.name}`, () => post(`${path("instances", inst.id, "snapshots", s.id, "restore")}?restart=true`), reload);
          }
        } }, "Restore"),
        h("button", { type: "button", onclick: () => {
          const copy = window.prompt(`Name of the clone from ${s.name}`);
          if (copy) act(`clone ${s.name}`, () => post(path("instances", inst.id, "snapshots", s.id, "clone"), { name: copy }), reload);
        } }, "Clone"),
        h("button", { type: "button", class: "danger", onclick: () => {
          if (window.confirm(`Delete snapshot ${s.name}?`)) act(`delete ${s.name}`, () => del(path("instances", inst.id, "snapshots", s.id)), reload);
        } }, "Delete")) : null)));
    const snapName = h("input", { id: "snap-name", placeholder: "before-upgrade", required: true, "aria-label": "Snapshot name" });
    const withMemory = h("input", { id: "snap-memory", type: "checkbox" });
    clear(snapshots).append(table(["Name", "Kind", "Consistency", "Size", "Taken", ""], rows, "No snapshots."),
      canAct() ? h("form", { class: "inline", onsubmit: (ev) => {
        ev.preventDefault();
        act(`snapshot ${snapName.value}`, () => post(path("instances", inst.id, "snapshots"),
          { name: snapName.value.trim(), memory: withMemory.checked }), reload);
      } }, snapName, h("label", {}, withMemory, " with memory"),
      h("button", { type: "submit" }, "Take snapshot"),
      h("button", { type: "button", onclick: () => exportBackup(inst) }, "Export backup"),
      h("button", { type: "button", onclick: () => {
        const image = window.prompt(`Name of the image of ${inst.name} (your project's own)`);
        if (image) act(`image ${image}`, () => post("/v1/images", { name: image.trim(), instance: inst.id }), reload);
      } }, "Make image")) : null);
  };
  const fillNetwork = async () => {
    const [nics, forwards] = await Promise.all([
      get(path("instances", inst.id, "nics")), get(path("instances", inst.id, "forwards"))]);
    const mapping = h("input", { id: "fwd-mapping", placeholder: "8080:80", "aria-label": "Forward HOSTPORT:GUESTPORT" });
    clear(network).append(
      table(["NIC", "Network", "MAC", "Address"], nics.map((n) => h("tr", {},
        h("td", {}, `nic${n.slot}`), h("td", {}, n.network), h("td", {}, n.mac), h("td", {}, n.ip)))),
      h("h3", {}, "Port forwards"),
      table(["Host", "Guest", ""], forwards.map((f) => h("tr", {}, h("td", {}, f.host), h("td", {}, f.guest),
        h("td", {}, canAct() ? h("button", { type: "button", class: "danger", onclick: () =>
          act("remove forward", () => del(path("instances", inst.id, "forwards", f.id)), reload) }, "Remove") : null))),
      "No forwards."),
      canAct() ? h("form", { class: "inline", onsubmit: (ev) => {
        ev.preventDefault();
        act("add forward", () => post(path("instances", inst.id, "forwards"), { mapping: mapping.value.trim() }), reload);
      } }, mapping, h("button", { type: "submit" }, "Add forward")) : null);
  };
  const fillLog = async () => {
    try {
      logBox.textContent = await get(`${path("instances", inst.id, "console", "log")}?tail_bytes=16384`);
      logBox.scrollTop = logBox.scrollHeight;  // the latest lines, as a terminal shows them
    } catch (err) {
      logBox.textContent = err instanceof ApiError && err.status === 403 ? "(members only)" : err.message;
    }
  };
  const reload = async () => {
    try {
      inst = await get(path("instances", inst.id));
    } catch (err) {
      if (err.status === 404) { window.location.hash = "#/instances"; return; }
      throw err;
    }
    clear(title.querySelector("#detail-state")).append(stateBadge(inst.state));
    clear(actionsBox).append(actions(inst, () => reload()));
    fillFacts();
    await Promise.all([fillSnapshots(), fillNetwork()]);
  };

  view.append(title, actionsBox, facts,
    h("h2", {}, "Use over the last hour"), graphBox,
    h("h2", {}, "Serial console"),
    canAct() ? h("div", {}, h("div", { class: "actions" },
      h("button", { type: "button", id: "console-connect", onclick: () => {
        if (term) term.close();
        term = openConsole(termBox, inst.id, { status: (s) => { termStatus.textContent = s; } });
      } }, "Connect"), popOutButton(inst.id), termStatus), termBox,
    h("h3", {}, "Console log ", h("button", { type: "button", onclick: fillLog }, "Refresh")), logBox)
      : h("p", { class: "muted" }, "The console is for members."),
    h("h2", {}, "Snapshots and backups"), snapshots,
    h("h2", {}, "NICs and forwards"), network,
    h("h2", {}, "Boot timeline"), timeline);
  fillFacts();
  await Promise.all([fillSnapshots(), fillNetwork(), draw().catch(() => {}), canAct() ? fillLog() : null]);
  if (canAct() && inst.state === "running") {
    term = openConsole(termBox, inst.id, { status: (s) => { termStatus.textContent = s; } });
  }
  const stop = onEvent((ev) => {
    if (ev.kind === "instance" && ev.instance_id === inst.id) {
      if (ev.change === "deleted") { window.location.hash = "#/instances"; return; }
      clear(title.querySelector("#detail-state")).append(stateBadge(ev.state));
      reload().catch(() => {});
    }
  });
  const redraw = setInterval(() => draw().catch(() => {}), 10000);
  return () => { stop(); clearInterval(redraw); if (term) term.close(); };
}

async function exportBackup(inst) {
  notify(`exporting ${inst.name}: the archive downloads when it is written`);
  try {
    const resp = await call("POST", path("instances", inst.id, "backup"), {}, { raw: true });
    const blob = await resp.blob();
    const link = h("a", { href: URL.createObjectURL(blob), download: `${inst.name}.gbk` });
    document.body.append(link);
    link.click();
    link.remove();
  } catch (err) {
    notify(`export ${inst.name}: ${err.message}`, true);
  }
}

export async function consoleOnly(view, ref) {
  document.getElementById("top").hidden = true;
  const status = h("span", { class: "muted" }, "");
  const box = h("div", { class: "terminal-box full", id: "terminal" });
  view.append(h("div", {}, h("strong", {}, ref), " ", status), box);
  const term = openConsole(box, ref, { status: (s) => { status.textContent = s; } });
  return () => { term.close(); document.getElementById("top").hidden = false; };
}

export { session };
