// The serial console in the browser: xterm.js over the console WebSocket (binary frames both
// ways, raw bytes), fitted to its box, with paste (xterm's own) and a pop-out window.

import { socket, path } from "./api.js";
import { h } from "./dom.js";

export function openConsole(box, instance, { status = () => {} } = {}) {
  const term = new window.Terminal({ convertEol: false, cursorBlink: true, scrollback: 5000,
    fontSize: 14, fontFamily: "ui-monospace, Menlo, Consolas, monospace" });
  const fit = new window.FitAddon.FitAddon();
  term.loadAddon(fit);
  term.open(box);
  fit.fit();
  const ws = socket(path("instances", instance, "console").replace("/v1/", "/v1/"));
  ws.binaryType = "arraybuffer";
  const encoder = new TextEncoder();
  ws.onopen = () => { status("connected"); term.focus(); };
  ws.onmessage = (msg) => {
    if (typeof msg.data === "string") {
      try {
        const said = JSON.parse(msg.data);
        if (said.error) { status(`refused: ${said.error.message}`); return; }
      } catch (_) { /* text output */ }
      term.write(msg.data);
    } else {
      term.write(new Uint8Array(msg.data));
    }
  };
  ws.onclose = (ev) => status(ev.code >= 4000 ? `closed (${ev.code - 4000})` : "disconnected");
  const typed = term.onData((data) => {
    if (ws.readyState === WebSocket.OPEN) ws.send(encoder.encode(data));
  });
  const resize = () => fit.fit();
  window.addEventListener("resize", resize);
  return {
    term,
    close() {
      typed.dispose();
      window.removeEventListener("resize", resize);
      ws.close();
      term.dispose();
    },
  };
}

export function popOutButton(instance) {
  return h("button", { type: "button", onclick: () => {
    window.open(`/ui/#/console/${encodeURIComponent(instance)}`, `console-${instance}`,
      "popup,width=900,height=560");
  } }, "Pop out");
}
