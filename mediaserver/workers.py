"""The process pool that builds recordings off the event loop."""

import multiprocessing
from concurrent.futures import ProcessPoolExecutor

from mediaserver.log import configure_logging


def create_process_pool(
    workers: int, *, log_format: str = "auto", log_level: str = "info"
) -> ProcessPoolExecutor:
    """A pool of forkserver workers: never fork a process that runs an event loop and threads."""
    return ProcessPoolExecutor(
        max_workers=workers,
        mp_context=multiprocessing.get_context("forkserver"),
        initializer=configure_logging,  # workers log like the server (JSON lines to stderr)
        initargs=(log_format, log_level),
    )
