"""Devices: a transport (local, ssh, adb) plus an on-device runner plus a pure parser.

`open_device` turns a --device string into a Device; `Device.run` measures one model there.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeclf.devices.base import DeviceRun
from edgeclf.devices.targets import Target, parse_target
from edgeclf.errors import DeviceError
from edgeclf.ranges import check_range

MAX_TIMEOUT_S = 86400.0  # a day: beyond it a hung device would never be given up on


@dataclass
class DeviceOptions:
    remote_python: str | None = None
    ssh_config: str | None = None
    insecure_host_key: bool = False
    benchmark_binary: str | None = None
    delegate: str = "xnnpack"
    emulated: bool | None = None  # None: detect (Android emulator properties) or take the devices file's word
    timeout: float = 600.0

    def __post_init__(self):
        checked_timeout(self.timeout)


def checked_timeout(seconds: float) -> float:
    return check_range("--timeout", seconds, 0, MAX_TIMEOUT_S, low_open=True, example="--timeout 600")


@dataclass
class Device:
    target: Target
    transport: object
    options: DeviceOptions

    @property
    def kind(self) -> str:
        return self.transport.kind

    def run(self, model_files: list[Path], io: dict | None, inputs: np.ndarray | None,
            runs: int, warmup: int, threads: int | None) -> DeviceRun:
        if self.kind == "adb":
            from edgeclf.devices.benchmark_tool import find_binary, run_on_android

            if model_files[0].suffix != ".tflite":
                raise DeviceError(f"Android validation runs .tflite models, not {model_files[0].suffix}", "export with --target tflite")
            binary = find_binary(self.options.benchmark_binary)
            result = run_on_android(self.transport, binary, model_files[0], io, inputs, runs, warmup, threads,
                                    self.options.delegate, self.options.timeout)
        else:
            from edgeclf.devices.python_runner import run_on_device

            python = self.options.remote_python or self.target.python or getattr(self.transport, "python", "python3")
            result = run_on_device(self.transport, python, model_files, inputs, runs, warmup, threads, self.options.timeout)
        result.extra["emulated"] = self._emulated(result)
        return result

    def _emulated(self, result: DeviceRun) -> bool:
        if self.options.emulated is not None:
            return self.options.emulated
        if self.target.emulated is not None:
            return bool(self.target.emulated)
        return bool(result.extra.get("emulator"))


def open_device(spec: str, options: DeviceOptions) -> Device:
    target = parse_target(spec)
    connect_timeout = min(options.timeout, 20)
    if target.kind == "local":
        from edgeclf.devices.local import LocalTransport

        transport = LocalTransport()
    elif target.kind == "ssh":
        from edgeclf.devices.ssh import SSHTransport

        transport = SSHTransport(
            target.host, target.user, target.port, ssh_config=options.ssh_config or target.ssh_config,
            python=options.remote_python or target.python or "python3", connect_timeout=connect_timeout,
            insecure_host_key=options.insecure_host_key,
        )
    else:
        from edgeclf.devices.adb import AdbTransport

        transport = AdbTransport(target.serial, connect_timeout=connect_timeout)
    return Device(target, transport, options)
