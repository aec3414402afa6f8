"""A scripted call of real speech (espeak-ng) on both sides, and the truth to check it with."""

# The script: several turns, a barge-in (the caller talks over the agent, which stops 0.6 s
# later, as a voice agent does when it hears the caller), and a 6.5 s silence. Each utterance is
# spoken by espeak-ng, resampled with PyAV and trimmed by amplitude, so its first and last
# samples are where speech is audible: those are the true edges the analysis must find.

import io
import itertools
import shutil
import subprocess
import wave
from dataclasses import dataclass
from fractions import Fraction
from functools import cache

import av
import numpy as np
import numpy.typing as npt

RATE_HZ = 48000
FRAME_SAMPLES = 960  # 20 ms
TRIM_FRACTION = 0.02  # |sample| above 2 % of the utterance's peak is audible speech
SLICE_S = 0.01
OPUS_LOOKAHEAD = 312  # libopus delays its output by this many samples at 48 kHz
BARGE_IN_AFTER_S = 2.5  # the caller starts talking this long into the agent's long answer
CLEAR_AFTER_S = 0.6  # ... and the agent stops (clear) this long after that
SILENCE_S = 6.5  # the long silence before the caller asks whether anyone is there
TAIL_S = 1.0  # the caller's stream goes on this long after the last agent turn

# (speaker, text, pause before it in seconds: the response latency for agent lines)
SCRIPT = (
    ("caller", "Hello, I would like to check the status of my order.", 0.6),
    ("agent", "Sure. Can you tell me your order number please?", 0.8),
    ("caller", "It is four five six seven.", 0.7),
    (
        "agent",
        "Thank you. Your order was shipped yesterday, and it should arrive on Monday. "
        "Is there anything else I can help you with today?",
        1.2,
    ),
    ("caller", "Yes, can I change the delivery address?", None),  # the barge-in
    ("agent", "Of course. What is the new address?", 0.9),
    ("caller", "Twelve Oak Street, Springfield.", 0.6),
    ("agent", "Thank you, I have updated your address.", 1.0),
    ("caller", "Hello? Are you still there?", SILENCE_S),
    ("agent", "Yes, I am here. Goodbye.", 0.7),
)
VOICES = {"caller": ("en-us", 150), "agent": ("en-us+m3", 165)}

Pcm = npt.NDArray[np.int16]


@dataclass(frozen=True, slots=True)
class Utterance:
    """One line of the script as planned: who, what, when, and its trimmed 48 kHz audio."""

    speaker: str
    text: str
    start_s: float
    audio: Pcm
    cut_after_s: float | None = None  # the agent clears its audio this long after it started

    @property
    def duration_s(self) -> float:
        """How long the speech lasts as heard."""
        full_s = self.audio.size / RATE_HZ
        return full_s if self.cut_after_s is None else min(full_s, self.cut_after_s)

    @property
    def end_s(self) -> float:
        """Planned end of the audible speech."""
        return self.start_s + self.duration_s

    @property
    def words(self) -> list[str]:
        """The words said, lower case, for measuring recall."""
        heard = self.text if self.cut_after_s is None else ""
        return [w.strip(".,?!").lower() for w in heard.split()]


@cache
def speak(text: str, speaker: str) -> Pcm:
    """espeak-ng's speech for `text` at 48 kHz, trimmed to its audible part."""
    if shutil.which("espeak-ng") is None:
        raise RuntimeError("espeak-ng is not installed (Debian package espeak-ng)")
    voice, words_per_minute = VOICES[speaker]
    wav = subprocess.run(
        ["espeak-ng", "-v", voice, "-s", str(words_per_minute), "--stdout", text],
        capture_output=True,
        check=True,
    ).stdout
    pcm = _resample(_read_wav(wav), 48000)
    loud = np.flatnonzero(np.abs(pcm.astype(np.int32)) > TRIM_FRACTION * np.abs(pcm).max())
    return pcm[loud[0] : loud[-1] + 1]


def build_script() -> list[Utterance]:
    """The dialogue with planned start times on the caller's stream (which starts at 0)."""
    utterances: list[Utterance] = []
    clock_s = 0.0
    for speaker, text, pause_s in SCRIPT:
        audio = speak(text, speaker)
        if pause_s is None:  # the barge-in: during the previous (agent) line
            previous = utterances[-1]
            start_s = previous.start_s + BARGE_IN_AFTER_S
            utterances[-1] = Utterance(
                previous.speaker,
                previous.text,
                previous.start_s,
                previous.audio,
                cut_after_s=BARGE_IN_AFTER_S + CLEAR_AFTER_S,
            )
        else:
            start_s = clock_s + pause_s
        # Caller lines start on the 20 ms packet grid, so their truth is exact.
        if speaker == "caller":
            start_s = round(start_s / 0.02) * 0.02
        utterances.append(Utterance(speaker, text, start_s, audio))
        clock_s = max(u.end_s for u in utterances)
    return utterances


def caller_stream_s(script: list[Utterance]) -> float:
    """How long the caller's stream lasts."""
    return round((max(u.end_s for u in script) + TAIL_S) / 0.02) * 0.02


def caller_timeline(script: list[Utterance]) -> Pcm:
    """The caller's whole stream at 48 kHz: silence with the caller's lines in place."""
    total = round(caller_stream_s(script) * RATE_HZ)
    pcm = np.zeros(total, np.int16)
    for u in script:
        if u.speaker == "caller":
            first = round(u.start_s * RATE_HZ) - OPUS_LOOKAHEAD
            pcm[first : first + u.audio.size] = u.audio
    return pcm


def agent_timeline(script: list[Utterance], total_s: float) -> Pcm:
    """The agent's channel as planned, at 48 kHz (for offline captures)."""
    pcm = np.zeros(round(total_s * RATE_HZ), np.int16)
    for u in script:
        if u.speaker == "agent":
            first = round(u.start_s * RATE_HZ) - OPUS_LOOKAHEAD
            audio = u.audio[: round(u.duration_s * RATE_HZ)]
            pcm[first : first + audio.size] = audio
    return pcm


def encode_opus(pcm: Pcm) -> list[bytes]:
    """20 ms Opus packets (PyAV's libopus, 32 kbit/s, VoIP) as a caller's phone would send."""
    codec = av.CodecContext.create("libopus", "w")
    codec.sample_rate = RATE_HZ
    codec.layout = "mono"
    codec.format = "s16"
    codec.bit_rate = 32000
    codec.options = {"frame_duration": "20", "application": "voip"}
    codec.open()
    padded = np.concatenate([pcm, np.zeros(-pcm.size % FRAME_SAMPLES, np.int16)])
    packets: list[bytes] = []
    for start in range(0, padded.size, FRAME_SAMPLES):
        frame = av.AudioFrame.from_ndarray(
            padded[start : start + FRAME_SAMPLES].reshape(1, -1), format="s16", layout="mono"
        )
        frame.sample_rate = RATE_HZ
        frame.pts = start
        frame.time_base = Fraction(1, RATE_HZ)
        packets += [bytes(p) for p in codec.encode(frame)]
    return packets[: padded.size // FRAME_SAMPLES]


def to_rate(pcm: Pcm, rate_hz: int) -> Pcm:
    """48 kHz speech resampled for an agent's stream format (PyAV, independent of the server)."""
    return _resample((pcm, RATE_HZ), rate_hz)


def speech_truth(u: Utterance, bridge_s: float) -> list[tuple[float, float]]:
    """Where an utterance is audible (10 ms slices), pauses shorter than `bridge_s` bridged."""
    audio = np.abs(u.audio[: round(u.duration_s * RATE_HZ)].astype(np.int32))
    threshold = TRIM_FRACTION * np.abs(u.audio).max()
    step = round(SLICE_S * RATE_HZ)
    count = audio.size // step
    loud = np.flatnonzero(audio[: count * step].reshape(count, step).max(axis=1) > threshold)
    spans: list[list[float]] = []
    for index in loud:
        start_s, end_s = u.start_s + index * SLICE_S, u.start_s + (index + 1) * SLICE_S
        if spans and start_s - spans[-1][1] < bridge_s:
            spans[-1][1] = end_s
        else:
            spans.append([start_s, end_s])
    return [(a, b) for a, b in spans]


def word_recall(said: list[str], heard: str) -> float:
    """The fraction of the words said that appear in what was transcribed."""
    heard_words = [w.strip(".,?!").lower() for w in heard.split()]
    remaining = list(heard_words)
    found = 0
    for word in said:
        if word in remaining:
            remaining.remove(word)
            found += 1
    return found / max(1, len(said))


def _read_wav(data: bytes) -> tuple[Pcm, int]:
    """Samples and rate of a mono 16-bit WAV (espeak-ng's --stdout output)."""
    with wave.open(io.BytesIO(data)) as reader:
        rate = reader.getframerate()
        frames = reader.readframes(reader.getnframes())
    return np.frombuffer(frames, np.int16).copy(), rate


def _resample(source: tuple[Pcm, int], rate_hz: int) -> Pcm:
    """Resample mono int16 with PyAV (swresample)."""
    pcm, in_rate = source
    resampler = av.AudioResampler(format="s16", layout="mono", rate=rate_hz)
    frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
    frame.sample_rate = in_rate
    chunks = [f.to_ndarray().reshape(-1) for f in resampler.resample(frame)]
    chunks += [f.to_ndarray().reshape(-1) for f in resampler.resample(None)]
    return np.concatenate(chunks).astype(np.int16)


@dataclass(frozen=True, slots=True)
class Heard:
    """An utterance where it is on the recording's time line, and its audible spans there."""

    speaker: str
    start_s: float
    end_s: float
    spans: tuple[tuple[float, float], ...]
    words: tuple[str, ...]


def place(u: Utterance, start_s: float, end_s: float | None = None, bridge_s: float = 0.3) -> Heard:
    """The truth of an utterance heard from `start_s` (and cut at `end_s`, if given)."""
    shift_s = start_s - u.start_s
    end_s = u.end_s + shift_s if end_s is None else end_s
    spans = []
    for a, b in speech_truth(u, bridge_s):
        first, last = a + shift_s, min(b + shift_s, end_s)
        if last - first > 0.09:  # what a cut leaves of a span must be long enough to be speech
            spans.append((first, last))
    return Heard(u.speaker, start_s, end_s, tuple(spans), tuple(u.words))


def check_analysis(analysis: dict, heard: list[Heard], tolerance_s: float = 0.1) -> dict:
    """Assert that an analysis document finds the heard dialogue; returns the errors measured."""
    errors: dict[str, list[float]] = {"span": [], "turn": [], "latency": []}
    for side in ("caller", "agent"):
        found = analysis["channels"][side]["speech"]
        truth = [span for h in heard if h.speaker == side for span in h.spans]
        assert len(found) == len(truth), (side, found, truth)
        for (a, b), (ta, tb) in zip(found, truth, strict=True):
            errors["span"] += [a - ta, b - tb]
    turns = analysis["turns"]
    assert [t["speaker"] for t in turns] == [h.speaker for h in heard], turns
    for turn, h in zip(turns, heard, strict=True):
        errors["turn"] += [turn["start_s"] - h.start_s, turn["end_s"] - h.end_s]
    # Every agent line but the one cut by the barge-in answers a finished caller line.
    expected_latencies = [
        h.start_s - previous.end_s
        for previous, h in itertools.pairwise(heard)
        if h.speaker == "agent"
        and previous.speaker == "caller"
        and previous.start_s < h.start_s
        and previous.end_s <= h.start_s
    ]
    values = analysis["response_latency_s"]["values"]
    assert len(values) == len(expected_latencies), (values, expected_latencies)
    errors["latency"] = [v - e for v, e in zip(values, expected_latencies, strict=True)]
    barge = next(
        h
        for h in heard
        if h.speaker == "caller"
        and any(o.speaker == "agent" and o.start_s < h.start_s < o.end_s for o in heard)
    )
    cut = next(o for o in heard if o.speaker == "agent" and o.start_s < barge.start_s < o.end_s)
    [interruption] = analysis["interruptions"]
    assert interruption["by"] == "caller", interruption
    assert abs(interruption["at_s"] - barge.start_s) <= tolerance_s, (interruption, barge)
    assert abs(interruption["overlap_s"] - (cut.end_s - barge.start_s)) <= tolerance_s
    [silence] = analysis["silences"]
    before = max((h for h in heard if h.end_s <= silence[1]), key=lambda h: h.end_s)
    after = min((h for h in heard if h.start_s >= silence[0]), key=lambda h: h.start_s)
    assert abs(silence[0] - before.end_s) <= tolerance_s, (silence, before)
    assert abs(silence[1] - after.start_s) <= tolerance_s, (silence, after)
    assert after.start_s - before.end_s > 5.0
    first_agent = min(h.start_s for h in heard if h.speaker == "agent")
    assert abs(analysis["time_to_first_agent_audio_s"] - first_agent) <= tolerance_s
    worst = {name: max((abs(e) for e in values), default=0.0) for name, values in errors.items()}
    assert all(value <= tolerance_s for value in worst.values()), (worst, errors)
    return errors


def transcript_recall(transcript: dict, heard: list[Heard]) -> dict[str, float]:
    """Word recall per speaker of a transcript document against what was said."""
    recall = {}
    for side in ("caller", "agent"):
        said = [w for h in heard if h.speaker == side for w in h.words]
        text = " ".join(s["text"] for s in transcript["segments"] if s["speaker"] == side)
        recall[side] = word_recall(said, text)
    said_all = [w for h in heard for w in h.words]
    recall["all"] = word_recall(said_all, " ".join(s["text"] for s in transcript["segments"]))
    return recall
