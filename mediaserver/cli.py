"""The `mediaserver` command line."""

import argparse
import asyncio
import contextlib
import os
import secrets
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from importlib import metadata, resources
from pathlib import Path
from typing import Any

import structlog
import uvloop

from mediaserver.access.tokens import TOKEN_NAME_PATTERN, Scope, compute_token_digest
from mediaserver.audio.lossless_stereo import mux_lossless_stereo
from mediaserver.audio.stereo_merge import merge_stereo
from mediaserver.cluster.redis_connection import open_redis
from mediaserver.encryption.keyring import Keyring
from mediaserver.errors import MediaServerError, MergeError
from mediaserver.finalize import FinalizeOptions
from mediaserver.finalizer import Finalizer
from mediaserver.job_worker import run_worker
from mediaserver.jobs.factory import build_job_queue, build_recording_locks
from mediaserver.jobs.files import write_documents
from mediaserver.jobs.plan import build_job_plan
from mediaserver.jobs.scheduler import JobScheduler
from mediaserver.jobs.state_store import JobStateStore
from mediaserver.key_commands import decrypt_recordings, describe_store, rekey_recordings
from mediaserver.log import configure_logging
from mediaserver.pcap_import import (
    RtpStream,
    import_pcap,
    parse_address,
    read_rtp_streams,
    select_streams,
)
from mediaserver.recorder import CALL_ID_PATTERN, Recorder, new_call_id
from mediaserver.recording.call import CallStatus, EndReason
from mediaserver.recording.channel import Channel
from mediaserver.recording.manifest import Manifest
from mediaserver.recording.spool import Spool
from mediaserver.server import serve
from mediaserver.settings import Settings, find_unknown_env, load_settings
from mediaserver.storage_backends.factory import load_keyring, open_store
from mediaserver.storage_backends.store import ObjectStore
from mediaserver.terminal_progress import TerminalProgress
from mediaserver.workers import create_process_pool

EXIT_USAGE = 2
SAMPLE_CAPTURE = "sample-call.pcap"

log = structlog.get_logger(__name__)


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line and exit code 2."""

    def error(self, message: str) -> Any:
        """Print the usage error and exit 2."""
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _settings_flags(parser: argparse.ArgumentParser) -> None:
    """Flags that override settings (after config file and environment)."""
    group = parser.add_argument_group("settings (override config/mediaserver.toml and environment)")
    group.add_argument("--config", type=Path, help="TOML settings file")
    group.add_argument("--storage-type", choices=("local", "gcs"))
    group.add_argument("--storage-path", help="directory (local) or bucket name (gcs)")
    group.add_argument("--spool-path", help="where live calls' journals are kept")
    group.add_argument("--stereo-mode", choices=("encode", "lossless"))
    group.add_argument("--log-format", choices=("auto", "console", "json"))
    group.add_argument("--log-level", choices=("debug", "info", "warning", "error"))


def build_parser() -> argparse.ArgumentParser:
    """The CLI's argument parser."""
    parser = _Parser(prog="mediaserver", description=__doc__)
    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {metadata.version('mediaserver')}"
    )
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    serve = commands.add_parser("serve", help="run the media server")
    serve.add_argument("--host", help="listen address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="listen port (default 8080; 0 picks one)")
    serve.add_argument(
        "--api-token",
        metavar="TOKEN",
        help="bearer token every API request must carry (other local users can read a"
        " command line: MEDIASERVER_API_TOKEN keeps it out of the process list)",
    )
    serve.add_argument(
        "--with-worker",
        action="store_true",
        default=None,
        help="with redis_url: also run post-call jobs here (otherwise only `worker`s do)",
    )
    _settings_flags(serve)

    worker = commands.add_parser(
        "worker", help="run post-call jobs from the Redis queue (needs redis_url)"
    )
    worker.add_argument("--host", help="address of /healthz and /metrics (default 127.0.0.1)")
    worker.add_argument(
        "--port", type=int, default=8081, help="port of /healthz and /metrics (0 picks one)"
    )
    _settings_flags(worker)

    demo = commands.add_parser(
        "demo", help="record the bundled sample call through the recorder into storage"
    )
    _settings_flags(demo)

    merge = commands.add_parser("merge", help="merge two mono Ogg Opus files into stereo")
    merge.add_argument("left", type=Path, help="caller channel (left)")
    merge.add_argument("right", type=Path, help="agent channel (right)")
    merge.add_argument("-o", "--output", type=Path, required=True)
    merge.add_argument("--mode", choices=("encode", "lossless"), default="encode")
    merge.add_argument("--bitrate", type=int, default=64000, help="bits/s (encode mode)")
    merge.add_argument("--complexity", type=int, default=10, choices=range(11), metavar="0-10")

    pcap = commands.add_parser("import-pcap", help="build a recording from a capture of RTP")
    pcap.add_argument("capture", type=Path, help="pcap or pcapng file")
    pcap.add_argument("--caller", help="caller's source IP:PORT (default: first RTP stream)")
    pcap.add_argument("--agent", help="agent's source IP:PORT (default: second RTP stream)")
    pcap.add_argument("--call-id", help="id used in the file names (default: new)")
    pcap.add_argument("-o", "--output", type=Path, required=True, help="output directory")
    pcap.add_argument("--mode", choices=("encode", "lossless"), default="encode")
    pcap.add_argument(
        "--transcription",
        choices=("pocketsphinx", "openai", "none"),
        help="transcript backend (default: the transcription_backend setting)",
    )
    pcap.add_argument("--no-analysis", action="store_true", help="write no analysis document")
    pcap.add_argument("--config", type=Path, help="TOML settings file")

    recover = commands.add_parser("recover", help="finalize journals left by a stopped server")
    _settings_flags(recover)

    decrypt = commands.add_parser(
        "decrypt", help="write encrypted recordings in plain, with the operator's private key"
    )
    decrypt.add_argument("-o", "--output", type=Path, required=True, help="output directory")
    decrypt.add_argument(
        "--private-key",
        type=Path,
        help="the operator's RSA private key, PEM (default: encryption_private_key_path)",
    )
    decrypt.add_argument(
        "--call-id", dest="call_ids", action="append", default=[], help="only this call (repeat)"
    )
    _settings_flags(decrypt)

    rekey = commands.add_parser(
        "rekey", help="re-wrap every recording's data key for a new key pair (audio untouched)"
    )
    rekey.add_argument(
        "--old-private-key", type=Path, required=True, help="the key pair's private key, PEM"
    )
    rekey.add_argument(
        "--new-public-key",
        type=Path,
        help="the new public key, PEM (default: encryption_public_key_path)",
    )
    _settings_flags(rekey)

    token = commands.add_parser(
        "new-token", help="make a random API token and print its [[tokens]] table"
    )
    token.add_argument("name", help="the token's name in the audit log ([A-Za-z0-9_-], 1-64)")
    token.add_argument(
        "--scope",
        dest="scopes",
        action="append",
        required=True,
        choices=[scope.value for scope in Scope],
        help="a scope it holds (repeat for several)",
    )
    return parser


def _load(args: argparse.Namespace) -> Settings:
    """Settings with this command's flags applied."""
    names = (
        "storage_type",
        "storage_path",
        "spool_path",
        "stereo_mode",
        "log_format",
        "log_level",
        "host",
        "port",
        "api_token",
        "with_worker",
    )
    overrides = {name: getattr(args, name, None) for name in names}
    if args.command == "worker":
        overrides["port"] = None  # the worker's own port is not the server's
    settings = load_settings(config_path=getattr(args, "config", None), overrides=overrides)
    configure_logging(log_format=settings.log_format, log_level=settings.log_level)
    # A warning, not an error, unlike an unknown key in the config file: the environment is
    # shared with everything else on the machine. Kubernetes, for one, adds MEDIASERVER_SERVICE_HOST
    # and friends for a Service named mediaserver, and an old variable left in a unit file should
    # not keep a server from starting; but a typo must not pass silently either.
    for variable, nearest in find_unknown_env(os.environ):
        log.warning("settings.unknown_env", variable=variable, did_you_mean=nearest)
    return settings


def _finalize_options(settings: Settings) -> FinalizeOptions:
    """Build options from settings."""
    return FinalizeOptions(
        stereo_mode=settings.stereo_mode,
        stereo_bitrate_bps=settings.stereo_bitrate_bps,
        stereo_complexity=settings.stereo_complexity,
    )


async def _finalizer(settings: Settings, executor: ProcessPoolExecutor) -> Finalizer:
    """A finalizer over the configured store and spool (and keys, with encryption)."""
    keyring = await asyncio.to_thread(load_keyring, settings)
    return Finalizer(
        spool=Spool(settings.spool_path),
        store=await open_store(settings, keyring),
        executor=executor,
        options=_finalize_options(settings),
        keyring=keyring,
    )


@contextlib.asynccontextmanager
async def _job_scheduler(
    settings: Settings, store: ObjectStore, keyring: Keyring | None
) -> AsyncIterator[JobScheduler]:
    """The server's job queue, to queue recovered recordings' jobs (the server runs them)."""
    redis = open_redis(settings.redis_url) if settings.redis_url else None
    cannot_read = keyring is not None and not keyring.can_unwrap  # as the server decides
    scheduler = JobScheduler(
        queue=build_job_queue(settings, redis),
        states=JobStateStore(
            store, settings.jobs_path / "scratch", locks=build_recording_locks(redis)
        ),
        plan=() if cannot_read else build_job_plan(settings),
        handler=None,
    )
    await scheduler.start()
    try:
        yield scheduler
    finally:
        await scheduler.close()
        if redis is not None:
            await redis.aclose()


def _sample_streams() -> tuple[RtpStream, RtpStream | None]:
    """The caller's and the agent's streams of the bundled capture."""
    sample = resources.files("mediaserver") / "samples" / SAMPLE_CAPTURE
    with resources.as_file(sample) as path:
        return select_streams(read_rtp_streams(path), None, None)


async def _run_demo(settings: Settings) -> Manifest | None:
    """Replay the bundled capture into a live call and finalize it into storage."""
    caller, agent = await asyncio.to_thread(_sample_streams)
    with create_process_pool(
        settings.finalize_workers, log_format=settings.log_format, log_level=settings.log_level
    ) as executor:
        finalizer = await _finalizer(settings, executor)
        recorder = Recorder(
            spool=finalizer.spool, on_call_ended=finalizer.submit, keyring=finalizer.keyring
        )
        await recorder.start()
        try:
            call = recorder.open_call(metadata={"source": "demo"})
            packets = [(p, Channel.CALLER) for p in caller.packets]
            packets += [(p, Channel.AGENT) for p in agent.packets] if agent else []
            base = min(p.arrival_ns for p, _ in packets)
            for packet, channel in sorted(packets, key=lambda item: item[0].arrival_ns):
                arrival_ns = call.mono_start_ns + packet.arrival_ns - base
                call.record(channel, packet._replace(arrival_ns=arrival_ns))
            for channel in Channel:
                call.end(channel, EndReason.CALLER_HANGUP)
            manifest = await finalizer.wait(call.call_id)
        finally:
            await recorder.close()
            await finalizer.close()
        await finalizer.store.close()
    return manifest


def _print_stored(settings: Settings, manifest: Manifest | None) -> int:
    """Say where the demo's recording went."""
    if manifest is None:
        print("the sample call could not be recorded (see the log above)", file=sys.stderr)
        return 1
    print(f"recorded call {manifest.call_id} ({manifest.duration_ms / 1000:.1f} s), stored as:")
    root = (
        os.path.abspath(settings.storage_path)
        if settings.storage_type == "local"
        else f"gs://{settings.storage_path}"
    )
    for entry in manifest.files:
        print(f"  {entry.role:8} {root}/{entry.key}")
    print(f"  manifest {root}/{manifest.storage['manifest_key']}")
    return 0


async def _run_recover(settings: Settings) -> int:
    """Finalize every leftover spool now."""
    with create_process_pool(
        settings.finalize_workers, log_format=settings.log_format, log_level=settings.log_level
    ) as executor:
        keyring = await asyncio.to_thread(load_keyring, settings)
        store = await open_store(settings, keyring)
        async with _job_scheduler(settings, store, keyring) as jobs:

            async def hand_off(manifest: Manifest) -> None:
                # Durable before the spool goes, as in the server: its next start runs them.
                if manifest.status in (CallStatus.STORED, CallStatus.RECOVERED):
                    await jobs.queue_planned(manifest)

            finalizer = Finalizer(
                spool=Spool(settings.spool_path),
                store=store,
                executor=executor,
                options=_finalize_options(settings),
                hand_off=hand_off,
                keyring=keyring,
            )
            started = await finalizer.recover()
            results = [await finalizer.wait(call_id) for call_id in started]
            await finalizer.close()
        await store.close()
    for call_id, manifest in zip(started, results, strict=True):
        print(f"{call_id}: {manifest.status.value if manifest else 'failed'}")
    print(f"{len(started)} call(s) recovered")
    return 0 if all(results) else 1


def _run_merge(args: argparse.Namespace) -> int:
    """Merge two channel files."""
    if args.mode == "lossless":
        try:
            with (
                args.left.open("rb") as left,
                args.right.open("rb") as right,
                args.output.open("wb") as out,
            ):
                mux_lossless_stereo(left, right, out)
            print(f"wrote {args.output} (lossless, 2 streams)")
            return 0
        except MergeError as exc:
            print(f"lossless merge not possible ({exc}); encoding instead", file=sys.stderr)
    merge_stereo(
        args.left, args.right, args.output, bitrate_bps=args.bitrate, complexity=args.complexity
    )
    print(f"wrote {args.output} (encoded stereo, {args.bitrate} bit/s)")
    return 0


def _run_import(args: argparse.Namespace) -> int:
    """Import a capture."""
    call_id = args.call_id or new_call_id()
    if not CALL_ID_PATTERN.fullmatch(call_id):
        raise MediaServerError(f"--call-id must match {CALL_ID_PATTERN.pattern}")
    # Progress only where a person watches: piped or logged output stays as it was.
    progress = TerminalProgress(sys.stderr) if sys.stderr.isatty() else None
    try:
        manifest = import_pcap(
            args.capture,
            args.output,
            call_id=call_id,
            caller=parse_address(args.caller) if args.caller else None,
            agent=parse_address(args.agent) if args.agent else None,
            options=FinalizeOptions(stereo_mode=args.mode),
            progress=progress,
        )
    finally:
        if progress is not None:
            progress.finish()
    print(f"call {call_id}: {manifest.duration_ms / 1000:.2f} s")
    for entry in manifest.files:
        print(f"  {entry.role:7} {args.output / entry.name}")
    overrides = {"transcription_backend": args.transcription}
    if args.no_analysis:
        overrides["analysis_enabled"] = "false"
    settings = load_settings(config_path=args.config, overrides=overrides)
    with create_process_pool(2, log_format="auto", log_level="warning") as executor:
        documents = asyncio.run(write_documents(args.output, manifest, settings, executor))
    for path in documents:
        label = "webvtt" if path.suffix == ".vtt" else path.stem.rsplit("_", 1)[-1]
        print(f"  {label:10} {path}")
    return 0


def _run_decrypt(args: argparse.Namespace, settings: Settings) -> int:
    """Decrypt recordings into a directory and check them against their manifests."""
    key = args.private_key or (
        Path(settings.encryption_private_key_path) if settings.encryption_private_key_path else None
    )
    if key is None:
        raise MediaServerError("give --private-key (or set encryption_private_key_path)")
    report = asyncio.run(decrypt_recordings(settings, args.output, key, set(args.call_ids)))
    for call_id, paths in sorted(report.files.items()):
        print(f"{call_id}: {len(paths)} files")
        for path in sorted(paths):
            print(f"  {path}")
    print(
        f"{len(report.files)} recording(s) decrypted into {args.output};"
        f" {report.verified} file(s) match their manifest's SHA-256"
    )
    for path in report.mismatched:
        print(f"mediaserver: error: {path} does not match its manifest", file=sys.stderr)
    for call_id, reason in report.failed:
        print(f"mediaserver: error: {call_id} not decrypted: {reason}", file=sys.stderr)
    for call_id in report.missing:
        print(
            f"mediaserver: error: no recording {call_id} in {describe_store(settings)}",
            file=sys.stderr,
        )
    return 1 if report.mismatched or report.failed or report.missing else 0


def _run_rekey(args: argparse.Namespace, settings: Settings) -> int:
    """Re-wrap data keys for the new public key."""
    new = args.new_public_key or (
        Path(settings.encryption_public_key_path) if settings.encryption_public_key_path else None
    )
    if new is None:
        raise MediaServerError("give --new-public-key (or set encryption_public_key_path)")
    report = asyncio.run(rekey_recordings(settings, args.old_private_key, new))
    for where in report.rewrapped:
        print(f"rewrapped {where}")
    for where, reason in report.failed:
        print(f"mediaserver: error: {where}: {reason}", file=sys.stderr)
    print(
        f"{len(report.rewrapped)} data key(s) rewrapped, {report.already} already for the new"
        f" key, {len(report.failed)} failed"
    )
    return 1 if report.failed else 0


def event_loop_factory(kind: str) -> Callable[[], asyncio.AbstractEventLoop]:
    """The event loop `serve` runs on: uvloop's (libuv) or the standard library's."""
    # uvloop moves the selector, callbacks and socket writes to C: the event loop's own share
    # of a call's CPU drops by about half (bench_agent_capacity.py measures both).
    if kind == "uvloop":
        return uvloop.new_event_loop
    return asyncio.new_event_loop


def _run_new_token(args: argparse.Namespace) -> int:
    """Print a new secret and the tokens-file table that accepts it."""
    if not TOKEN_NAME_PATTERN.fullmatch(args.name):
        raise MediaServerError("the token name must be 1-64 characters of [A-Za-z0-9_-]")
    secret = secrets.token_urlsafe(32)
    scopes = ", ".join(f'"{scope}"' for scope in sorted(set(args.scopes)))
    print(f"# secret (give it to the client; it is not kept anywhere): {secret}")
    print("[[tokens]]")
    print(f'name = "{args.name}"')
    print(f'sha256 = "{compute_token_digest(secret).hex()}"')
    print(f"scopes = [{scopes}]")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run a command; errors print one line and exit 2."""
    args = build_parser().parse_args(argv)
    try:
        if args.command == "serve":
            settings = _load(args)
            with asyncio.Runner(loop_factory=event_loop_factory(settings.event_loop)) as runner:
                runner.run(serve(settings))
            return 0
        if args.command == "worker":
            settings = _load(args)
            host = args.host or settings.host
            asyncio.run(run_worker(settings, host=host, port=args.port))
            return 0
        if args.command == "demo":
            settings = _load(args)
            return _print_stored(settings, asyncio.run(_run_demo(settings)))
        if args.command == "recover":
            return asyncio.run(_run_recover(_load(args)))
        if args.command == "decrypt":
            return _run_decrypt(args, _load(args))
        if args.command == "rekey":
            return _run_rekey(args, _load(args))
        configure_logging(log_format="auto", log_level="warning")
        if args.command == "merge":
            return _run_merge(args)
        if args.command == "new-token":
            return _run_new_token(args)
        return _run_import(args)
    except (MediaServerError, OSError) as exc:
        message = str(exc) if not isinstance(exc, OSError) else f"{exc.filename}: {exc.strerror}"
        print(f"mediaserver: error: {message}", file=sys.stderr)
        return EXIT_USAGE
