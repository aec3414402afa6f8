"""The audit log: durable day files, batch objects shared by nodes, queries, expiry, the API."""

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import date
from pathlib import Path

import aiohttp
import pytest

from mediaserver.audit.audit_log import AuditLog, build_node_name
from mediaserver.audit.event import AuditQuery, parse_event
from mediaserver.audit.file_sink import FileAuditSink
from mediaserver.audit.store_sink import AUDIT_PREFIX, StoreAuditSink
from mediaserver.clock import ManualClock
from mediaserver.errors import AuditError
from mediaserver.storage_backends.gcs import GcsStore, RetryPolicy, build_gcs_client

from gcs_emulator import GcsEmulator, find_free_port
from server_harness import auth, make_settings, running_server, wait_for_recording
from short_call import run_call

DAY_S = 86400.0
# 2026-11-22T00:00:00Z
START_WALL_NS = 1_795_305_600 * 10**9


@pytest.fixture(scope="module")
def emulator() -> Iterator[GcsEmulator]:
    """One GCS emulator for the module."""
    with GcsEmulator(find_free_port()) as running:
        yield running


@pytest.fixture
async def gcs(emulator: GcsEmulator) -> AsyncIterator[GcsStore]:
    """A GcsStore on a new bucket."""
    client = build_gcs_client({"STORAGE_EMULATOR_HOST": emulator.url})
    store = GcsStore(
        f"audit-{uuid.uuid4().hex[:12]}",
        client=client,
        retry_policy=RetryPolicy(initial_backoff_s=0.05, max_backoff_s=0.2, deadline_s=2.0),
        owns_client=True,
    )
    await store.create_bucket_if_missing()
    yield store
    await store.close()


async def _started(log: AuditLog) -> AuditLog:
    """Start a log's writer."""
    await log.start()
    return log


async def test_day_files_are_appended_durably_and_a_torn_line_is_skipped(tmp_path: Path) -> None:
    """Events land in their UTC day's JSON-lines file; a torn last line does not hide the rest."""
    clock = ManualClock(wall_ns=START_WALL_NS)
    sink = FileAuditSink(tmp_path / "audit")
    log = await _started(AuditLog(sink, clock=clock, node="n1"))
    first = await log.record(actor="reader", action="recording.read", recording_id="a", status=200)
    clock.advance(DAY_S)
    second = await log.record(actor="reader", action="recording.download", recording_id="b")
    await log.close()
    files = sorted(p.name for p in (tmp_path / "audit").iterdir())
    assert files == ["audit-2026-11-22.jsonl", "audit-2026-11-23.jsonl"]
    day_one = tmp_path / "audit" / "audit-2026-11-22.jsonl"
    assert parse_event(day_one.read_bytes().splitlines()[0]) == first
    assert oct(day_one.stat().st_mode & 0o777) == "0o600"
    with day_one.open("ab") as torn:
        torn.write(b'{"id": "17953056')  # a process killed mid-write
    assert await sink.read_day(date(2026, 11, 22)) == [first]
    assert await sink.read_day(date(2026, 11, 23)) == [second]


async def test_concurrent_events_share_commits_and_all_are_kept(tmp_path: Path) -> None:
    """Hundreds of requests at once: every event written once, in fewer batches than events."""
    clock = ManualClock(wall_ns=START_WALL_NS)
    sink = FileAuditSink(tmp_path)
    batches: list[int] = []
    append = sink.append

    async def counting_append(events: list) -> None:  # type: ignore[type-arg]
        batches.append(len(events))
        await append(events)

    sink.append = counting_append  # type: ignore[method-assign]
    log = await _started(AuditLog(sink, clock=clock, node="n1"))
    events = await asyncio.gather(
        *(log.record(actor="t", action="recording.read", recording_id=f"r{i}") for i in range(300))
    )
    await log.close()
    stored = await sink.read_day(date(2026, 11, 22))
    assert sorted(e.id for e in stored) == sorted(e.id for e in events)
    assert len({e.id for e in events}) == 300
    assert sum(batches) == 300
    assert len(batches) < 300


async def test_queries_select_by_recording_and_time_and_page_with_a_cursor(
    tmp_path: Path,
) -> None:
    """recording_id, from/to and the cursor select exactly the events they say."""
    clock = ManualClock(wall_ns=START_WALL_NS)
    log = await _started(AuditLog(FileAuditSink(tmp_path), clock=clock, node="n1"))
    written = []
    for index in range(12):
        written.append(
            await log.record(actor="t", action="recording.read", recording_id=f"r{index % 3}")
        )
        clock.advance(DAY_S / 4)
    page, cursor = await log.query(AuditQuery(recording_id="r1", limit=2))
    assert page == [e for e in written if e.recording_id == "r1"][:2]
    assert cursor == page[-1].id
    rest, end = await log.query(AuditQuery(recording_id="r1", after_id=cursor, limit=10))
    assert rest == [e for e in written if e.recording_id == "r1"][2:]
    assert end is None
    window, _ = await log.query(
        AuditQuery(from_ns=written[4].at_ns, to_ns=written[8].at_ns, limit=100)
    )
    assert window == written[4:8]
    await log.close()


async def test_days_past_the_audit_retention_are_deleted(tmp_path: Path) -> None:
    """With a 2-day retention, a sweep on the 4th day removes the 1st day's file only."""
    clock = ManualClock(wall_ns=START_WALL_NS)
    sink = FileAuditSink(tmp_path)
    log = await _started(AuditLog(sink, clock=clock, node="n1", retention_days=2))
    for _ in range(4):
        await log.record(actor="t", action="recording.read")
        clock.advance(DAY_S)
    clock.advance(-DAY_S)
    assert await log.expire() == [date(2026, 11, 22)]
    assert [d.isoformat() for d in await sink.days()] == ["2026-11-23", "2026-11-24", "2026-11-25"]
    await log.close()


async def test_two_nodes_share_a_bucket_without_rewriting_an_object(gcs: GcsStore) -> None:
    """Each batch is a new object under audit/YYYY/MM/DD/; queries merge both nodes in order."""
    clock = ManualClock(wall_ns=START_WALL_NS)
    scratch = Path("/tmp") / f"audit-scratch-{uuid.uuid4().hex[:8]}"
    nodes = [
        await _started(AuditLog(StoreAuditSink(gcs, scratch), clock=clock, node=name))
        for name in (build_node_name("node-a.example"), build_node_name("node-b.example"))
    ]
    written = []
    for index in range(6):
        event = await nodes[index % 2].record(actor="t", action="recording.read", recording_id="x")
        written.append(event)
        clock.advance(1.0)
    keys = [info.key for info in await gcs.list_objects(AUDIT_PREFIX)]
    assert len(keys) == 6
    assert all(key.startswith("audit/2026/11/22/") and key.endswith(".jsonl") for key in keys)
    assert keys == sorted(keys)
    assert [key.rsplit("/", 1)[1].removesuffix(".jsonl") for key in keys] == [e.id for e in written]
    events, _ = await nodes[0].query(AuditQuery(recording_id="x"))
    assert events == written
    assert {event.node for event in events} == {node.node for node in nodes}
    clock.advance(3 * DAY_S)
    nodes[0].retention_days = 1
    assert await nodes[0].expire() == [date(2026, 11, 22)]
    assert await gcs.list_objects(AUDIT_PREFIX) == []
    for node in nodes:
        await node.close()


async def test_a_failed_write_fails_its_waiters_and_is_not_retried(tmp_path: Path) -> None:
    """A sink that cannot write: record() raises AuditError; nothing half-written stays."""
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    log = await _started(AuditLog(FileAuditSink(blocker / "audit"), clock=ManualClock(), node="n1"))
    with pytest.raises(AuditError, match="cannot be written"):
        await log.record(actor="t", action="recording.read")
    assert log.write_failures == 1
    await log.close()


async def test_the_api_records_reads_and_answers_queries(tmp_path: Path) -> None:
    """Downloads, transcript fetches and manifest reads are events; /v1/audit checks its input."""
    settings = make_settings(tmp_path, transcription_backend="none", analysis_enabled=False)
    async with (
        running_server(settings) as (_, base),
        aiohttp.ClientSession(headers=auth()) as client,
    ):
        call_id = await run_call(client, base, auth())
        await wait_for_recording(client, base, call_id)
        recording = f"{base}/v1/recordings/{call_id}"
        async with client.get(
            f"{recording}/audio", params={"channel": "left"}, headers={"Range": "bytes=0-99"}
        ) as response:
            assert response.status == 206
        async with client.get(f"{recording}/transcript") as response:
            assert response.status == 404
        async with client.get(f"{base}/v1/audit", params={"recording_id": call_id}) as response:
            body = await response.json()
        for params in ({"limit": "0"}, {"from": "yesterday"}, {"cursor": "x"}, {"colour": "1"}):
            async with client.get(f"{base}/v1/audit", params=params) as response:
                assert response.status == 400, params
                assert (await response.json())["error"]["code"] == "bad_request"
    actions = [(e["actor"], e["action"], e["status"]) for e in body["events"]]
    assert ("api_token", "recording.download", 206) in actions
    assert ("api_token", "transcript.read", 404) in actions
    assert ("api_token", "recording.read", 200) in actions
    download = next(e for e in body["events"] if e["action"] == "recording.download")
    assert download["details"] == {"query": {"channel": "left"}, "range": "bytes=0-99"}
    day_files = list(settings.audit_path.iterdir())
    lines = [json.loads(line) for f in day_files for line in f.read_text().splitlines()]
    assert [line for line in lines if line["recording_id"] == call_id] == body["events"]


async def test_an_unwritable_audit_log_turns_reads_into_503(tmp_path: Path) -> None:
    """No durable event, no answer: a buffered read becomes 503 audit_unavailable."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    settings = make_settings(tmp_path, audit_path=blocker / "audit")
    async with (
        running_server(settings) as (_, base),
        aiohttp.ClientSession(headers=auth()) as client,
        client.get(f"{base}/v1/recordings") as response,
    ):
        assert response.status == 503
        assert (await response.json())["error"]["code"] == "audit_unavailable"
