"""Encrypted Range reads against plain ones, same file, same store, one run.

A recording-sized file (60 minutes of 64 kbit/s stereo: ~29 MB) is stored twice on local disk:
as it is (LocalStore) and sealed (EnvelopeStore over LocalStore: AES-256-GCM in 64 KiB chunks).
Then the same reads are made of both, alternated: whole-file streaming, player-like ranges
(random start, 256 KiB) and small ranges (2 KiB, where the per-request overhead shows). Every
encrypted answer is compared with the plain one's bytes, so what is timed is also checked.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

from common import print_table, quiet_logging
from cryptography.hazmat.primitives.asymmetric import rsa

from mediaserver.encryption.keyring import Keyring
from mediaserver.storage_backends.envelope_store import EnvelopeStore
from mediaserver.storage_backends.keys import build_recording_keys
from mediaserver.storage_backends.local import LocalStore
from mediaserver.storage_backends.store import ObjectStore

MIB = 1024 * 1024
STEREO_BYTES_PER_S = 8000  # 64 kbit/s


async def timed(run: Callable[[], Awaitable[int]], repeats: int) -> tuple[float, int]:
    """Median seconds of `repeats` runs, and the bytes one run read."""
    elapsed = []
    read = 0
    for _ in range(repeats):
        started = time.perf_counter()
        read = await run()
        elapsed.append(time.perf_counter() - started)
    return statistics.median(elapsed), read


async def read_whole(store: ObjectStore, key: str) -> int:
    """Stream a whole object as the API does; bytes read."""
    return sum([len(chunk) async for chunk in store.iter_range(key)])


async def read_ranges(store: ObjectStore, key: str, ranges: list[tuple[int, int]]) -> int:
    """Read each range with iter_range (as a ranged GET does); bytes read."""
    total = 0
    for start, end in ranges:
        total += sum([len(chunk) async for chunk in store.iter_range(key, start, end)])
    return total


async def main() -> None:
    """Store the file both ways, time the reads, print the table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--minutes", type=float, default=60.0, help="recording length")
    parser.add_argument("--ranges", type=int, default=200, help="ranges of each size per run")
    parser.add_argument("--repeat", type=int, default=5, help="runs of each read (median)")
    args = parser.parse_args()
    quiet_logging()
    size = int(args.minutes * 60 * STEREO_BYTES_PER_S)
    keys = build_recording_keys("bench", datetime(2026, 11, 22, tzinfo=UTC))
    key = keys.merged
    private = rsa.generate_private_key(public_exponent=65537, key_size=3072)
    with tempfile.TemporaryDirectory(prefix="bench_encryption_") as work:
        root = Path(work)
        source = root / "merged.opus"
        source.write_bytes(os.urandom(size))
        plain = LocalStore(root / "plain")
        sealed = EnvelopeStore(LocalStore(root / "sealed"), Keyring(private.public_key(), private))
        put_plain_s, _ = await timed(lambda: _put(plain, key, source), 1)
        put_sealed_s, _ = await timed(lambda: _put(sealed, key, source), 1)
        stored_bytes = (root / "sealed" / key).stat().st_size
        rng = random.Random(5)
        player = [(s, s + 256 * 1024) for s in (rng.randrange(size) for _ in range(args.ranges))]
        small = [(s, s + 2048) for s in (rng.randrange(size) for _ in range(args.ranges))]
        for start, end in player[:20] + small[:20]:  # what is timed is also checked
            if await sealed.get_range(key, start, end) != await plain.get_range(key, start, end):
                raise AssertionError(f"range {start}-{end} differs")
        rows = []
        for label, reads in (
            ("whole file, streamed", lambda store: read_whole(store, key)),
            (f"{args.ranges} ranges of 256 KiB", lambda store: read_ranges(store, key, player)),
            (f"{args.ranges} ranges of 2 KiB", lambda store: read_ranges(store, key, small)),
        ):
            plain_s, read = await timed(lambda r=reads: r(plain), args.repeat)
            sealed_s, _ = await timed(lambda r=reads: r(sealed), args.repeat)
            requests = 1 if label.startswith("whole") else args.ranges
            rows.append(
                [
                    label,
                    f"{read / MIB / plain_s:,.0f} MiB/s",
                    f"{read / MIB / sealed_s:,.0f} MiB/s",
                    f"{requests / plain_s:,.0f}/s",
                    f"{requests / sealed_s:,.0f}/s",
                    f"{sealed_s / plain_s:.2f}x",
                ]
            )
    print(
        f"{args.minutes:g} min of 64 kbit/s stereo: {size / MIB:.1f} MiB plain,"
        f" {stored_bytes / MIB:.1f} MiB sealed (+{(stored_bytes - size) / size:.2%});"
        f" cores: {os.cpu_count()}"
    )
    print(
        f"store: plain {size / MIB / put_plain_s:,.0f} MiB/s,"
        f" sealed {size / MIB / put_sealed_s:,.0f} MiB/s"
    )
    print_table(["read", "plain", "encrypted", "plain req", "encrypted req", "time ratio"], rows)


async def _put(store: ObjectStore, key: str, source: Path) -> int:
    """Store the file; bytes."""
    stored = await store.put_file(key, source, content_type="audio/ogg")
    return stored.size_bytes


if __name__ == "__main__":
    asyncio.run(main())
