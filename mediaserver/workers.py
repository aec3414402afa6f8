"""The process pools that build recordings and run post-call jobs off the event loop."""

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor

from mediaserver.log import configure_logging


def create_process_pool(
    workers: int, *, log_format: str = "auto", log_level: str = "info", niceness: int = 0
) -> ProcessPoolExecutor:
    """A pool of forkserver workers: never fork a process that runs an event loop and threads."""
    return ProcessPoolExecutor(
        max_workers=workers,
        mp_context=multiprocessing.get_context("forkserver"),
        initializer=_start_worker,  # workers log like the server (JSON lines to stderr)
        initargs=(log_format, log_level, niceness),
    )


def _start_worker(log_format: str, log_level: str, niceness: int) -> None:
    """Configure a new worker process: its logging and how much CPU it yields to others."""
    configure_logging(log_format, log_level)
    if niceness:
        # Post-call jobs run niced: on a busy node the server's own process (live calls) and
        # the finalizers get the CPU first.
        os.nice(niceness)
