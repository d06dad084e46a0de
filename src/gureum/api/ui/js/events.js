// The live event stream (/v1/events): one WebSocket for the page, resumed from the last event
// seen after a disconnect, its events handed to whoever listens (the instance list, a page).

import { socket } from "./api.js";

const listeners = new Set();
let ws = null;
let stream = null;
let after = null;
let wanted = false;
let retry = null;

export function onEvent(fn) {
  listeners.add(fn);
  return () => listeners.delete(fn);
}

export function connect() {
  wanted = true;
  if (ws) return;
  ws = socket("/v1/events", stream ? { stream, after } : {});
  ws.onmessage = (msg) => {
    const said = JSON.parse(msg.data);
    if (said.error) { wanted = false; return; }
    if ("position" in said) {
      if (after === null || said.stream !== stream) after = said.position;
      stream = said.stream;
      if (said.gap) for (const fn of listeners) fn({ kind: "gap" });
      return;
    }
    if (said.end) return;
    after = said.seq;
    said.received = performance.now();
    for (const fn of listeners) fn(said);
  };
  ws.onclose = () => {
    ws = null;
    if (wanted) retry = setTimeout(connect, 1000);
  };
}

// A new project: a new stream (positions are per subscription's project only).
export function restart() {
  disconnect();
  stream = null;
  after = null;
  connect();
}

export function disconnect() {
  wanted = false;
  clearTimeout(retry);
  if (ws) ws.close();
  ws = null;
}
