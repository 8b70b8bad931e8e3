"""The local machine as a device: the same runner and files, run by this Python."""
from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from edgeclf.devices.base import CommandResult
from edgeclf.errors import DeviceError


def open_transport(target, options, connect_timeout: float) -> "LocalTransport":
    return LocalTransport()


class LocalTransport:
    kind = "local"
    runner = "python"

    def __init__(self):
        self.name = "local"
        self.python = sys.executable  # the runner needs this environment's runtimes

    def make_temp_dir(self) -> str:
        return tempfile.mkdtemp(prefix="edgeclf-device-")

    def push(self, local: Path, remote: str) -> None:
        shutil.copyfile(local, remote)

    def pull(self, remote: str, local: Path) -> None:
        shutil.copyfile(remote, local)

    def run(self, argv: list[str], timeout: float) -> CommandResult:
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise DeviceError(f"the local run timed out after {timeout:g} s", "raise --timeout or lower --runs") from None
        except OSError as exc:  # a missing or non-executable program: answer like a shell would (127, 126)
            return CommandResult(127 if isinstance(exc, FileNotFoundError) else 126, "", f"{argv[0]}: {exc.strerror}")
        return CommandResult(proc.returncode, proc.stdout, proc.stderr)

    def remove(self, remote: str) -> None:
        shutil.rmtree(remote, ignore_errors=True)
