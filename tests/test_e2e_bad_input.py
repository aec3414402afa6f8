"""Bad input from every side gets its clear error; the server keeps serving, other calls intact."""

import asyncio
import random
from pathlib import Path

import aiohttp
import numpy as np

from audio_oracle import assert_valid_opus, decode_ogg, find_onset
from rtp_caller import open_caller
from rtp_sender import marker_template, silence_payload
from server_harness import TOKEN, auth, make_settings, running_server, wait_for_recording

CALLER_HZ = 500.0


def _payloads(total_s: float, marker_s: float) -> list[bytes]:
    payloads = [silence_payload()] * int(total_s / 0.02)
    template = marker_template(CALLER_HZ)
    first = round(marker_s / 0.02) - 10
    payloads[first : first + len(template)] = template
    return payloads


def _garbage(rng: random.Random, valid: bytes) -> bytes:
    """Random bytes, or a valid packet with a few bytes flipped or cut."""
    kind = rng.randrange(3)
    if kind == 0:
        return rng.randbytes(rng.randrange(0, 1500))
    data = bytearray(valid)
    if kind == 1:
        for _ in range(rng.randrange(1, 6)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        return bytes(data)
    return bytes(data[: rng.randrange(len(data))])


async def _error(response: aiohttp.ClientResponse) -> tuple[int, str]:
    body = await response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message"}
    assert body["error"]["message"]
    return response.status, body["error"]["code"]


async def test_bad_input_everywhere_leaves_other_calls_intact(tmp_path: Path) -> None:
    """Fuzzed RTP, bad JSON, oversized bodies, bad tokens, garbage agent frames: errors, no harm."""
    rng = random.Random(5)
    settings = make_settings(tmp_path, max_body_bytes=64 * 1024)
    async with (
        running_server(settings) as (_, base),
        aiohttp.ClientSession(headers=auth()) as client,
        aiohttp.ClientSession() as anonymous,
    ):
        # A good call that must come out intact.
        async with client.post(f"{base}/v1/calls", json={}) as response:
            good = (await response.json())["call_id"]
        async with client.post(f"{base}/v1/calls/{good}/rtp", json={}) as response:
            good_leg = await response.json()
        caller = await open_caller(good_leg["host"], good_leg["port"])
        sending = asyncio.create_task(caller.send_stream(_payloads(3.0, 1.5)))
        await asyncio.sleep(0.3)  # the good caller's address is learned first

        # Fuzzed datagrams at the good call's port from another socket, and at a fresh call.
        async with client.post(f"{base}/v1/calls", json={"caller_codec": "pcmu"}) as response:
            victim = (await response.json())["call_id"]
        async with client.post(f"{base}/v1/calls/{victim}/rtp", json={}) as response:
            victim_leg = await response.json()
        attacker = await open_caller(good_leg["host"], good_leg["port"])
        other = await open_caller(victim_leg["host"], victim_leg["port"])
        valid = bytes([0x80, 111, 0, 1]) + bytes(8) + marker_template(CALLER_HZ)[12]
        for _ in range(1500):
            assert attacker.transport is not None
            assert other.transport is not None
            attacker.transport.sendto(_garbage(rng, valid))
            other.transport.sendto(_garbage(rng, valid))
            await asyncio.sleep(0)

        # Bad HTTP input: each gets its JSON error.
        cases = [
            (
                client.post(
                    f"{base}/v1/calls", data=b"{nope", headers={"Content-Type": "application/json"}
                ),
                400,
            ),
            (
                client.post(
                    f"{base}/v1/calls", data=b"[]", headers={"Content-Type": "application/json"}
                ),
                400,
            ),
            (
                client.post(
                    f"{base}/v1/calls", data=b"x=1", headers={"Content-Type": "text/plain"}
                ),
                415,
            ),
            (client.post(f"{base}/v1/calls", json={"caller_codec": "g729"}), 400),
            (client.post(f"{base}/v1/calls", json={"colour": "blue"}), 400),
            (client.post(f"{base}/v1/calls", json={"call_id": "../etc"}), 400),
            (client.post(f"{base}/v1/calls", json={"agent_url": "http://x"}), 400),
            (
                client.post(
                    f"{base}/v1/calls",
                    json={"agent_format": {"encoding": "audio/x-l16", "sample_rate": 11025}},
                ),
                400,
            ),
            (client.post(f"{base}/v1/calls", json={"call_id": good}), 409),
            (
                client.post(
                    f"{base}/v1/calls",
                    data=b"x" * (settings.max_body_bytes + 1),
                    headers={"Content-Type": "application/json"},
                ),
                413,
            ),
            (client.delete(f"{base}/v1/calls/no-such-call"), 404),
            (client.post(f"{base}/v1/calls/no-such-call/rtp", json={}), 404),
            (client.post(f"{base}/v1/calls/{good}/rtp", json={}), 409),
            (client.get(f"{base}/v1/recordings/no-such-call"), 404),
            (anonymous.get(f"{base}/v1/calls"), 401),
            (anonymous.get(f"{base}/v1/calls", headers={"Authorization": f"Bearer {TOKEN}x"}), 401),
            (anonymous.get(f"{base}/v1/calls", headers={"Authorization": TOKEN}), 401),
            (anonymous.get(f"{base}/metrics"), 401),
        ]
        for request, status in cases:
            async with request as response:
                got, code = await _error(response)
                assert got == status, (got, code, response.url)
        async with anonymous.get(f"{base}/healthz") as response:
            assert response.status == 200

        # Agents that send garbage are disconnected with a reason; their calls go on.
        garbage_calls = []
        frames: list[tuple[bytes | str, int]] = [
            (b"\x00\x01binary", 1003),
            ("not json", 1007),
            ('{"event": "media"}', 1007),
        ]
        for frame, close_code in frames:
            async with client.post(f"{base}/v1/calls", json={}) as response:
                call_id = (await response.json())["call_id"]
            garbage_calls.append(call_id)
            ws_url = base.replace("http", "ws") + f"/v1/calls/{call_id}/agent"
            async with client.ws_connect(ws_url) as ws:
                assert (await ws.receive_json())["event"] == "connected"
                assert (await ws.receive_json())["event"] == "start"
                if isinstance(frame, bytes):
                    await ws.send_bytes(frame)
                else:
                    await ws.send_str(frame)
                message = await asyncio.wait_for(ws.receive(), 5)
                assert message.type == aiohttp.WSMsgType.CLOSE
                assert message.data == close_code
                assert message.extra  # the reason
            async with client.get(ws_url) as response:  # that call's agent leg is over
                assert response.status == 409

        async with client.get(f"{base}/v1/calls") as response:
            live = {c["call_id"]: c for c in (await response.json())["calls"]}
        assert {good, victim, *garbage_calls} <= set(live)
        assert live[good]["dropped"]["wrong_source"] >= 1000

        await sending
        async with client.delete(f"{base}/v1/calls/{good}") as response:
            assert response.status == 202
        stored = await wait_for_recording(client, base, good)
        async with client.get(f"{base}/v1/recordings/{good}/audio?channel=left") as response:
            left = await response.read()
        assert caller.transport is not None
        for peer in (caller, attacker, other):
            assert peer.transport is not None
            peer.transport.close()

    path = tmp_path / "left.opus"
    path.write_bytes(left)
    assert_valid_opus(path)
    audio = decode_ogg(path)
    caller_stats = next(c for c in stored["channels"] if c["channel"] == "caller")["stats"]
    assert caller_stats["packets"] == 150  # exactly the good caller's packets, nothing else
    envelope_start = float(np.argmax(np.abs(audio[0]) > 0.05)) / 48000
    assert find_onset(audio[0], CALLER_HZ, envelope_start) is not None
