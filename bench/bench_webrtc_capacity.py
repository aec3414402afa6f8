"""WebRTC calls per core: the mediaserver against aiortc's server example, same load, same run."""

# Each step runs one server in its own process pinned to one CPU and the load (aiortc callers
# sending pre-encoded Opus, plus Twilio-style agents for the mediaserver) in another process
# pinned to the other CPU. Figures are taken in the server process over the measured window;
# loss is counted over each call's whole life, from both ends' counters.

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import importlib.util
import multiprocessing
import os
import resource
import secrets
import shutil
import signal
import statistics
import tempfile
import time
import wave
from collections.abc import Callable
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import numpy as np
from aiohttp import web
from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.contrib.media import MediaPlayer, MediaRecorder
from av import AudioFrame
from common import print_table, quiet_logging, renice
from webrtc_load import LoadPlan, LoadReport, run_load_process

from mediaserver.server import start_server
from mediaserver.settings import Settings
from mediaserver.transports.webrtc import use_ice_host_addresses

HOST = "127.0.0.1"
TOKEN = "bench-token-0123456789"
MEDIASERVER = "mediaserver"
REFERENCE = "reference"
LAG_PROBE_S = 0.010
TARGET_LAG_P99_MS = 10.0
TARGET_RATIO = 2.0
# aiortc's audio jitter buffer (RTCRtpReceiver: JitterBuffer(capacity=16, prefetch=4)) hands a
# frame on only once 4 newer packets are queued behind it, so the last 4 packets of a stream
# that stops are held, not lost.
REFERENCE_JITTER_HELD_PACKETS = 4
PLAYER_TONE_HZ = 700.0
# The player's WAV outlasts set-up, warm-up, the window and the drain by this much.
PLAYER_WAV_MARGIN_S = 120.0
PLAYER_RATE_HZ = 48_000
SERVER_START_TIMEOUT_S = 60.0
STEP_TIMEOUT_S = 180.0
SERVER_STOP_TIMEOUT_S = 60.0
# A step that fails while other processes took more of the server's core than this is run
# again, once: the machine is shared, and one noisy step would end a ladder early.
NOISY_OTHERS_PERCENT = 5.0
DEFAULT_STEPS = "6,8,10,12,14,16,18,20,22,25,30"
QUICK_STEPS = "2,4"


# -- the reference: aiortc's examples/server/server.py, the way it works -------------------------
# (aiortc/aiortc examples/server/server.py, `offer`): one RTCPeerConnection per POSTed offer; on
# the remote audio track it adds a MediaPlayer's audio track to send back and gives the remote
# track to a MediaRecorder, which decodes it and re-encodes it (libopus into .ogg here). The
# example's player plays the few seconds of demo-instruct.wav once; here it plays a tone WAV
# that outlasts the step, so that the reference, like the mediaserver, sends audio for the whole
# call. (Not MediaPlayer(loop=True): after its first seek aiortc 1.16's player stops pacing and
# sends about 3.5 times real time.) The example's module-level `pcs` set is an AppKey here.


class CountingTrack(MediaStreamTrack):
    """Passes the remote track's decoded frames to the recorder and counts them (measurement)."""

    kind = "audio"

    def __init__(self, source: MediaStreamTrack) -> None:
        super().__init__()
        self._source = source
        self.frames = 0

    async def recv(self) -> AudioFrame:
        """The source's next frame."""
        frame = await self._source.recv()
        if not isinstance(frame, AudioFrame):
            raise TypeError(f"an audio track gave {type(frame).__name__}")
        self.frames += 1
        return frame


@dataclass(slots=True)
class ReferenceCall:
    """One peer connection of the reference server and what it plays and records."""

    pc: RTCPeerConnection
    player: MediaPlayer
    recorder: MediaRecorder
    counter: CountingTrack | None = None


REFERENCE_CALLS = web.AppKey("reference_calls", dict[str, ReferenceCall])
REFERENCE_DIR = web.AppKey("reference_dir", Path)


async def reference_offer(request: web.Request) -> web.Response:
    """POST /offer: answer the offer, play audio back, record what arrives."""
    params = await request.json()
    offer = RTCSessionDescription(sdp=params["sdp"], type=params["type"])
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    call_id = secrets.token_hex(8)
    work_dir = request.app[REFERENCE_DIR]
    call = ReferenceCall(
        pc=pc,
        player=MediaPlayer(str(work_dir / "player.wav")),
        recorder=MediaRecorder(str(work_dir / f"{call_id}.ogg")),
    )
    request.app[REFERENCE_CALLS][call_id] = call

    async def on_connection_state_change() -> None:
        if pc.connectionState == "failed":
            await pc.close()

    def on_track(track: MediaStreamTrack) -> None:
        if track.kind == "audio" and call.player.audio is not None:
            pc.addTrack(call.player.audio)
            call.counter = CountingTrack(track)
            call.recorder.addTrack(call.counter)

    pc.add_listener("connectionstatechange", on_connection_state_change)
    pc.add_listener("track", on_track)
    await pc.setRemoteDescription(offer)
    await call.recorder.start()
    answer = await pc.createAnswer()
    # The one change the example needs here: aioice leaves loopback out of its candidates.
    with use_ice_host_addresses([HOST]):
        await pc.setLocalDescription(answer)
    return web.json_response(
        {"sdp": pc.localDescription.sdp, "type": pc.localDescription.type, "id": call_id}
    )


async def reference_stats(request: web.Request) -> web.Response:
    """GET /stats: frames each call's recorder was given (measurement, not in the example)."""
    return web.json_response(
        {
            "calls": [
                {
                    "id": call_id,
                    "recorded_frames": call.counter.frames if call.counter else 0,
                    "state": call.pc.connectionState,
                }
                for call_id, call in request.app[REFERENCE_CALLS].items()
            ]
        }
    )


def write_player_wav(path: Path, duration_s: float) -> None:
    """A 48 kHz mono tone for the reference's MediaPlayer to play."""
    t = np.arange(int(duration_s * PLAYER_RATE_HZ)) / PLAYER_RATE_HZ
    samples = (8000 * np.sin(2 * np.pi * PLAYER_TONE_HZ * t)).astype("<i2")
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(PLAYER_RATE_HZ)
        out.writeframes(samples.tobytes())


async def start_reference(work_dir: Path, play_s: float) -> tuple[web.AppRunner, int]:
    """Start the reference server on a free port, with `play_s` of audio to send each caller."""
    write_player_wav(work_dir / "player.wav", play_s)
    app = web.Application()
    app[REFERENCE_CALLS] = {}
    app[REFERENCE_DIR] = work_dir
    app.router.add_post("/offer", reference_offer)
    app.router.add_get("/stats", reference_stats)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, HOST, 0)
    await site.start()
    return runner, int(runner.addresses[0][1])


# -- the server process ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ServerFigures:
    """What the server process measured over the window."""

    cpu_percent: float
    # CPU time other processes took on the server's core, as a share of the window.
    others_percent: float
    lag_p50_ms: float
    lag_p99_ms: float
    lag_max_ms: float


def read_cpu_busy_s(cpu: int | None) -> float:
    """Seconds one CPU (all CPUs if None) has spent busy since boot (/proc/stat)."""
    name = "cpu" if cpu is None else f"cpu{cpu}"
    for line in Path("/proc/stat").read_text().splitlines():
        fields = line.split()
        if fields[0] == name:
            # user nice system idle iowait irq softirq steal: all but idle and iowait are busy.
            ticks = [int(value) for value in fields[1:9]]
            return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")
    raise RuntimeError(f"/proc/stat has no {name} line")


def cpu_seconds() -> float:
    """User plus system CPU time of this process, all threads, so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def percentile(values: list[float], fraction: float) -> float:
    """The value below which `fraction` of the values lie (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def probe_lag(lags_ms: list[float]) -> None:
    """Sleep 10 ms over and over and record how late each wake-up is."""
    while True:
        started_ns = time.perf_counter_ns()
        await asyncio.sleep(LAG_PROBE_S)
        lags_ms.append((time.perf_counter_ns() - started_ns) / 1e6 - LAG_PROBE_S * 1e3)


def mediaserver_settings(work_dir: Path) -> Settings:
    """The server as the end-to-end tests run it: loopback, a token, its own spool."""
    return replace(
        Settings(),
        spool_path=work_dir / "spool",
        storage_path=str(work_dir / "recordings"),
        port=0,
        api_token=TOKEN,
        ice_host_addresses=HOST,
        finalize_workers=1,
        stereo_mode="lossless",
        drain_timeout_s=SERVER_STOP_TIMEOUT_S,
        log_format="json",
        log_level="warning",
        # The bench finds the load the core carries cleanly: admission control would refuse
        # calls (503) on its own CPU and loop-lag estimates before the step could show it.
        max_cpu_share=0.0,
        max_loop_lag_ms=0.0,
        # The load waits for each caller's first packet from the server before it measures:
        # the pacer's silence frames, sent every tick while the agent is quiet.
        send_silence=True,
    )


async def stop_reference(runner: web.AppRunner) -> None:
    """Close every peer connection and recorder, as the example's on_shutdown does."""
    for call in runner.app[REFERENCE_CALLS].values():
        await call.pc.close()
        await call.recorder.stop()
    await runner.cleanup()


async def serve(
    conn: Connection, kind: str, work_dir: Path, play_s: float, cpu: int | None
) -> None:
    """Start one server, then answer the orchestrator: mark, report, exit (stop gracefully)."""
    if kind == MEDIASERVER:
        server = await start_server(mediaserver_settings(work_dir))
        port = server.port
        stop = server.stop
    else:
        runner, port = await start_reference(work_dir, play_s)

        async def stop() -> None:
            await stop_reference(runner)

    lags_ms: list[float] = []
    probe = asyncio.create_task(probe_lag(lags_ms))
    conn.send(port)
    cpu_start_s = busy_start_s = wall_start_s = 0.0
    while (command := await asyncio.to_thread(conn.recv)) != "exit":
        if command == "mark":
            cpu_start_s, busy_start_s = cpu_seconds(), read_cpu_busy_s(cpu)
            wall_start_s = time.monotonic()
            lags_ms.clear()
        elif command == "report":
            wall_s = time.monotonic() - wall_start_s
            window_ms = list(lags_ms)
            own_s = cpu_seconds() - cpu_start_s
            others_s = read_cpu_busy_s(cpu) - busy_start_s - own_s
            conn.send(
                ServerFigures(
                    cpu_percent=100 * own_s / wall_s,
                    others_percent=max(0.0, 100 * others_s / wall_s),
                    lag_p50_ms=statistics.median(window_ms),
                    lag_p99_ms=percentile(window_ms, 0.99),
                    lag_max_ms=max(window_ms),
                )
            )
    probe.cancel()
    await asyncio.gather(probe, return_exceptions=True)
    await stop()


def loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop]:
    """The event loop a server runs on: asyncio's own or uvloop."""
    if name == "uvloop":
        uvloop = importlib.import_module("uvloop")  # optional: measured only when installed
        factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
        return factory
    return asyncio.new_event_loop


def run_server_process(
    conn: Connection,
    kind: str,
    loop_name: str,
    work_dir: Path,
    play_s: float,
    cpu: int | None,
    nice: int,
) -> None:
    """The server process's entry point: its own process group, CPU and priority."""
    os.setsid()  # the orchestrator kills the group (the recorder's workers too); own autogroup
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    if nice:
        renice(nice)
    quiet_logging()
    with asyncio.Runner(loop_factory=loop_factory(loop_name)) as runner:
        runner.run(serve(conn, kind, work_dir, play_s, cpu))


# -- one step: N calls against one server ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Loss:
    """Packets and frames sent into a server that did not come out where they should."""

    sent: int
    lost: int
    detail: str

    @property
    def percent(self) -> float:
        """Lost as a share of sent."""
        return 100 * self.lost / self.sent if self.sent else 0.0


@dataclass(frozen=True, slots=True)
class StepResult:
    """One (server, loop, N) step: the server's figures, the loss, the load's own CPU."""

    kind: str
    loop_name: str
    calls: int
    server: ServerFigures | None
    loss: Loss | None
    load: LoadReport | None
    error: str = ""
    # Run again because other processes took the server's core while it failed.
    superseded: bool = False

    @property
    def passed(self) -> bool:
        """Loss 0, lag p99 under target and the core not saturated."""
        return (
            self.server is not None
            and self.loss is not None
            and self.loss.lost == 0
            and self.server.lag_p99_ms < TARGET_LAG_P99_MS
            and self.server.cpu_percent < 100.0
        )


# The server's own counts of caller audio it did not send the agent (see CallSession.drop_counts).
WITHHELD_FROM_AGENT = ("late_for_agent", "backlog_for_agent", "undecodable_for_agent")


def compute_mediaserver_loss(report: LoadReport) -> Loss:
    """Caller packets not journalled, agent frames not played, played audio not delivered."""
    by_id = {call["call_id"]: call for call in report.server_counts["calls"]}
    caller_lost = agent_lost = out_lost = to_agent_lost = sent = 0
    for counts in report.calls:
        call = by_id[counts.server_id]
        journalled = call["legs"]["caller"]["packets"]
        played = call["legs"]["agent"]["frames_played"]
        caller_lost += counts.caller_packets_sent - journalled
        agent_lost += counts.agent_frames_sent - played
        out_lost += played - counts.audio_packets_from_server
        # Caller audio the server counted as not sent to the agent on purpose (a burst beyond
        # caller_backlog_ms, say) is reported, not lost.
        withheld = sum(call["dropped"].get(reason, 0) for reason in WITHHELD_FROM_AGENT)
        to_agent_lost += journalled - withheld - counts.agent_media_received
        sent += counts.caller_packets_sent + counts.agent_frames_sent
    detail = (
        f"caller {caller_lost}, agent {agent_lost}, to caller {out_lost}, to agent {to_agent_lost}"
    )
    lost = caller_lost + agent_lost + out_lost + to_agent_lost
    return Loss(sent=sent, lost=lost, detail=detail)


def compute_reference_loss(report: LoadReport) -> Loss:
    """Caller packets that never reached the recorder (beyond the jitter buffer's held tail)."""
    by_id = {call["id"]: call for call in report.server_counts["calls"]}
    lost = sent = 0
    for counts in report.calls:
        recorded = by_id[counts.server_id]["recorded_frames"]
        lost += max(0, counts.caller_packets_sent - recorded - REFERENCE_JITTER_HELD_PACKETS)
        sent += counts.caller_packets_sent
    return Loss(sent=sent, lost=lost, detail=f"caller {lost}")


def receive(conn: Connection, timeout_s: float, what: str) -> Any:
    """The next message from a child process, or an error naming what did not come."""
    if not conn.poll(timeout_s):
        raise TimeoutError(f"no {what} within {timeout_s:g} s")
    message = conn.recv()
    if isinstance(message, str) and message.startswith("load failed"):
        raise RuntimeError(message)
    return message


def kill_group(process: BaseProcess | None) -> None:
    """Kill a child's whole process group and reap the child."""
    if process is None or process.pid is None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.join(5)


@dataclass(frozen=True, slots=True)
class StepPlan:
    """The settings every step shares."""

    warmup_s: float
    measure_s: float
    server_cpu: int | None
    load_cpu: int | None
    nice: int


def run_step(kind: str, loop_name: str, calls: int, plan: StepPlan) -> StepResult:
    """Start a server and a load of N calls, measure, stop both, return the figures."""
    context = multiprocessing.get_context("spawn")
    work_dir = Path(tempfile.mkdtemp(prefix="bench-webrtc-"))
    server_conn, server_child = context.Pipe()
    server = context.Process(
        target=run_server_process,
        args=(
            server_child,
            kind,
            loop_name,
            work_dir,
            plan.warmup_s + plan.measure_s + PLAYER_WAV_MARGIN_S,
            plan.server_cpu,
            plan.nice,
        ),
        daemon=False,  # the recorder starts worker processes when it finalizes
    )
    load: BaseProcess | None = None
    try:
        server.start()
        port = receive(server_conn, SERVER_START_TIMEOUT_S, "server port")
        load_conn, load_child = context.Pipe()
        load = context.Process(
            target=run_load_process,
            args=(
                load_child,
                LoadPlan(kind, f"http://{HOST}:{port}", calls, TOKEN, plan.load_cpu, plan.nice),
            ),
            daemon=True,
        )
        load.start()
        receive(load_conn, STEP_TIMEOUT_S, "ready from the load")
        time.sleep(plan.warmup_s)
        server_conn.send("mark")
        load_conn.send("mark")
        time.sleep(plan.measure_s)
        server_conn.send("report")
        figures: ServerFigures = receive(server_conn, 30, "server figures")
        load_conn.send("stop")
        report: LoadReport = receive(load_conn, 60, "counts from the load")
        loss = (
            compute_mediaserver_loss(report)
            if kind == MEDIASERVER
            else compute_reference_loss(report)
        )
        return StepResult(kind, loop_name, calls, figures, loss, report)
    except (TimeoutError, RuntimeError, KeyError, EOFError, OSError) as error:
        return StepResult(kind, loop_name, calls, None, None, None, error=repr(error))
    finally:
        kill_group(load)
        # A graceful stop finalizes every recording (lossless stereo: a remux, no encode) and
        # releases the recorder's worker processes; the window is already measured.
        if server.is_alive():
            with contextlib.suppress(OSError):
                server_conn.send("exit")
            server.join(SERVER_STOP_TIMEOUT_S)
        kill_group(server)
        shutil.rmtree(work_dir, ignore_errors=True)


# -- the run -----------------------------------------------------------------------------------


def result_row(result: StepResult) -> list[object]:
    """One table row."""
    name = f"{result.kind} ({result.loop_name})"
    if result.server is None or result.loss is None or result.load is None:
        return [name, result.calls, *["-"] * 10, f"step failed: {result.error}"]
    server, loss, load = result.server, result.loss, result.load
    return [
        name,
        result.calls,
        f"{server.cpu_percent:.1f}",
        f"{server.others_percent:.1f}",
        f"{server.lag_p50_ms:.2f}",
        f"{server.lag_p99_ms:.2f}",
        f"{server.lag_max_ms:.1f}",
        f"{loss.percent:.3f}",
        f"{load.caller_pps:.1f}",
        f"{load.server_pps:.1f}",
        f"{load.cpu_percent:.1f}",
        f"{load.setup_s:.1f}",
        ("ok" if result.passed else "FAIL")
        + f" (lost: {loss.detail})"
        + (" noisy: measured again" if result.superseded else ""),
    ]


def is_noisy_failure(result: StepResult) -> bool:
    """A failed step during which other processes took a noticeable share of the core."""
    return (
        not result.passed
        and result.server is not None
        and result.server.others_percent > NOISY_OTHERS_PERCENT
    )


def calls_per_core(results: list[StepResult], kind: str, loop_name: str) -> int:
    """The largest N that passed, among the steps before the first failure."""
    best = 0
    for result in results:
        if result.kind == kind and result.loop_name == loop_name and not result.superseded:
            if not result.passed:
                break
            best = result.calls
    return best


def main() -> None:
    """Climb the N steps for each server until it fails the target; print the table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", default=DEFAULT_STEPS, help="comma-separated N (calls)")
    parser.add_argument("--seconds", type=float, default=20.0, help="measured seconds per step")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds before measuring")
    parser.add_argument("--loops", default="asyncio", help="server loops: asyncio,uvloop")
    parser.add_argument(
        "--servers", default=f"{MEDIASERVER},{REFERENCE}", help="which servers to measure"
    )
    parser.add_argument("--quick", action="store_true", help="a small run for smoke testing")
    parser.add_argument("--server-cpu", type=int, default=0)
    parser.add_argument("--load-cpu", type=int, default=1)
    parser.add_argument(
        "--nice", type=int, default=0, help="niceness increment (negative needs root)"
    )
    args = parser.parse_args()
    if args.quick:
        args.steps, args.seconds, args.warmup = QUICK_STEPS, 5.0, 1.0
    quiet_logging()
    cpus = os.sched_getaffinity(0)
    plan = StepPlan(
        warmup_s=args.warmup,
        measure_s=args.seconds,
        server_cpu=args.server_cpu if args.server_cpu in cpus else None,
        load_cpu=args.load_cpu if args.load_cpu in cpus else None,
        nice=args.nice,
    )
    loops = []
    for name in args.loops.split(","):
        if name == "uvloop" and importlib.util.find_spec("uvloop") is None:
            print("uvloop is not installed: skipped")
            continue
        loops.append(name)
    kinds = args.servers.split(",")
    steps = [int(n) for n in args.steps.split(",")]
    print(
        f"WebRTC capacity: each call is an aiortc caller sending pre-encoded Opus at 50 "
        f"packets/s; mediaserver calls also have an agent WebSocket sending μ-law at 50 "
        f"messages/s (the reference has no agent); the mediaserver's admission guards off. "
        f"Server on CPU {plan.server_cpu}, load on CPU {plan.load_cpu}, nice {args.nice}; "
        f"{plan.warmup_s:g} s warm-up, "
        f"{plan.measure_s:g} s measured per step; load average "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}",
        flush=True,
    )
    ladders = [(kind, loop_name) for kind in kinds for loop_name in loops]
    results: list[StepResult] = []
    climbing = set(ladders)
    # The servers alternate at each N, so that a noisy neighbour spoils all of them alike.
    for calls in steps:
        for kind, loop_name in ladders:
            if (kind, loop_name) not in climbing:
                continue
            result = run_step(kind, loop_name, calls, plan)
            if is_noisy_failure(result):
                results.append(replace(result, superseded=True))
                print("  " + "  ".join(map(str, result_row(results[-1]))), flush=True)
                result = run_step(kind, loop_name, calls, plan)
            results.append(result)
            print("  " + "  ".join(map(str, result_row(result))), flush=True)
            if not result.passed:
                climbing.discard((kind, loop_name))
    print()
    print_table(
        [
            "server (loop)",
            "calls",
            "CPU %",
            "others on core %",
            "lag p50 ms",
            "lag p99 ms",
            "lag max ms",
            "loss %",
            "in pkt/s/call",
            "out pkt/s/call",
            "load CPU %",
            "setup s",
            "verdict",
        ],
        [result_row(r) for r in sorted(results, key=lambda r: (r.kind, r.loop_name, r.calls))],
    )
    print()
    for loop_name in loops:
        ours = calls_per_core(results, MEDIASERVER, loop_name)
        theirs = calls_per_core(results, REFERENCE, loop_name)
        print(
            f"{loop_name}: calls per core (loss 0, lag p99 < {TARGET_LAG_P99_MS:g} ms, "
            f"CPU < 100 %): mediaserver {ours}, aiortc example {theirs}",
            end="",
        )
        if theirs:
            ratio = ours / theirs
            verdict = "met" if ratio >= TARGET_RATIO else "MISSED"
            print(f"; ratio {ratio:.2f} (target >= {TARGET_RATIO:g}: {verdict})")
        else:
            print("; ratio undefined (the reference passed no step)")
    print(f"load average after the run: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
