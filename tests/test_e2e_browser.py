"""Headless Chromium joins a call from Try it (the old /demo link); the recording is checked."""

import wave
from pathlib import Path

import numpy as np

from audio_oracle import RATE_HZ, assert_valid_opus, decode_ogg, tone_envelope
from loopback_namespace import run_scenario

CALLER_HZ = 500.0
AGENT_HZ = 1300.0
SCENARIO = Path(__file__).parent / "browser_scenario.py"


def _write_caller_wav(path: Path) -> None:
    """0.5 s of silence, a 500 Hz tone for 1 s, then silence (padded: the fake device loops)."""
    t = np.arange(int(4.0 * RATE_HZ)) / RATE_HZ
    tone = np.where((t >= 0.5) & (t < 1.5), 0.5 * np.sin(2 * np.pi * CALLER_HZ * t), 0.0)
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(RATE_HZ)
        out.writeframes((tone * 32767).astype("<i2").tobytes())


def test_chromium_calls_through_the_demo_page(tmp_path: Path) -> None:
    """Chromium's fake microphone tone is on the left, the agent's answer on the right."""
    wav = tmp_path / "caller.wav"
    _write_caller_wav(wav)
    (tmp_path / "out").mkdir()
    outcome = run_scenario(SCENARIO, tmp_path / "out", wav)
    assert outcome["agent_heard_peak"] > 1000  # the agent heard the browser's tone
    stereo = Path(outcome["stereo"])
    assert_valid_opus(stereo)
    audio = decode_ogg(stereo)
    assert audio.shape[0] == 2
    left = tone_envelope(audio[0], CALLER_HZ, window_s=0.02) > 0.05
    right = tone_envelope(audio[1], AGENT_HZ, window_s=0.02) > 0.05
    # The fake microphone loops its 1 s tone every 4 s (left); the agent answers once (right).
    assert np.count_nonzero(left) >= 0.8 * RATE_HZ
    assert 0.3 * RATE_HZ <= np.count_nonzero(right) <= 0.5 * RATE_HZ
    assert not (tone_envelope(audio[1], CALLER_HZ, window_s=0.02) > 0.05).any()
    assert not (tone_envelope(audio[0], AGENT_HZ, window_s=0.02) > 0.05).any()
    assert outcome["landed_on"] == "/try"
    manifest = outcome["manifest"]
    assert manifest["status"] == "stored"
    assert manifest["storage"]["metadata"] == {"via": "chromium"}
