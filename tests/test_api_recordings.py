# google-auth and google-cloud-storage leave these constructors unannotated.
# mypy: disable-error-code="no-untyped-call"
"""The recordings API on a real server: listing, manifests, ranged audio, delete, GCS redirects."""

import asyncio
import hashlib
import json
import random
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession, web
from aiohttp.test_utils import TestClient, TestServer
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage
from google.oauth2 import service_account
from hypothesis import given
from hypothesis import strategies as st

from mediaserver.api import recordings
from mediaserver.api.auth import build_auth_middleware
from mediaserver.api.errors import error_middleware
from mediaserver.api.keys import FINALIZER, RECORDER, RECORDING_INDEX, SETTINGS, STORE
from mediaserver.api.token_registry import TokenRegistry
from mediaserver.app import create_app
from mediaserver.call_recording import CallRecording
from mediaserver.catalog.byte_range import ByteRange, RangeOutcome, compute_byte_range
from mediaserver.catalog.list_query import build_cursor, parse_cursor
from mediaserver.clock import ManualClock
from mediaserver.finalizer import Finalizer
from mediaserver.recorder import Recorder
from mediaserver.recording.call import EndReason
from mediaserver.recording.channel import Channel, Codec
from mediaserver.recording.manifest import Manifest
from mediaserver.recording.spool import CallDescription, CallSpool, Spool
from mediaserver.rtp.media_packet import MediaPacket
from mediaserver.settings import Settings
from mediaserver.storage_backends.gcs import GcsStore, RetryPolicy
from mediaserver.storage_backends.keys import parse_manifest_key

from audio_oracle import assert_valid_opus, decode_ogg
from gcs_emulator import GcsEmulator, find_free_port, write_service_account_key
from rtp_sender import Impairments, simulate_stream

TOKEN = "test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
PAYLOAD_TYPE = 111
TIMEOUT_S = 60.0
# 2026-03-10T10:00:00Z: recordings made by the tests start from here, in manual time.
BASE_WALL_NS = int(datetime(2026, 3, 10, 10, 0, tzinfo=UTC).timestamp()) * 10**9


@dataclass(slots=True)
class Server:
    """A running application, its client and the clock its recorder reads."""

    app: web.Application
    client: TestClient[web.Request, web.Application]
    clock: ManualClock
    store_root: Path | None

    @property
    def recorder(self) -> "AppRecorder":
        """The application's recorder and finalizer, driven by call id."""
        return AppRecorder(self.app[RECORDER], self.app[FINALIZER])

    async def get_json(
        self, path: str, status: int = 200, params: Mapping[str, str] | None = None
    ) -> Any:
        """GET a JSON resource with the token and check the status."""
        response = await self.client.get(path, params=params, headers=AUTH)
        body = await response.json()
        assert response.status == status, body
        return body


@dataclass(frozen=True, slots=True)
class AppRecorder:
    """The application's own recorder and finalizer, addressed by call id."""

    recorder: Recorder
    finalizer: Finalizer

    def open_call(self, call_id: str | None = None, **options: Any) -> CallRecording:
        """Open a call's recording."""
        return self.recorder.open_call(call_id, **options)

    def record(self, call_id: str, channel: Channel, packet: MediaPacket) -> None:
        """Journal a packet."""
        self.recorder.get_call(call_id).record(channel, packet)

    def end_channel(
        self, call_id: str, channel: Channel, reason: EndReason = EndReason.CALLER_HANGUP
    ) -> None:
        """End one channel (the caller hung up, say)."""
        self.recorder.get_call(call_id).end(channel, reason)

    def end_call(self, call_id: str) -> None:
        """End both channels."""
        for channel in Channel:
            self.end_channel(call_id, channel)

    async def wait_finalized(self, call_id: str) -> Manifest | None:
        """Wait for the call's recording to be stored."""
        return await self.finalizer.wait(call_id)


def settings_for(tmp_path: Path, **overrides: Any) -> Settings:
    """Settings for one test's server: its own spool and store, a token, one worker."""
    values: dict[str, Any] = {
        "spool_path": tmp_path / "spool",
        "jobs_path": tmp_path / "jobs",
        "storage_path": str(tmp_path / "store"),
        "audit_path": tmp_path / "audit",
        "api_token": TOKEN,
        "finalize_workers": 1,
        "port": 0,
        # The test's client shares the server's process: the load guard would count it.
        "max_cpu_share": 0.0,
        "max_loop_lag_ms": 0.0,
    }
    return Settings(**(values | overrides))


async def start_server(app: web.Application, store_root: Path | None) -> Server:
    """Start `app` on 127.0.0.1 port 0 and give its recorder a manual clock."""
    client: TestClient[web.Request, web.Application] = TestClient(
        TestServer(app, host="127.0.0.1", port=0)
    )
    await client.start_server()
    clock = app[RECORDER].clock
    assert isinstance(clock, ManualClock)
    return Server(app, client, clock, store_root)


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    """The real application (create_app) on local storage."""
    running = await start_server(
        create_app(settings_for(tmp_path), clock=ManualClock(wall_ns=BASE_WALL_NS)),
        tmp_path / "store",
    )
    yield running
    await running.client.close()


async def make_recording(
    server: Server,
    *,
    seconds: float = 1.0,
    seed: int = 1,
    metadata: dict[str, Any] | None = None,
    end_reason: EndReason = EndReason.CALLER_HANGUP,
) -> Manifest:
    """Record a call through the app's recorder (a tone on each side) and wait until stored."""
    recorder = server.recorder
    clock = server.clock
    call = recorder.open_call(metadata=metadata)
    await feed(server, call.call_id, seconds, seed)
    recorder.end_channel(call.call_id, Channel.AGENT, end_reason)
    recorder.end_channel(call.call_id, Channel.CALLER, end_reason)
    manifest = await asyncio.wait_for(recorder.wait_finalized(call.call_id), TIMEOUT_S)
    assert manifest is not None
    clock.advance(1.0)
    return manifest


async def feed(server: Server, call_id: str, seconds: float, seed: int) -> None:
    """Journal `seconds` of Opus RTP on both channels, then move the clock past them."""
    rng = random.Random(seed)
    base_ns = server.clock.monotonic_ns()
    for channel, freq_hz in ((Channel.CALLER, 500.0), (Channel.AGENT, 1300.0)):
        stream = simulate_stream(
            duration_s=seconds,
            marker_times_s=[0.6],
            freq_hz=freq_hz,
            start_s=0.0,
            base_delay_s=0.02,
            impairments=Impairments(),
            rng=rng,
        )
        for packet in stream.packets:
            server.recorder.record(
                call_id,
                channel,
                MediaPacket(
                    base_ns + round(packet.arrival_s * 1e9),
                    packet.rtp_timestamp,
                    packet.sequence,
                    packet.ssrc,
                    PAYLOAD_TYPE,
                    False,
                    packet.payload,
                ),
            )
    server.clock.advance(seconds + 0.1)


def stored_bytes(server: Server, key: str | None) -> bytes:
    """An object's bytes read straight from the local store's directory (the oracle)."""
    assert server.store_root is not None
    assert key is not None
    return (server.store_root / key).read_bytes()


def stored_keys(server: Server) -> set[str]:
    """Every file under the local store's directory."""
    assert server.store_root is not None
    return {
        path.relative_to(server.store_root).as_posix()
        for path in server.store_root.rglob("*")
        if path.is_file()
    }


def file_key(manifest: Manifest, role: str) -> str:
    """The stored key of one file of a manifest."""
    key = next(entry.key for entry in manifest.files if entry.role == role)
    assert key is not None
    return key


async def list_all(server: Server, limit: int, **params: str) -> list[dict[str, Any]]:
    """Follow cursors to the end; every page but the last is full."""
    items: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        query = {"limit": str(limit), **params} | ({"cursor": cursor} if cursor else {})
        page = await server.get_json("/v1/recordings", params=query)
        items += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            return items
        assert len(page["items"]) == limit


async def test_listing_is_newest_first_and_pages_with_a_cursor(server: Server) -> None:
    """Recordings over several days come newest first, split into cursor-linked pages."""
    made = []
    for index, advance_s in enumerate((0.0, 3600.0, 86400.0, 3 * 86400.0, 60.0)):
        server.clock.advance(advance_s)
        made.append(await make_recording(server, seed=index))
    expected = sorted(made, key=lambda m: (m.created_at, m.call_id), reverse=True)

    items = await list_all(server, limit=2)

    assert [item["call_id"] for item in items] == [m.call_id for m in expected]
    first = items[0]
    newest = expected[0]
    assert first["status"] == "stored"
    assert first["created_at"] == newest.created_at
    assert first["duration_ms"] == newest.duration_ms
    assert {(f["role"], f["size_bytes"], f["key"]) for f in first["files"]} == {
        (f.role, len(stored_bytes(server, f.key)), f.key) for f in newest.files
    }
    assert first["links"]["manifest"] == f"/v1/recordings/{newest.call_id}"
    assert first["links"]["audio"]["left"] == f"/v1/recordings/{newest.call_id}/audio?channel=left"
    one_page = await server.get_json("/v1/recordings")
    assert [item["call_id"] for item in one_page["items"]] == [m.call_id for m in expected]
    assert one_page["next_cursor"] is None


async def test_time_filters_select_a_half_open_interval(server: Server) -> None:
    """from is inclusive, to exclusive, both on the creation time, with any UTC offset."""
    made = []
    for index in range(4):
        server.clock.advance(86400.0)
        made.append(await make_recording(server, seed=index))
    created = [datetime.fromisoformat(m.created_at) for m in made]

    between = await list_all(
        server, limit=1, **{"from": made[1].created_at, "to": made[3].created_at}
    )
    # Same instant written with a +02:00 offset, sent percent-encoded.
    shifted = (created[2] + timedelta(microseconds=1)).astimezone(timezone(timedelta(hours=2)))
    after = await server.get_json("/v1/recordings", params={"from": shifted.isoformat()})

    assert [item["call_id"] for item in between] == [made[2].call_id, made[1].call_id]
    assert [item["call_id"] for item in after["items"]] == [made[3].call_id]


async def test_filters_by_status_end_reason_text_and_duration(server: Server) -> None:
    """Each filter narrows the listing; they combine; paging still works under a filter."""
    short = await make_recording(server, seconds=1.0, seed=1, metadata={"customer": "Acme Ltd"})
    long = await make_recording(server, seconds=3.0, seed=2, metadata={"customer": "Globex"})
    expired = await make_recording(server, seed=3, end_reason=EndReason.EXPIRED)
    live = server.recorder.open_call(metadata={"customer": "acme"})
    await feed(server, live.call_id, 1.0, seed=4)

    async def ids(**params: str) -> list[str]:
        return [item["call_id"] for item in await list_all(server, limit=1, **params)]

    assert await ids(status="stored") == [expired.call_id, long.call_id, short.call_id]
    assert await ids(status="recording,upload_failed") == [live.call_id]
    assert await ids(end_reason="expired") == [expired.call_id]
    assert await ids(q="ACME") == [short.call_id]  # live calls carry no metadata yet
    assert await ids(q=long.call_id[:10]) == [long.call_id]
    assert await ids(min_duration_s="2.5") == [long.call_id]
    assert await ids(min_duration_s="0.5", end_reason="caller_hangup", status="stored") == [
        long.call_id,
        short.call_id,
    ]
    listed = await server.get_json("/v1/recordings", params={"status": "stored"})
    newest = listed["items"][0]
    assert newest["end_reason"] == "expired"
    assert newest["codecs"] == {"caller": "opus", "agent": "opus"}
    assert listed["items"][2]["metadata"] == {"customer": "Acme Ltd"}
    server.recorder.end_call(live.call_id)
    await asyncio.wait_for(server.recorder.wait_finalized(live.call_id), TIMEOUT_S)


async def test_peaks_are_served_with_an_etag(server: Server) -> None:
    """GET /peaks returns the stored audiowaveform JSON; 304 when unchanged; 409 while live."""
    manifest = await make_recording(server, seconds=2.0)
    data = stored_bytes(server, file_key(manifest, "peaks"))
    path = f"/v1/recordings/{manifest.call_id}/peaks"

    response = await server.client.get(path, headers=AUTH)
    body = await response.read()
    cached = await server.client.get(
        path, headers=AUTH | {"If-None-Match": response.headers["ETag"]}
    )
    detail = await server.get_json(f"/v1/recordings/{manifest.call_id}")

    assert response.status == 200
    assert body == data
    assert response.headers["Content-Type"] == "application/json"
    assert response.headers["ETag"] == f'"{hashlib.sha256(data).hexdigest()}"'
    document = json.loads(body)
    assert (document["version"], document["channels"], document["bits"]) == (2, 2, 8)
    assert document["length"] * document["samples_per_pixel"] >= 2.0 * 48000
    assert cached.status == 304
    assert detail["links"]["peaks"] == path
    call = server.recorder.open_call()
    await feed(server, call.call_id, 1.0, seed=5)
    live = await server.get_json(f"/v1/recordings/{call.call_id}/peaks", status=409)
    assert "recording" in live["error"]["message"]
    await server.get_json("/v1/recordings/nosuchcall/peaks", status=404)
    server.recorder.end_call(call.call_id)
    await asyncio.wait_for(server.recorder.wait_finalized(call.call_id), TIMEOUT_S)


async def test_manifest_is_served_with_status_and_links(server: Server) -> None:
    """GET /v1/recordings/{id} returns the stored manifest file's content."""
    manifest = await make_recording(server)
    manifest_key = manifest.storage["manifest_key"]
    on_disk = json.loads(stored_bytes(server, manifest_key))

    body = await server.get_json(f"/v1/recordings/{manifest.call_id}")

    links = body.pop("links")
    # Computed by the API from the manifest and the settings (README, "Retention").
    assert body.pop("retention") == {
        "retention_days": 0,
        "source": "default",
        "expires_at": None,
        "hold": None,
    }
    # The post-call jobs write their state into the manifest meanwhile: compare the rest.
    body.pop("jobs")
    on_disk.pop("jobs")
    assert body == on_disk
    assert body["status"] == "stored"
    assert links["audio"]["stereo"].endswith("/audio?channel=stereo")


async def test_audio_is_served_whole_and_by_range(server: Server, tmp_path: Path) -> None:
    """Audio matches the stored file byte for byte; single ranges get 206, bad ones 416."""
    manifest = await make_recording(server, seconds=3.0)
    data = stored_bytes(server, file_key(manifest, "stereo"))
    size = len(data)
    path = f"/v1/recordings/{manifest.call_id}/audio"

    response = await server.client.get(path, headers=AUTH)
    body = await response.read()
    assert response.status == 200
    assert body == data
    assert response.headers["Content-Type"] == "audio/ogg"
    assert response.headers["Accept-Ranges"] == "bytes"
    assert response.headers["ETag"] == f'"{hashlib.sha256(data).hexdigest()}"'
    assert response.headers["Content-Disposition"] == (
        f'inline; filename="conversation_{manifest.call_id}_merged.opus"'
    )
    downloaded = tmp_path / "downloaded.opus"
    downloaded.write_bytes(body)
    assert_valid_opus(downloaded)
    assert decode_ogg(downloaded).shape[0] == 2

    for header, start, end in (
        ("bytes=10-99", 10, 100),
        ("bytes=100-", 100, size),
        ("bytes=-50", size - 50, size),
        (f"bytes=-{size * 2}", 0, size),
        (f"bytes=5-{size * 3}", 5, size),
    ):
        ranged = await server.client.get(path, headers=AUTH | {"Range": header})
        assert ranged.status == 206, header
        assert await ranged.read() == data[start:end], header
        assert ranged.headers["Content-Range"] == f"bytes {start}-{end - 1}/{size}"
        assert int(ranged.headers["Content-Length"]) == end - start

    for header in (f"bytes={size}-", f"bytes={size + 10}-{size + 20}", "bytes=-0"):
        refused = await server.client.get(path, headers=AUTH | {"Range": header})
        assert refused.status == 416, header
        assert refused.headers["Content-Range"] == f"bytes */{size}"
        assert (await refused.json())["error"]["code"] == "range_not_satisfiable"

    for header in ("bytes=0-1,5-9", "items=0-5", "bytes=9-2", "bytes=abc"):
        whole = await server.client.get(path, headers=AUTH | {"Range": header})
        assert whole.status == 200, header
        assert await whole.read() == data


async def test_channels_etag_and_conditional_requests(server: Server) -> None:
    """left/right serve their files; If-None-Match gives 304; a stale If-Range gives all."""
    manifest = await make_recording(server)
    path = f"/v1/recordings/{manifest.call_id}/audio"
    for channel in ("left", "right"):
        data = stored_bytes(server, file_key(manifest, channel))
        response = await server.client.get(path, params={"channel": channel}, headers=AUTH)
        assert await response.read() == data
        assert response.headers["ETag"] == f'"{hashlib.sha256(data).hexdigest()}"'
    stereo = stored_bytes(server, file_key(manifest, "stereo"))
    etag = f'"{hashlib.sha256(stereo).hexdigest()}"'

    cached = await server.client.get(path, headers=AUTH | {"If-None-Match": f'"x", {etag}'})
    same = await server.client.get(path, headers=AUTH | {"Range": "bytes=0-9", "If-Range": etag})
    stale = await server.client.get(path, headers=AUTH | {"Range": "bytes=0-9", "If-Range": '"x"'})

    head = await server.client.head(path, headers=AUTH)
    assert head.status == 200
    assert int(head.headers["Content-Length"]) == len(stereo)
    assert await head.read() == b""
    assert cached.status == 304
    assert await cached.read() == b""
    assert same.status == 206
    assert await same.read() == stereo[:10]
    assert stale.status == 200
    assert await stale.read() == stereo


async def test_delete_removes_every_object_then_404(server: Server) -> None:
    """DELETE removes audio and manifest from the store; the recording is then unknown."""
    kept = await make_recording(server, seed=1)
    doomed = await make_recording(server, seed=2)
    doomed_keys = {f.key for f in doomed.files} | {doomed.storage["manifest_key"]}
    assert doomed_keys <= stored_keys(server)
    path = f"/v1/recordings/{doomed.call_id}"

    response = await server.client.delete(path, headers=AUTH)

    assert response.status == 204
    assert not doomed_keys & stored_keys(server)
    assert {f.key for f in kept.files} <= stored_keys(server)
    await server.get_json(path, status=404)
    await server.get_json(path + "/audio", status=404)
    again = await server.client.delete(path, headers=AUTH)
    assert again.status == 404
    listed = await server.get_json("/v1/recordings")
    assert [item["call_id"] for item in listed["items"]] == [kept.call_id]


async def test_a_wrong_or_missing_token_is_refused(server: Server) -> None:
    """Every recordings route needs the bearer token; health does not."""
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
        for method, path in (
            ("GET", "/v1/recordings"),
            ("GET", "/v1/recordings/abc"),
            ("GET", "/v1/recordings/abc/audio"),
            ("DELETE", "/v1/recordings/abc"),
        ):
            response = await server.client.request(method, path, headers=headers)
            assert response.status == 401, (method, path, headers)
            assert (await response.json())["error"]["code"] == "unauthorized"
    assert (await server.client.get("/healthz")).status == 200


async def test_unknown_and_impossible_ids_are_404(server: Server) -> None:
    """Ids that no recording has, or that no call id can be, get a JSON 404 everywhere."""
    await make_recording(server)
    for call_id in ("nosuchcall", "x" * 65, "bad%20id", "..", "a.b"):
        for method, suffix in (("GET", ""), ("GET", "/audio"), ("DELETE", "")):
            response = await server.client.request(
                method, f"/v1/recordings/{call_id}{suffix}", headers=AUTH
            )
            assert response.status == 404, (call_id, method, suffix)
            assert (await response.json())["error"]["code"] == "not_found"


@pytest.mark.parametrize(
    ("params", "named"),
    [
        ({"from": "yesterday"}, "from"),
        ({"to": "2026-13-01T00:00:00Z"}, "to"),
        ({"from": "2026-03-02T00:00:00Z", "to": "2026-03-01T00:00:00Z"}, "from"),
        ({"limit": "0"}, "limit"),
        ({"limit": "501"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"limit": "-1"}, "limit"),
        ({"cursor": "not-a-cursor"}, "cursor"),
        ({"cursor": "WzEsMl0"}, "cursor"),  # base64 of [1,2]: JSON, but not a cursor
        ({"status": "done"}, "status"),
        ({"status": "stored,"}, "status"),
        ({"end_reason": "Hang Up"}, "end_reason"),
        ({"q": "x" * 201}, "q"),
        ({"min_duration_s": "-1"}, "min_duration_s"),
        ({"min_duration_s": "1e9"}, "min_duration_s"),
        ({"min_duration_s": "nan"}, "min_duration_s"),
    ],
)
async def test_malformed_list_parameters_are_400(
    server: Server, params: dict[str, str], named: str
) -> None:
    """A bad query value gets a 400 whose message names the parameter."""
    body = await server.get_json("/v1/recordings", status=400, params=params)
    assert body["error"]["code"] == "bad_request"
    assert named in body["error"]["message"]


async def test_a_bad_channel_is_400(server: Server) -> None:
    """Only stereo, left and right are channels (checked before the recording is looked up)."""
    body = await server.get_json(
        "/v1/recordings/anycall/audio", status=400, params={"channel": "mono"}
    )
    assert body["error"]["code"] == "bad_request"
    assert "channel" in body["error"]["message"]


async def test_a_live_call_shows_as_recording(server: Server) -> None:
    """A call in progress is listed and described as recording; its audio and delete are 409."""
    call = server.recorder.open_call(caller_codec=Codec.PCMU)
    await feed(server, call.call_id, 1.0, seed=3)
    path = f"/v1/recordings/{call.call_id}"

    body = await server.get_json(path)
    listed = await server.get_json("/v1/recordings")
    audio = await server.get_json(path + "/audio", status=409)
    deleted = await server.client.delete(path, headers=AUTH)

    assert body["status"] == "recording"
    assert body["created_at"] == "2026-03-10T10:00:00.000000Z"
    assert body["duration_ms"] == pytest.approx(1100.0)
    assert body["codecs"] == {"caller": "pcmu", "agent": "opus"}
    assert body["open_channels"] == ["agent", "caller"]
    assert "audio" not in body["links"]
    assert [(i["call_id"], i["status"]) for i in listed["items"]] == [(call.call_id, "recording")]
    assert "recording" in audio["error"]["message"]
    assert deleted.status == 409
    server.recorder.end_call(call.call_id)
    manifest = await asyncio.wait_for(server.recorder.wait_finalized(call.call_id), TIMEOUT_S)
    assert manifest is not None
    assert (await server.get_json(path))["status"] == "stored"


async def test_a_spool_without_a_stored_manifest_shows_as_finalizing(server: Server) -> None:
    """A spool left by another process (not yet recovered) is listed as finalizing."""
    CallSpool(server.app[SETTINGS].spool_path / "leftover").create(
        CallDescription(
            "leftover", BASE_WALL_NS, 5, {Channel.CALLER: Codec.OPUS, Channel.AGENT: Codec.OPUS}, {}
        )
    )

    body = await server.get_json("/v1/recordings/leftover")
    listed = await server.get_json("/v1/recordings")
    audio = await server.get_json("/v1/recordings/leftover/audio", status=409)

    assert body["status"] == "finalizing"
    assert [(i["call_id"], i["status"]) for i in listed["items"]] == [("leftover", "finalizing")]
    assert "finalizing" in audio["error"]["message"]


async def test_an_upload_failure_is_listed_from_the_spool(tmp_path: Path) -> None:
    """When the store refuses the files, the spool's manifest says upload_failed."""
    (tmp_path / "store").write_text("a file where the store's directory should be")
    running = await start_server(
        create_app(settings_for(tmp_path), clock=ManualClock(wall_ns=BASE_WALL_NS)),
        tmp_path / "store",
    )
    try:
        call = running.recorder.open_call()
        await feed(running, call.call_id, 1.0, seed=4)
        running.recorder.end_call(call.call_id)
        failed = await asyncio.wait_for(running.recorder.wait_finalized(call.call_id), TIMEOUT_S)
        assert failed is not None

        body = await running.get_json(f"/v1/recordings/{call.call_id}")
        listed = await running.get_json("/v1/recordings")
        audio = await running.get_json(f"/v1/recordings/{call.call_id}/audio", status=409)
    finally:
        await running.client.close()

    assert body["status"] == "upload_failed"
    assert body["duration_ms"] == failed.duration_ms
    assert [(i["call_id"], i["status"]) for i in listed["items"]] == [
        (call.call_id, "upload_failed")
    ]
    assert "upload_failed" in audio["error"]["message"]


async def test_lookup_by_id_probes_recent_days_before_listing(server: Server) -> None:
    """A recording of today is found without a listing; misses list at most once per interval."""
    index = server.app[RECORDING_INDEX]
    recent = await make_recording(server)

    await server.get_json(f"/v1/recordings/{recent.call_id}")
    assert index.full_listings == 0
    await server.get_json("/v1/recordings/unknown1", status=404)
    await server.get_json("/v1/recordings/unknown2", status=404)
    assert index.full_listings == 1
    server.clock.advance(31.0)
    await server.get_json("/v1/recordings/unknown3", status=404)
    assert index.full_listings == 2

    # Stored now, looked up three days later: neither probed day; a (stale) listing finds it.
    older = await make_recording(server, seed=2)
    server.clock.advance(3 * 86400.0)
    await server.get_json(f"/v1/recordings/{older.call_id}")
    assert index.full_listings == 3
    await server.get_json(f"/v1/recordings/{older.call_id}")
    assert index.full_listings == 3


# -- GCS, against the emulator -------------------------------------------------------------------


@pytest.fixture(scope="module")
def emulator() -> Iterator[GcsEmulator]:
    """One emulator for the module; each test uses its own bucket."""
    with GcsEmulator(find_free_port()) as running:
        yield running


def plain_download(emulator: GcsEmulator, bucket_name: str, key: str) -> bytes:
    """An object's bytes through a plain anonymous client, independent of GcsStore (the oracle)."""
    client = storage.Client(
        project="test",
        credentials=AnonymousCredentials(),
        client_options={"api_endpoint": emulator.url},
    )
    data: bytes = client.bucket(bucket_name).blob(key).download_as_bytes()
    return data


async def test_gcs_with_anonymous_credentials_streams_the_audio(
    emulator: GcsEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On the emulator (no signing key) the server streams GCS objects itself, ranges too."""
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", emulator.url)
    bucket = f"rec-{uuid.uuid4().hex[:16]}"
    settings = settings_for(
        tmp_path, storage_type="gcs", storage_path=bucket, gcs_create_bucket=True
    )
    running = await start_server(
        create_app(settings, clock=ManualClock(wall_ns=BASE_WALL_NS)), None
    )
    try:
        manifest = await make_recording(running)
        key = file_key(manifest, "stereo")
        data = await asyncio.to_thread(plain_download, emulator, bucket, key)
        path = f"/v1/recordings/{manifest.call_id}/audio"

        whole = await running.client.get(path, headers=AUTH, allow_redirects=False)
        whole_body = await whole.read()
        ranged = await running.client.get(path, headers=AUTH | {"Range": "bytes=-100"})
        ranged_body = await ranged.read()
        listed = await running.get_json("/v1/recordings")
    finally:
        await running.client.close()

    assert whole.status == 200
    assert whole_body == data
    assert ranged.status == 206
    assert ranged_body == data[-100:]
    assert [item["call_id"] for item in listed["items"]] == [manifest.call_id]


async def token_endpoint() -> tuple[web.AppRunner, str]:
    """An OAuth 2.0 token endpoint (RFC 6749 section 5.1) that grants any service account."""

    async def grant(request: web.Request) -> web.Response:
        """Issue a bearer token (the emulator does not check it)."""
        return web.json_response(
            {"access_token": "local-token", "token_type": "Bearer", "expires_in": 3600}
        )

    app = web.Application()
    app.router.add_post("/token", grant)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"http://127.0.0.1:{port}/token"


def build_app_on_store(
    settings: Settings, store: GcsStore, pool: ProcessPoolExecutor
) -> web.Application:
    """The recordings API over a given store: the same keys and middlewares as create_app."""
    app = web.Application(
        middlewares=[
            error_middleware,
            build_auth_middleware(TokenRegistry(settings.api_token, None)),
        ]  # type: ignore[list-item]
    )
    app[SETTINGS] = settings
    app[STORE] = store

    async def recorder_ctx(app: web.Application) -> AsyncIterator[None]:
        """Start the recorder with the app and drain it at cleanup, as create_app does."""
        finalizer = Finalizer(spool=Spool(settings.spool_path), store=store, executor=pool)
        recorder = Recorder(
            spool=finalizer.spool,
            on_call_ended=finalizer.submit,
            clock=ManualClock(wall_ns=BASE_WALL_NS),
        )
        app[FINALIZER] = finalizer
        app[RECORDER] = recorder
        await recorder.start()
        await finalizer.recover()
        yield
        await recorder.close()
        await finalizer.close()

    app.cleanup_ctx.append(recorder_ctx)
    recordings.add_routes(app)
    return app


async def test_gcs_with_a_service_account_key_redirects_to_a_signed_url(
    emulator: GcsEmulator, tmp_path: Path, process_pool: ProcessPoolExecutor
) -> None:
    """With a signing key the audio route answers 307 to a signed URL the emulator serves."""
    token_runner, token_uri = await token_endpoint()
    key_file = write_service_account_key(tmp_path / "sa.json")
    info = json.loads(key_file.read_text()) | {"token_uri": token_uri}
    credentials = service_account.Credentials.from_service_account_info(info)
    bucket = f"rec-{uuid.uuid4().hex[:16]}"
    client = storage.Client(
        project="test", credentials=credentials, client_options={"api_endpoint": emulator.url}
    )
    store = GcsStore(
        bucket, client=client, retry_policy=RetryPolicy(deadline_s=5.0), owns_client=True
    )
    await store.create_bucket_if_missing()
    settings = settings_for(tmp_path, signed_url_expiry_s=120)
    running = await start_server(build_app_on_store(settings, store, process_pool), None)
    try:
        manifest = await make_recording(running)
        key = file_key(manifest, "left")
        data = await asyncio.to_thread(plain_download, emulator, bucket, key)

        response = await running.client.get(
            f"/v1/recordings/{manifest.call_id}/audio",
            params={"channel": "left"},
            headers=AUTH,
            allow_redirects=False,
        )
        location = response.headers["Location"]
        async with ClientSession() as session, session.get(location) as signed:
            signed_body = await signed.read()
    finally:
        await running.client.close()
        await store.close()
        await token_runner.cleanup()

    assert response.status == 307
    assert location.startswith(f"{emulator.url}/{bucket}/{key}?")
    assert "X-Goog-Signature=" in location
    assert "X-Goog-Expires=120" in location
    assert signed.status == 200
    assert signed_body == data


# -- pure parts -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "size", "expected"),
    [
        (None, 100, ByteRange(RangeOutcome.WHOLE, 0, 100)),
        ("bytes=0-0", 100, ByteRange(RangeOutcome.PARTIAL, 0, 1)),
        ("bytes=0-", 100, ByteRange(RangeOutcome.PARTIAL, 0, 100)),
        ("bytes=99-", 100, ByteRange(RangeOutcome.PARTIAL, 99, 100)),
        ("bytes=50-500", 100, ByteRange(RangeOutcome.PARTIAL, 50, 100)),
        ("bytes=-1", 100, ByteRange(RangeOutcome.PARTIAL, 99, 100)),
        ("bytes=-1000", 100, ByteRange(RangeOutcome.PARTIAL, 0, 100)),
        ("BYTES = 1-2", 100, ByteRange(RangeOutcome.PARTIAL, 1, 3)),
        ("bytes=100-", 100, ByteRange(RangeOutcome.UNSATISFIABLE, 0, 0)),
        ("bytes=-0", 100, ByteRange(RangeOutcome.UNSATISFIABLE, 0, 0)),
        ("bytes=0-", 0, ByteRange(RangeOutcome.UNSATISFIABLE, 0, 0)),
        ("bytes=-5", 0, ByteRange(RangeOutcome.UNSATISFIABLE, 0, 0)),
        ("bytes=5-4", 100, ByteRange(RangeOutcome.WHOLE, 0, 100)),  # invalid: ignored
        ("bytes=0-1,3-4", 100, ByteRange(RangeOutcome.WHOLE, 0, 100)),  # multi-range: whole
        ("bytes=-", 100, ByteRange(RangeOutcome.WHOLE, 0, 100)),
        ("bytes=1-2-3", 100, ByteRange(RangeOutcome.WHOLE, 0, 100)),
        ("bytes=\u00b2-", 100, ByteRange(RangeOutcome.WHOLE, 0, 100)),  # not an ASCII digit
        ("pages=1-2", 100, ByteRange(RangeOutcome.WHOLE, 0, 100)),
        ("bytes=" + "9" * 5000 + "-", 100, ByteRange(RangeOutcome.WHOLE, 0, 100)),
    ],
)
def test_compute_byte_range_table(header: str | None, size: int, expected: ByteRange) -> None:
    """Range headers map to whole, partial or unsatisfiable answers per RFC 9110 section 14."""
    assert compute_byte_range(header, size) == expected


@given(st.one_of(st.none(), st.text(max_size=40)), st.integers(0, 10**12))
def test_compute_byte_range_is_always_within_the_object(header: str | None, size: int) -> None:
    """Any header gives the whole object, a non-empty slice of it, or unsatisfiable."""
    answer = compute_byte_range(header, size)
    if answer.outcome is RangeOutcome.WHOLE:
        assert (answer.start, answer.end) == (0, size)
    elif answer.outcome is RangeOutcome.PARTIAL:
        assert 0 <= answer.start < answer.end <= size
    else:
        assert (answer.start, answer.end) == (0, 0)


@given(st.from_regex(r"bytes=[0-9]{1,6}-[0-9]{0,6}", fullmatch=True), st.integers(0, 10**6))
def test_compute_byte_range_serves_exactly_the_asked_bytes(header: str, size: int) -> None:
    """A first-last range selects data[first:last + 1] when first is inside the object."""
    first_text, last_text = header.removeprefix("bytes=").split("-")
    first = int(first_text)
    last = int(last_text) if last_text else None
    answer = compute_byte_range(header, size)
    if last is not None and last < first:
        assert answer.outcome is RangeOutcome.WHOLE
    elif first >= size:
        assert answer.outcome is RangeOutcome.UNSATISFIABLE
    else:
        stop = size if last is None else min(last + 1, size)
        assert (answer.outcome, answer.start, answer.end) == (RangeOutcome.PARTIAL, first, stop)


def test_cursor_round_trips_and_keys_parse() -> None:
    """A cursor reads back as its position; only manifest keys name recordings."""
    moment = datetime(2026, 3, 10, 10, 0, 0, 123456, tzinfo=UTC)
    assert parse_cursor(build_cursor(moment, "a_b-c")) == (moment, "a_b-c")
    assert parse_manifest_key("recordings/2026/03/10/conversation_a_b_manifest.json") == (
        "a_b",
        datetime(2026, 3, 10).date(),
    )
    assert parse_manifest_key("recordings/2026/03/10/conversation_a_left.opus") is None
    assert parse_manifest_key("recordings/2026/13/10/conversation_a_manifest.json") is None
