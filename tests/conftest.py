"""Shared fixtures: a process pool like the server's, and the test helpers on the import path."""

import asyncio
import sys
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest
import uvloop

sys.path.insert(0, str(Path(__file__).parent))

from mediaserver.workers import create_process_pool

from fake_openai import API_KEY, FakeOpenAI


@pytest.fixture(scope="session")
def process_pool() -> Iterator[ProcessPoolExecutor]:
    """A forkserver process pool, as the server uses for finalization."""
    with create_process_pool(2) as pool:
        yield pool


@pytest.fixture(scope="session")
def event_loop_policy() -> asyncio.AbstractEventLoopPolicy:
    """Tests run on the event loop `mediaserver serve` runs on (uvloop by default)."""
    return uvloop.EventLoopPolicy()


@pytest.fixture
async def fake_openai(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeOpenAI]:
    """An OpenAI-compatible server on loopback, and the environment the SDK reads pointing at it."""
    fake = FakeOpenAI()
    await fake.start()
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    monkeypatch.setenv("OPENAI_BASE_URL", fake.base_url)
    yield fake
    await fake.stop()
