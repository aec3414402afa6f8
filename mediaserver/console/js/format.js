// How times, durations and sizes read in the console.

const dateTime = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "medium" });

export function formatLocalTime(iso) {
  if (!iso) return "—";
  const moment = new Date(iso);
  return Number.isNaN(moment.getTime()) ? iso : dateTime.format(moment);
}

// 83.4 -> "1:23", 3723 -> "1:02:03"
export function formatDuration(seconds) {
  if (seconds === null || seconds === undefined || !Number.isFinite(seconds)) return "—";
  const total = Math.max(0, Math.round(seconds));
  const h = Math.floor(total / 3600);
  const m = Math.floor((total % 3600) / 60);
  const s = String(total % 60).padStart(2, "0");
  return h ? `${h}:${String(m).padStart(2, "0")}:${s}` : `${m}:${s}`;
}

// 83.45 -> "1:23.4": a position in a recording, to a tenth of a second.
export function formatClock(seconds) {
  if (!Number.isFinite(seconds)) return "—";
  const tenths = Math.max(0, Math.floor(seconds * 10));
  const m = Math.floor(tenths / 600);
  const s = ((tenths % 600) / 10).toFixed(1).padStart(4, "0");
  return `${m}:${s}`;
}

export function formatSeconds(value, digits = 2) {
  return value === null || value === undefined || !Number.isFinite(value) ? "—" : `${value.toFixed(digits)} s`;
}

export function formatPercent(ratio) {
  return ratio === null || ratio === undefined || !Number.isFinite(ratio) ? "—" : `${Math.round(ratio * 100)} %`;
}

export function formatBytes(bytes) {
  if (!Number.isFinite(bytes)) return "—";
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(1)} KB`;
  return `${(bytes / 1024 / 1024).toFixed(1)} MB`;
}

export function humanize(key) {
  const text = String(key).replace(/_/g, " ");
  return text.charAt(0).toUpperCase() + text.slice(1);
}
