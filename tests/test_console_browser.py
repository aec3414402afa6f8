"""The operator console in real headless Chromium: sign-in, Try it, live calls, list, player."""

# One walk through the console (tests/console_scenario.py, run inside a loopback-only network
# namespace because Try it makes a WebRTC call) feeds every test below.

import math
import os
import re
import shutil
import subprocess
import wave
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from audio_oracle import RATE_HZ, assert_valid_opus, decode_ogg, tone_envelope
from loopback_namespace import run_scenario

SCENARIO = Path(__file__).parent / "console_scenario.py"
TONE_HZ = 500.0
ECHO_DELAY_S = 1.0
PHRASE = "please send the invoice to my office today"
PAGES = ("login", "login-wrong-token", "try", "try-in-call", "try-done", "live", "recordings")


def write_caller_wav(path: Path) -> None:
    """10 s, looped by the fake microphone: a 500 Hz tone at 2.5 s, espeak speech at 3.5 s."""
    spoken = path.with_name("phrase.wav")
    subprocess.run(["espeak-ng", "-v", "en-us", "-s", "155", "-w", str(spoken), PHRASE], check=True)
    with wave.open(str(spoken)) as source:
        rate_hz = source.getframerate()
        speech = np.frombuffer(source.readframes(source.getnframes()), "<i2") / 32768
    at = np.arange(int(speech.size * RATE_HZ / rate_hz)) / RATE_HZ
    speech = np.interp(at, np.arange(speech.size) / rate_hz, speech)
    speech *= 0.6 / np.abs(speech).max()
    t = np.arange(10 * RATE_HZ) / RATE_HZ
    signal = np.where((t >= 2.5) & (t < 2.9), 0.5 * np.sin(2 * np.pi * TONE_HZ * t), 0.0)
    start = int(3.5 * RATE_HZ)
    signal[start : start + speech.size] = speech
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(RATE_HZ)
        out.writeframes((signal * 32767).astype("<i2").tobytes())


@pytest.fixture(scope="module")
def seen(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Run the console walk once; what it saw."""
    assert shutil.which("espeak-ng"), "install the Debian espeak-ng package"
    work = tmp_path_factory.mktemp("console")
    wav = work / "caller.wav"
    write_caller_wav(wav)
    out = work / "out"
    out.mkdir()
    shots = Path(os.environ.get("CONSOLE_SHOTS_DIR", work / "shots"))
    outcome = run_scenario(SCENARIO, out, wav, shots, timeout_s=280)
    return outcome


def test_sign_in_refuses_a_wrong_token_and_sets_an_http_only_cookie(seen: dict[str, Any]) -> None:
    """An unsigned visit lands on sign-in; a wrong token says so; the cookie stays from scripts."""
    assert seen["unsigned_landing"] == "/login?next=/"
    assert seen["wrong_token_message"] == "That is not this server's API token."
    assert seen["after_wrong_token"] == "/login"
    assert seen["script_sees_cookie"] == ""
    (cookie,) = seen["cookies"]
    assert cookie["name"] == "mediaserver_session"
    assert cookie["httpOnly"] is True
    assert cookie["sameSite"] == "Strict"
    assert cookie["path"] == "/"
    assert 43_000 < cookie["lifetime_s"] <= 43_200  # console_session_ttl_s: 12 h


def test_live_page_shows_the_call_and_ends_another(seen: dict[str, Any]) -> None:
    """The Try-it call is listed with its transport and agent; a call made meanwhile appears
    within a refresh and its End call button ends it."""
    assert "webrtc / opus" in seen["live_row_text"]
    assert "echo" in seen["live_row_text"]
    assert seen["live_refresh_s"] < 4.0
    assert seen["ended_call_status"] == 404
    assert seen["live_rows_after_end"] == [seen["try_call_id"]]


def test_live_page_filter_narrows_the_calls_by_id_transport_and_metadata(
    seen: dict[str, Any],
) -> None:
    """Typing in the filter keeps the matching calls: by id, by transport (any case), by
    metadata; the count says how many are shown; clearing it shows both again."""
    filtered = seen["live_filtered"]
    try_call = seen["try_call_id"]
    (other,) = [call_id for call_id in filtered["(cleared)"] if call_id != try_call]
    assert filtered[other[:12]] == [other]
    assert filtered["WebRTC"] == [try_call]  # the other call has no caller leg yet
    assert filtered['"x":1'] == [other]  # its metadata
    assert seen["live_filter_count"] == "2 calls, 1 shown"
    assert sorted(filtered["(cleared)"]) == sorted([try_call, other])


def test_try_it_echo_puts_the_caller_on_the_right_one_delay_later(seen: dict[str, Any]) -> None:
    """The echo agent's answer is the caller's own audio, 1 s (plus the relay) later."""
    assert seen["recording_link"] == f"/recordings/{seen['try_call_id']}"
    assert seen["manifest"]["storage"]["metadata"] == {"source": "console try-it"}
    stereo = Path(seen["stereo"])
    assert_valid_opus(stereo)
    audio = decode_ogg(stereo)
    onsets = []
    for channel in (0, 1):
        envelope = tone_envelope(audio[channel], TONE_HZ, window_s=0.01)
        assert envelope.max() > 0.2, f"no tone on channel {channel}"
        onsets.append(int(np.argmax(envelope > envelope.max() / 2)) / RATE_HZ)
    tone_delay_s = onsets[1] - onsets[0]
    # The same, from the speech: the right channel's loudness follows the left's, shifted.
    window = RATE_HZ // 100
    frames = audio[:, : audio.shape[1] // window * window].reshape(2, -1, window)
    loudness = np.sqrt((frames**2).mean(axis=2))
    left, right = loudness[0] - loudness[0].mean(), loudness[1] - loudness[1].mean()
    lags = np.arange(0, 200)
    scores = [float(np.dot(left[: left.size - lag], right[lag:])) for lag in lags]
    speech_delay_s = int(np.argmax(scores)) / 100
    print(f"echo delay: tone {tone_delay_s:.3f} s, speech {speech_delay_s:.2f} s")
    assert ECHO_DELAY_S <= tone_delay_s <= ECHO_DELAY_S + 0.25
    assert ECHO_DELAY_S <= speech_delay_s <= ECHO_DELAY_S + 0.25


def test_recordings_list_shows_the_new_recording_and_filters(seen: dict[str, Any]) -> None:
    """Newest first; a minimum duration of an hour leaves nothing."""
    assert seen["try_call_id"] in seen["list_ids"]
    assert "whip_delete" in seen["list_row_text"]  # the Try-it page hangs up with WHIP DELETE
    assert "webrtc / opus" in seen["list_row_text"]  # the caller leg's transport and codec
    assert seen["list_ids_min_duration_3600"] == []


def test_waveform_has_two_non_blank_lanes(seen: dict[str, Any]) -> None:
    """Caller above, agent below, both with drawn speech (more than their centre lines)."""
    caller, agent = seen["lanes"]
    assert caller["columns"] > 300
    assert agent["columns"] > 300
    assert caller["tall_share"] > 0.1
    assert agent["tall_share"] > 0.1


def test_play_space_bar_speed_and_tab_order(seen: dict[str, Any]) -> None:
    """The play button plays; space toggles; speed applies; Tab walks the controls in order."""
    assert seen["played_to_s"] > 0.4
    assert seen["space_plays"] is True
    assert seen["space_pauses"] is True
    assert seen["playback_rate"] == 1.5
    order = seen["tab_order"]
    wanted = [
        "recording-waveform",
        "play-button",
        "speed",
        "mute-caller",
        "solo-caller",
        "mute-agent",
        "solo-agent",
        "transcript-search",
        "delete-recording",
    ]
    positions = [order.index(name) for name in wanted]
    assert positions == sorted(positions), order
    assert order[0] == "a:#main", order  # the skip link comes first


def test_muting_the_caller_silences_it_while_the_agent_plays(seen: dict[str, Any]) -> None:
    """Level meters after each channel's gain: both sound, then the muted caller is silent."""
    unmuted = seen["levels_unmuted"]
    muted = seen["levels_caller_muted"]
    assert max(caller[0] for caller, _ in unmuted) > 0.05
    assert max(agent[0] for _, agent in unmuted) > 0.05
    assert all(caller == [0, 0] for caller, _ in muted)  # level 0, gain 0
    assert all(agent[1] == 1 for _, agent in muted)
    assert max(agent[0] for _, agent in muted) > 0.05
    assert seen["mute_caller_pressed"] == "true"


def test_analysis_figures_and_speech_spans_on_the_lanes(seen: dict[str, Any]) -> None:
    """Talk time per side, one latency bar per answered turn, spans drawn on their own lane."""
    analysis = seen["analysis"]
    caller, agent = analysis["channels"]["caller"], analysis["channels"]["agent"]
    assert caller["talk_time_s"] > 1.0  # the spoken phrase, and its echo
    assert agent["talk_time_s"] > 1.0
    # As the page rounds them (JavaScript's Math.round: halves go up).
    shown = [int(n) for n in re.findall(r"(\d+) %", seen["analysis_talk_time"])]
    assert shown == [math.floor(side["talk_ratio"] * 100 + 0.5) for side in (caller, agent)]
    assert seen["latency_bars"] == len(analysis["response_latency_s"]["values"])
    p50 = analysis["response_latency_s"]["p50"]
    if p50 is not None:
        match = re.search(r"p50 ([0-9.]+) s", seen["analysis_response_latency"])
        assert match is not None
        assert abs(float(match.group(1)) - p50) <= 0.005
    by = [item["by"] for item in analysis["interruptions"]]
    assert seen["lane_spans"] == {
        "caller": len(caller["speech"]) + by.count("caller"),
        "agent": len(agent["speech"]) + by.count("agent"),
    }


def test_transcript_lines_search_and_click_to_seek(seen: dict[str, Any]) -> None:
    """Lines in time order with both speakers; search marks matches; a click seeks there."""
    starts = seen["transcript_starts_s"]
    assert starts == sorted(starts)
    assert {speaker for speaker, _ in seen["transcript_lines"]} == {"caller", "agent"}
    search = seen["transcript_search"]
    matching = [text for _, text in seen["transcript_lines"] if search["word"] in text.lower()]
    assert search["count"] == f"{len(matching)} of {len(starts)} lines"
    assert len(search["visible"]) == len(matching)
    assert all(mark.lower() == search["word"].lower() for mark in search["marks"])
    click = seen["transcript_click"]
    assert abs(click["current_time_s"] - click["start_s"]) <= 0.3
    assert float(click["highlighted"]) == click["start_s"]
    call_id = seen["try_call_id"]
    assert f"/v1/recordings/{call_id}/transcript?format=vtt" in seen["downloads"]


def test_delete_asks_then_removes_the_recording(seen: dict[str, Any]) -> None:
    """A confirmation, then the list and the API no longer know it."""
    (message,) = seen["delete_dialogs"]
    assert seen["try_call_id"] in message
    assert seen["try_call_id"] not in seen["list_ids_after_delete"]
    assert seen["deleted_recording_status"] == 404


def test_no_console_errors(seen: dict[str, Any]) -> None:
    """No script error, exception or failed load, but the refused sign-in itself (a 401)."""
    errors = [error for page in seen["errors"].values() for error in page]
    unexpected = [
        error
        for error in errors
        if not (error["kind"] == "log" and (error.get("url") or "").endswith("/login"))
    ]
    assert unexpected == []
    assert len(errors) == 1  # the wrong token's 401


def test_every_page_is_captured_at_two_widths(seen: dict[str, Any]) -> None:
    """Screenshots of each page at 1280 and 390 px exist and are PNG images."""
    for page in (*PAGES, "recording"):
        for width in (1280, 390):
            path = Path(seen["screenshots"][f"{page}-{width}"])
            header = path.read_bytes()[:24]
            assert header.startswith(b"\x89PNG\r\n\x1a\n"), path
            assert int.from_bytes(header[16:20], "big") == width, path
