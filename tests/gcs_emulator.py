"""GcsEmulator: a gcp-storage-emulator subprocess on 127.0.0.1 for storage tests."""

import json
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import IO, Self

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

_POLL_INTERVAL_S = 0.05
_STOP_TIMEOUT_S = 10.0


def find_free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class GcsEmulator:
    """Starts and stops `gcp-storage-emulator start --in-memory` on one port."""

    def __init__(self, port: int, *, default_bucket: str | None = None) -> None:
        """Prepare an emulator for `port`, creating `default_bucket` at each start if given."""
        self.port = port
        self._default_bucket = default_bucket
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        """The endpoint to use as STORAGE_EMULATOR_HOST."""
        return f"http://127.0.0.1:{self.port}"

    def start(self, *, ready_timeout_s: float = 30.0) -> None:
        """Launch the emulator and return once it accepts TCP connections."""
        if self._process is not None:
            raise RuntimeError("emulator already running")
        command = [
            sys.executable,
            "-m",
            "gcp_storage_emulator",
            "start",
            "--host=127.0.0.1",
            f"--port={self.port}",
            "--in-memory",
        ]
        if self._default_bucket is not None:
            command.append(f"--default-bucket={self._default_bucket}")
        self._log = tempfile.TemporaryFile()  # noqa: SIM115  # closed in stop()
        self._process = subprocess.Popen(
            command, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        deadline_s = time.monotonic() + ready_timeout_s
        while not self._accepts_connections():
            if self._process.poll() is not None:
                output = self.read_log()
                self.stop()
                raise RuntimeError(f"gcp-storage-emulator exited early:\n{output}")
            if time.monotonic() > deadline_s:
                self.stop()
                raise TimeoutError(f"gcp-storage-emulator not ready in {ready_timeout_s} s")
            time.sleep(_POLL_INTERVAL_S)

    def read_log(self) -> str:
        """Return everything the emulator printed so far (its request log included)."""
        if self._log is None:
            return ""
        self._log.flush()
        self._log.seek(0)
        return self._log.read().decode(errors="replace")

    def stop(self) -> None:
        """Terminate the emulator (kill it if it lingers) and wait for it to exit."""
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(timeout=_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._process = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> Self:
        """Start the emulator for a `with` block."""
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Stop the emulator at the end of a `with` block."""
        self.stop()

    def _accepts_connections(self) -> bool:
        """Return True if something accepts a TCP connection on the port."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1.0):
                return True
        except OSError:
            return False


def write_service_account_key(path: Path) -> Path:
    """Write a service-account JSON key with a freshly generated RSA key (signs URLs locally)."""
    private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode("ascii")
    info = {
        "type": "service_account",
        "project_id": "test",
        "private_key_id": "local-test-key",
        "private_key": pem,
        "client_email": "recordings@test.iam.gserviceaccount.com",
        "client_id": "1",
        # Never contacted: signing is local, and the test makes no authenticated calls.
        "token_uri": "http://127.0.0.1:9/token",
    }
    path.write_text(json.dumps(info))
    return path
