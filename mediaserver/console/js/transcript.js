// The transcript as lines (speaker, time, text): the current one highlighted while playing, a
// click seeks there, a search box narrows the lines and marks what matched.

import { el } from "./dom.js";
import { formatClock } from "./format.js";

export class TranscriptView {
  constructor({ list, search, count, onSeek }) {
    this.list = list;
    this.search = search;
    this.count = count;
    this.onSeek = onSeek;
    this.lines = [];
    this.current = null;
    search.addEventListener("input", () => this.filter(search.value));
  }

  show(segments) {
    const ordered = [...segments].sort((a, b) => a.start_s - b.start_s);
    this.lines = ordered.map((segment) => {
      const speaker = segment.speaker === "agent" ? "agent" : "caller";
      const text = el("span", { class: "text" }, segment.text || "");
      const button = el(
        "button",
        {
          type: "button",
          class: "line",
          "data-testid": "transcript-line",
          "data-start-s": String(segment.start_s),
          "data-speaker": speaker,
          "aria-label": `${speaker} at ${formatClock(segment.start_s)}: ${segment.text || ""}`,
          onclick: () => this.onSeek(segment.start_s),
        },
        el("span", { class: `speaker side-${speaker}` }, speaker === "agent" ? "Agent" : "Caller"),
        el("time", { datetime: `PT${segment.start_s}S` }, formatClock(segment.start_s)),
        text,
      );
      return { segment, item: el("li", {}, button), button, text };
    });
    this.list.replaceChildren(...this.lines.map((line) => line.item));
    this.filter(this.search.value);
  }

  // Highlight the line being spoken at `seconds` (the last one started, while it lasts).
  follow(seconds) {
    let found = null;
    for (const line of this.lines) {
      if (line.segment.start_s > seconds) break;
      if (seconds < line.segment.end_s + 0.25) found = line;
    }
    if (found === this.current) return;
    if (this.current) {
      this.current.button.classList.remove("current");
      this.current.button.removeAttribute("aria-current");
    }
    this.current = found;
    if (!found) return;
    found.button.classList.add("current");
    found.button.setAttribute("aria-current", "true");
    // Scroll the list, not the page, so reading elsewhere is never interrupted.
    const top = found.item.offsetTop - this.list.offsetTop;
    if (top < this.list.scrollTop || top + found.item.offsetHeight > this.list.scrollTop + this.list.clientHeight) {
      this.list.scrollTop = Math.max(0, top - this.list.clientHeight / 3);
    }
  }

  filter(query) {
    const needle = query.trim().toLocaleLowerCase();
    let shown = 0;
    for (const line of this.lines) {
      const source = line.segment.text || "";
      const at = needle ? source.toLocaleLowerCase().indexOf(needle) : -1;
      const visible = !needle || at >= 0;
      line.item.hidden = !visible;
      if (visible) shown += 1;
      line.text.replaceChildren(
        ...(at >= 0
          ? [source.slice(0, at), el("mark", {}, source.slice(at, at + needle.length)), source.slice(at + needle.length)]
          : [source]),
      );
    }
    this.count.textContent = needle ? `${shown} of ${this.lines.length} lines` : "";
  }
}
