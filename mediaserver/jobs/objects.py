"""Reading and writing a recording's objects for jobs: whole texts, and downloads to files."""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from mediaserver.errors import ObjectNotFoundError, StorageError
from mediaserver.storage_backends.store import ObjectStore


async def read_text_object(store: ObjectStore, key: str) -> str | None:
    """An object's text, or None if there is no such object."""
    try:
        data = await store.get_range(key)
    except ObjectNotFoundError:
        return None
    try:
        return data.decode()
    except UnicodeDecodeError as exc:
        raise StorageError(f"object {key!r} is not UTF-8 text") from exc


async def read_json_object(store: ObjectStore, key: str) -> dict[str, Any] | None:
    """An object's JSON object, or None if there is no such object (StorageError if not JSON)."""
    text = await read_text_object(store, key)
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise StorageError(f"object {key!r} is not JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise StorageError(f"object {key!r} is not a JSON object")
    return value


async def write_text_object(
    store: ObjectStore, key: str, text: str, *, content_type: str, scratch_dir: Path
) -> None:
    """Store `text` under `key` (through a temporary file: the store takes files)."""
    path = await asyncio.to_thread(_write_temp, scratch_dir, text.encode())
    try:
        await store.put_file(key, path, content_type=content_type)
    finally:
        await asyncio.to_thread(path.unlink, missing_ok=True)


async def download_object(store: ObjectStore, key: str, path: Path) -> None:
    """Copy an object to a local file, chunk by chunk (works for every backend)."""
    out = await asyncio.to_thread(path.open, "wb")
    try:
        async for chunk in store.iter_range(key):
            await asyncio.to_thread(out.write, chunk)
    finally:
        await asyncio.to_thread(out.close)


def _write_temp(directory: Path, data: bytes) -> Path:
    """A new temporary file holding `data`."""
    directory.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=directory, prefix=".object.", suffix=".tmp")
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    return Path(name)
