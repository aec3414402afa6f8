// The recording page: waveform and player, transcript, analysis, technical record, downloads,
// delete. A recording still being made, and jobs still running, are refreshed until done.

import { api, can, repeat } from "./api.js";
import { byId, el, showNotice } from "./dom.js";
import { formatClock, formatDuration, formatLocalTime } from "./format.js";
import { fetchJob, isPending } from "./jobs.js";
import { AGENT, CALLER, ChannelPlayer, splitPeaks } from "./player.js";
import { renderAnalysis } from "./analysis.js";
import { renderRecord } from "./record.js";
import { TranscriptView } from "./transcript.js";

const REFRESH_S = 2;
const callId = decodeURIComponent(location.pathname.split("/").filter(Boolean).pop() || "");
const base = `/v1/recordings/${encodeURIComponent(callId)}`;
const notice = byId("notice");
let player = null;
let analysisDoc = null;
let spansDrawn = false;

const transcript = new TranscriptView({
  list: byId("transcript"),
  search: byId("transcript-search"),
  count: byId("transcript-count"),
  onSeek: (seconds) => seek(seconds),
});

function seek(seconds) {
  if (player) player.seek(seconds);
}

function isStored(manifest) {
  return manifest.status === "stored" || manifest.status === "recovered";
}

async function start() {
  byId("call-id").textContent = callId;
  document.title = `Recording ${callId} · mediaserver`;
  let manifest;
  try {
    manifest = (await api(base)).body;
  } catch (error) {
    showNotice(notice, error.status === 404 ? `There is no recording ${callId}.` : error.message, { error: true });
    byId("player").hidden = true;
    return;
  }
  if (manifest.status === "empty") {
    showEmpty(manifest);
    return;
  }
  if (!isStored(manifest)) {
    waitUntilStored(manifest);
    return;
  }
  show(manifest);
}

// A call that carried no media: its record is all there is (no audio, no analysis).
function showEmpty(manifest) {
  showNotice(notice, "This call carried no media: there is no audio, only the record of the call.");
  byId("player").hidden = true;
  renderSummary(manifest);
  renderRecord(byId("record"), manifest);
  setUpDelete();
}

// A call still recording or finalizing: say so and look again every few seconds.
function waitUntilStored(first) {
  const describe = (manifest) => ({
    recording: "This call is still in progress: its recording starts when it ends.",
    finalizing: "The call has ended; its recording is being built and stored.",
    upload_failed: "The recording is built but not stored yet: the upload is retried.",
  })[manifest.status] || `This recording is ${manifest.status}.`;
  showNotice(notice, describe(first));
  renderSummary(first);
  const poll = repeat(async () => {
    try {
      const manifest = (await api(base)).body;
      if (manifest.status === "empty") {
        poll.stop();
        showEmpty(manifest);
      } else if (isStored(manifest)) {
        poll.stop();
        showNotice(notice, "");
        show(manifest);
      } else {
        showNotice(notice, describe(manifest));
      }
    } catch (error) {
      showNotice(notice, error.message, { error: true });
    }
  }, REFRESH_S);
}

function renderSummary(manifest) {
  const parts = [
    formatLocalTime(manifest.created_at),
    formatDuration((manifest.duration_ms || 0) / 1000),
    el("span", { class: `badge ${manifest.status}` }, manifest.status.replace("_", " ")),
  ];
  if (manifest.end_reason) parts.push(`ended: ${manifest.end_reason}`);
  byId("summary").replaceChildren(...parts.map((part) => el("span", {}, part)));
}

async function show(manifest) {
  renderSummary(manifest);
  renderRecord(byId("record"), manifest);
  renderDownloads(manifest, false);
  renderRetention(manifest.retention);
  setUpDelete();
  await setUpPlayer(manifest);
  loadJobs(manifest);
}

async function setUpPlayer(manifest) {
  const durationS = (manifest.duration_ms || 0) / 1000;
  let peaks = null;
  if (manifest.links && manifest.links.peaks) {
    try {
      peaks = splitPeaks((await api(manifest.links.peaks)).body);
    } catch (error) {
      if (error.code === "encryption_key_unavailable") {
        // Encrypted, and this server holds no private key: nothing of it can be played here.
        showNotice(notice, `This recording is encrypted and cannot be played on this server: ${error.message}`);
        byId("player").hidden = true;
        return;
      }
      showNotice(notice, `The waveform's peaks could not be read (${error.message}): drawing from the audio.`);
    }
  }
  player = new ChannelPlayer({
    container: byId("waveform"),
    // Streamed through this server even on GCS: Web Audio needs same-origin audio.
    audioUrl: `${base}/audio?channel=stereo&redirect=0`,
    peaks,
    durationS,
  });
  // In the page (hidden), so it is one inspectable element like any other media on the page.
  player.audio.hidden = true;
  player.audio.dataset.testid = "recording-audio";
  byId("player").append(player.audio);
  const play = byId("play");
  const time = byId("time");
  const waveform = byId("waveform");
  waveform.setAttribute("aria-valuemax", durationS.toFixed(1));
  const showTime = () => {
    const now = player.currentTime;
    time.textContent = `${formatClock(now)} / ${formatClock(durationS)}`;
    waveform.setAttribute("aria-valuenow", now.toFixed(1));
    waveform.setAttribute("aria-valuetext", formatClock(now));
    transcript.follow(now);
  };
  const showPlaying = () => {
    play.textContent = player.playing ? "❚❚ Pause" : "▶ Play";
    play.setAttribute("aria-label", player.playing ? "Pause" : "Play");
    play.dataset.state = player.playing ? "playing" : "paused";
  };
  player.addEventListener("timeupdate", showTime);
  player.addEventListener("interaction", showTime);
  for (const name of ["play", "pause", "finish"]) player.addEventListener(name, showPlaying);
  player.addEventListener("levels", () => {
    for (const [channel, side] of [[CALLER, "caller"], [AGENT, "agent"]]) {
      const meter = byId(`level-${side}`);
      meter.dataset.level = player.levels[channel].toFixed(4);
      meter.firstElementChild.style.width = `${Math.min(100, player.levels[channel] * 100)}%`;
    }
  });
  player.addEventListener("redrawcomplete", () => {
    if (!waveform.dataset.drawn) performance.mark("console:waveform-drawn");
    waveform.dataset.drawn = "true";
  });
  player.addEventListener("ready", () => {
    waveform.dataset.ready = "true";
    if (analysisDoc) drawSpans(analysisDoc);
  });
  play.disabled = false;
  performance.mark("console:controls-ready");
  play.addEventListener("click", () => toggle());
  byId("speed").addEventListener("change", (event) => player.setSpeed(Number(event.target.value)));
  wireChannelButtons();
  waveform.addEventListener("keydown", (event) => {
    const step = { ArrowLeft: -5, ArrowRight: 5, Home: -Infinity, End: Infinity }[event.key];
    if (step === undefined) return;
    event.preventDefault();
    seek(Number.isFinite(step) ? player.currentTime + step : step < 0 ? 0 : durationS);
    showTime();
  });
  // Space plays and pauses anywhere but in fields and on buttons (which it presses instead).
  document.addEventListener("keydown", (event) => {
    if (event.code !== "Space" || event.repeat) return;
    if (event.target.closest("input, select, textarea, button, a, [contenteditable]")) return;
    event.preventDefault();
    toggle();
  });
  showTime();
}

function toggle() {
  player.toggle().catch((error) => showNotice(notice, `Playback failed: ${error.message}`, { error: true }));
}

function wireChannelButtons() {
  for (const [channel, side] of [[CALLER, "caller"], [AGENT, "agent"]]) {
    const mute = byId(`mute-${side}`);
    const solo = byId(`solo-${side}`);
    mute.addEventListener("click", () => {
      player.setMuted(channel, mute.getAttribute("aria-pressed") !== "true");
    });
    solo.addEventListener("click", () => {
      player.setSoloed(channel, solo.getAttribute("aria-pressed") !== "true");
    });
  }
  player.addEventListener("gains", () => {
    for (const [channel, side] of [[CALLER, "caller"], [AGENT, "agent"]]) {
      byId(`mute-${side}`).setAttribute("aria-pressed", String(player.muted[channel]));
      byId(`solo-${side}`).setAttribute("aria-pressed", String(player.soloed[channel]));
      byId(`level-${side}`).dataset.gain = String(player.gainOf(channel));
    }
  });
}

function drawSpans(doc) {
  if (spansDrawn) return;
  spansDrawn = true;
  const channels = doc.channels || {};
  for (const [channel, side, color] of [
    [CALLER, "caller", "rgba(31, 111, 178, 0.14)"],
    [AGENT, "agent", "rgba(178, 86, 31, 0.14)"],
  ]) {
    for (const [startS, endS] of (channels[side] && channels[side].speech) || []) {
      player.addSpan(channel, startS, endS, color);
    }
  }
  for (const item of doc.interruptions || []) {
    const channel = item.by === "agent" ? AGENT : CALLER;
    player.addSpan(channel, item.at_s, item.at_s + (item.overlap_s || 0), "rgba(179, 38, 30, 0.35)", "⚡");
  }
}

// Analysis and transcript: shown when completed, refreshed while queued or processing.
function loadJobs(manifest) {
  const analysisState = byId("analysis-state");
  const transcriptState = byId("transcript-state");
  const badge = (node, job, kind) => {
    node.replaceChildren(job.state === "completed" ? "" : el("span", { class: `badge ${job.state}` }, job.state));
    const row = byId(`job-status-${kind}`);
    if (row && job.state !== "unavailable") {
      row.textContent = job.state;
      row.className = `badge ${job.state}`;
    }
  };
  // Asked even when the manifest lists no job yet: a recording just stored has its jobs queued
  // a moment later, and the API answers 202 for them meanwhile.
  const ask = (name, query) => fetchJob(callId, name, query).catch((error) => ({ state: "failed", error }));
  const analysis = repeat(async () => {
    const job = await ask("analysis", "");
    badge(analysisState, job, "analysis");
    if (job.state === "completed") {
      analysisDoc = job.document;
      renderAnalysis(byId("analysis"), job.document, seek);
      if (player && player.wavesurfer.getDecodedData()) drawSpans(job.document);
    } else if (job.state === "failed") {
      byId("analysis").replaceChildren(el("p", { class: "muted" }, `The analysis failed: ${job.error.message || "unknown error"}`));
    } else if (job.state === "unavailable") {
      byId("analysis").replaceChildren(el("p", { class: "muted" }, "No analysis for this recording."));
    } else {
      byId("analysis").replaceChildren(el("p", { class: "muted" }, `The analysis is ${job.state}…`));
    }
    if (!isPending(job)) analysis.stop();
  }, REFRESH_S);
  const empty = byId("transcript-empty");
  const transcriptPoll = repeat(async () => {
    const job = await ask("transcript", "?format=json");
    badge(transcriptState, job, "transcript");
    empty.hidden = job.state === "completed" && (job.document.segments || []).length > 0;
    if (job.state === "completed") {
      transcript.show(job.document.segments || []);
      empty.textContent = "Nothing was said, or nothing was recognized.";
      renderDownloads(manifest, true);
    } else if (job.state === "failed") {
      empty.textContent = `The transcript failed: ${job.error.message || "unknown error"}`;
    } else if (job.state === "unavailable") {
      empty.textContent = "No transcript for this recording.";
    } else {
      empty.textContent = `The transcript is ${job.state}…`;
    }
    if (!isPending(job)) transcriptPoll.stop();
  }, REFRESH_S);
}

function renderDownloads(manifest, withTranscript) {
  const link = (href, label, filename) => el("a", { class: "button", href, download: filename }, label);
  const name = (suffix) => `conversation_${callId}_${suffix}`;
  const links = [
    link(`${base}/audio?channel=stereo&redirect=0`, "Stereo (.opus)", name("merged.opus")),
    link(`${base}/audio?channel=left&redirect=0`, "Caller (.opus)", name("left.opus")),
    link(`${base}/audio?channel=right&redirect=0`, "Agent (.opus)", name("right.opus")),
    link(base, "Manifest (.json)", name("manifest.json")),
  ];
  if (withTranscript) {
    links.push(link(`${base}/transcript?format=vtt`, "Transcript (.vtt)", name("transcript.vtt")));
    links.push(link(`${base}/transcript?format=json`, "Transcript (.json)", name("transcript.json")));
  }
  byId("downloads").replaceChildren(...links);
}

// How long the recording is kept, and (with the admin scope) a legal hold to place or release.
let holdReady = false;
async function renderRetention(retention) {
  if (!retention) return;
  byId("retention-zone").hidden = false;
  const until = retention.expires_at ? `until ${formatLocalTime(retention.expires_at)}` : "forever";
  const source = retention.source === "call" ? "this call's own retention" : "the server's retention";
  byId("retention").textContent = retention.hold
    ? `Under legal hold since ${formatLocalTime(retention.hold.since)} (by ${retention.hold.by})${retention.hold.reason ? ": " + retention.hold.reason : ""}.`
    : `Kept ${until} (${source}).`;
  const button = byId("hold");
  const deleteButton = byId("delete");
  deleteButton.title = retention.hold ? "Release the legal hold first" : "";
  deleteButton.dataset.held = retention.hold ? "true" : "false";
  if (!(await can("admin"))) return;
  button.hidden = false;
  button.textContent = retention.hold ? "Release legal hold" : "Place legal hold";
  button.dataset.held = retention.hold ? "true" : "false";
  if (holdReady) return;
  holdReady = true;
  button.addEventListener("click", async () => {
    const held = button.dataset.held === "true";
    let reason;
    if (!held) {
      reason = prompt("Reason for the legal hold (kept in the manifest and the audit log):", "");
      if (reason === null) return;
    }
    button.disabled = true;
    try {
      const { body } = await api(`${base}/hold`, held ? { method: "DELETE" } : { method: "PUT", body: { reason: reason || null } });
      renderRetention(body.retention);
    } catch (error) {
      showNotice(notice, `The hold could not be changed: ${error.message}`, { error: true });
    } finally {
      button.disabled = false;
    }
  });
}

async function setUpDelete() {
  // Without recordings:delete the token cannot delete: no button at all.
  if (!(await can("recordings:delete"))) return;
  byId("delete-zone").hidden = false;
  const button = byId("delete");
  button.disabled = false;
  button.addEventListener("click", async () => {
    const sure = confirm(`Delete recording ${callId}? Its audio, analysis and transcript are removed for good.`);
    if (!sure) return;
    button.disabled = true;
    try {
      if (player) player.pause();
      await api(base, { method: "DELETE" });
      location.assign(`/?deleted=${encodeURIComponent(callId)}`);
    } catch (error) {
      button.disabled = false;
      showNotice(notice, `The recording could not be deleted: ${error.message}`, { error: true });
    }
  });
}

start().catch((error) => showNotice(notice, error.message, { error: true }));
