// Try it: a call from this browser's microphone over WebRTC (WHIP) to the built-in echo agent,
// or to an existing call (?call_id=), then a link to its recording once it is stored.

import { api, ApiError } from "./api.js";
import { byId } from "./dom.js";

const RECORDING_POLL_S = 1;
const params = new URLSearchParams(location.search);
const joinId = params.get("call_id");
let peer = null;
let resource = null;
let callId = null;

function setStatus(text) {
  byId("status").textContent = text;
}

function iceGatheringComplete(connection) {
  if (connection.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    connection.addEventListener("icegatheringstatechange", () => {
      if (connection.iceGatheringState === "complete") resolve();
    });
  });
}

async function start() {
  byId("start").disabled = true;
  byId("recording-line").hidden = true;
  setStatus("asking for the microphone");
  const stream = await navigator.mediaDevices.getUserMedia({
    // Processing would colour the recording (and lower test tones by ~10 dB).
    audio: { echoCancellation: false, noiseSuppression: false, autoGainControl: false },
  });
  callId = joinId;
  if (!callId) {
    setStatus("creating the call");
    const delayMs = byId("delay").value;
    const { body } = await api("/v1/calls", {
      method: "POST",
      body: { agent_url: `builtin:echo?delay_ms=${delayMs}`, metadata: { source: "console try-it" } },
    });
    callId = body.call_id;
  }
  byId("call-id").textContent = callId;
  byId("call-line").hidden = false;
  peer = new RTCPeerConnection({ iceServers: [] });
  peer.addTransceiver(stream.getAudioTracks()[0], { direction: "sendrecv" });
  peer.ontrack = (event) => {
    byId("remote").srcObject = event.streams[0] || new MediaStream([event.track]);
  };
  peer.onconnectionstatechange = () => setStatus(peer ? peer.connectionState : "ended");
  await peer.setLocalDescription(await peer.createOffer());
  await iceGatheringComplete(peer);
  setStatus("offering");
  const response = await fetch(`/whip?call_id=${encodeURIComponent(callId)}`, {
    method: "POST",
    headers: { "Content-Type": "application/sdp" },
    credentials: "same-origin",
    body: peer.localDescription.sdp,
  });
  if (response.status !== 201) {
    const error = await response.json().catch(() => ({}));
    throw new ApiError(response.status, "whip", (error.error && error.error.message) || response.statusText);
  }
  resource = new URL(response.headers.get("Location"), location.href).pathname;
  await peer.setRemoteDescription({ type: "answer", sdp: await response.text() });
  byId("hangup").disabled = false;
  byId("hangup").focus();
}

async function hangUp() {
  byId("hangup").disabled = true;
  setStatus("hanging up");
  try {
    if (resource) await api(resource, { method: "DELETE", accept: [404] });
  } finally {
    if (peer) peer.close();
    peer = null;
    resource = null;
  }
  setStatus("ended: the recording is being stored");
  await waitForRecording(callId);
  byId("start").disabled = false;
}

async function waitForRecording(id) {
  for (;;) {
    const { body } = await api(`/v1/recordings/${encodeURIComponent(id)}`, { accept: [404] });
    if (body && (body.status === "stored" || body.status === "recovered")) break;
    if (body && body.status === "upload_failed") {
      setStatus("the recording could not be stored yet; the server retries the upload");
    }
    await new Promise((resolve) => setTimeout(resolve, RECORDING_POLL_S * 1000));
  }
  const link = byId("recording-link");
  link.href = `/recordings/${encodeURIComponent(id)}`;
  byId("recording-line").hidden = false;
  setStatus("stored: the recording is ready");
  link.focus();
}

function fail(error) {
  setStatus("error: " + error.message);
  byId("start").disabled = false;
  byId("hangup").disabled = true;
  if (peer) peer.close();
  peer = null;
  // A call this page created but could not connect would otherwise wait for the idle sweep.
  if (callId && !joinId && !resource) {
    api(`/v1/calls/${encodeURIComponent(callId)}`, { method: "DELETE", accept: [404] }).catch(() => {});
  }
}

// Leaving the page hangs up, so no call is left open without its caller.
window.addEventListener("pagehide", () => {
  if (resource) fetch(resource, { method: "DELETE", keepalive: true, credentials: "same-origin" });
});

if (joinId) {
  byId("intro").hidden = true;
  byId("delay-label").hidden = true;
  byId("join-intro").hidden = false;
  byId("join-id").textContent = joinId;
}
byId("start").addEventListener("click", () => start().catch(fail));
byId("hangup").addEventListener("click", () => hangUp().catch(fail));
if (params.get("autostart")) start().catch(fail);
