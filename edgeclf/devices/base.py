"""What every device transport provides, and the results they return."""
from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from edgeclf import console
from edgeclf.errors import DeviceError


@dataclass
class CommandResult:
    returncode: int
    stdout: str
    stderr: str


class Transport(Protocol):
    """Moves files to a device and runs argv lists there. Paths on the device are strings."""

    kind: str  # "local", "ssh" or "adb"
    name: str  # what the user called it, for messages
    runner: str  # which device runner measures models here: "python" (runner.py) or "benchmark_model"
    python: str | None  # the Python that runs runner.py there (None where the runner needs none)

    def make_temp_dir(self) -> str: ...
    def push(self, local: Path, remote: str) -> None: ...
    def pull(self, remote: str, local: Path) -> None: ...
    def run(self, argv: list[str], timeout: float) -> CommandResult: ...
    def remove(self, remote: str) -> None: ...


@dataclass
class DeviceRun:
    """What one on-device run produced, whichever runner produced it."""

    runtime: dict  # name, version
    device: dict  # kind, name, arch, cpu, cores, os, ... (android: model, soc, abi, sdk)
    latency_ms: dict | None
    init_ms: float | None
    predictions: object | None = None  # np.ndarray (N, classes) or None
    peak_rss_mb: float | None = None
    threads: int | None = None
    extra: dict = field(default_factory=dict)


def temp_dir_from_output(stdout: str, parent: str, device: str) -> str:
    """The directory `mktemp -d PARENT/edgeclf.XXXXXXXX` printed.

    Shell startup files on the device may print a banner first, so only the last line counts,
    and it must be exactly such a path: this is the directory later removed with rm -rf.
    """
    lines = [line.strip() for line in stdout.splitlines() if line.strip()]
    path = lines[-1] if lines else ""
    if not re.fullmatch(rf"{re.escape(parent)}/edgeclf\.[A-Za-z0-9_]+", path):
        raise DeviceError(f"mktemp on {device} printed {path[:80]!r}, not a {parent}/edgeclf.* directory",
                          "make the shell startup files on the device quiet for non-interactive logins")
    return path


def remove_quietly(transport: Transport, remote: str) -> None:
    """Clean up after a run; a failure here only warns, so it never hides the run's own error."""
    try:
        transport.remove(remote)
    except DeviceError as exc:
        console.warn(f"could not remove {remote} on {transport.name}: {exc}")


# Without a pty, killing the local ssh or adb client (Ctrl-C, SIGTERM, a timeout) does not signal
# the command on the device, which would run on to its end. So every command runs there under a
# watchdog that kills it once its stdin reaches end of file; the client's stdin is a pipe that
# edgeclf holds open (`lifeline`), so that happens when the client or edgeclf goes, however it goes.
WATCHDOG = ('exec 3<&0 </dev/null; "$@" & pid=$!; '
            '(read -r line <&3; kill -TERM "$pid") >/dev/null 2>&1 & watchdog=$!; exec 3<&-; '
            'wait "$pid"; status=$?; kill "$watchdog" 2>/dev/null; exit "$status"')


def watched(argv: list[str]) -> list[str]:
    """`argv` run by the device's sh under the watchdog; its exit status is argv's own."""
    return ["sh", "-c", WATCHDOG, "sh", *argv]


@contextlib.contextmanager
def lifeline():
    """The read end of a pipe, for a device client's stdin, whose write end stays open until the block ends."""
    read_end, write_end = os.pipe()  # not inherited by other children, so only this client holds it
    try:
        yield read_end
    finally:
        os.close(read_end)
        os.close(write_end)
