"""Android phones through the system `adb` client.

`adb shell` can exit 0 when the phone drops mid-command, and `adb connect` exits 0 when it
fails, so results are judged by what adb prints: every remote command ends by echoing an
end marker with its exit status, and a missing marker means the phone went away.
"""
from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path

from edgeclf.devices.base import CommandResult, lifeline, temp_dir_from_output, watched
from edgeclf.errors import DeviceError

DEVICE_DIR = "/data/local/tmp"
END_MARKER = "__edgeclf_exit__"
SERIAL_PATTERN = re.compile(r"^[A-Za-z0-9._:\[\]][A-Za-z0-9._:\-\[\]]*$")  # no leading '-': adb would read an option
PROPERTIES = {
    "model": "ro.product.model",
    "manufacturer": "ro.product.manufacturer",
    "soc": "ro.soc.model",
    "board": "ro.board.platform",
    "abi": "ro.product.cpu.abi",
    "sdk": "ro.build.version.sdk",
    "android": "ro.build.version.release",
    "qemu": "ro.kernel.qemu",
}


def adb_binary() -> str:
    path = shutil.which("adb")
    if path is None:
        raise DeviceError("adb is not installed", "install Android platform-tools (Debian: apt-get install adb) and put adb on PATH")
    return path


def _adb(argv: list[str], timeout: float, stdin=subprocess.DEVNULL) -> subprocess.CompletedProcess:
    try:
        return subprocess.run([adb_binary(), *argv], capture_output=True, timeout=timeout, stdin=stdin)
    except subprocess.TimeoutExpired:
        raise DeviceError(f"adb {argv[0]} did not finish within {timeout:g} s", "check the phone's connection, or raise --timeout") from None


def list_devices(timeout: float = 20) -> list[dict]:
    """`adb devices -l` as records: serial, state, and the model/device fields adb prints."""
    proc = _adb(["devices", "-l"], timeout)
    if proc.returncode != 0:
        raise DeviceError(f"adb devices failed: {proc.stderr.decode(errors='replace').strip()}", "restart the adb server with `adb kill-server`")
    devices = []
    for line in proc.stdout.decode(errors="replace").splitlines()[1:]:
        parts = line.split()
        if len(parts) < 2 or line.startswith("*"):
            continue
        record = {"serial": parts[0], "state": parts[1]}
        record.update(p.split(":", 1) for p in parts[2:] if ":" in p)
        devices.append(record)
    return devices


def connect(address: str, timeout: float) -> None:
    """`adb connect HOST:PORT`, judged by its output because it exits 0 on failure."""
    proc = _adb(["connect", address], timeout)
    text = (proc.stdout + proc.stderr).decode(errors="replace").strip()
    if "connected to" not in text:
        raise DeviceError(f"adb could not connect to {address} ({text.splitlines()[-1] if text else 'no answer'})", "check the phone's IP, port and that wireless debugging is on")


def choose_device(serial: str | None, timeout: float) -> str:
    if serial is not None and not SERIAL_PATTERN.match(serial):
        raise DeviceError(f"'{serial}' is not a valid adb serial", "use adb://SERIAL as listed by `edgeclf devices`")
    devices = list_devices(timeout)
    if serial is not None and serial not in {d["serial"] for d in devices} and ":" in serial:
        connect(serial, timeout)
        devices = list_devices(timeout)
    if serial is None:
        if not devices:
            raise DeviceError("no Android device is connected", "plug one in with USB debugging on, or `adb connect HOST:PORT`")
        if len(devices) > 1:
            names = ", ".join(d["serial"] for d in devices)
            raise DeviceError(f"several Android devices are connected ({names})", "pick one with --device adb://SERIAL")
        chosen = devices[0]
    else:
        matches = [d for d in devices if d["serial"] == serial]
        if not matches:
            raise DeviceError(f"Android device {serial} is not connected", "check `adb devices`, or `adb connect` it first")
        chosen = matches[0]
    state = chosen["state"]
    if state == "unauthorized":
        raise DeviceError(f"Android device {chosen['serial']} is unauthorized", "unlock the phone and accept the USB debugging prompt")
    if state != "device":
        raise DeviceError(f"Android device {chosen['serial']} is {state}", "reconnect it (unplug/replug, or `adb reconnect`)")
    return chosen["serial"]


def open_transport(target, options, connect_timeout: float) -> "AdbTransport":
    return AdbTransport(target.serial, connect_timeout=connect_timeout)


class AdbTransport:
    kind = "adb"
    runner = "benchmark_model"  # Android has no Python: TFLite's own tool measures there
    python = None

    def __init__(self, serial: str | None = None, connect_timeout: float = 20):
        self.serial = choose_device(serial, connect_timeout)
        self.name = f"adb://{self.serial}"
        self.connect_timeout = connect_timeout

    def _adb(self, argv: list[str], timeout: float, stdin=subprocess.DEVNULL) -> subprocess.CompletedProcess:
        return _adb(["-s", self.serial, *argv], timeout, stdin)

    def _gone(self, proc) -> DeviceError:
        text = (proc.stdout + proc.stderr).decode(errors="replace").strip() if proc is not None else ""
        last = text.splitlines()[-1] if text else "no output"
        return DeviceError(f"lost the connection to {self.name} ({last})", "reconnect the phone and run again")

    def run(self, argv: list[str], timeout: float) -> CommandResult:
        command = f"{shlex.join(watched(argv))}; echo {END_MARKER}$?"
        with lifeline() as stdin:
            proc = self._adb(["shell", command], timeout, stdin)
        stdout = proc.stdout.decode(errors="replace")
        match = re.search(rf"{END_MARKER}(\d+)\s*$", stdout)
        if match is None:
            raise self._gone(proc)
        return CommandResult(int(match.group(1)), stdout[: match.start()], proc.stderr.decode(errors="replace"))

    def make_temp_dir(self) -> str:
        result = self.run(["mktemp", "-d", f"{DEVICE_DIR}/edgeclf.XXXXXXXX"], self.connect_timeout)
        if result.returncode != 0 or not result.stdout.strip():
            raise DeviceError(f"cannot create a temp dir in {DEVICE_DIR} on {self.name} ({result.stderr.strip()})", "check the phone's storage")
        return temp_dir_from_output(result.stdout, DEVICE_DIR, self.name)

    def push(self, local: Path, remote: str) -> None:
        proc = self._adb(["push", str(local), remote], self.connect_timeout + 600)
        if proc.returncode != 0:
            raise self._gone(proc) if b"offline" in proc.stderr or b"not found" in proc.stderr else DeviceError(
                f"adb push of {Path(local).name} failed: {proc.stderr.decode(errors='replace').strip()}", "check the phone's storage")

    def pull(self, remote: str, local: Path) -> None:
        proc = self._adb(["pull", remote, str(local)], self.connect_timeout + 600)
        if proc.returncode != 0:
            raise DeviceError(f"adb pull of {remote} failed: {proc.stderr.decode(errors='replace').strip()}", "run again; the phone may have disconnected")

    def remove(self, remote: str) -> None:
        result = self.run(["rm", "-rf", "--", remote], self.connect_timeout)
        if result.returncode != 0:
            raise DeviceError(f"could not remove {remote} on {self.name}", "remove it by hand with adb shell")

    def properties(self) -> dict:
        result = self.run(["getprop"], self.connect_timeout)
        found = dict(re.findall(r"^\[([^\]]+)\]: \[([^\]]*)\]", result.stdout, flags=re.M))
        return {key: found.get(prop) or None for key, prop in PROPERTIES.items()}
