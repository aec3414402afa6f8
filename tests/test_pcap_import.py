"""import-pcap: a tcpdump capture of ffmpeg sending RTP on loopback becomes a synced recording."""

import json
import os
import pty
import shutil
import signal
import socket
import subprocess
import sys
import time
import wave
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import dpkt
import numpy as np
import pytest

from mediaserver.pcap_import import RtpStream, read_rtp_streams

from audio_oracle import (
    RATE_HZ,
    assert_valid_opus,
    decode_ogg,
    encode_tone_packets,
    find_onset,
    tone_amplitude,
)

CALLER_HZ, AGENT_HZ = 500.0, 1300.0
CALLER_MARKERS_S = (1.0, 3.5)
AGENT_MARKERS_S = (2.0, 4.5)
OPUS_LOOKAHEAD_S = 312 / RATE_HZ  # ffmpeg's libopus delays the audio in its packets by this much
CLI = [sys.executable, "-m", "mediaserver"]


def _write_wav(path: Path, freq_hz: float, markers_s: tuple[float, ...], total_s: float) -> None:
    t = np.arange(int(total_s * RATE_HZ)) / RATE_HZ
    signal_ = np.zeros_like(t)
    for start in markers_s:
        burst = (t >= start) & (t < start + 0.3)
        signal_[burst] = 0.5 * np.sin(2 * np.pi * freq_hz * (t[burst] - start))
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(RATE_HZ)
        out.writeframes((signal_ * 32767).astype("<i2").tobytes())


def _free_udp_port_pair() -> int:
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        if port % 2 == 0 and port < 65000:
            return port


def _ffmpeg_rtp(wav: Path, port: int, local_port: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            "ffmpeg",
            "-loglevel",
            "error",
            "-re",
            "-i",
            str(wav),
            "-c:a",
            "libopus",
            "-b:a",
            "32k",
            "-frame_duration",
            "20",
            "-max_size",
            "1920",
            "-f",
            "rtp",
            f"rtp://127.0.0.1:{port}?localrtpport={local_port}",
        ],
        stdout=subprocess.DEVNULL,
    )


@pytest.fixture(scope="module")
def capture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, int, int]]:
    """A pcap of two ffmpeg RTP senders on loopback (caller starts first), captured by tcpdump."""
    assert shutil.which("tcpdump"), "tcpdump is required"
    assert shutil.which("ffmpeg"), "ffmpeg is required"
    workdir = tmp_path_factory.mktemp("capture")
    _write_wav(workdir / "caller.wav", CALLER_HZ, CALLER_MARKERS_S, 5.5)
    _write_wav(workdir / "agent.wav", AGENT_HZ, AGENT_MARKERS_S, 5.5)
    caller_port, agent_port = _free_udp_port_pair(), _free_udp_port_pair()
    pcap = workdir / "call.pcap"
    dump = subprocess.Popen(
        [
            "tcpdump",
            "-i",
            "lo",
            "-U",
            "-n",
            "-w",
            str(pcap),
            "udp",
            "and",
            "(dst",
            "port",
            str(caller_port),
            "or",
            "dst",
            "port",
            f"{agent_port})",
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    assert dump.stderr is not None
    line = dump.stderr.readline()  # "listening on lo, ..." once the capture is running
    assert "listening" in line, line
    caller = _ffmpeg_rtp(workdir / "caller.wav", caller_port, caller_port + 1000)
    _wait_for_packets(pcap)  # the caller's stream must be the first one in the capture
    agent = _ffmpeg_rtp(workdir / "agent.wav", agent_port, agent_port + 1000)
    assert caller.wait(timeout=60) == 0
    assert agent.wait(timeout=60) == 0
    dump.send_signal(signal.SIGINT)
    dump.wait(timeout=30)
    return pcap, caller_port + 1000, agent_port + 1000


def _wait_for_packets(pcap: Path, timeout_s: float = 30.0) -> None:
    """Block until tcpdump has written at least one packet."""
    deadline = time.monotonic() + timeout_s
    while pcap.stat().st_size <= 24:  # the pcap file header alone
        assert time.monotonic() < deadline, "no packet captured"
        time.sleep(0.01)


def _wall_s(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def _media_zero_s(stream: RtpStream) -> float:
    """When the stream's media time 0 arrived, on the fastest path: min(arrival - media time).

    ffmpeg's first packets leave late while it starts up, so the first arrival is not time 0.
    """
    first_ts = stream.packets[0].rtp_timestamp
    return min(
        p.arrival_ns / 1e9 - ((p.rtp_timestamp - first_ts) % 2**32) / RATE_HZ
        for p in stream.packets
    )


def test_import_pcap_places_markers_on_their_channels(
    capture: tuple[Path, int, int], tmp_path: Path
) -> None:
    """Each sender's tones land on its own channel within ±20 ms of capture time."""
    pcap, caller_port, agent_port = capture
    result = subprocess.run(
        [*CLI, "import-pcap", str(pcap), "-o", str(tmp_path), "--call-id", "cap1"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [
        "conversation_cap1_analysis.json",
        "conversation_cap1_left.opus",
        "conversation_cap1_manifest.json",
        "conversation_cap1_merged.opus",
        "conversation_cap1_peaks.json",
        "conversation_cap1_right.opus",
        "conversation_cap1_transcript.json",
        "conversation_cap1_transcript.vtt",
    ]
    for name in names:
        if name.endswith(".opus"):
            assert_valid_opus(tmp_path / name)
    manifest = json.loads((tmp_path / "conversation_cap1_manifest.json").read_text())
    start_s = _wall_s(manifest["media_started_at"])
    streams = {s.source[1]: s for s in read_rtp_streams(pcap)}
    first_s = {port: _media_zero_s(stream) for port, stream in streams.items()}
    audio = decode_ogg(tmp_path / "conversation_cap1_merged.opus")
    assert audio.shape[0] == 2
    checks = (
        (0, caller_port, CALLER_HZ, CALLER_MARKERS_S),
        (1, agent_port, AGENT_HZ, AGENT_MARKERS_S),
    )
    for side, port, freq, markers in checks:
        for marker in markers:
            expected = first_s[port] - start_s + marker + OPUS_LOOKAHEAD_S
            onset = find_onset(audio[side], freq, expected)
            assert onset is not None, (side, marker, expected, first_s, start_s)
            assert abs(onset - expected) <= 0.020, (side, marker, onset, expected)
            assert tone_amplitude(audio[1 - side], freq, expected + 0.02, 0.2) < 0.01
    last_s = max(s.packets[-1].arrival_ns for s in streams.values()) / 1e9 + 0.02
    assert abs(manifest["duration_ms"] / 1000 - (last_s - start_s)) <= 0.040
    assert {c["channel"]: c["codec"] for c in manifest["channels"]} == {
        "caller": "opus",
        "agent": "opus",
    }


def test_import_pcap_by_address_swaps_channels(
    capture: tuple[Path, int, int], tmp_path: Path
) -> None:
    """--caller and --agent pick streams by source address, whatever their order in the capture."""
    pcap, caller_port, agent_port = capture
    result = subprocess.run(
        [
            *CLI,
            "import-pcap",
            str(pcap),
            "-o",
            str(tmp_path),
            "--call-id",
            "swap",
            "--caller",
            f"127.0.0.1:{agent_port}",
            "--agent",
            f"127.0.0.1:{caller_port}",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    audio = decode_ogg(tmp_path / "conversation_swap_merged.opus")
    manifest = json.loads((tmp_path / "conversation_swap_manifest.json").read_text())
    streams = {s.source[1]: s for s in read_rtp_streams(pcap)}
    start_s = _wall_s(manifest["media_started_at"])
    expected = _media_zero_s(streams[agent_port]) - start_s + AGENT_MARKERS_S[0]
    assert find_onset(audio[0], AGENT_HZ, expected + OPUS_LOOKAHEAD_S) is not None
    assert tone_amplitude(audio[1], AGENT_HZ, expected + 0.03, 0.2) < 0.01


def _write_pcap(path: Path, payloads: list[bytes]) -> None:
    with path.open("wb") as handle:
        writer = dpkt.pcap.Writer(handle, linktype=dpkt.pcap.DLT_EN10MB)
        for index, payload in enumerate(payloads):
            udp = dpkt.udp.UDP(sport=5000, dport=6000, data=payload)
            udp.ulen = len(udp)
            ip = dpkt.ip.IP(
                src=socket.inet_aton("127.0.0.1"), dst=socket.inet_aton("127.0.0.1"), p=17, data=udp
            )
            ip.len = len(ip)
            frame = dpkt.ethernet.Ethernet(type=dpkt.ethernet.ETH_TYPE_IP, data=ip)
            writer.writepkt(bytes(frame), ts=1_790_000_000 + index * 0.02)


@pytest.mark.parametrize(
    ("make_input", "args", "message"),
    [
        (lambda d: (d / "x.pcap").write_bytes(b"not a capture at all"), [], "is not a pcap"),
        (lambda d: None, [], "cannot read"),
        (
            lambda d: _write_pcap(d / "x.pcap", [b"hello, not RTP"] * 20),
            [],
            "no RTP stream found",
        ),
        (
            # dynamic payload type 99 whose payloads are not Opus (TOC code 3, 63 frames)
            lambda d: _write_pcap(d / "x.pcap", [bytes([0x80, 99, 0, 1]) + bytes(8) + b"??"] * 20),
            [],
            "neither G.711 nor Opus",
        ),
        (lambda d: (d / "x.pcap").write_bytes(b""), ["--caller", "nonsense"], "is not IP:PORT"),
        (
            lambda d: _write_pcap(d / "x.pcap", [bytes([0x80, 0, 0, 1]) + bytes(8) + b"?"] * 20),
            ["--caller", "127.0.0.1:9"],
            "no RTP stream from caller address 127.0.0.1:9",
        ),
    ],
)
def test_import_pcap_bad_input_is_one_clear_error(
    tmp_path: Path, make_input: object, args: list[str], message: str
) -> None:
    """Unreadable, non-capture or non-RTP input: one message, exit code 2, no traceback."""
    make_input(tmp_path)  # type: ignore[operator]
    result = subprocess.run(
        [*CLI, "import-pcap", str(tmp_path / "x.pcap"), "-o", str(tmp_path / "out"), *args],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_cli_usage_errors_exit_2(tmp_path: Path) -> None:
    """Wrong arguments and unreadable merge inputs exit 2 with one line."""
    for argv in (
        ["frobnicate"],
        ["merge", "a.opus"],
        ["merge", str(tmp_path / "a.opus"), str(tmp_path / "b.opus"), "-o", str(tmp_path / "c")],
        ["merge", __file__, __file__, "-o", str(tmp_path / "c.opus")],
    ):
        result = subprocess.run([*CLI, *argv], capture_output=True, text=True, check=False)
        assert result.returncode == 2, (argv, result.stderr)
        assert "Traceback" not in result.stderr
        assert "error" in result.stderr


def test_demo_records_the_bundled_capture(tmp_path: Path) -> None:
    """`mediaserver demo` records the sample call into local storage and says where it is."""
    env = {
        **os.environ,
        "MEDIASERVER_STORAGE_PATH": str(tmp_path / "recordings"),
        "MEDIASERVER_SPOOL_PATH": str(tmp_path / "spool"),
        "MEDIASERVER_LOG_FORMAT": "json",
    }
    result = subprocess.run(
        [*CLI, "demo"], capture_output=True, text=True, check=False, env=env, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    paths = [Path(line.split()[-1]) for line in result.stdout.splitlines() if line.startswith("  ")]
    assert len(paths) == 5  # left, right, stereo, peaks, manifest
    for path in paths:
        assert path.is_file(), path
        if path.suffix == ".opus":
            assert_valid_opus(path)
    assert not any((tmp_path / "spool").iterdir())


def _write_call_capture(path: Path, seconds: float) -> None:
    """Two RTP streams of real Opus packets (a caller tone, an agent tone), both ways, as pcap."""
    streams = (
        (encode_tone_packets(500.0, 1.0), ("10.0.0.1", 40000), ("10.0.0.2", 40002), 0x1111),
        (encode_tone_packets(1300.0, 1.0), ("10.0.0.2", 40002), ("10.0.0.1", 40000), 0x2222),
    )
    with path.open("wb") as handle:
        writer = dpkt.pcap.Writer(handle, linktype=dpkt.pcap.DLT_EN10MB)
        for index in range(int(seconds * 50)):
            for payloads, source, destination, ssrc in streams:
                rtp = dpkt.rtp.RTP(
                    version=2, pt=111, seq=index, ts=index * 960, ssrc=ssrc,
                    data=payloads[index % len(payloads)],
                )  # fmt: skip
                udp = dpkt.udp.UDP(sport=source[1], dport=destination[1], data=bytes(rtp))
                udp.ulen = len(udp)
                ip = dpkt.ip.IP(
                    src=socket.inet_aton(source[0]),
                    dst=socket.inet_aton(destination[0]),
                    p=17,
                    data=udp,
                )
                ip.len = len(ip)
                frame = dpkt.ethernet.Ethernet(type=dpkt.ethernet.ETH_TYPE_IP, data=ip)
                writer.writepkt(bytes(frame), ts=1_790_000_000 + index * 0.02)


def test_import_pcap_shows_progress_on_a_terminal_only(tmp_path: Path) -> None:
    """On a terminal stderr shows each pass's progress; piped, it stays quiet."""
    capture = tmp_path / "call.pcap"
    _write_call_capture(capture, 12.0)
    command = [*CLI, "import-pcap", str(capture), "--no-analysis", "--transcription", "none"]
    leader, follower = pty.openpty()
    try:
        process = subprocess.run(
            [*command, "-o", str(tmp_path / "tty"), "--call-id", "tty"],
            stdout=subprocess.PIPE,
            stderr=follower,
            check=False,
            timeout=120,
        )
        os.close(follower)
        shown = b""
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the terminal's other end is closed and drained
                break
            if not chunk:
                break
            shown += chunk
    finally:
        os.close(leader)
    assert process.returncode == 0
    screen = shown.decode()
    print(screen.replace("\r", "\n"))
    assert "finding the streams: 100% of" in screen
    assert "reading the chosen streams: 100% of" in screen
    assert "building the recording..." in screen
    piped = subprocess.run(
        [*command, "-o", str(tmp_path / "piped"), "--call-id", "piped"],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert piped.returncode == 0, piped.stderr
    assert piped.stderr == ""
    manifest = json.loads((tmp_path / "piped" / "conversation_piped_manifest.json").read_text())
    assert abs(manifest["duration_ms"] - 12_000) <= 100
