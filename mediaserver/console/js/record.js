// The technical record from the manifest: the call, each channel's placement statistics, the
// files, and whatever else the manifest carries (legs, events...), shown generically.

import { el } from "./dom.js";
import { formatBytes, formatLocalTime, humanize } from "./format.js";

const SHOWN = new Set([
  "call_id", "status", "created_at", "ended_at", "media_started_at", "duration_ms", "stereo_mode",
  "end_reason", "notes", "storage", "channels", "files", "version", "links", "jobs",
]);

function valueText(value) {
  if (value === null || value === undefined || value === "") return "—";
  if (typeof value === "number") return Number.isInteger(value) ? String(value) : String(Number(value.toFixed(3)));
  if (typeof value === "object") return JSON.stringify(value);
  return String(value);
}

function definitions(entries) {
  return el("dl", { class: "record" }, ...entries.flatMap(([term, value]) => [
    el("dt", {}, term),
    el("dd", {}, value instanceof Node ? value : valueText(value)),
  ]));
}

// The counters an operator looks at first; the rest sit behind "All counters".
const MAIN_STATS = [
  "packets", "placed", "lost", "duplicates", "reordered", "late_dropped", "malformed",
  "ssrc_changes", "timestamp_jumps", "drift_ppm", "drift_corrections", "silence_inserted_ms",
  "audio_dropped_ms",
];

function channelTables(channels) {
  const keys = [...new Set(channels.flatMap((channel) => Object.keys(channel.stats || {})))];
  const main = MAIN_STATS.filter((key) => keys.includes(key));
  const rest = keys.filter((key) => !main.includes(key));
  return [
    channelTable(channels, main),
    rest.length ? el("details", {}, el("summary", {}, "All counters"), channelTable(channels, rest)) : null,
  ];
}

function channelTable(channels, keys) {
  return el("div", { class: "table-wrap" }, el("table", { class: "record-table" },
    el("thead", {}, el("tr", {},
      el("th", { scope: "col" }, "Placement"),
      ...channels.map((channel) => el("th", { scope: "col", class: "num" },
        `${humanize(channel.channel)} (${channel.side}, ${channel.codec})`)))),
    el("tbody", {}, ...keys.map((key) => el("tr", {},
      el("td", {}, humanize(key)),
      ...channels.map((channel) => el("td", { class: "num" }, valueText((channel.stats || {})[key]))))))));
}

function filesTable(files) {
  const cell = (label, content, extra = {}) => el("td", { "data-label": label, ...extra }, content);
  return el("div", { class: "table-wrap" }, el("table", { class: "record-table cards" },
    el("thead", {}, el("tr", {}, ...["File", "Role", "Size", "SHA-256"].map((name) => el("th", { scope: "col" }, name)))),
    el("tbody", {}, ...files.map((file) => el("tr", {},
      cell("File", el("code", { title: file.key || file.name }, (file.key || file.name).split("/").pop()), { class: "file" }),
      cell("Role", file.role),
      cell("Size", formatBytes(file.size_bytes), { class: "num" }),
      cell("SHA-256", el("code", { title: file.sha256 }, (file.sha256 || "").slice(0, 16) + "…")))))));
}

// Post-call jobs: one row each; the status cell is updated while the page polls the job.
function jobsTable(jobs) {
  const rows = Object.entries(jobs || {});
  if (!rows.length) return null;
  const cell = (label, content, extra = {}) => el("td", { "data-label": label, ...extra }, content);
  return [
    el("h3", {}, "Jobs"),
    el("div", { class: "table-wrap" }, el("table", { class: "record-table cards" },
      el("thead", {}, el("tr", {}, ...["Job", "Status", "Attempts", "Updated", "Parameters"].map(
        (name) => el("th", { scope: "col" }, name)))),
      el("tbody", {}, ...rows.map(([kind, job]) => el("tr", {},
        cell("Job", humanize(kind)),
        cell("Status", el("span", { class: `badge ${job.status}`, id: `job-status-${kind}` }, job.status)),
        cell("Attempts", valueText(job.attempts), { class: "num" }),
        cell("Updated", formatLocalTime(job.updated_at)),
        cell("Parameters", Object.entries(job.params || {}).filter(([, v]) => v).map(([k, v]) => `${k} ${v}`).join(", ")
          + (job.error ? ` — ${job.error.message}` : "") || "—")))))),
  ];
}

export function renderRecord(container, manifest) {
  const storage = manifest.storage || {};
  const general = definitions([
    ["Call id", el("code", {}, manifest.call_id)],
    ["Status", manifest.status],
    ["Created", formatLocalTime(manifest.created_at)],
    ["Media started", formatLocalTime(manifest.media_started_at)],
    ["Ended", formatLocalTime(manifest.ended_at)],
    ["Duration", `${((manifest.duration_ms || 0) / 1000).toFixed(3)} s`],
    ["End reason", manifest.end_reason],
    ["Stereo", manifest.stereo_mode],
    ["Notes", (manifest.notes || []).join("; ") || "none"],
    ["Metadata", storage.metadata && Object.keys(storage.metadata).length ? storage.metadata : "none"],
  ]);
  const extra = Object.entries(manifest)
    .filter(([key, value]) => !SHOWN.has(key) && value !== null && value !== undefined)
    .map(([key, value]) => el("div", {},
      el("h3", {}, humanize(key)),
      value && typeof value === "object" && !Array.isArray(value)
        ? definitions(Object.entries(value).map(([k, v]) => [humanize(k), v]))
        : el("pre", { class: "mono" }, JSON.stringify(value, null, 2))));
  container.replaceChildren(
    general,
    el("h3", {}, "Channels"),
    ...channelTables(manifest.channels || []),
    ...(jobsTable(manifest.jobs) || []),
    ...extra,
    el("h3", {}, "Files"),
    filesTable(manifest.files || []),
  );
}
