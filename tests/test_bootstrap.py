"""scripts/bootstrap: running needs nothing from apt; --dev adds the tests' tools and the extra."""

import os
import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BOOTSTRAP = REPO / "scripts" / "bootstrap"

# Stand-ins for the outside programs bootstrap drives (apt, dpkg, sudo, python, pip): each logs
# its arguments. dpkg-query reports every package missing, so --dev must ask for all of them.
STUB = """#!/bin/sh
echo "$(basename "$0") $*" >> "$STUB_LOG"
case "$(basename "$0")" in
  dpkg-query) exit 1 ;;
  python3) mkdir -p "$3/bin" && cp "$0" "$3/bin/python" && cp "$0" "$3/bin/pip" ;;
esac
exit 0
"""


def _dev_packages() -> list[str]:
    """The packages the script lists for the tests."""
    match = re.search(r"DEV_DEBIAN_PACKAGES=\(([^)]*)\)", BOOTSTRAP.read_text())
    assert match
    return match.group(1).split()


def _run(tmp_path: Path, *args: str) -> list[str]:
    """Run bootstrap with stubs first on PATH; the commands it ran."""
    stubs = tmp_path / "stubs"
    stubs.mkdir(exist_ok=True)
    for name in ("apt-get", "dpkg-query", "sudo", "python3"):
        (stubs / name).write_text(STUB)
        (stubs / name).chmod(0o755)
    log = tmp_path / "log"
    log.write_text("")
    env = {
        **os.environ,
        "PATH": f"{stubs}:{os.environ['PATH']}",
        "STUB_LOG": str(log),
        "PYTHON": str(stubs / "python3"),
        "VENV": str(tmp_path / "venv"),
    }
    subprocess.run([str(BOOTSTRAP), *args], env=env, check=True, timeout=60, cwd=tmp_path)
    return log.read_text().splitlines()


def test_run_install_uses_no_apt(tmp_path: Path) -> None:
    """`scripts/bootstrap` (make run) makes the venv and installs the package, nothing else."""
    commands = _run(tmp_path)
    assert not [c for c in commands if c.split()[0] in ("apt-get", "dpkg-query", "sudo")]
    assert commands[-1] == "pip install -q -e ."
    assert _run(tmp_path) == []  # done once: the stamp holds until pyproject.toml changes


def test_dev_install_adds_the_test_tools_and_the_extra(tmp_path: Path) -> None:
    """`scripts/bootstrap --dev` (make test, CI) installs every test tool and the [dev] extra."""
    commands = _run(tmp_path, "--dev")
    queried = [c.split()[-1] for c in commands if c.startswith("dpkg-query")]
    assert queried == _dev_packages()
    (install,) = [c for c in commands if c.startswith("apt-get install")]
    assert install.split()[-len(queried) :] == queried
    assert commands[-1] == "pip install -q -e .[dev]"
    assert "ffmpeg" in queried  # the tests' oracle; the server itself runs no program
    assert not [c for c in _run(tmp_path) if c.startswith("pip")]  # --dev covers a plain run


def test_unknown_argument_is_refused(tmp_path: Path) -> None:
    """Anything but --dev is a usage error."""
    with pytest.raises(subprocess.CalledProcessError) as raised:
        _run(tmp_path, "--everything")
    assert raised.value.returncode == 2
