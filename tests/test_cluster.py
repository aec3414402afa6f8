"""Two `serve` nodes and two `worker`s on one real Redis and the GCS emulator, as deployed.

The tests share one cluster and run in file order: the last two stop node-a and the workers
for good.
"""

import asyncio
import signal
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis

from mediaserver.cluster.redis_connection import open_redis
from mediaserver.cluster.registry import call_key
from mediaserver.jobs.redis_queue import GROUP, STREAM_KEY

from cluster_harness import BUCKET, Cluster, eventually, running_cluster, until
from rtp_caller import RtpCaller, open_caller
from rtp_sender import marker_template, silence_payload
from server_harness import auth
from twilio_agent import TwilioAgentServer, TwilioTestAgent
from webhook_receiver import SECRET, WebhookReceiver, free_port
from webrtc_peer import ClientPeer, ToneTrack

TIMEOUT_S = 60.0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Redis, GCS, node-a, node-b, worker-1 and worker-2, sending signed webhooks."""
    hooks = f"http://127.0.0.1:{free_port()}/hooks"  # listened on by the test that wants them
    with running_cluster(
        tmp_path_factory.mktemp("cluster"),
        MEDIASERVER_WEBHOOK_URL=hooks,
        MEDIASERVER_WEBHOOK_SECRET=SECRET,
        MEDIASERVER_WEBHOOK_BACKOFF_S="0.5",
    ) as started:
        yield started


async def get_json(client: aiohttp.ClientSession, url: str) -> Any:
    """GET a JSON document (status 200)."""
    async with client.get(url, headers=auth()) as response:
        assert response.status == 200, await response.text()
        return await response.json()


async def read_metrics(client: aiohttp.ClientSession, base: str) -> dict[str, float]:
    """The samples of a /metrics page, keyed `name{label="value",...}` (labels sorted)."""
    async with client.get(f"{base}/metrics", headers=auth()) as response:
        assert response.status == 200, await response.text()
        text = await response.text()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples


async def wait_for_job(
    client: aiohttp.ClientSession, base: str, call_id: str, kind: str, status: str
) -> dict[str, Any]:
    """Poll the recording's manifest until its job of `kind` has `status`; the job's state."""
    async with asyncio.timeout(TIMEOUT_S):
        while True:
            async with client.get(f"{base}/v1/recordings/{call_id}", headers=auth()) as response:
                body = await response.json()
            state: dict[str, Any] = body.get("jobs", {}).get(kind, {})
            if state.get("status") == status:
                return state
            assert state.get("status") != "failed" or status == "failed", state
            await asyncio.sleep(0.1)


async def streaming_call(
    client: aiohttp.ClientSession, create_at: str, leg_at: str, payloads: list[bytes]
) -> tuple[str, str, RtpCaller, asyncio.Task[list[int]]]:
    """A call created through one node, its RTP leg asked through another, its caller sending
    `payloads` in real time: (call id, its node's base URL, the caller, the sending task)."""
    async with client.post(f"{create_at}/v1/calls", json={}, headers=auth()) as response:
        assert response.status == 201, await response.text()
        created = await response.json()
    call_id = created["call_id"]
    async with client.post(f"{leg_at}/v1/calls/{call_id}/rtp", json={}, headers=auth()) as response:
        assert response.status == 201, await response.text()
        leg = await response.json()
    caller = await open_caller(leg["host"], leg["port"], leg["payload_type"])
    sending = asyncio.create_task(caller.send_stream(payloads))
    return call_id, created["links"]["self"].removesuffix(f"/v1/calls/{call_id}"), caller, sending


async def rtp_call(
    client: aiohttp.ClientSession, create_at: str, leg_at: str, packets: int = 50
) -> tuple[str, str]:
    """A call created through one node, its RTP leg asked through another, `packets` of a tone
    sent, ended; (call id, the base URL of the node that held it)."""
    tone = list(marker_template(500.0))
    payloads = (tone * (packets // len(tone) + 1))[:packets]
    call_id, owner, caller, sending = await streaming_call(client, create_at, leg_at, payloads)
    await sending

    async def all_received() -> bool:
        live = await get_json(client, f"{owner}/v1/calls/{call_id}")
        return bool(live["legs"]["caller"]["packets"] == packets)

    # Ended only once the owner has read every packet: a DELETE right after the last send
    # could overtake the last one still in flight on a busy machine.
    await until(all_received, TIMEOUT_S)
    async with client.delete(f"{leg_at}/v1/calls/{call_id}", headers=auth()) as response:
        assert response.status == 202, await response.text()
    assert caller.transport is not None
    caller.transport.close()
    return call_id, owner


async def test_a_call_made_on_one_node_is_reached_through_the_other(cluster: Cluster) -> None:
    """A call created on node-a: its WebRTC caller offers through node-b and follows the 307,
    its agent dials in through node-b and is relayed; both nodes list it while it is live; the
    recording is stored and analysed by a worker, not by a node, and the worker signs and
    sends the analysis.completed webhook."""
    node_a, node_b = cluster.nodes["node-a"], cluster.nodes["node-b"]
    port = int(cluster.settings["MEDIASERVER_WEBHOOK_URL"].split(":")[-1].split("/")[0])
    hooks = WebhookReceiver(port=port)
    await hooks.start()
    async with aiohttp.ClientSession() as client:
        nodes = (await get_json(client, f"{node_b.base}/v1/nodes"))["nodes"]
        assert [(n["node_id"], n["public_url"], n["state"]) for n in nodes] == [
            ("node-a", node_a.base, "ready"),
            ("node-b", node_b.base, "ready"),
        ]
        async with client.post(f"{node_a.base}/v1/calls", json={}, headers=auth()) as response:
            assert response.status == 201
            created = await response.json()
        call_id = created["call_id"]
        assert response.headers["Location"] == f"{node_a.base}/v1/calls/{call_id}"
        assert created["whip_url"] == f"{node_a.base}/whip?call_id={call_id}"
        assert created["agent_ws_url"] == f"{node_a.ws_base}/v1/calls/{call_id}/agent"

        ws = await client.ws_connect(f"{node_b.ws_base}/v1/calls/{call_id}/agent", headers=auth())
        agent = TwilioTestAgent(ws)
        start = await agent.wait_for("start")
        assert start["start"]["callSid"] == call_id
        await node_b.wait_for_log("cluster.websocket_proxied", path=f"/v1/calls/{call_id}/agent")

        peer = ClientPeer(ToneTrack(440.0))
        offer = await peer.create_offer()
        async with client.post(
            f"{node_b.base}/whip?call_id={call_id}",
            data=offer,
            headers={**auth(), "Content-Type": "application/sdp"},
        ) as response:
            assert response.status == 201, await response.text()
            assert [r.status for r in response.history] == [307]
            assert str(response.url).startswith(f"{node_a.base}/whip?call_id={call_id}")
            whip_resource = response.headers["Location"]
            answer = await response.text()
        assert whip_resource == f"{node_a.base}/whip/{call_id}"
        await peer.accept_answer(answer)
        await agent.send_tone(700.0, 400)
        await asyncio.wait_for(peer.wait_for_samples(48000), TIMEOUT_S)
        await eventually(lambda: len(agent.media_messages()) > 25)

        for node in (node_a, node_b):
            listed = (await get_json(client, f"{node.base}/v1/calls"))["calls"]
            assert [(c["call_id"], c["node_id"]) for c in listed] == [(call_id, "node-a")]
            assert listed[0]["legs"]["agent"]["connected"] is True

        async with client.delete(whip_resource, headers=auth()) as response:
            assert response.status == 200
        await peer.close()
        assert await agent.wait_closed() == 1000  # the agent's close code came through node-b
        await wait_for_job(client, node_b.base, call_id, "analysis", "completed")
        analysis = await get_json(client, f"{node_b.base}/v1/recordings/{call_id}/analysis")
        assert analysis["call_id"] == call_id
        assert analysis["channels"]["agent"]["talk_time_s"] > 0.2
        completed = await hooks.wait_for("analysis.completed", call_id)
        assert completed.signature_ok
        await hooks.wait_for("recording.stored", call_id)
    await hooks.stop()
    ran = [w.name for w in cluster.workers.values() if w.events("job.completed", call_id=call_id)]
    assert len(ran) == 1
    await cluster.workers[ran[0]].wait_for_log("webhook.delivered", call_id=call_id)
    assert not any(n.events("job.completed") for n in cluster.nodes.values())


async def test_a_forwarded_call_dials_its_agent_from_the_node_that_holds_it(
    cluster: Cluster,
) -> None:
    """Two calls created through node-b: the first stays there, the second is forwarded to the
    less-loaded node-a, which dials its agent_url; the agent's stream is that node's."""
    node_a, node_b = cluster.nodes["node-a"], cluster.nodes["node-b"]
    async with aiohttp.ClientSession() as client, TwilioAgentServer() as agents:
        owners = []
        for _ in range(2):
            async with client.post(
                f"{node_b.base}/v1/calls", json={"agent_url": agents.url}, headers=auth()
            ) as response:
                assert response.status == 201, await response.text()
                created = await response.json()
            owners.append(created["links"]["self"].removesuffix(f"/v1/calls/{created['call_id']}"))
            agent = await agents.next_agent()
            start = await agent.wait_for("start")
            assert start["start"]["callSid"] == created["call_id"]
        assert owners == [node_b.base, node_a.base]
        await node_b.wait_for_log("cluster.call_forwarded", node_id="node-a")
        on_a = await get_json(client, f"{node_a.base}/v1/calls/{created['call_id']}")
        assert on_a["legs"]["agent"]["kind"] == "websocket"
        assert on_a["legs"]["agent"]["connected"] is True
        listed = (await get_json(client, f"{node_a.base}/v1/calls"))["calls"]
        for call in listed:
            async with client.delete(
                f"{node_a.base}/v1/calls/{call['call_id']}", headers=auth()
            ) as response:
                assert response.status == 202


async def pending_consumer(redis: Redis) -> str:
    """The consumer a job has been handed to, once one has."""
    async with asyncio.timeout(TIMEOUT_S):
        while True:
            entries = await redis.xpending_range(STREAM_KEY, GROUP, "-", "+", 1)
            if entries:
                return str(entries[0]["consumer"])
            await asyncio.sleep(0.05)


async def test_a_worker_killed_mid_job_has_its_job_finished_by_the_other(
    cluster: Cluster,
) -> None:
    """A worker SIGKILLed while it holds a job: after the visibility timeout the other worker
    takes the job over and completes it; the killed worker is replaced."""
    node_a = cluster.nodes["node-a"]
    redis = open_redis(cluster.redis.url)
    async with aiohttp.ClientSession() as client:
        call_id, _ = await rtp_call(client, node_a.base, node_a.base)
        await wait_for_job(client, node_a.base, call_id, "analysis", "completed")
        workers = list(cluster.workers.values())
        # Stop both workers, queue the job, and hold the recording's lock: the worker that
        # takes the job is then stuck inside it, at its first step, until the test lets go.
        for worker in workers:
            worker.signal(signal.SIGSTOP)
        async with client.post(
            f"{node_a.base}/v1/recordings/{call_id}/analysis", headers=auth()
        ) as response:
            assert response.status == 202, await response.text()
            job_id = (await response.json())["job_id"]

        async def counted() -> bool:  # the queue's depth, as workers are autoscaled on it
            samples = await read_metrics(client, node_a.base)
            waiting = samples["mediaserver_jobs_queued"] + samples["mediaserver_jobs_running"]
            return samples["mediaserver_jobs_pending"] == 1 and waiting == 1

        await until(counted, 10)
        lock = redis.lock(f"mediaserver:lock:recording:{call_id}", timeout=60)
        await lock.acquire()
        for worker in workers:
            worker.signal(signal.SIGCONT)
        consumer = await pending_consumer(redis)
        (holder,) = [w for w in workers if consumer == f"{w.name}-{w.process.pid}"]
        (other,) = [w for w in workers if w is not holder]
        holder.signal(signal.SIGKILL)
        assert await holder.wait_exit() == -signal.SIGKILL
        await lock.release()
        state = await wait_for_job(client, node_a.base, call_id, "analysis", "completed")
        assert state["job_id"] == job_id
        await other.wait_for_log("job.reclaimed", job_id=job_id)
        assert other.events("job.completed", job_id=job_id)
        durations = await read_metrics(client, other.base)  # the worker's own /metrics
        assert durations['mediaserver_job_seconds_count{kind="analysis",result="completed"}'] >= 1
        assert durations['mediaserver_job_seconds_sum{kind="analysis",result="completed"}'] > 0
    await redis.aclose()
    cluster.start_worker(holder.name)


async def test_a_job_that_keeps_failing_ends_failed_after_its_attempts(cluster: Cluster) -> None:
    """A recording whose caller channel is gone from the bucket: the analysis is tried
    job_max_attempts (3) times, a visibility timeout apart, and ends failed with the error."""
    from google.cloud import storage  # noqa: PLC0415  # the emulator's host is set per test

    node_b = cluster.nodes["node-b"]
    async with aiohttp.ClientSession() as client:
        call_id, _ = await rtp_call(client, node_b.base, node_b.base, packets=25)
        await wait_for_job(client, node_b.base, call_id, "analysis", "completed")
        manifest = await get_json(client, f"{node_b.base}/v1/recordings/{call_id}")
        (left,) = [f["key"] for f in manifest["files"] if f["role"] == "left"]
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("STORAGE_EMULATOR_HOST", cluster.gcs.url)
            bucket = storage.Client.create_anonymous_client().bucket(BUCKET)
            await asyncio.to_thread(bucket.blob(left).delete)
        async with client.post(
            f"{node_b.base}/v1/recordings/{call_id}/analysis", headers=auth()
        ) as response:
            assert response.status == 202
        state = await wait_for_job(client, node_b.base, call_id, "analysis", "failed")
    assert state["attempts"] == 3
    assert state["error"]["code"] == "storage_unavailable"
    retries = [e for w in cluster.workers.values() for e in w.events("job.retry_later")]
    assert len([e for e in retries if e["call_id"] == call_id]) == 2


async def test_redis_restarted_during_a_call(cluster: Cluster) -> None:
    """Redis stops while a call is live and comes back empty (its files gone): the call goes
    on, the nodes rebuild the registry and the call map, the recording is stored and analysed."""
    node_a, node_b = cluster.nodes["node-a"], cluster.nodes["node-b"]
    redis = open_redis(cluster.redis.url)
    async with aiohttp.ClientSession() as client:
        call_id, _, _, sending = await streaming_call(
            client, node_a.base, node_a.base, [silence_payload()] * 400
        )
        await asyncio.sleep(1.0)
        await asyncio.to_thread(cluster.redis.stop)
        for node in (node_a, node_b):  # a heartbeat or two fails while Redis is away
            await node.wait_for_log("cluster.registry_unavailable")
        cluster.redis.forget()
        await asyncio.to_thread(cluster.redis.start)
        assert await redis.get(call_key(call_id)) is None  # nothing of the cluster is left
        for node in (node_a, node_b):
            await node.wait_for_log("cluster.registry_restored")

        async def healed() -> bool:
            listed = (await get_json(client, f"{node_b.base}/v1/calls"))["calls"]
            nodes = (await get_json(client, f"{node_b.base}/v1/nodes"))["nodes"]
            owner = await redis.get(call_key(call_id))
            return (
                [c["call_id"] for c in listed] == [call_id]
                and [n["node_id"] for n in nodes] == ["node-a", "node-b"]
                and owner == "node-a"
            )

        await until(healed, TIMEOUT_S)
        sent = await sending
        # Through node-b: the rebuilt call map sends the request on to node-a.
        async with client.delete(f"{node_b.base}/v1/calls/{call_id}", headers=auth()) as response:
            assert response.status == 202
            assert [r.status for r in response.history] == [307]
        await wait_for_job(client, node_b.base, call_id, "analysis", "completed")
        manifest = await get_json(client, f"{node_b.base}/v1/recordings/{call_id}")
    await redis.aclose()
    caller_stats = next(c["stats"] for c in manifest["channels"] if c["channel"] == "caller")
    assert caller_stats["packets"] == len(sent) == 400


async def test_a_load_run_spreads_calls_by_load_and_loses_none(cluster: Cluster) -> None:
    """Twelve concurrent calls, nine created through node-a's address and three through
    node-b's (an uneven balancer): the least-loaded node gets each new call, so each node holds
    about half; every call is stored, whole, and analysed."""
    node_a, node_b = cluster.nodes["node-a"], cluster.nodes["node-b"]
    async with aiohttp.ClientSession() as client:
        started = []
        for index in range(12):
            entry = (node_b if index % 4 == 3 else node_a).base
            started.append(asyncio.create_task(rtp_call(client, entry, entry, packets=100)))
            await asyncio.sleep(0.1)
        calls = await asyncio.gather(*started)
        owners = [owner for _, owner in calls]
        held = (owners.count(node_a.base), owners.count(node_b.base))
        assert sum(held) == 12
        # As entered, without placement, 9 and 3.
        assert abs(held[0] - held[1]) <= 2, (held, [o == node_a.base for o in owners])
        for call_id, _ in calls:
            await wait_for_job(client, node_a.base, call_id, "analysis", "completed")
            manifest = await get_json(client, f"{node_b.base}/v1/recordings/{call_id}")
            assert manifest["status"] == "stored"
            caller = next(c["stats"] for c in manifest["channels"] if c["channel"] == "caller")
            assert caller["packets"] == 100, (call_id, caller)


async def test_a_burst_of_new_calls_on_one_node_spreads_over_both(cluster: Cluster) -> None:
    """Eight calls created through node-a's address at the same moment: calls still being
    created count toward a node's load, so node-b gets half of them, not none."""
    node_a, node_b = cluster.nodes["node-a"], cluster.nodes["node-b"]
    async with aiohttp.ClientSession() as client:

        async def create() -> dict[str, Any]:
            async with client.post(f"{node_a.base}/v1/calls", json={}, headers=auth()) as response:
                assert response.status == 201, await response.text()
                created: dict[str, Any] = await response.json()
                return created

        created = await asyncio.gather(*(create() for _ in range(8)))
        owners = [c["links"]["self"].removesuffix(f"/v1/calls/{c['call_id']}") for c in created]
        for call in created:
            async with client.delete(call["links"]["self"], headers=auth()) as response:
                assert response.status == 202
    held = (owners.count(node_a.base), owners.count(node_b.base))
    assert abs(held[0] - held[1]) <= 2, held  # without counting them: all eight on node-a


async def test_sigterm_drains_a_node_out_of_the_cluster(cluster: Cluster) -> None:
    """node-a SIGTERMed with a live call: it turns draining at once, new calls go to node-b
    (also those sent to node-a's address), the live call goes on, ends, is stored; node-a
    leaves the registry and exits."""
    node_a, node_b = cluster.nodes["node-a"], cluster.nodes["node-b"]
    async with aiohttp.ClientSession() as client:
        call_id, owner, _, sending = await streaming_call(
            client, node_a.base, node_b.base, [silence_payload()] * 150
        )
        assert owner == node_a.base
        await asyncio.sleep(0.5)
        node_a.signal(signal.SIGTERM)

        async def states() -> dict[str, str]:
            nodes = (await get_json(client, f"{node_b.base}/v1/nodes"))["nodes"]
            return {n["node_id"]: n["state"] for n in nodes}

        async def draining() -> bool:
            return (await states()).get("node-a") == "draining"

        await until(draining, 10)
        for entry in (node_a, node_b):
            async with client.post(f"{entry.base}/v1/calls", json={}, headers=auth()) as response:
                assert response.status == 201, await response.text()
                moved = await response.json()
            assert moved["links"]["self"].startswith(node_b.base)
            async with client.delete(moved["links"]["self"], headers=auth()) as response:
                assert response.status == 202
        await sending
        async with client.delete(f"{node_b.base}/v1/calls/{call_id}", headers=auth()) as response:
            assert response.status == 202
        assert await node_a.wait_exit() == 0
        manifest = await get_json(client, f"{node_b.base}/v1/recordings/{call_id}")
        assert manifest["status"] == "stored"
        assert manifest["end_reason"] == "api"
        assert await states() == {"node-b": "ready"}
    assert node_a.events("cluster.left", node_id="node-a")


async def test_a_node_started_with_worker_runs_jobs_itself(cluster: Cluster) -> None:
    """With both workers stopped (SIGTERM: they leave cleanly), a node started with
    `serve --with-worker` analyses the recordings of its calls itself."""
    node_c = await asyncio.to_thread(cluster.start_node, "node-c", 42200, "--with-worker")
    for worker in cluster.workers.values():
        worker.signal(signal.SIGTERM)
    for worker in cluster.workers.values():
        assert await worker.wait_exit() == 0
        assert worker.events("worker.stopped")
    async with aiohttp.ClientSession() as client:
        call_id, owner = await rtp_call(client, node_c.base, node_c.base)
        assert owner == node_c.base
        await wait_for_job(client, node_c.base, call_id, "analysis", "completed")
    assert node_c.events("job.completed", call_id=call_id)
