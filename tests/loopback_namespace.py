"""Run a test script inside a network namespace where only loopback exists (for WebRTC and ICE)."""

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any


def run_scenario(script: Path, *args: Path, timeout_s: float = 240) -> dict[str, Any]:
    """Run `script` with `args` as root in a fresh loopback-only namespace; its last JSON line."""
    assert Path("/usr/lib/chromium/chromium").exists(), "install the Debian chromium package"
    assert shutil.which("unshare"), "util-linux is required"
    assert shutil.which("ip"), "iproute2 is required"
    # Only loopback exists inside the namespace, so ICE cannot wander onto a real interface.
    arguments = " ".join(str(arg) for arg in args)
    command = f"ip link set lo up && exec {sys.executable} {script} {arguments}"
    result = subprocess.run(
        ["unshare", "--net", "sh", "-c", command],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-6000:] + result.stdout[-2000:]
    outcome: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return outcome
