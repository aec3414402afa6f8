"""Tests for the agent WebSocket leg, with real aiohttp servers and clients on 127.0.0.1."""

import asyncio
import base64
import importlib
import json
import re
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import numpy as np
import numpy.typing as npt
import pytest
from aiohttp import web

from mediaserver.clock import ManualClock
from mediaserver.errors import AgentDialError, AgentProtocolError
from mediaserver.transports.agent import AgentConnection, accept, dial_out
from mediaserver.transports.link import AgentLink, Pcm
from mediaserver.transports.twilio_protocol import (
    L16_16K,
    compute_max_message_bytes,
)

from twilio_agent import (
    TwilioAgentServer,
    TwilioTestAgent,
    decode_mulaw,
    detect_pipecat_transport,
    dial_in,
    make_tone,
)

TIMEOUT_S = 5.0
CALL_ID = "call-7f3a"


class CollectingSink:
    """The session's side of an agent connection: records deliveries, echoes marks at once."""

    def __init__(self) -> None:
        self.audio: list[Pcm] = []
        self.arrivals_ns: list[int] = []
        self.delivered: list[tuple[int, int]] = []
        self.marks: list[str] = []
        self.clears = 0
        self.ended: list[str] = []
        self.link: AgentLink | None = None
        self.events: asyncio.Queue[str] = asyncio.Queue()

    def on_agent_audio(self, pcm: Pcm, arrival_ns: int) -> None:
        """Keep agent audio and when it arrived."""
        self.audio.append(pcm.copy())
        self.arrivals_ns.append(arrival_ns)
        self.events.put_nowait("audio")

    def on_caller_audio_sent(self, arrival_ns: int, sent_ns: int) -> None:
        """Keep how long caller audio waited for the agent's socket."""
        self.delivered.append((arrival_ns, sent_ns))

    def on_agent_mark(self, name: str) -> None:
        """Nothing queued to play: the mark is reached at once."""
        self.marks.append(name)
        if self.link is not None:
            self.link.send_mark(name)
        self.events.put_nowait("mark")

    def on_agent_clear(self) -> None:
        """Count barge-ins."""
        self.clears += 1
        self.events.put_nowait("clear")

    def on_agent_ended(self, reason: str) -> None:
        """Record why the agent left."""
        self.ended.append(reason)
        self.events.put_nowait("ended")

    async def wait(self, event: str, count: int = 1) -> None:
        """Wait until `count` deliveries of one kind have arrived."""
        async with asyncio.timeout(TIMEOUT_S):
            seen = 0
            while seen < count:
                if await self.events.get() == event:
                    seen += 1

    def received_audio(self) -> npt.NDArray[np.int16]:
        """All agent audio delivered so far."""
        return np.concatenate(self.audio) if self.audio else np.zeros(0, np.int16)


class AgentEndpoint:
    """A media server's dial-in endpoint, GET /v1/calls/{id}/agent, on 127.0.0.1 port 0."""

    def __init__(self, **accept_options: Any) -> None:
        self.accept_options = accept_options
        self.clock = ManualClock()
        self.accepted: asyncio.Queue[tuple[AgentConnection, CollectingSink]] = asyncio.Queue()
        self.connections: list[AgentConnection] = []
        self.base_url = ""
        self._runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        """Accept the agent, attach it to its sink, hold the socket until the stream ends."""
        sink = CollectingSink()
        try:
            connection, ws = await accept(
                request,
                sink=sink,
                call_id=request.match_info["call_id"],
                clock=self.clock,
                **self.accept_options,
            )
        except AgentProtocolError as exc:
            return web.json_response({"error": {"message": str(exc)}}, status=400)
        sink.link = connection
        self.connections.append(connection)
        self.accepted.put_nowait((connection, sink))
        await connection.wait_closed()
        return ws

    def url(self, query: str = "") -> str:
        """The agent URL of the test call."""
        return f"{self.base_url}/v1/calls/{CALL_ID}/agent{query}"

    async def next_connection(self) -> tuple[AgentConnection, CollectingSink]:
        """The server side of the next agent that dialled in."""
        return await asyncio.wait_for(self.accepted.get(), TIMEOUT_S)

    async def start(self) -> None:
        """Serve on an ephemeral port."""
        app = web.Application()
        app.router.add_get("/v1/calls/{call_id}/agent", self._handle)
        self._runner = web.AppRunner(app, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.base_url = f"ws://127.0.0.1:{self._runner.addresses[0][1]}"

    async def stop(self) -> None:
        """End every stream still open, then the server."""
        for connection in self.connections:
            await connection.close("test over")
        assert self._runner is not None
        await self._runner.cleanup()


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    """An HTTP client for agents and for dialling out."""
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def endpoint() -> AsyncIterator[AgentEndpoint]:
    """A dial-in endpoint with default options."""
    server = AgentEndpoint()
    await server.start()
    yield server
    await server.stop()


async def started(agent: TwilioTestAgent) -> tuple[dict[str, Any], dict[str, Any]]:
    """The `connected` and `start` messages every stream begins with."""
    return await agent.expect("connected"), await agent.expect("start")


def dominant_frequency_hz(samples: npt.NDArray[np.int16], rate_hz: int) -> float:
    """The strongest frequency of a signal, by FFT."""
    spectrum = np.abs(np.fft.rfft(samples.astype(np.float64) * np.hanning(samples.size)))
    return float(np.fft.rfftfreq(samples.size, 1 / rate_hz)[np.argmax(spectrum)])


def snr_db(reference: npt.NDArray[np.int16], received: npt.NDArray[np.int16]) -> float:
    """Signal-to-noise ratio of a received copy of a reference."""
    error = received.astype(np.float64) - reference.astype(np.float64)
    return float(10 * np.log10(np.sum(reference.astype(np.float64) ** 2) / np.sum(error**2)))


# -- the stream's opening ----------------------------------------------------------------------


async def test_dial_in_opens_with_connected_then_start(
    endpoint: AgentEndpoint, client: aiohttp.ClientSession
) -> None:
    """An agent that dials in gets `connected`, then a Twilio `start` for the call, μ-law 8 kHz."""
    async with dial_in(client, endpoint.url()) as agent:
        connection, _ = await endpoint.next_connection()
        connected, start = await started(agent)
    assert connected == {"event": "connected", "protocol": "Call", "version": "1.0.0"}
    assert start["sequenceNumber"] == "1"
    assert re.fullmatch("MZ[0-9a-f]{32}", start["streamSid"])
    assert start["start"]["streamSid"] == start["streamSid"] == connection.stream_sid
    assert start["start"]["callSid"] == CALL_ID
    assert re.fullmatch("AC[0-9a-f]{32}", start["start"]["accountSid"])
    assert start["start"]["tracks"] == ["inbound"]
    assert start["start"]["mediaFormat"] == {
        "encoding": "audio/x-mulaw",
        "sampleRate": 8000,
        "channels": 1,
    }
    assert detect_pipecat_transport(start) == "twilio"
    assert connection.sample_rate_hz == 8000


async def test_each_stream_gets_its_own_sid(
    endpoint: AgentEndpoint, client: aiohttp.ClientSession
) -> None:
    """Two agents on the endpoint get different stream sids."""
    async with dial_in(client, endpoint.url()) as first, dial_in(client, endpoint.url()) as second:
        _, start_1 = await started(first)
        _, start_2 = await started(second)
    assert start_1["streamSid"] != start_2["streamSid"]


async def test_bad_format_query_is_refused_before_upgrade(
    endpoint: AgentEndpoint, client: aiohttp.ClientSession
) -> None:
    """An agent asking for a format the server cannot stream gets HTTP 400, no WebSocket."""
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await client.ws_connect(endpoint.url("?format=opus"))
    assert info.value.status == 400


# -- caller audio to the agent -----------------------------------------------------------------


async def test_caller_audio_arrives_as_numbered_media(
    endpoint: AgentEndpoint, client: aiohttp.ClientSession
) -> None:
    """Caller chunks become `media` messages: sequence 2, 3, …; chunk 1, 2, …; ms timestamps."""
    tone = make_tone(700, 200, 8000)
    async with dial_in(client, endpoint.url()) as agent:
        connection, _ = await endpoint.next_connection()
        await started(agent)
        for chunk in np.split(tone, 10):
            connection.send_caller_audio(chunk)
            endpoint.clock.advance(0.020)
        media = [await agent.expect("media") for _ in range(10)]
    assert [m["sequenceNumber"] for m in media] == [str(n) for n in range(2, 12)]
    assert [m["media"]["chunk"] for m in media] == [str(n) for n in range(1, 11)]
    assert [m["media"]["timestamp"] for m in media] == [str(20 * n) for n in range(10)]
    assert {m["media"]["track"] for m in media} == {"inbound"}
    assert {m["streamSid"] for m in media} == {connection.stream_sid}
    heard = agent.caller_audio()
    assert heard.size == tone.size
    assert snr_db(tone, heard) > 30  # μ-law's ~38 dB for a loud tone
    assert dominant_frequency_hz(heard, 8000) == pytest.approx(700, abs=10)


async def test_timestamps_rise_through_a_burst_and_show_a_pause(
    endpoint: AgentEndpoint, client: aiohttp.ClientSession
) -> None:
    """A burst of chunks gets consecutive presentation times; a silent second shows as a gap."""
    async with dial_in(client, endpoint.url()) as agent:
        connection, _ = await endpoint.next_connection()
        await started(agent)
        for _ in range(3):
            connection.send_caller_audio(np.zeros(160, np.int16))
        endpoint.clock.advance(1.0)
        connection.send_caller_audio(np.zeros(160, np.int16))
        stamps = [int((await agent.expect("media"))["media"]["timestamp"]) for _ in range(4)]
    assert stamps == [0, 20, 40, 1000]


async def test_slow_agent_loses_oldest_audio_never_marks(
    endpoint: AgentEndpoint, client: aiohttp.ClientSession
) -> None:
    """With the socket full, queued caller chunks beyond the limit go oldest first; marks stay."""
    endpoint.accept_options["max_queued_messages"] = 3
    async with dial_in(client, endpoint.url()) as agent:
        connection, _ = await endpoint.next_connection()
        await started(agent)
        agent.stop_reading()
        chunks = 0
        # Written at once while the socket takes them; the kernel's buffers fill, then the
        # server's transport pauses and messages queue behind the write that waits.
        while connection.describe()["media_dropped"] == 0:
            connection.send_caller_audio(np.full(160, chunks % 100, np.int16))
            chunks += 1
            if chunks % 100 == 0:
                await asyncio.sleep(0)  # the loop flushes what the transport holds
            assert chunks < 200_000, "the agent's socket never filled"
        connection.send_mark("kept")
        for _ in range(10):
            connection.send_caller_audio(np.full(160, 1, np.int16))
            chunks += 1
        agent.resume_reading()
        mark = await agent.wait_for("mark")
        following = [await agent.next_message() for _ in range(3)]
        stats = connection.describe()
    assert mark["mark"]["name"] == "kept"
    media = [m for m in agent.messages if m["event"] == "media"]
    numbers = [int(m["media"]["chunk"]) for m in media]
    assert numbers == sorted(numbers)
    # The newest three were queued behind the mark and are never dropped for older ones.
    assert [int(m["media"]["chunk"]) for m in following] == [chunks - 2, chunks - 1, chunks]
    assert stats["media_dropped"] >= 8
    assert stats["media_sent"] + stats["media_dropped"] == chunks
    assert len(media) == stats["media_sent"]


# -- agent messages to the session -------------------------------------------------------------


async def test_agent_media_reaches_the_sink(
    endpoint: AgentEndpoint, client: aiohttp.ClientSession
) -> None:
    """Agent μ-law is decoded sample for sample as FFmpeg decodes it."""
    async with dial_in(client, endpoint.url()) as agent:
        _, sink = await endpoint.next_connection()
        await started(agent)
        expected = [await agent.send_tone(440, 200), await agent.send_tone(880, 100)]
        await sink.wait("audio", 2)
    assert np.array_equal(sink.received_audio(), np.concatenate(expected))
    assert dominant_frequency_hz(sink.audio[0], 8000) == pytest.approx(440, abs=10)
    assert dominant_frequency_hz(sink.audio[1], 8000) == pytest.approx(880, abs=10)


async def test_the_sink_learns_when_audio_arrived_and_left(
    endpoint: AgentEndpoint, client: aiohttp.ClientSession
) -> None:
    """Caller audio is reported written with its arrival; agent audio comes with its own."""
    async with dial_in(client, endpoint.url()) as agent:
        connection, sink = await endpoint.next_connection()
        await started(agent)
        now_ns = endpoint.clock.monotonic_ns()
        connection.send_caller_audio(make_tone(700, 20, 8000), arrival_ns=now_ns - 3_000_000)
        connection.send_caller_audio(make_tone(700, 20, 8000))  # no arrival given: not reported
        await agent.expect("media")
        await agent.expect("media")
        endpoint.clock.advance(0.5)
        await agent.send_tone(440, 20)
        await sink.wait("audio")
    assert sink.delivered == [(now_ns - 3_000_000, now_ns)]
    assert sink.arrivals_ns == [now_ns + 500_000_000]


async def test_marks_are_delivered_and_echoed(
    endpoint: AgentEndpoint, client: aiohttp.ClientSession
) -> None:
    """An agent's mark reaches the sink; the echo comes back with the same name."""
    async with dial_in(client, endpoint.url()) as agent:
        connection, sink = await endpoint.next_connection()
        await started(agent)
        await agent.send_tone(440, 100)
        await agent.send_mark("greeting done")
        echo = await agent.expect("mark")
    assert sink.marks == ["greeting done"]
    assert echo == {
        "event": "mark",
        "sequenceNumber": "2",
        "streamSid": connection.stream_sid,
        "mark": {"name": "greeting done"},
    }


async def test_clear_reaches_the_sink(
    endpoint: AgentEndpoint, client: aiohttp.ClientSession
) -> None:
    """A `clear` from the agent is a barge-in for the session."""
    async with dial_in(client, endpoint.url()) as agent:
        _, sink = await endpoint.next_connection()
        await started(agent)
        await agent.send_clear()
        await sink.wait("clear")
    assert sink.clears == 1


async def test_unknown_events_are_ignored(
    endpoint: AgentEndpoint, client: aiohttp.ClientSession
) -> None:
    """Events agents do not send to Twilio are skipped and counted; the stream goes on."""
    async with dial_in(client, endpoint.url()) as agent:
        connection, sink = await endpoint.next_connection()
        await started(agent)
        await agent.send_json({"event": "rtvi-ai", "data": {"type": "bot-ready"}})
        await agent.send_json({"event": "rtvi-ai", "data": {}})
        await agent.send_tone(440, 20)
        await sink.wait("audio")
    assert connection.stats.messages_ignored == 2
    assert sink.ended == []


@pytest.mark.parametrize("rate_hz", [16000, 24000])
async def test_wideband_l16_both_ways(
    endpoint: AgentEndpoint, client: aiohttp.ClientSession, rate_hz: int
) -> None:
    """An agent asking for L16 gets it at its rate, little-endian, sample-exact both ways."""
    caller = make_tone(1000, 100, rate_hz)
    async with dial_in(client, endpoint.url(f"?format=l16&rate={rate_hz}")) as agent:
        connection, sink = await endpoint.next_connection()
        _, start = await started(agent)
        connection.send_caller_audio(caller)
        await agent.expect("media")
        sent = await agent.send_tone(3000, 100)
        await sink.wait("audio")
    assert start["start"]["mediaFormat"] == {
        "encoding": "audio/x-l16",
        "sampleRate": rate_hz,
        "channels": 1,
    }
    assert connection.sample_rate_hz == rate_hz
    assert np.array_equal(agent.caller_audio(), caller)
    assert np.array_equal(sink.received_audio(), sent)
    assert dominant_frequency_hz(sink.received_audio(), rate_hz) == pytest.approx(3000, abs=20)


# -- protocol errors ---------------------------------------------------------------------------


def media_with_payload(sid: str, payload: Any) -> str:
    """A media message with any payload value."""
    return json.dumps({"event": "media", "streamSid": sid, "media": {"payload": payload}})


GARBAGE = [
    pytest.param(lambda sid: "hello", 1007, "not JSON", id="not-json"),
    pytest.param(lambda sid: b"\x00\x01", 1003, "binary frames", id="binary"),
    pytest.param(
        lambda sid: json.dumps({"event": "media", "streamSid": sid, "media": {}}),
        1007,
        "media.payload",
        id="missing-payload",
    ),
    pytest.param(lambda sid: json.dumps({"event": "clear"}), 1007, "streamSid", id="no-sid"),
    pytest.param(
        lambda sid: json.dumps({"event": "clear", "streamSid": "MZ" + "0" * 32}),
        1007,
        "not this stream",
        id="wrong-sid",
    ),
    pytest.param(lambda sid: media_with_payload(sid, "%%%%"), 1007, "base64", id="bad-base64"),
    pytest.param(
        lambda sid: media_with_payload(sid, "A" * 1400), 1009, "exceeds 1000 bytes", id="oversized"
    ),
]


@pytest.mark.parametrize(("frame", "close_code", "reason"), GARBAGE)
async def test_garbage_closes_with_code_and_reason(
    client: aiohttp.ClientSession, frame: Any, close_code: int, reason: str
) -> None:
    """A malformed frame closes the socket with the fitting code and reason, ending the leg once."""
    endpoint = AgentEndpoint(max_payload_bytes=1000)
    await endpoint.start()
    try:
        async with dial_in(client, endpoint.url()) as agent:
            connection, sink = await endpoint.next_connection()
            await started(agent)
            data = frame(agent.stream_sid)
            if isinstance(data, bytes):
                await agent.ws.send_bytes(data)
            else:
                await agent.ws.send_str(data)
            assert await agent.wait_closed() == close_code
            await connection.wait_closed()
        assert reason in agent.close_reason
        assert sink.ended == ["protocol_error"]
        await connection.close("late close")
        assert sink.ended == ["protocol_error"]
    finally:
        await endpoint.stop()


async def test_message_over_websocket_limit_closes_1009(client: aiohttp.ClientSession) -> None:
    """A frame bigger than the WebSocket limit is refused by aiohttp with 1009: a protocol error."""
    endpoint = AgentEndpoint(max_payload_bytes=1000)
    await endpoint.start()
    try:
        async with dial_in(client, endpoint.url()) as agent:
            connection, sink = await endpoint.next_connection()
            await started(agent)
            await agent.ws.send_str("x" * (compute_max_message_bytes(1000) + 1))
            assert await agent.wait_closed() == 1009
            await connection.wait_closed()
        assert sink.ended == ["protocol_error"]
    finally:
        await endpoint.stop()


# -- endings -----------------------------------------------------------------------------------


async def test_agent_hangup_ends_the_leg(
    endpoint: AgentEndpoint, client: aiohttp.ClientSession
) -> None:
    """An agent that closes its socket ends the leg as "disconnected", once."""
    async with dial_in(client, endpoint.url()) as agent:
        connection, sink = await endpoint.next_connection()
        await started(agent)
    await asyncio.wait_for(connection.wait_closed(), TIMEOUT_S)
    assert sink.ended == ["disconnected"]
    connection.send_caller_audio(np.zeros(160, np.int16))  # after the end: silently ignored


async def test_silent_agent_is_dropped_by_heartbeat(client: aiohttp.ClientSession) -> None:
    """An agent that stops answering pings is disconnected by the heartbeat."""
    endpoint = AgentEndpoint(heartbeat_s=0.1)
    await endpoint.start()
    try:
        ws = await client.ws_connect(endpoint.url(), autoping=False)
        connection, sink = await endpoint.next_connection()
        await sink.wait("ended")
        await ws.close()
        assert sink.ended == ["disconnected"]
        assert connection.state.value == "closed"
    finally:
        await endpoint.stop()


async def test_close_sends_stop_then_closes_normally(
    endpoint: AgentEndpoint, client: aiohttp.ClientSession
) -> None:
    """Closing sends queued audio, then `stop`, then a 1000 close with the reason; idempotent."""
    async with dial_in(client, endpoint.url()) as agent:
        connection, sink = await endpoint.next_connection()
        await started(agent)
        connection.send_caller_audio(np.zeros(160, np.int16))
        await asyncio.gather(connection.close("caller hung up"), connection.close("again"))
        await connection.close("and again")
        media = await agent.expect("media")
        stop = await agent.expect("stop")
        assert await agent.wait_closed() == 1000
    assert media["sequenceNumber"] == "2"
    assert stop == {
        "event": "stop",
        "sequenceNumber": "3",
        "stop": {"accountSid": "AC" + "0" * 32, "callSid": CALL_ID},
        "streamSid": connection.stream_sid,
    }
    assert agent.close_reason == "caller hung up"
    assert sink.ended == []  # the session asked for the end; it is not told again


# -- dialling out ------------------------------------------------------------------------------


async def test_dial_out_streams_both_ways(client: aiohttp.ClientSession) -> None:
    """The server dials the agent's URL like Twilio: start with parameters, audio, marks, stop."""
    sink = CollectingSink()
    async with TwilioAgentServer() as agent_server:
        connection = await dial_out(
            agent_server.url,
            sink=sink,
            call_id=CALL_ID,
            session=client,
            timeout_s=TIMEOUT_S,
            custom_parameters={"from_number": "+15550100"},
        )
        sink.link = connection
        agent = await agent_server.next_agent()
        _, start = await started(agent)
        caller = make_tone(500, 100, 8000)
        connection.send_caller_audio(caller)
        await agent.expect("media")
        sent = await agent.send_tone(1200, 100)
        await agent.send_mark("m1")
        await agent.expect("mark")
        await connection.close("call ended")
        await agent.expect("stop")
        assert await agent.wait_closed() == 1000
    assert start["start"]["callSid"] == CALL_ID
    assert start["start"]["customParameters"] == {"from_number": "+15550100"}
    assert detect_pipecat_transport(start) == "twilio"
    assert snr_db(caller, agent.caller_audio()) > 30
    assert np.array_equal(sink.received_audio(), sent)
    assert sink.marks == ["m1"]
    assert sink.ended == []


async def test_dial_out_in_wideband(client: aiohttp.ClientSession) -> None:
    """A call created with L16 16 kHz announces it in `start` and streams L16."""
    sink = CollectingSink()
    async with TwilioAgentServer() as agent_server:
        connection = await dial_out(
            agent_server.url, sink=sink, call_id=CALL_ID, session=client, audio_format=L16_16K
        )
        agent = await agent_server.next_agent()
        _, start = await started(agent)
        connection.send_caller_audio(make_tone(800, 40, 16000))
        await agent.expect("media")
        await agent.close()
        await sink.wait("ended")
    assert start["start"]["mediaFormat"]["encoding"] == "audio/x-l16"
    assert agent.caller_audio().size == 640
    assert sink.ended == ["disconnected"]


async def test_dial_out_failures_are_dial_errors(client: aiohttp.ClientSession) -> None:
    """Unreachable agents, refused upgrades and non-WebSocket URLs raise AgentDialError."""
    async with TwilioAgentServer() as agent_server:
        port = int(agent_server.url.split(":")[2].split("/")[0])
        refused = agent_server.url.replace("/agent", "/nowhere")
        with pytest.raises(AgentDialError, match="refused"):
            await dial_out(refused, sink=CollectingSink(), call_id=CALL_ID, session=client)
    with pytest.raises(AgentDialError, match="refused"):
        await dial_out(
            f"ws://127.0.0.1:{port}/agent", sink=CollectingSink(), call_id=CALL_ID, session=client
        )
    with pytest.raises(AgentDialError, match="ws:// or wss://"):
        await dial_out(
            "http://127.0.0.1/agent", sink=CollectingSink(), call_id=CALL_ID, session=client
        )


# -- an agent built on pipecat -----------------------------------------------------------------


async def test_pipecat_twilio_serializer_talks_to_the_server(
    endpoint: AgentEndpoint, client: aiohttp.ClientSession
) -> None:
    """pipecat's own Twilio serializer reads our messages and its output plays (if installed)."""
    twilio = importlib.import_module("pipecat.serializers.twilio")
    frames = importlib.import_module("pipecat.frames.frames")
    runner = importlib.import_module("pipecat.runner.utils")
    async with dial_in(client, endpoint.url()) as agent:
        connection, sink = await endpoint.next_connection()
        _, start = await started(agent)
        assert runner._detect_transport_type_from_message(start) == "twilio"
        serializer = twilio.TwilioFrameSerializer(
            stream_sid=start["start"]["streamSid"],
            call_sid=start["start"]["callSid"],
            params=twilio.TwilioFrameSerializer.InputParams(auto_hang_up=False, sample_rate=8000),
        )
        await serializer.setup(None)
        caller = make_tone(600, 100, 8000)
        connection.send_caller_audio(caller)
        media = await agent.next_message()
        heard = await serializer.deserialize(json.dumps(media))
        assert isinstance(heard, frames.InputAudioRawFrame)
        assert heard.sample_rate == 8000
        heard_pcm = np.frombuffer(heard.audio, dtype="<i2")
        assert snr_db(caller, heard_pcm) > 30
        speech = make_tone(900, 100, 8000)
        out = frames.OutputAudioRawFrame(audio=speech.tobytes(), sample_rate=8000, num_channels=1)
        spoken = await serializer.serialize(out)
        await agent.ws.send_str(spoken)
        await agent.ws.send_str(await serializer.serialize(frames.InterruptionFrame()))
        await sink.wait("clear")
    assert sink.clears == 1
    assert snr_db(speech, sink.received_audio()) > 30
    payload = base64.b64decode(json.loads(spoken)["media"]["payload"])
    assert np.array_equal(sink.received_audio(), decode_mulaw(payload))
