"""The process pools that build recordings and run post-call jobs off the event loop."""

import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor

from mediaserver.log import configure_logging

WARM_UP_SLEEP_S = 0.05  # long enough that each warm-up task needs a process of its own


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


def start_workers(pool: ProcessPoolExecutor, workers: int) -> None:
    """Start every worker process now (blocking: run it in a thread, not on the event loop)."""
    # The pool starts a process on a submit that finds none idle; that start talks to the fork
    # server synchronously. Done here, no later submit made on the event loop pays for it.
    for future in [pool.submit(time.sleep, WARM_UP_SLEEP_S) for _ in range(workers)]:
        future.result()


def _start_worker(log_format: str, log_level: str, niceness: int) -> None:
    """Configure a new worker process: its logging and how much CPU it yields to others."""
    configure_logging(log_format, log_level)
    if niceness:
        # Post-call jobs run niced: on a busy node the server's own process (live calls) and
        # the finalizers get the CPU first.
        os.nice(niceness)
