"""Admission control: the pure decision, and a real server refusing calls it cannot carry."""

import asyncio
from pathlib import Path

import aiohttp
import pytest

from mediaserver.admission import AdmissionLimits, LoadSample, decide_admission

from server_harness import auth, make_settings, running_server

LIMITS = AdmissionLimits(
    max_calls=100, max_cpu_share=0.8, max_loop_lag_ms=20.0, call_cpu_share=0.01
)


@pytest.mark.parametrize(
    ("load", "expected"),
    [
        (LoadSample(0, 0, 0.0, 0.0, 0.0), None),
        (LoadSample(60, 60, 0.5, 1.0, 0.005), None),  # measured 0.5 %/call: 0.5 + 0.005
        (LoadSample(100, 100, 0.1, 1.0, 0.0), "max_calls"),
        (LoadSample(10, 10, 0.1, 25.0, 0.0), "loop_lag"),
        (LoadSample(10, 10, 0.8, 1.0, 0.0), "cpu"),  # measured 80 % + 1 % for the new call
        (LoadSample(70, 70, 0.2, 1.0, 0.0), None),  # measured CPU lags new calls: 70 x 1 % = 0.7
        (LoadSample(80, 80, 0.2, 1.0, 0.0), "cpu"),  # 80 x 1 % + 1 % > 0.8
        (LoadSample(40, 40, 0.6, 1.0, 0.015), None),  # measured 1.5 %/call: 40 x 1.5 % + 1.5 %
        (LoadSample(52, 52, 0.6, 1.0, 0.015), None),  # 52 x 1.5 % + 1.5 % = 0.795
        (LoadSample(53, 53, 0.6, 1.0, 0.015), "cpu"),  # 53 x 1.5 % + 1.5 % = 0.81
        # A burst of set-ups, no media yet: each waiting call counts at the assumed 1 %.
        (LoadSample(77, 0, 0.01, 1.0, 0.0), None),  # 0.01 + 78 x 1 % = 0.79
        (LoadSample(79, 0, 0.01, 1.0, 0.0), "cpu"),  # 0.01 + 80 x 1 % = 0.81
        # Cheap calls measured (0.2 % each, no agents): the assumption gives way to the measure.
        # (at the assumed 1 %, 90 calls would be 0.9).
        (LoadSample(90, 90, 0.18, 1.0, 0.002), None),  # 0.18 + 0.002
        (LoadSample(90, 60, 0.12, 1.0, 0.002), None),  # 0.12 + 31 x 0.2 % = 0.182
    ],
)
def test_decide_admission(load: LoadSample, expected: str | None) -> None:
    """A call is refused at the call limit, on sustained loop lag, or when its CPU would not fit."""
    assert decide_admission(LIMITS, load) == expected


def test_zero_limits_switch_the_load_guards_off() -> None:
    """max_cpu_share and max_loop_lag_ms of 0 turn their checks off; max_calls still holds."""
    limits = AdmissionLimits(max_calls=2, max_cpu_share=0.0, max_loop_lag_ms=0.0, call_cpu_share=1)
    assert decide_admission(limits, LoadSample(1, 1, 5.0, 500.0, 1.0)) is None
    assert decide_admission(limits, LoadSample(2, 0, 0.0, 0.0, 0.0)) == "max_calls"


async def test_calls_beyond_the_limit_are_refused_with_503_and_readyz_says_so(
    tmp_path: Path,
) -> None:
    """At max_calls a new call and a WHIP offer get 503 + Retry-After, /readyz turns 503, and
    the refusal is counted; ending a call makes room again."""
    async with (
        running_server(make_settings(tmp_path, max_calls=2)) as (_, base),
        aiohttp.ClientSession(headers=auth()) as client,
    ):
        ids = []
        for _ in range(2):
            async with client.post(f"{base}/v1/calls", json={}) as response:
                assert response.status == 201
                ids.append((await response.json())["call_id"])
        async with client.get(f"{base}/readyz") as response:
            assert response.status == 503
            assert (await response.json())["status"] == "overloaded"
        async with client.post(f"{base}/v1/calls", json={}) as response:
            body = await response.json()
            assert response.status == 503, body
            assert response.headers["Retry-After"] == "5"
            assert body["error"]["code"] == "overloaded"
            assert "max_calls" in body["error"]["message"]
        offer = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=rtpmap:111 opus/48000/2\r\n"
        offer += "a=fingerprint:sha-256 00\r\n"
        async with client.post(
            f"{base}/whip", data=offer, headers={"Content-Type": "application/sdp"}
        ) as response:
            assert response.status == 503
        async with client.get(f"{base}/metrics") as response:
            metrics = await response.text()
        assert 'mediaserver_calls_refused_total{reason="max_calls"} 2.0' in metrics
        async with client.delete(f"{base}/v1/calls/{ids[0]}") as response:
            assert response.status == 202
        await asyncio.sleep(0.1)
        async with client.get(f"{base}/readyz") as response:
            assert response.status == 200
        async with client.post(f"{base}/v1/calls", json={}) as response:
            assert response.status == 201
