// The post-call jobs of a recording (analysis, transcript): their documents or where they are.

import { api } from "./api.js";

// GET /v1/recordings/{id}/{name}: 200 with the document when completed, 202 {status} while
// queued or processing, 200 {status: "failed", error} when failed, 404 when there is none.
export async function fetchJob(callId, name, query = "") {
  const path = `/v1/recordings/${encodeURIComponent(callId)}/${name}${query}`;
  const { status, body } = await api(path, { accept: [202, 404, 409] });
  if (status === 202) return { state: (body && body.status) || "queued" };
  if (status === 404 || status === 409) return { state: "unavailable" };
  if (body && body.status === "failed") return { state: "failed", error: body.error || {} };
  return { state: "completed", document: body };
}

export function isPending(job) {
  return job.state === "queued" || job.state === "processing";
}

// The status of a job as a manifest or a listing item reports it; null when it has no such job
// (then nothing is asked for: a recording made before analysis existed has none).
export function jobState(record, name) {
  const jobs = record.jobs || {};
  const job = jobs[name] || {};
  return typeof job === "string" ? job : job.status || record[`${name}_status`] || null;
}
