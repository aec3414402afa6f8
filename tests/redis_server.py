"""RedisServer: a real redis-server (Debian package) on 127.0.0.1 with AOF, restartable in place."""

import shutil
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import Self

from gcs_emulator import find_free_port

REDIS_SERVER = "/usr/bin/redis-server"
_READY_TIMEOUT_S = 10.0


class RedisServer:
    """`redis-server` on one port and one data directory, so a restart finds its AOF again."""

    def __init__(self, directory: Path, port: int | None = None) -> None:
        """Prepare a server keeping its files in `directory`."""
        self.directory = directory
        self.port = port or find_free_port()
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The redis:// URL of the server."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start the server and return once it answers PING."""
        self.directory.mkdir(parents=True, exist_ok=True)
        self._process = subprocess.Popen(
            [
                REDIS_SERVER,
                "--bind", "127.0.0.1",
                "--port", str(self.port),
                "--dir", str(self.directory),
                "--save", "",
                # As a deployment should run it: every write reaches the AOF before the reply.
                "--appendonly", "yes",
                "--appendfsync", "always",
                "--logfile", str(self.directory / "redis.log"),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + _READY_TIMEOUT_S
        while not self._answers():
            if self._process.poll() is not None:
                raise RuntimeError((self.directory / "redis.log").read_text(errors="replace"))
            if time.monotonic() > deadline:
                raise TimeoutError("redis-server did not answer PING")
            time.sleep(0.02)

    def stop(self) -> None:
        """Stop the server (SIGTERM) and wait for it."""
        if self._process is not None:
            self._process.terminate()
            self._process.wait(timeout=10)
            self._process = None

    def forget(self) -> None:
        """Delete the stopped server's files: it starts again empty, as a Redis that lost its
        data (a replacement without persistence, say) would."""
        assert self._process is None, "stop the server first"
        shutil.rmtree(self.directory / "appendonlydir", ignore_errors=True)
        (self.directory / "dump.rdb").unlink(missing_ok=True)

    def restart(self) -> None:
        """Stop and start again on the same port and files."""
        self.stop()
        self.start()

    def _answers(self) -> bool:
        """Whether the server answers PING."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def __enter__(self) -> Self:
        """Start for a `with` block."""
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Stop at the end of a `with` block."""
        self.stop()
