// The recordings page: newest first, filtered, paginated; analysis figures filled in per row.

import { api, can, whoami } from "./api.js";
import { byId, el, showNotice } from "./dom.js";
import { formatDuration, formatLocalTime, formatPercent, formatSeconds } from "./format.js";
import { fetchJob, jobState } from "./jobs.js";

const FILTERS = ["from", "to", "status", "end_reason", "q", "min_duration_s"];
const PAGE_SIZE = 25;
const ANALYSIS_CONCURRENCY = 4;
const REFRESH_S = 5;
let refreshTimer = null;
const form = byId("filters");
const rows = byId("rows");
const notice = byId("notice");
const cursors = []; // cursors of the pages before this one, for "Newer"
let currentCursor = null;
let nextCursor = null;
let loadToken = 0;
const deletedId = new URLSearchParams(location.search).get("deleted");

function readFilters() {
  const params = new URLSearchParams(location.search);
  for (const name of FILTERS) {
    const field = form.elements[name];
    const value = params.get(name) || "";
    field.value = name === "from" || name === "to" ? toLocalInput(value) : value;
  }
}

// The API wants ISO 8601 instants; datetime-local fields hold local wall time.
function toIso(localValue) {
  const moment = new Date(localValue);
  return Number.isNaN(moment.getTime()) ? "" : moment.toISOString();
}

function toLocalInput(iso) {
  const moment = new Date(iso);
  if (!iso || Number.isNaN(moment.getTime())) return "";
  const shifted = new Date(moment.getTime() - moment.getTimezoneOffset() * 60000);
  return shifted.toISOString().slice(0, 19);
}

function filterParams() {
  const params = new URLSearchParams();
  for (const name of FILTERS) {
    const raw = form.elements[name].value.trim();
    const value = name === "from" || name === "to" ? (raw ? toIso(raw) : "") : raw;
    if (value) params.set(name, value);
  }
  return params;
}

async function load(cursor, { quiet = false } = {}) {
  if (quiet && document.activeElement && form.contains(document.activeElement)) {
    refreshTimer = setTimeout(() => load(cursor, { quiet: true }), REFRESH_S * 1000);
    return; // someone is typing a filter: do not redraw under them
  }
  const token = ++loadToken;
  const params = filterParams();
  history.replaceState(null, "", params.toString() ? "?" + params : location.pathname);
  params.set("limit", String(PAGE_SIZE));
  if (cursor) params.set("cursor", cursor);
  if (!quiet) showNotice(notice, deletedMessage());
  try {
    const { body } = await api("/v1/recordings?" + params);
    if (token !== loadToken) return;
    currentCursor = cursor;
    nextCursor = body.next_cursor;
    render(body.items);
  } catch (error) {
    if (token === loadToken) showNotice(notice, error.message, { error: true });
  }
}

function deletedMessage() {
  return deletedId ? `Recording ${deletedId} was deleted.` : "";
}

function render(items) {
  rows.replaceChildren(...items.map(renderRow));
  byId("empty").hidden = items.length > 0;
  byId("older").disabled = !nextCursor;
  byId("newer").disabled = cursors.length === 0;
  fillAnalysis(items);
  // Recordings still being made, or with jobs still running, are looked at again shortly.
  clearTimeout(refreshTimer);
  if (items.some(isUnsettled)) refreshTimer = setTimeout(() => load(currentCursor, { quiet: true }), REFRESH_S * 1000);
}

function isUnsettled(item) {
  const jobs = Object.values(item.jobs || {});
  return ["recording", "finalizing"].includes(item.status) || jobs.some((s) => s === "queued" || s === "processing");
}

function renderRow(item) {
  const stored = item.status === "stored" || item.status === "recovered";
  // While the analysis is pending or missing, its columns say so; completed ones are filled in.
  const analysis = stored ? jobState(item, "analysis") || "—" : "—";
  const pending = analysis === "completed" ? "…" : analysis;
  const link = el("a", { class: "nowrap", href: `/recordings/${encodeURIComponent(item.call_id)}` }, formatLocalTime(item.created_at));
  const status = stored ? null : el("span", { class: `badge ${item.status}` }, item.status.replace("_", " "));
  const cell = (label, content, extra = {}) => el("td", { "data-label": label, ...extra }, content);
  const transcript = jobState(item, "transcript");
  return el(
    "tr",
    { "data-testid": "recordings-row", "data-recording-id": item.call_id },
    cell("Start", el("div", {}, link, " ", status, el("div", { class: "muted mono small" }, item.call_id.slice(0, 10)))),
    cell("Duration", formatDuration(item.duration_ms / 1000), { class: "num" }),
    cell("Caller", callerDescription(item)),
    cell("End reason", item.end_reason || "—"),
    cell("Talk ratio", pending, { "data-field": "talk" }),
    cell("Median response", pending, { class: "num", "data-field": "latency" }),
    cell("Interruptions", pending, { class: "num", "data-field": "interruptions" }),
    cell("Transcript", transcript ? el("span", { class: `badge ${transcript}` }, transcript) : "—"),
  );
}

// From the call's record of its caller leg (stored recordings); a call still recording has only
// its channel codec.
function callerDescription(item) {
  const caller = (item.legs && item.legs.caller) || {};
  const transport = caller.transport || null;
  const codec = caller.codec || (item.codecs && item.codecs.caller) || null;
  return [transport, codec].filter(Boolean).join(" / ") || "—";
}

// The figures come from each recording's analysis document, read for completed analyses only.
async function fillAnalysis(items) {
  const queue = items.filter((item) => jobState(item, "analysis") === "completed");
  const workers = Array.from({ length: ANALYSIS_CONCURRENCY }, async () => {
    while (queue.length) {
      const item = queue.shift();
      fillRow(item.call_id, await fetchJob(item.call_id, "analysis").catch(() => ({ state: "unavailable" })));
    }
  });
  await Promise.all(workers);
}

function fillRow(callId, analysis) {
  const row = rows.querySelector(`tr[data-recording-id="${CSS.escape(callId)}"]`);
  if (!row) return;
  const set = (field, content) => {
    const cell = row.querySelector(`[data-field="${field}"]`);
    if (cell) cell.replaceChildren(content);
  };
  const doc = analysis.state === "completed" ? analysis.document : null;
  if (doc) {
    const channels = doc.channels || {};
    const ratio = (side) => (channels[side] ? channels[side].talk_ratio : null);
    set(
      "talk",
      el("span", { class: "ratios" },
        el("span", { class: "side-caller" }, `caller ${formatPercent(ratio("caller"))}`),
        el("span", { class: "side-agent" }, `agent ${formatPercent(ratio("agent"))}`)),
    );
    const latency = doc.response_latency_s || {};
    set("latency", formatSeconds(latency.p50));
    set("interruptions", String((doc.interruptions || []).length));
  } else {
    for (const field of ["talk", "latency", "interruptions"]) set(field, "—");
  }
}

form.addEventListener("submit", (event) => {
  event.preventDefault();
  cursors.length = 0;
  load(null);
});
byId("clear-filters").addEventListener("click", () => {
  form.reset();
  cursors.length = 0;
  load(null);
});
byId("older").addEventListener("click", () => {
  if (!nextCursor) return;
  cursors.push(currentCursor);
  load(nextCursor);
});
byId("newer").addEventListener("click", () => {
  if (!cursors.length) return;
  load(cursors.pop());
});

async function start() {
  if (!(await can("recordings:read"))) {
    const me = await whoami();
    showNotice(notice, `The token ${me.name} cannot read recordings (it has: ${me.scopes.join(", ")}).`);
    form.hidden = true;
    byId("recordings").hidden = true;
    byId("older").closest("nav").hidden = true;
    return;
  }
  readFilters();
  load(null);
}

start().catch((error) => showNotice(notice, error.message, { error: true }));
