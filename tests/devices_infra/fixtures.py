"""pytest fixtures that start the stand-in devices. Import them from conftest.py:

    from devices_infra.fixtures import *  # noqa: F401,F403

Fixtures (all skip with a reason when a part cannot start here):

* ``ssh_device``      (session) SSHTarget: this machine over a real sshd, current user.
* ``arm64_root``      (session) Arm64Root: the cached arm64 Debian root (built on first use).
* ``pi_device``       (session) SSHTarget: user "pi" chrooted into the arm64 root
                      (aarch64 under qemu, python3 + numpy + tflite_runtime 2.14).
* ``adb_host``        (session) AdbHost: an isolated adb server; ANDROID_ADB_SERVER_PORT is
                      set in os.environ for the session so plain ``adb`` calls use it.
* ``android_device``  (session) AndroidDevice: a fake phone connected to that server.
* ``android_device_factory`` (function) make extra phones, e.g. ``factory(unauthorized=True)``
                      or ``factory(drop_on="benchmark_model", drop_after=1.0)``; torn down after the test.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest

from .adb import AdbHost, AndroidDevice
from .arm64_root import Arm64Root, add_root_user, ensure_arm64_root, ensure_user
from .common import StandInUnavailable, is_root
from .fake_adbd import FakeAdbd
from .sshd import SSHServer, wait_for_ssh

__all__ = ["ssh_device", "arm64_root", "pi_device", "adb_host", "android_device", "android_device_factory"]

PI_COMMENT = "edgeclf test device"


def _log(msg: str) -> None:
    sys.stderr.write(f"[devices_infra] {msg}\n")


def _skip(exc: Exception) -> None:
    pytest.skip(f"stand-in device unavailable: {exc}")


@pytest.fixture(scope="session")
def ssh_device():
    """This machine reached through a real OpenSSH server on 127.0.0.1 (host-key checking on)."""
    try:
        server = SSHServer(alias_prefix="edgeclf-local").start()
    except StandInUnavailable as exc:
        _skip(exc)
    try:
        target = next(iter(server.targets.values()))
        res = wait_for_ssh(target)
        if res.returncode != 0:
            pytest.skip(f"ssh to the test sshd failed: {res.stderr.strip()}\n{server.log_text()[-2000:]}")
        probe = target.run("command -v python3; uname -m")
        lines = probe.stdout.split()
        if probe.returncode == 0 and len(lines) >= 2:
            target.python, target.arch = lines[0], lines[1]
        target.emulated = False
        target.workdir = tempfile.mkdtemp(prefix="edgeclf-ssh-work-")
        yield target
    finally:
        if getattr(server, "targets", None):
            for t in server.targets.values():
                if t.workdir.startswith(tempfile.gettempdir() + "/edgeclf-ssh-work-"):
                    shutil.rmtree(t.workdir, ignore_errors=True)
        server.stop()


@pytest.fixture(scope="session")
def arm64_root() -> Arm64Root:
    try:
        return ensure_arm64_root(_log)
    except StandInUnavailable as exc:
        _skip(exc)


def _pi_user_name() -> str:
    try:
        entry = pwd.getpwnam("pi")
    except KeyError:
        return "pi"
    return "pi" if entry.pw_gecos == PI_COMMENT else "edgeclf-pi"


@pytest.fixture(scope="session")
def pi_device(arm64_root: Arm64Root):
    """An emulated aarch64 Raspberry Pi: sshd chroots user "pi" into the arm64 root."""
    if arm64_root.binfmt_mode != "binfmt":
        pytest.skip("binfmt_misc is not usable here, so sshd cannot chroot into the arm64 root "
                    "(qemu-aarch64-static -L still works: see arm64_root.run)")
    if not is_root():
        pytest.skip("the emulated Pi needs root (sshd ChrootDirectory, useradd)")
    user = _pi_user_name()
    try:
        uid, gid = ensure_user(user, comment=PI_COMMENT)
        add_root_user(arm64_root.path, user, uid, gid, f"/home/{user}")
        server = SSHServer(users=[user], chroot={user: arm64_root.path}, alias_prefix="edgeclf-pi").start()
    except StandInUnavailable as exc:
        _skip(exc)
    workdir_host = arm64_root.path / "tmp" / f"edgeclf-{uuid.uuid4().hex[:10]}"
    try:
        target = server.targets[user]
        res = wait_for_ssh(target, timeout=60)
        if res.returncode != 0:
            pytest.skip(f"ssh into the emulated Pi failed: {res.stderr.strip()}\n{server.log_text()[-2000:]}")
        workdir_host.mkdir(mode=0o755)
        os.chown(workdir_host, uid, gid)
        target.python = arm64_root.python
        target.arch = arm64_root.arch
        target.emulated = True
        target.workdir = "/" + str(workdir_host.relative_to(arm64_root.path))
        yield target
    finally:
        server.stop()
        shutil.rmtree(workdir_host, ignore_errors=True)


@pytest.fixture(scope="session")
def adb_host():
    """An adb server of our own on a free port; killed (adb kill-server) at the end."""
    try:
        host = AdbHost().start()
    except StandInUnavailable as exc:
        _skip(exc)
    saved = os.environ.get("ANDROID_ADB_SERVER_PORT")
    os.environ["ANDROID_ADB_SERVER_PORT"] = str(host.port)
    try:
        yield host
    finally:
        host.kill()
        if saved is None:
            os.environ.pop("ANDROID_ADB_SERVER_PORT", None)
        else:
            os.environ["ANDROID_ADB_SERVER_PORT"] = saved


class _Phones:
    """Starts fake phones and connects them to an adb server; cleans everything up."""

    def __init__(self, host: AdbHost, root: Arm64Root):
        self.host = host
        self.root = root
        self.devices: list[AndroidDevice] = []
        self.dirs: list[Path] = []

    def make(self, connect: bool = True, wait_state: str | None = "device", **adbd_kwargs) -> AndroidDevice:
        base = Path(tempfile.mkdtemp(prefix="edgeclf-phone-"))
        self.dirs.append(base)
        adbd = FakeAdbd(data_dir=base / "data_local_tmp", root=self.root, **adbd_kwargs).start()
        device = AndroidDevice(serial=adbd.serial, host=self.host, adbd=adbd, data_dir=adbd.data_dir,
                               abi=adbd.props["ro.product.cpu.abi"], props=dict(adbd.props))
        self.devices.append(device)
        if connect:
            out = self.host.connect(adbd.serial, expect="connected" if wait_state == "device" else "any")
            if wait_state is not None:
                state = self.host.wait_for_state(adbd.serial, wait_state, timeout=20)
                if state != wait_state:
                    raise RuntimeError(f"{adbd.serial} is {state!r}, not {wait_state!r} (adb connect said {out!r})")
        return device

    def close(self) -> None:
        for d in self.devices:
            try:
                self.host.disconnect(d.serial)
            except (subprocess.SubprocessError, OSError):
                pass
            d.adbd.stop()
        for base in self.dirs:
            shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def android_device(adb_host: AdbHost, arm64_root: Arm64Root):
    """A fake arm64 phone ("Pixel 8", API 34) reachable as ``adb -s 127.0.0.1:PORT``."""
    if arm64_root.binfmt_mode != "binfmt" or not is_root():
        pytest.skip("the phone stand-in runs commands with unshare+chroot into the arm64 root: needs root and binfmt_misc")
    phones = _Phones(adb_host, arm64_root)
    try:
        device = phones.make()
        res = device.shell("getprop ro.product.model")
        if res.returncode != 0:
            pytest.skip(f"fake phone does not answer: {res.stdout}{res.stderr}\n" + "\n".join(device.adbd.events[-20:]))
        yield device
    finally:
        phones.close()


@pytest.fixture
def android_device_factory(adb_host: AdbHost, arm64_root: Arm64Root):
    """Call with FakeAdbd options (unauthorized=True, drop_on=..., props={...}) to get a fresh phone."""
    if arm64_root.binfmt_mode != "binfmt" or not is_root():
        pytest.skip("the phone stand-in needs root and binfmt_misc")
    phones = _Phones(adb_host, arm64_root)
    try:
        yield phones.make
    finally:
        phones.close()
