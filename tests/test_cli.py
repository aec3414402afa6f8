"""The command line as a newcomer meets it: --version, serve --api-token, welcome, warnings."""

import asyncio
import json
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import aiohttp
import structlog

from mediaserver.settings import Settings
from mediaserver.storage_backends.factory import open_store

CLI = [sys.executable, "-m", "mediaserver"]


def _clean_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The environment without any MEDIASERVER_* or AUDIO_* variable of the machine."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MEDIASERVER_", "AUDIO_"))}
    return {**env, "MEDIASERVER_LOG_FORMAT": "json", **extra}


def test_version() -> None:
    """`mediaserver --version` prints the installed package's version and exits 0."""
    result = subprocess.run(
        [*CLI, "--version"], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"mediaserver {metadata.version('mediaserver')}"


async def test_serve_api_token_flag_welcome_and_unknown_variables(tmp_path: Path) -> None:
    """--api-token guards the API; the welcome says where to look; a mistyped variable is named."""
    process = await asyncio.create_subprocess_exec(
        *CLI,
        "serve",
        "--port",
        "0",
        "--api-token",
        "flag-token-123",
        "--spool-path",
        str(tmp_path / "spool"),
        "--storage-path",
        str(tmp_path / "store"),
        cwd=tmp_path,
        env=_clean_env(tmp_path, MEDIASERVER_RETENTION="60", MEDIASERVER_JOBS_PATH=str(tmp_path)),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    try:
        lines = [(await asyncio.wait_for(process.stdout.readline(), 60)).decode().rstrip()]
        base = lines[0].split()[-1]
        assert lines[0].startswith("mediaserver listening on http://127.0.0.1:"), lines
        lines += [(await process.stdout.readline()).decode().rstrip() for _ in range(3)]
        assert lines[1:] == [
            f"  console: {base}/",
            f"  try it:  {base}/try  (call the server from your browser)",
            f"  API:     {base}/v1/openapi.json describes it",
        ]
        async with aiohttp.ClientSession() as client:
            async with client.get(f"{base}/v1/calls") as response:
                assert response.status == 401
            headers = {"Authorization": "Bearer flag-token-123"}
            async with client.get(f"{base}/v1/calls", headers=headers) as response:
                assert response.status == 200
    finally:
        process.terminate()
        _, stderr = await asyncio.wait_for(process.communicate(), 60)
    events = [json.loads(line) for line in stderr.decode().splitlines() if line.startswith("{")]
    warnings = [e for e in events if e["event"] == "settings.unknown_env"]
    assert warnings == [
        {
            "variable": "MEDIASERVER_RETENTION",
            "did_you_mean": "MEDIASERVER_RETENTION_S",
            "event": "settings.unknown_env",
            "level": "warning",
            "timestamp": warnings[0]["timestamp"],
        }
    ]
    assert process.returncode == 0


def test_demo_with_default_paths_stores_under_data_recordings(tmp_path: Path) -> None:
    """With nothing configured, recordings land in ./data/recordings/YYYY/MM/DD/, not doubled."""
    result = subprocess.run(
        [*CLI, "demo"],
        cwd=tmp_path,
        env=_clean_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    stored = sorted(p.relative_to(tmp_path) for p in (tmp_path / "data").rglob("conversation_*"))
    assert stored, result.stdout
    for path in stored:
        assert path.parts[:2] == ("data", "recordings"), path
        assert "recordings" not in path.parts[2:], path
        assert [len(part) for part in path.parts[2:5]] == [4, 2, 2], path  # YYYY/MM/DD
    manifest = next(p for p in stored if p.name.endswith("_manifest.json"))
    assert str(tmp_path / manifest) in result.stdout  # the demo says where it stored it


async def test_old_default_layout_is_pointed_out(tmp_path: Path) -> None:
    """Files under recordings/recordings/ (the old default) get a warning saying how to fix it."""
    (tmp_path / "recordings" / "recordings" / "2026").mkdir(parents=True)
    with structlog.testing.capture_logs() as logs:
        store = await open_store(Settings(storage_path=str(tmp_path)))
    await store.close()
    (warning,) = [log for log in logs if log["event"] == "storage.legacy_layout"]
    assert warning["fix"] == (
        f"mv {tmp_path}/recordings/recordings/* {tmp_path}/recordings/"
        f" && rmdir {tmp_path}/recordings/recordings"
    )
    with structlog.testing.capture_logs() as logs:
        store = await open_store(Settings(storage_path=str(tmp_path / "recordings")))
    await store.close()
    assert not [log for log in logs if log["event"] == "storage.legacy_layout"]
