"""Small helpers shared by the device stand-ins."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

LOOPBACK = "127.0.0.1"


class StandInUnavailable(RuntimeError):
    """A stand-in device cannot be started here; the message says why.

    Fixtures turn this into ``pytest.skip(message)``.
    """


def is_root() -> bool:
    return os.geteuid() == 0


def which_or_raise(name: str, package: str) -> str:
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/bin:/bin")
    if not path:
        raise StandInUnavailable(
            f"`{name}` is not installed (Debian package {package}; run `bash .ci/system-packages.sh` as root)"
        )
    return path


def free_port(avoid: range | None = None) -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((LOOPBACK, 0))
            port = s.getsockname()[1]
        if avoid is None or port not in avoid:
            return port
    raise RuntimeError("could not find a free port on 127.0.0.1")


def wait_for_port(port: int, timeout: float, proc: subprocess.Popen | None = None, banner: bytes | None = None) -> bytes:
    """Wait until 127.0.0.1:port accepts connections; optionally read a banner.

    Fails early if ``proc`` exits. Returns the bytes read (``b""`` without banner).
    """
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with code {proc.returncode} before listening on port {port}")
        try:
            with socket.create_connection((LOOPBACK, port), timeout=1.0) as s:
                if banner is None:
                    return b""
                s.settimeout(max(0.5, deadline - time.monotonic()))
                data = s.recv(256)
                if data.startswith(banner):
                    return data
                last_error = RuntimeError(f"unexpected banner {data!r}")
        except OSError as exc:
            last_error = exc
        time.sleep(0.05)
    raise TimeoutError(f"nothing answered on 127.0.0.1:{port} within {timeout:.0f}s ({last_error})")


def stop_process(proc: subprocess.Popen | None, timeout: float = 5.0) -> None:
    """Terminate a child we started (by pid), then kill it if it lingers."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout)


def tail(path: Path, max_chars: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-max_chars:]
    except OSError:
        return ""
