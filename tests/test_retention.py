"""Retention in virtual time: expired recordings vanish at the next sweep, held ones stay."""

import asyncio
import re
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage

from mediaserver.clock import ManualClock
from mediaserver.errors import SettingsError
from mediaserver.lifecycle.gcs_mirror import HELD_UNTIL, build_lifecycle_rules
from mediaserver.lifecycle.policy import compute_retention, parse_retention_days
from mediaserver.settings import load_settings

from gcs_emulator import GcsEmulator, find_free_port
from server_harness import auth, make_settings, running_server
from virtual_call import record_call, virtual_server

DAY_S = 86400.0
SWEEP_S = 600.0
# 2026-11-22T10:00:00Z
START_WALL_NS = int(datetime(2026, 11, 22, 10, 0, tzinfo=UTC).timestamp()) * 10**9
CREATED = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)


def test_a_calls_own_retention_wins_and_a_hold_never_expires() -> None:
    """Default vs the call's days, 0 = forever, holds; bad values named."""
    default = compute_retention({}, CREATED, 30)
    assert (default.days, default.source) == (30, "default")
    assert default.expires_at == CREATED + timedelta(days=30)
    own = compute_retention({"retention_days": 1}, CREATED, 30)
    assert (own.days, own.source, own.expires_at) == (1, "call", CREATED + timedelta(days=1))
    assert not own.is_expired(CREATED + timedelta(hours=23))
    assert own.is_expired(CREATED + timedelta(days=1))
    assert compute_retention({"retention_days": 0}, CREATED, 30).expires_at is None
    assert compute_retention({}, CREATED, 0).expires_at is None
    held = compute_retention({"retention_days": 1, "hold": {"by": "legal"}}, CREATED, 30)
    assert held.is_held
    assert not held.is_expired(CREATED + timedelta(days=400))
    for bad in (-1, 1.5, True, "7", 36501):
        with pytest.raises(ValueError, match="retention_days must be"):
            parse_retention_days(bad)
    with pytest.raises(SettingsError, match="recording_retention_days"):
        load_settings(environ={"MEDIASERVER_RECORDING_RETENTION_DAYS": "-3"})
    with pytest.raises(SettingsError, match="gcs_apply_lifecycle needs storage_type = gcs"):
        load_settings(environ={"MEDIASERVER_GCS_APPLY_LIFECYCLE": "true"})


def test_bucket_rules_keep_the_buckets_own_and_replace_ours() -> None:
    """Rules for other prefixes stay; ours (recordings/, audit/) are written once each."""
    theirs = {"action": {"type": "Delete"}, "condition": {"age": 3, "matchesPrefix": ["tmp/"]}}
    stale = {"action": {"type": "Delete"}, "condition": {"age": 9, "matchesPrefix": ["audit/"]}}
    rules = build_lifecycle_rules([theirs, stale], audit_retention_days=90)
    assert rules == [
        theirs,
        {
            "action": {"type": "Delete"},
            "condition": {"daysSinceCustomTime": 1, "matchesPrefix": ["recordings/"]},
        },
        {"action": {"type": "Delete"}, "condition": {"age": 91, "matchesPrefix": ["audit/"]}},
    ]
    assert build_lifecycle_rules([], 0)[-1]["condition"]["matchesPrefix"] == ["recordings/"]


class Site:
    """A server in virtual time and the calls made on it."""

    def __init__(self, server: Any, base: str, client: aiohttp.ClientSession, clock: ManualClock):
        self.server = server
        self.base = base
        self.client = client
        self.clock = clock

    async def call(self, body: dict[str, Any] | None = None) -> dict[str, Any]:
        """A stored recording, its jobs done."""
        manifest = await record_call(self.client, self.server, self.base, self.clock, body)
        call_id = manifest["call_id"]
        for kind in ("analysis", "transcript"):
            await self.wait_status(f"/v1/recordings/{call_id}/{kind}", 200)
        return manifest

    async def wait_status(self, path: str, status: int, timeout_s: float = 60.0) -> None:
        """Poll until a GET answers `status`."""
        async with asyncio.timeout(timeout_s):
            while True:
                async with self.client.get(self.base + path, headers=auth()) as response:
                    if response.status == status:
                        return
                await asyncio.sleep(0.1)

    async def sweeps(self) -> int:
        """How many retention sweeps the server has made (from /metrics)."""
        async with self.client.get(f"{self.base}/metrics", headers=auth()) as response:
            text = await response.text()
        match = re.search(r"^mediaserver_retention_sweeps(?:_total)? (\d+)", text, re.M)
        assert match, text
        return int(match.group(1))

    async def pass_time(self, seconds: float) -> None:
        """Move the clock on and wait for the sweep that wakes."""
        before = await self.sweeps()
        self.clock.advance(seconds)
        async with asyncio.timeout(60):
            while True:  # the server says so only in /metrics: poll it
                if await self.sweeps() > before:
                    return
                await asyncio.sleep(0.05)

    async def exists(self, call_id: str) -> bool:
        """Whether the API still knows the recording."""
        url = f"{self.base}/v1/recordings/{call_id}"
        async with self.client.get(url, headers=auth()) as response:
            assert response.status in (200, 404)
            return response.status == 200

    async def audit(self, call_id: str) -> list[tuple[str, str]]:
        """(actor, action) of a recording's audit events, mutating ones only."""
        async with self.client.get(
            f"{self.base}/v1/audit", params={"recording_id": call_id}, headers=auth()
        ) as response:
            events = (await response.json())["events"]
        return [
            (e["actor"], e["action"])
            for e in events
            if e["action"] in ("recording.hold", "recording.release", "recording.expired")
        ]


async def _scenario(site: Site, object_names: Any) -> None:
    """1-day, held 1-day, default (3 days) and keep-forever recordings through four sweeps."""
    short = await site.call({"retention_days": 1})
    held = await site.call({"retention_days": 1})
    default = await site.call()
    forever = await site.call({"retention_days": 0})
    ids = {
        name: m["call_id"]
        for name, m in zip(
            ("short", "held", "default", "forever"), (short, held, default, forever), strict=True
        )
    }
    assert short["lifecycle"] == {"retention_days": 1}
    assert default["retention"]["source"] == "default"
    assert default["retention"]["retention_days"] == 3
    short_objects = object_names(ids["short"])
    assert {
        "left.opus",
        "right.opus",
        "merged.opus",
        "peaks.json",
        "manifest.json",
        "analysis.json",
        "transcript.json",
        "transcript.vtt",
    } <= set(short_objects)

    async with site.client.put(
        f"{site.base}/v1/recordings/{ids['held']}/hold",
        json={"reason": "litigation 2026-114"},
        headers=auth(),
    ) as response:
        hold = await response.json()
        assert response.status == 200, hold
    assert hold["retention"]["hold"]["reason"] == "litigation 2026-114"
    assert hold["retention"]["hold"]["by"] == "api_token"
    async with site.client.delete(
        f"{site.base}/v1/recordings/{ids['held']}", headers=auth()
    ) as response:
        assert response.status == 409  # a held recording cannot be deleted
        assert "legal hold" in (await response.json())["error"]["message"]

    await site.pass_time(DAY_S - 3600)  # 23 h: nothing has expired yet
    assert all([await site.exists(call_id) for call_id in ids.values()])

    await site.pass_time(3600 + SWEEP_S)  # past one day
    assert not await site.exists(ids["short"])
    assert object_names(ids["short"]) == []
    assert await site.exists(ids["held"])
    assert await site.exists(ids["default"])
    assert ("retention", "recording.expired") in await site.audit(ids["short"])

    async with site.client.delete(
        f"{site.base}/v1/recordings/{ids['held']}/hold", headers=auth()
    ) as response:
        released = await response.json()
        assert response.status == 200
    assert released["expired"] is True
    await site.pass_time(SWEEP_S)
    assert not await site.exists(ids["held"])
    assert await site.audit(ids["held"]) == [
        ("api_token", "recording.hold"),
        ("api_token", "recording.release"),
        ("retention", "recording.expired"),
    ]

    await site.pass_time(2 * DAY_S)  # past three days
    assert not await site.exists(ids["default"])
    assert object_names(ids["default"]) == []
    assert await site.exists(ids["forever"])
    assert len(object_names(ids["forever"])) >= 8


def _local_objects(root: Path) -> Any:
    """The names of a recording's files under a local store."""

    def names(call_id: str) -> list[str]:
        prefix = f"conversation_{call_id}_"
        return sorted(p.name.removeprefix(prefix) for p in root.rglob(f"{prefix}*"))

    return names


@pytest.mark.timeout(300)
async def test_local_recordings_expire_at_the_sweep_after_their_retention(tmp_path: Path) -> None:
    """Local store: every object of an expired recording goes, audited; held ones stay."""
    clock = ManualClock(wall_ns=START_WALL_NS)
    settings = make_settings(
        tmp_path, recording_retention_days=3, sweep_interval_s=SWEEP_S, job_workers=1
    )
    async with (
        virtual_server(settings, clock) as (server, base),
        aiohttp.ClientSession() as client,
    ):
        await _scenario(Site(server, base, client, clock), _local_objects(tmp_path / "recordings"))


@pytest.fixture(scope="module")
def emulator() -> Iterator[GcsEmulator]:
    """One GCS emulator for the module."""
    with GcsEmulator(find_free_port()) as running:
        yield running


@pytest.mark.timeout(300)
async def test_gcs_recordings_expire_and_the_bucket_mirrors_the_policy(
    tmp_path: Path, emulator: GcsEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GCS: the same, plus the bucket's lifecycle rules and each object's Custom-Time."""
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", emulator.url)
    bucket_name = f"ret-{uuid.uuid4().hex[:12]}"
    clock = ManualClock(wall_ns=START_WALL_NS)
    settings = make_settings(
        tmp_path,
        storage_type="gcs",
        storage_path=bucket_name,
        gcs_create_bucket=True,
        gcs_apply_lifecycle=True,
        recording_retention_days=3,
        audit_retention_days=400,
        sweep_interval_s=SWEEP_S,
        job_workers=1,
    )
    client = storage.Client(
        project="test",
        credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
        client_options={"api_endpoint": emulator.url},
    )
    bucket = client.bucket(bucket_name)

    def names(call_id: str) -> list[str]:
        prefix = f"conversation_{call_id}_"
        return sorted(
            blob.name.rsplit("/", 1)[1].removeprefix(prefix)
            for blob in client.list_blobs(bucket_name, prefix="recordings/")
            if prefix in blob.name
        )

    async with (
        virtual_server(settings, clock) as (server, base),
        aiohttp.ClientSession() as http,
    ):
        site = Site(server, base, http, clock)
        rules = await asyncio.to_thread(
            lambda: list(client.get_bucket(bucket_name).lifecycle_rules)
        )
        assert [dict(rule)["condition"] for rule in rules] == [
            {"daysSinceCustomTime": 1, "matchesPrefix": ["recordings/"]},
            {"age": 401, "matchesPrefix": ["audit/"]},
        ]
        marked = await site.call({"retention_days": 2})
        await site.pass_time(SWEEP_S)  # the sweep marks each object with its expiry
        left = bucket.get_blob(marked["files"][0]["key"])
        assert left.custom_time == CREATED + timedelta(days=2, seconds=_offset_s(marked))
        async with http.put(
            f"{base}/v1/recordings/{marked['call_id']}/hold", headers=auth()
        ) as response:
            assert response.status == 200
        assert bucket.get_blob(marked["files"][0]["key"]).custom_time == HELD_UNTIL
        await _scenario(site, names)


def _offset_s(manifest: dict[str, Any]) -> float:
    """Seconds from START to the recording's creation (the virtual clock moved before it)."""
    created = datetime.fromisoformat(manifest["created_at"].replace("Z", "+00:00"))
    return (created - CREATED).total_seconds()


async def test_bad_retention_and_hold_requests_get_clear_4xx(tmp_path: Path) -> None:
    """retention_days out of range, hold bodies with unknown fields, unknown recordings."""
    async with (
        running_server(make_settings(tmp_path)) as (_, base),
        aiohttp.ClientSession(headers=auth()) as client,
    ):
        for value in (-1, 2.5, "7", 36501, True):
            async with client.post(f"{base}/v1/calls", json={"retention_days": value}) as r:
                assert r.status == 400, value
                assert "retention_days must be" in (await r.json())["error"]["message"]
        async with client.put(f"{base}/v1/recordings/nope/hold", json={}) as response:
            assert response.status == 404
        async with client.put(
            f"{base}/v1/recordings/nope/hold", json={"reason": "x", "until": "never"}
        ) as response:
            assert response.status == 400
            assert "until" in (await response.json())["error"]["message"]
        async with client.put(f"{base}/v1/recordings/nope/hold", json={"reason": 7}) as response:
            assert response.status == 400
