// The two-lane player: wavesurfer.js draws the server's peaks; Web Audio splits the stereo file
// (left = caller, right = agent) into two gains, so each side can be muted or soloed.

import WaveSurfer from "../vendor/wavesurfer/wavesurfer.esm.js";
import RegionsPlugin from "../vendor/wavesurfer/regions.esm.js";
import TimelinePlugin from "../vendor/wavesurfer/timeline.esm.js";

export const CALLER = 0;
export const AGENT = 1;
const LANE_HEIGHT_PX = 72;
const COLORS = [
  { waveColor: "#7fb0da", progressColor: "#1f6fb2" },
  { waveColor: "#e0a27b", progressColor: "#b2561f" },
];

// audiowaveform JSON v2 -> one array per channel of (min, max) pairs scaled to -1..1.
export function splitPeaks(document) {
  const channels = document.channels || 1;
  const scale = 2 ** ((document.bits || 16) - 1);
  const perChannel = Array.from({ length: channels }, () => new Float32Array(document.length * 2));
  const data = document.data;
  for (let point = 0; point < document.length; point++) {
    for (let channel = 0; channel < channels; channel++) {
      const offset = (point * channels + channel) * 2;
      perChannel[channel][point * 2] = data[offset] / scale;
      perChannel[channel][point * 2 + 1] = data[offset + 1] / scale;
    }
  }
  return perChannel;
}

export class ChannelPlayer extends EventTarget {
  constructor({ container, audioUrl, peaks, durationS }) {
    super();
    this.durationS = durationS;
    this.audio = new Audio();
    this.audio.preload = "metadata";
    this.regions = RegionsPlugin.create();
    this.muted = [false, false];
    this.soloed = [false, false];
    this.graph = null;
    this.levels = [0, 0];
    this.wavesurfer = WaveSurfer.create({
      container,
      media: this.audio,
      url: audioUrl,
      peaks: peaks || undefined,
      duration: durationS,
      height: LANE_HEIGHT_PX,
      splitChannels: COLORS.map((colors) => ({ ...colors, height: LANE_HEIGHT_PX })),
      normalize: true,
      cursorColor: "#17202b",
      cursorWidth: 2,
      dragToSeek: true,
      interact: true,
      plugins: [this.regions, TimelinePlugin.create({ height: 18, style: { fontSize: "11px", color: "#5b6470" } })],
    });
    for (const name of ["ready", "play", "pause", "finish", "timeupdate", "interaction", "redrawcomplete"]) {
      this.wavesurfer.on(name, (value) => this.dispatchEvent(new CustomEvent(name, { detail: value })));
    }
  }

  get currentTime() {
    return this.wavesurfer.getCurrentTime();
  }

  get playing() {
    return this.wavesurfer.isPlaying();
  }

  async play() {
    this._ensureGraph();
    if (this.graph.context.state === "suspended") await this.graph.context.resume();
    await this.wavesurfer.play();
    this._meter();
  }

  pause() {
    this.wavesurfer.pause();
  }

  async toggle() {
    if (this.playing) this.pause();
    else await this.play();
  }

  seek(seconds) {
    this.wavesurfer.setTime(Math.max(0, Math.min(this.durationS, seconds)));
  }

  setSpeed(rate) {
    this.wavesurfer.setPlaybackRate(rate, true);
  }

  setMuted(channel, muted) {
    this.muted[channel] = muted;
    this._applyGains();
  }

  setSoloed(channel, soloed) {
    this.soloed[channel] = soloed;
    this._applyGains();
  }

  // The gain each channel plays at: solo wins over mute, as on a mixing desk.
  gainOf(channel) {
    const anySolo = this.soloed.some(Boolean);
    return (anySolo ? this.soloed[channel] : !this.muted[channel]) ? 1 : 0;
  }

  addSpan(channel, startS, endS, color, label) {
    this.regions.addRegion({
      start: startS,
      end: Math.max(endS, startS + 0.05),
      color,
      drag: false,
      resize: false,
      channelIdx: channel,
      content: label,
    });
  }

  _ensureGraph() {
    if (this.graph) return;
    // Built on the first play (a user gesture), as browsers want for audio contexts. From now on
    // the element is heard only through this graph: source -> splitter -> a gain per channel ->
    // an analyser per channel (the level meters) -> merger -> speakers.
    const context = new AudioContext();
    const source = context.createMediaElementSource(this.audio);
    const splitter = context.createChannelSplitter(2);
    const merger = context.createChannelMerger(2);
    const gains = [context.createGain(), context.createGain()];
    const analysers = gains.map(() => {
      const analyser = context.createAnalyser();
      analyser.fftSize = 1024;
      return analyser;
    });
    source.connect(splitter);
    for (const channel of [CALLER, AGENT]) {
      splitter.connect(gains[channel], channel);
      gains[channel].connect(analysers[channel]);
      analysers[channel].connect(merger, 0, channel);
    }
    merger.connect(context.destination);
    this.graph = { context, gains, analysers, buffer: new Float32Array(analysers[0].fftSize) };
    this._applyGains();
  }

  _applyGains() {
    if (!this.graph) return;
    for (const channel of [CALLER, AGENT]) {
      this.graph.gains[channel].gain.value = this.gainOf(channel);
    }
    this.dispatchEvent(new CustomEvent("gains"));
  }

  // Peak level of each channel after its gain, refreshed every animation frame while playing.
  _meter() {
    if (this._metering) return;
    this._metering = true;
    const step = () => {
      for (const channel of [CALLER, AGENT]) {
        this.graph.analysers[channel].getFloatTimeDomainData(this.graph.buffer);
        let peak = 0;
        for (const sample of this.graph.buffer) peak = Math.max(peak, Math.abs(sample));
        this.levels[channel] = peak;
      }
      this.dispatchEvent(new CustomEvent("levels"));
      if (this.playing) requestAnimationFrame(step);
      else {
        this._metering = false;
        this.levels = [0, 0];
        this.dispatchEvent(new CustomEvent("levels"));
      }
    };
    requestAnimationFrame(step);
  }
}
