"""Drive Debian's real ``adb`` against fake phones, with an isolated adb server.

Every ``AdbHost`` owns its own adb server on a free port (``ANDROID_ADB_SERVER_PORT``)
and its own ``$HOME/.android`` (adb keys), so tests never touch a developer's
server on 5037 or their real devices, and ``adb kill-server`` at teardown
only kills ours.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from .common import StandInUnavailable, free_port, which_or_raise
from .fake_adbd import FakeAdbd

# The adb server probes 127.0.0.1:5555-5585 for emulators: keep our ports out of that range.
EMULATOR_PORTS = range(5554, 5586)
FAKE_BENCHMARK_MODEL = Path(__file__).with_name("fake_benchmark_model.py")


class AdbHost:
    def __init__(self) -> None:
        self.adb_path = which_or_raise("adb", "adb")
        self.port = free_port(avoid=EMULATOR_PORTS)
        self.home = Path(tempfile.mkdtemp(prefix="edgeclf-adb-home-"))
        self.env = {**os.environ, "ANDROID_ADB_SERVER_PORT": str(self.port), "HOME": str(self.home),
                    "ADB_MDNS": "0", "ADB_MDNS_AUTO_CONNECT": "0"}
        self.env.pop("ANDROID_SERIAL", None)
        self.started = False

    def adb(self, *args: str, timeout: float = 60, input: bytes | None = None,
            text: bool = True) -> subprocess.CompletedProcess:
        """Run the real adb client against our server. Never blocks longer than timeout."""
        kw = {"input": input} if input is not None else {"stdin": subprocess.DEVNULL}
        return subprocess.run([self.adb_path, *args], env=self.env, capture_output=True, text=text and input is None,
                              timeout=timeout, **kw)

    def start(self) -> "AdbHost":
        res = self.adb("start-server", timeout=60)
        if res.returncode != 0:
            raise StandInUnavailable(f"adb start-server failed on port {self.port}: {res.stdout}{res.stderr}")
        self.started = True
        return self

    def connect(self, serial: str, expect: str = "connected", timeout: float = 30) -> str:
        """`adb connect` exits 0 even when it fails: decide from its output."""
        res = self.adb("connect", serial, timeout=timeout)
        out = (res.stdout + res.stderr).strip()
        if expect == "connected" and not re.search(rf"(already )?connected to {re.escape(serial)}", out):
            raise RuntimeError(f"adb connect {serial} failed: {out!r}")
        return out

    def state(self, serial: str) -> str | None:
        """The serial's state in `adb devices` (device / offline / unauthorized / ...), None if absent."""
        res = self.adb("devices", timeout=30)
        for line in res.stdout.splitlines()[1:]:
            parts = line.split()
            if len(parts) >= 2 and parts[0] == serial:
                return parts[1]
        return None

    def wait_for_state(self, serial: str, wanted: str, timeout: float = 20) -> str | None:
        deadline = time.monotonic() + timeout
        state = None
        while time.monotonic() < deadline:
            state = self.state(serial)
            if state == wanted:
                return state
            time.sleep(0.2)
        return state

    def disconnect(self, serial: str) -> None:
        self.adb("disconnect", serial, timeout=20)

    def kill(self) -> None:
        if self.started:
            try:
                self.adb("kill-server", timeout=20)
            except subprocess.TimeoutExpired:
                pass
            self.started = False
        shutil.rmtree(self.home, ignore_errors=True)


@dataclass
class AndroidDevice:
    """A connected fake phone. ``adb(...)`` runs the real adb client for this serial."""

    serial: str
    host: AdbHost
    adbd: FakeAdbd
    data_dir: Path  # host directory behind the phone's /data/local/tmp
    abi: str
    arch: str = "aarch64"
    emulated: bool = True
    remote_tmp: str = "/data/local/tmp"
    benchmark_model: Path = FAKE_BENCHMARK_MODEL  # host file to push as the phone's benchmark_model
    props: dict = field(default_factory=dict)

    @property
    def adb_server_port(self) -> int:
        return self.host.port

    @property
    def env(self) -> dict:
        """Environment for subprocesses that should use this device's adb server."""
        return {"ANDROID_ADB_SERVER_PORT": str(self.host.port), "ANDROID_SERIAL": self.serial}

    def adb(self, *args: str, timeout: float = 120, input: bytes | None = None,
            text: bool = True) -> subprocess.CompletedProcess:
        return self.host.adb("-s", self.serial, *args, timeout=timeout, input=input, text=text)

    def shell(self, command: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return self.adb("shell", command, timeout=timeout)

    def push(self, local: Path | str, remote: str, timeout: float = 120) -> None:
        res = self.adb("push", str(local), remote, timeout=timeout)
        if res.returncode != 0:
            raise RuntimeError(f"adb push failed ({res.returncode}): {res.stdout}{res.stderr}")

    def install_benchmark_model(self, remote: str = "/data/local/tmp/benchmark_model") -> str:
        """Push the stand-in benchmark_model (a python3 script) and make it executable."""
        self.push(self.benchmark_model, remote)
        self.shell(f"chmod 755 {remote}")
        return remote
