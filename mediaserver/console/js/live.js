// Live calls, refreshed every 2 s: age, caller transport and codec, packets and drops per leg
// (the caller's packets, the agent's frames), the agent, and a button that ends the call.

import { api, repeat } from "./api.js";
import { byId, el, showNotice } from "./dom.js";
import { formatDuration } from "./format.js";

const REFRESH_S = 2;
const rows = byId("rows");
const notice = byId("notice");
const filter = byId("live-filter");
const ending = new Set();
let lastCalls = [];
filter.value = new URLSearchParams(location.search).get("q") || "";

// What the filter looks in: the call id, its metadata, how each leg is carried, the agent's URL.
function searchableText(call) {
  const caller = call.legs.caller;
  const agent = call.legs.agent;
  return [call.call_id, JSON.stringify(call.metadata || {}), caller.kind, call.caller_codec, agent.kind, agent.url]
    .filter(Boolean)
    .join("\n")
    .toLowerCase();
}

function matching(calls) {
  const words = filter.value.trim().toLowerCase().split(/\s+/).filter(Boolean);
  return calls.filter((call) => words.every((word) => searchableText(call).includes(word)));
}

function renderRow(call, nowMs) {
  const caller = call.legs.caller;
  const agent = call.legs.agent;
  const ageS = (nowMs - call.created_at_ns / 1e6) / 1000;
  const cell = (label, content, extra = {}) => el("td", { "data-label": label, ...extra }, content);
  const agentText = agent.connected ? `${agent.kind || "connected"}` : agent.open ? "waiting" : "gone";
  const callerText = [caller.kind || (caller.connected ? "connected" : "waiting"), call.caller_codec].join(" / ");
  const button = el("button", {
    type: "button",
    class: "danger",
    "data-testid": "end-call",
    disabled: ending.has(call.call_id),
    onclick: () => endCall(call.call_id, button),
  }, ending.has(call.call_id) ? "Ending…" : "End call");
  return el(
    "tr",
    { "data-testid": "live-call-row", "data-call-id": call.call_id },
    cell("Call", el("code", { title: call.call_id }, call.call_id)),
    cell("Age", formatDuration(ageS), { class: "num" }),
    cell("Caller", callerText),
    cell("Caller packets", String(caller.packets), { class: "num" }),
    cell("Caller dropped", String(caller.dropped || 0), { class: "num", "data-field": "caller-dropped" }),
    cell("Agent", agentText),
    cell("Agent frames", String(agent.frames_played), { class: "num" }),
    cell("Agent dropped", String(agent.dropped || 0), { class: "num", "data-field": "agent-dropped" }),
    cell("", button),
  );
}

async function endCall(callId, button) {
  ending.add(callId);
  button.disabled = true;
  button.textContent = "Ending…";
  try {
    await api(`/v1/calls/${encodeURIComponent(callId)}`, { method: "DELETE", accept: [404] });
    showNotice(notice, `Call ${callId} ended; its recording is being stored.`);
  } catch (error) {
    ending.delete(callId);
    showNotice(notice, `Call ${callId} could not be ended: ${error.message}`, { error: true });
  }
  await refresh();
}

function render(now) {
  const calls = lastCalls;
  const shown = matching(calls);
  // Rows are rebuilt: keep the keyboard focus on the same call's button.
  const focused = document.activeElement && document.activeElement.closest("tr[data-call-id]");
  const focusedId = focused ? focused.dataset.callId : null;
  rows.replaceChildren(...shown.map((call) => renderRow(call, now)));
  if (focusedId) {
    const again = rows.querySelector(`tr[data-call-id="${CSS.escape(focusedId)}"] button`);
    if (again) again.focus();
  }
  byId("empty").hidden = calls.length > 0;
  const total = calls.length === 1 ? "1 call" : `${calls.length} calls`;
  byId("count").textContent = shown.length === calls.length ? total : `${total}, ${shown.length} shown`;
}

async function refresh() {
  try {
    const { body } = await api("/v1/calls");
    const now = Date.now();
    lastCalls = [...body.calls].sort((a, b) => b.created_at_ns - a.created_at_ns);
    render(now);
    for (const callId of [...ending]) if (!lastCalls.some((call) => call.call_id === callId)) ending.delete(callId);
    byId("updated").textContent = `updated ${new Date(now).toLocaleTimeString()}`;
  } catch (error) {
    showNotice(notice, error.message, { error: true });
  }
}

filter.addEventListener("input", () => {
  const params = new URLSearchParams(location.search);
  if (filter.value.trim()) params.set("q", filter.value.trim());
  else params.delete("q");
  history.replaceState(null, "", params.toString() ? "?" + params : location.pathname);
  render(Date.now());
});

repeat(refresh, REFRESH_S);
