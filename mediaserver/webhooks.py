"""Signed webhook deliveries of recording and job events, retried with backoff, durable."""

# Like Twilio's recording status callbacks: events go to the global `webhook_url` and to the
# call's own `status_callback` (given in POST /v1/calls, kept in the call's metadata) as a POST of
# JSON, signed
#     X-Mediaserver-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(webhook_secret, t + "." + body)>
# (the time is the delivery attempt's, so a receiver can refuse stale replays). A delivery is
# written to the outbox directory before it is attempted and removed once a receiver answered
# 2xx, or after `max_attempts`; in between it is retried with exponential backoff, across
# restarts too. Publishing never waits for a receiver: the pipeline hands the event over and goes
# on.

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import heapq
import hmac
import json
import secrets
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import aiohttp
import structlog

from mediaserver.durable_file import write_file_durably
from mediaserver.errors import MediaServerError
from mediaserver.jobs.state import JobState
from mediaserver.recording.call import CallStatus
from mediaserver.recording.manifest import Manifest
from mediaserver.settings import Settings

log = structlog.get_logger(__name__)

SIGNATURE_HEADER = "X-Mediaserver-Signature"
EVENT_HEADER = "X-Mediaserver-Event"
DELIVERY_HEADER = "X-Mediaserver-Delivery"
STATUS_CALLBACK_KEY = "status_callback"  # where a call's own URL is kept in its metadata
MAX_URL_LENGTH = 2048
MAX_BACKOFF_S = 600.0
CONCURRENT_DELIVERIES = 8
_SUFFIX = ".json"


class WebhookUrlError(MediaServerError, ValueError):
    """A webhook URL is not an absolute http(s) URL."""


def check_webhook_url(value: object, name: str = STATUS_CALLBACK_KEY) -> str:
    """`value` if it is an http:// or https:// URL of sensible length, else WebhookUrlError."""
    if (
        not isinstance(value, str)
        or not value.startswith(("http://", "https://"))
        or len(value) > MAX_URL_LENGTH
        or any(c.isspace() for c in value)
    ):
        raise WebhookUrlError(f"{name} must be an http:// or https:// URL")
    return value


def with_status_callback(metadata: Mapping[str, Any], url: object | None) -> dict[str, Any]:
    """A call's metadata carrying its status callback URL (validated), if one was given."""
    if url is None:
        return dict(metadata)
    return {**metadata, STATUS_CALLBACK_KEY: check_webhook_url(url)}


def sign_payload(secret: str, timestamp_s: int, body: bytes) -> str:
    """The signature header's value for a body sent at `timestamp_s`."""
    digest = hmac.new(secret.encode(), f"{timestamp_s}.".encode() + body, hashlib.sha256)
    return f"t={timestamp_s},v1={digest.hexdigest()}"


def build_event(
    event_type: str, call_id: str, data: Mapping[str, Any], created_at: str
) -> dict[str, Any]:
    """An event as receivers get it."""
    return {
        "id": "evt_" + secrets.token_urlsafe(12),
        "type": event_type,
        "created_at": created_at,
        "call_id": call_id,
        **data,
    }


@dataclass(frozen=True, slots=True)
class Delivery:
    """One event on its way to one URL."""

    delivery_id: str
    url: str
    event_type: str
    call_id: str
    body: str
    attempts: int = 0

    def to_json(self) -> str:
        """As kept in the outbox."""
        return json.dumps(
            {
                "delivery_id": self.delivery_id,
                "url": self.url,
                "event_type": self.event_type,
                "call_id": self.call_id,
                "body": self.body,
                "attempts": self.attempts,
            }
        )


def parse_delivery(text: str) -> Delivery:
    """A delivery read back from the outbox; ValueError if it is not one."""
    try:
        data = json.loads(text)
        return Delivery(
            str(data["delivery_id"]),
            str(data["url"]),
            str(data["event_type"]),
            str(data["call_id"]),
            str(data["body"]),
            int(data["attempts"]),
        )
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"not a webhook delivery: {exc}") from None


class WebhookSender:
    """Owns the outbox, the delivery loop and every delivery task; start() and close() pair up."""

    def __init__(
        self,
        *,
        directory: Path,
        session: aiohttp.ClientSession,
        secret: str,
        timeout_s: float = 10.0,
        max_attempts: int = 12,
        backoff_s: float = 2.0,
    ) -> None:
        """Deliver with `session`; keep undelivered events under `directory`."""
        self.directory = directory
        self._session = session
        self._secret = secret
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._max_attempts = max_attempts
        self._backoff_s = backoff_s
        self._due: list[tuple[float, int, Delivery]] = []  # (loop time, tie-break, delivery)
        self._sequence = 0
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(CONCURRENT_DELIVERIES)
        self.delivered = 0
        self.retried = 0
        self.failed = 0

    async def start(self) -> None:
        """Load what an earlier process left undelivered, then start delivering."""
        for delivery in await asyncio.to_thread(_load_outbox, self.directory):
            self._schedule(delivery, 0.0)
        self._loop_task = asyncio.create_task(self._run(), name="webhooks.deliver")

    async def close(self) -> None:
        """Stop delivering; what is undelivered stays in the outbox for the next start."""
        tasks = [*self._tasks, *([self._loop_task] if self._loop_task else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def pending(self) -> int:
        """Deliveries waiting for their next attempt or being attempted."""
        return len(self._due) + len(self._tasks)

    def publish(
        self, event_type: str, call_id: str, urls: Iterable[str], data: Mapping[str, Any]
    ) -> None:
        """Hand an event over for delivery to each URL (returns at once)."""
        targets = sorted(set(urls))
        if not targets:
            return
        created_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        body = json.dumps(build_event(event_type, call_id, data, created_at), sort_keys=True)
        for url in targets:
            delivery = Delivery("dlv_" + secrets.token_urlsafe(12), url, event_type, call_id, body)
            self._spawn(self._persist_then_schedule(delivery))

    async def _persist_then_schedule(self, delivery: Delivery) -> None:
        """Write the delivery to the outbox, then queue its first attempt."""
        await asyncio.to_thread(write_file_durably, self._path(delivery), delivery.to_json())
        self._schedule(delivery, 0.0)

    def _schedule(self, delivery: Delivery, delay_s: float) -> None:
        """Queue an attempt `delay_s` from now."""
        self._sequence += 1
        due = asyncio.get_running_loop().time() + delay_s
        heapq.heappush(self._due, (due, self._sequence, delivery))
        self._wake.set()

    async def _run(self) -> None:
        """Start each delivery attempt when it is due."""
        loop = asyncio.get_running_loop()
        while True:
            self._wake.clear()
            now = loop.time()
            while self._due and self._due[0][0] <= now:
                _, _, delivery = heapq.heappop(self._due)
                self._spawn(self._attempt(delivery))
            timeout_s = self._due[0][0] - now if self._due else None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout_s)

    async def _attempt(self, delivery: Delivery) -> None:
        """POST once; on failure retry later or give up."""
        async with self._slots:
            status, error = await self._post(delivery)
        attempts = delivery.attempts + 1
        bound = log.bind(
            call_id=delivery.call_id,
            event=delivery.event_type,
            url=delivery.url,
            attempts=attempts,
        )
        if error is None:
            self.delivered += 1
            await asyncio.to_thread(self._path(delivery).unlink, missing_ok=True)
            bound.info("webhook.delivered", status=status)
            return
        if attempts >= self._max_attempts:
            self.failed += 1
            await asyncio.to_thread(self._path(delivery).unlink, missing_ok=True)
            bound.error("webhook.given_up", error=error)
            return
        self.retried += 1
        retry = replace(delivery, attempts=attempts)
        await asyncio.to_thread(write_file_durably, self._path(retry), retry.to_json())
        delay_s = min(MAX_BACKOFF_S, self._backoff_s * 2 ** (attempts - 1))
        bound.warning("webhook.retrying", error=error, delay_s=delay_s)
        self._schedule(retry, delay_s)

    async def _post(self, delivery: Delivery) -> tuple[int | None, str | None]:
        """(status, None) if the receiver took it, else (status or None, why not)."""
        body = delivery.body.encode()
        headers = {
            "Content-Type": "application/json",
            EVENT_HEADER: delivery.event_type,
            DELIVERY_HEADER: delivery.delivery_id,
        }
        if self._secret:
            headers[SIGNATURE_HEADER] = sign_payload(self._secret, int(time.time()), body)
        try:
            async with self._session.post(
                delivery.url,
                data=body,
                headers=headers,
                timeout=self._timeout,
                allow_redirects=False,
            ) as response:
                await response.read()
                if 200 <= response.status < 300:
                    return response.status, None
                return response.status, f"HTTP {response.status}"
        except (aiohttp.ClientError, TimeoutError) as exc:
            return None, f"{type(exc).__name__}: {exc}"

    def _spawn(self, coroutine: Any) -> None:
        """Run a coroutine as an owned task."""
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _path(self, delivery: Delivery) -> Path:
        """The delivery's outbox file."""
        return self.directory / f"{delivery.delivery_id}{_SUFFIX}"


def _load_outbox(directory: Path) -> list[Delivery]:
    """Every delivery in the outbox (unreadable files are logged and removed)."""
    directory.mkdir(parents=True, exist_ok=True)
    deliveries = []
    for path in sorted(directory.glob(f"*{_SUFFIX}")):
        try:
            deliveries.append(parse_delivery(path.read_text()))
        except (ValueError, OSError) as exc:
            log.warning("webhook.outbox_unreadable", path=str(path), error=str(exc))
            path.unlink(missing_ok=True)
    return deliveries


def open_sender(settings: Settings, session: aiohttp.ClientSession) -> WebhookSender:
    """A sender configured by the webhook_* settings, its outbox under jobs_path."""
    return WebhookSender(
        directory=settings.jobs_path / "webhooks",
        session=session,
        secret=settings.webhook_secret,
        timeout_s=settings.webhook_timeout_s,
        max_attempts=settings.webhook_max_attempts,
        backoff_s=settings.webhook_backoff_s,
    )


def build_links(call_id: str) -> dict[str, str]:
    """Where a recording and its documents are served (paths on this server)."""
    base = f"/v1/recordings/{call_id}"
    return {
        "recording": base,
        "audio": f"{base}/audio?channel=stereo",
        "analysis": f"{base}/analysis",
        "transcript": f"{base}/transcript",
    }


class CallEvents:
    """Turns recording and job outcomes into events for the global URL and the call's own."""

    def __init__(self, sender: WebhookSender, webhook_url: str = "") -> None:
        """Publish through `sender`; every event also goes to `webhook_url` if set."""
        self._sender = sender
        self._webhook_url = webhook_url
        self._failed_calls: set[str] = set()  # recording.failed is said once per call

    def recording_stored(self, manifest: Manifest) -> None:
        """recording.stored: the files are in the store (status stored or recovered), or, for a
        call that carried no media, its manifest alone (status empty: no audio, no jobs)."""
        self._failed_calls.discard(manifest.call_id)
        links = build_links(manifest.call_id)
        if manifest.status is CallStatus.EMPTY:  # Twilio says "absent": nothing to fetch or await
            links = {"recording": links["recording"]}
        self._publish(
            "recording.stored",
            manifest,
            {"status": manifest.status.value, "duration_s": manifest.duration_ms / 1000},
            links,
        )

    def recording_failed(self, manifest: Manifest) -> None:
        """recording.failed: the files could not be stored (they are kept and retried)."""
        if manifest.call_id in self._failed_calls:
            return
        self._failed_calls.add(manifest.call_id)
        self._publish("recording.failed", manifest, {"status": manifest.status.value})

    def job_finished(self, event_type: str, manifest: Manifest, state: JobState) -> None:
        """analysis.completed, transcript.failed, ...: a job has finished."""
        data: dict[str, Any] = {"status": state.status.value, "job_id": state.job_id}
        if state.error is not None:
            data["error"] = state.error.to_dict()
        self._publish(event_type, manifest, data)

    def _publish(
        self,
        event_type: str,
        manifest: Manifest,
        data: dict[str, Any],
        links: dict[str, str] | None = None,
    ) -> None:
        """Send to the configured URL and the call's status callback."""
        urls = [self._webhook_url] if self._webhook_url else []
        callback = manifest.storage.get("metadata", {}).get(STATUS_CALLBACK_KEY)
        if isinstance(callback, str) and callback:
            urls.append(callback)
        self._sender.publish(
            event_type,
            manifest.call_id,
            urls,
            {**data, "links": build_links(manifest.call_id) if links is None else links},
        )
