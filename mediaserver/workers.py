"""The process pool that builds recordings off the event loop."""

import multiprocessing
from concurrent.futures import ProcessPoolExecutor


def create_process_pool(workers: int) -> ProcessPoolExecutor:
    """A pool of forkserver workers: never fork a process that runs an event loop and threads."""
    return ProcessPoolExecutor(
        max_workers=workers, mp_context=multiprocessing.get_context("forkserver")
    )
