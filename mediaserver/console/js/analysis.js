// The analysis figures: talk time per side, response latency per turn (a small chart), silences,
// interruptions and the time to the agent's first audio. Times seek the player when clicked.

import { el } from "./dom.js";
import { formatClock, formatPercent, formatSeconds } from "./format.js";

const SVG = "http://www.w3.org/2000/svg";

function svg(tag, attrs = {}, ...children) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, String(value));
  node.append(...children);
  return node;
}

function figure(title, testId, ...content) {
  return el("div", { class: "figure", "data-testid": testId }, el("h3", {}, title), ...content);
}

function talkTime(doc) {
  const channels = doc.channels || {};
  const duration = doc.duration_s || 1;
  const bar = (side, label) => {
    const stats = channels[side] || {};
    const ratio = stats.talk_ratio ?? (stats.talk_time_s || 0) / duration;
    return el(
      "div",
      { class: "bar" },
      el("span", { class: `side-${side}` }, label),
      el("div", { class: "track" }, el("div", { class: `fill ${side}`, style: `width: ${Math.min(100, ratio * 100)}%` })),
      el("span", { class: "value" }, `${formatSeconds(stats.talk_time_s, 1)} · ${formatPercent(ratio)}`),
    );
  };
  const wpm = (side) => channels[side] && channels[side].words_per_minute;
  const extras = ["caller", "agent"]
    .filter((side) => Number.isFinite(wpm(side)))
    .map((side) => el("li", {}, `${side} `, el("b", {}, `${Math.round(wpm(side))}`), " words/min"));
  return figure(
    "Talk time",
    "analysis-talk-time",
    bar("caller", "Caller"),
    bar("agent", "Agent"),
    el("ul", { class: "stats" },
      el("li", {}, "Overlap ", el("b", {}, formatSeconds(doc.overlap_s, 1))),
      el("li", {}, "Longest caller turn ", el("b", {}, formatSeconds(channels.caller && channels.caller.longest_turn_s, 1))),
      el("li", {}, "Longest agent turn ", el("b", {}, formatSeconds(channels.agent && channels.agent.longest_turn_s, 1))),
      ...extras),
  );
}

function latencyChart(doc) {
  const latency = doc.response_latency_s || {};
  const values = latency.values || [];
  const width = 320;
  const height = 110;
  const top = 8;
  const bottom = 18;
  const max = Math.max(0.5, ...values);
  const slot = values.length ? Math.min(36, (width - 30) / values.length) : 0;
  const chart = svg(
    "svg",
    { class: "chart", viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": `Response latency of ${values.length} turns` },
    svg("line", { class: "axis", x1: 28, y1: height - bottom, x2: width, y2: height - bottom }),
    svg("text", { x: 0, y: top + 4 }, `${max.toFixed(1)} s`),
    svg("text", { x: 0, y: height - bottom }, "0 s"),
  );
  values.forEach((value, index) => {
    const barHeight = ((height - top - bottom) * value) / max;
    const rect = svg("rect", {
      class: "bar-rect",
      x: 30 + index * slot + slot * 0.15,
      y: height - bottom - barHeight,
      width: Math.max(1, slot * 0.7),
      height: Math.max(1, barHeight),
    });
    rect.append(svg("title", {}, `turn ${index + 1}: ${value.toFixed(2)} s`));
    chart.append(rect);
  });
  const stats = el("ul", { class: "stats" },
    ...["p50", "p90", "p95", "max"].map((key) => el("li", {}, `${key} `, el("b", {}, formatSeconds(latency[key])))));
  const empty = values.length ? null : el("p", { class: "muted" }, "No caller turn was answered.");
  return figure("Response latency per turn", "analysis-response-latency", empty || chart, stats);
}

function seekList(title, testId, items, onSeek) {
  const list = items.length
    ? el("ul", { class: "seek-list" }, ...items.map(({ at, label }) =>
      el("li", {}, el("button", { type: "button", onclick: () => onSeek(at) }, label))))
    : el("p", { class: "muted" }, "None.");
  return figure(title, testId, list);
}

export function renderAnalysis(container, doc, onSeek) {
  const silences = (doc.silences || []).map(([start, end]) => ({
    at: start,
    label: `${formatClock(start)}–${formatClock(end)} (${(end - start).toFixed(1)} s)`,
  }));
  const interruptions = (doc.interruptions || []).map((item) => ({
    at: item.at_s,
    label: `by ${item.by} at ${formatClock(item.at_s)} (${(item.overlap_s || 0).toFixed(1)} s overlap)`,
  }));
  const first = doc.time_to_first_agent_audio_s;
  container.replaceChildren(
    talkTime(doc),
    latencyChart(doc),
    figure("Time to first agent audio", "analysis-first-agent-audio",
      Number.isFinite(first)
        ? el("button", { type: "button", onclick: () => onSeek(first) }, formatSeconds(first))
        : el("p", { class: "muted" }, "The agent never spoke.")),
    seekList("Silences over 5 s", "analysis-silences", silences, onSeek),
    seekList("Interruptions", "analysis-interruptions", interruptions, onSeek),
  );
}
