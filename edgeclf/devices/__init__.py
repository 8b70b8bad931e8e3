"""Devices: a transport (local, ssh, adb) plus an on-device runner plus a pure parser.

`open_device` turns a --device string into a Device; `Device.run` measures one model there.
Each transport is one module with `open_transport(target, options, connect_timeout)`; the
transport says which runner measures models on it, and the format says which runners can.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgeclf.devices.base import DeviceRun, Transport
from edgeclf.devices.targets import Target, parse_target
from edgeclf.errors import DeviceError, UsageError
from edgeclf.checks import check_range

MAX_TIMEOUT_S = 86400.0  # a day: beyond it a hung device would never be given up on

TRANSPORTS = {"local": "edgeclf.devices.local", "ssh": "edgeclf.devices.ssh", "adb": "edgeclf.devices.adb"}
RUNNER_MODULES = {"python": "edgeclf.devices.runners.python", "benchmark_model": "edgeclf.devices.runners.benchmark_model"}


@dataclass
class DeviceOptions:
    remote_python: str | None = None
    ssh_config: str | None = None
    devices_file: str | None = None  # named by the user, so trusted (see targets.py)
    insecure_host_key: bool = False
    benchmark_binary: str | None = None
    delegate: str = "xnnpack"
    emulated: bool | None = None  # None: detect (Android emulator properties) or take the devices file's word
    timeout: float = 600.0

    def __post_init__(self):
        checked_timeout(self.timeout)


@dataclass(frozen=True)
class Measure:
    """How a model is measured on a device, checked once where a job starts: `runs` timed
    inferences after `warmup` untimed ones, on `threads` threads (None: the runtime's choice).
    validate, bench, check-bundle and `edgeclf run` all take one."""
    runs: int = 100
    warmup: int = 10
    threads: int | None = None
    options: DeviceOptions = field(default_factory=DeviceOptions)

    def __post_init__(self):
        for name, value in (("runs", self.runs), ("warmup", self.warmup), ("threads", self.threads)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise UsageError(f"--{name} {value!r} is not a whole number", "e.g. --runs 100 --warmup 10 --threads 1")
        if self.runs < 1 or self.warmup < 0:
            raise UsageError("--runs must be at least 1 and --warmup at least 0", "e.g. --runs 100 --warmup 10")
        if self.threads is not None and self.threads < 1:
            raise UsageError("--threads must be at least 1", "e.g. --threads 1")


def checked_timeout(seconds: float) -> float:
    return check_range("--timeout", seconds, 0, MAX_TIMEOUT_S, low_open=True, example="--timeout 600")


@dataclass
class Device:
    target: Target
    transport: Transport
    options: DeviceOptions

    @property
    def kind(self) -> str:
        return self.transport.kind

    def run(self, fmt, model_files: list[Path], inputs: np.ndarray | None,
            runs: int, warmup: int, threads: int | None, raw_outputs: bool = False) -> DeviceRun:
        """Measure a model of format `fmt` (an exporters.Format) with this transport's runner; predictions
        are probabilities, or with raw_outputs the output tensors as the model produced them."""
        if self.transport.runner not in fmt.runners:
            raise DeviceError(f"{self.transport.name} runs models with {self.transport.runner}, which cannot run {fmt.name} models",
                              f"export with --target {_formats_for(self.transport.runner)}")
        runner = importlib.import_module(RUNNER_MODULES[self.transport.runner])
        result = runner.run(self, fmt, model_files, inputs, runs, warmup, threads, raw_outputs)
        result.extra["emulated"] = self._emulated(result)
        return result

    def _emulated(self, result: DeviceRun) -> bool:
        if self.options.emulated is not None:
            return self.options.emulated
        if self.target.emulated is not None:
            return bool(self.target.emulated)
        return bool(result.extra.get("emulator"))


def _formats_for(runner: str) -> str:
    from edgeclf import exporters

    return " or ".join(fmt.name for fmt in exporters.registry().values() if runner in fmt.runners)


def open_device(spec: str | Target, options: DeviceOptions) -> Device:
    """A device by its name, or by the Target a job already parsed it into (the devices file is read once)."""
    target = spec if isinstance(spec, Target) else parse_target(spec, options.devices_file)
    module = importlib.import_module(TRANSPORTS[target.kind])
    transport = module.open_transport(target, options, connect_timeout=min(options.timeout, 20))
    return Device(target, transport, options)
