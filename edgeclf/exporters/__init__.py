"""Export formats: one module per format, each declaring itself once in a `Format` record.

A format module (tflite.py, onnx.py, openvino.py) defines `FORMAT = Format(...)` and imports
nothing heavy at module level, so the CLI, `inspect` and the device code can ask the
registry about any format without loading TensorFlow. Adding a format means adding one
module and its name to BUILTIN; a test can `register()` a format of its own.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from edgeclf import tfenv
from edgeclf.errors import MissingDependency, ModelError, UsageError
from edgeclf.exporters.recipes import Budget

BUILTIN = ("tflite", "onnx", "openvino")
# Device runners: "python" is devices/runner.py on a board with Python (local, ssh);
# "benchmark_model" is TFLite's own tool on Android.
RUNNERS = ("python", "benchmark_model")
# Each format's self-contained runtime file, pushed to devices and loaded there by path: the
# device side owns them, and exporters name them by path rather than import devices/.
RUNTIMES = Path(__file__).resolve().parent.parent / "devices" / "runtimes"


@dataclass(frozen=True)
class Format:
    name: str  # the --target value
    suffixes: tuple[str, ...]  # model file suffixes; the first is the main model file's
    quant_modes: tuple[str, ...]
    # export options this format reads, each with the quant modes it applies to
    options: dict[str, tuple[str, ...]]
    extra: str  # the pip extra that brings its dependencies
    requires: tuple[str, ...]  # importable modules the exporter needs
    export: Callable  # (ExportJob) -> ExportOutput; the module imports its heavy tools inside
    inspect: Callable  # (Path) -> dict; read-only, never imports write-side code
    runtime_file: Path  # self-contained module the on-device runner loads (see devices/runtimes/)
    runtime_hint: str  # what to pip install on a device that lacks the runtime
    runtime_modules: tuple[str, ...]  # importable on a device that can run this format (`edgeclf devices` probes them)
    runners: tuple[str, ...] = ("python",)
    default_io: str = "float32"  # int8 models' IO tensor type unless --io says otherwise
    io_tensors: Callable | None = None  # (Path) -> {"inputs", "outputs"}: when the runner needs the tensor details
    companions: Callable[[Path], list[Path]] = field(default=lambda model_path: [])  # files the model needs beside it
    ptq: tuple[str, ...] = ()  # int8 post-training techniques it offers (edgeclf.ptq.TECHNIQUES)
    ptq_default: tuple[str, ...] = ()  # those it applies when --ptq is not given: the measured best
    # the measured best for a backbone whose default differs (run.arch -> techniques)
    ptq_default_by_arch: dict[str, tuple[str, ...]] = field(default_factory=dict)
    budget: Budget | None = None  # its accuracy-budget recipes (recipes.py); None: it offers no budget
    # The hand-off bundle: the check_golden.py loader that reads it (None: it cannot be bundled),
    # the app templates (bundle/templates/) rendered for it, and the other kernel sets its runtime
    # offers, whose spread sets the golden tolerance for other builds of that runtime.
    golden_loader: str | None = None
    app_templates: tuple[str, ...] = ()
    kernel_sets: tuple[str, ...] = ()
    # Its converter takes a QAT model's learned ranges, so int8 needs calibration images only for
    # the in-graph preprocessing, which a pixel-range probe covers when the run's images are gone.
    keeps_qat_ranges: bool = False

    def default_ptq(self, arch: str | None = None) -> tuple[str, ...]:
        """The techniques --ptq defaults to for a model of backbone `arch`."""
        return self.ptq_default_by_arch.get(arch, self.ptq_default)

    def accepts(self, option: str, quant: str) -> bool:
        return quant in self.options.get(option, ())

    def model_files(self, model_path: Path) -> list[Path]:
        """The model file plus what it needs beside it (e.g. OpenVINO's .bin), all checked to exist."""
        files = [model_path, *self.companions(model_path)]
        for path in files[1:]:
            if not path.is_file():
                raise ModelError(f"{path} is missing beside {model_path.name}", f"keep {path.name} next to {model_path.name}")
        return files


_REGISTRY: dict[str, Format] = {}


def register(fmt: Format) -> None:
    _REGISTRY[fmt.name] = fmt


def registry() -> dict[str, Format]:
    for name in BUILTIN:
        if name not in _REGISTRY:
            register(importlib.import_module(f"edgeclf.exporters.{name}").FORMAT)
    return _REGISTRY


def names() -> list[str]:
    return list(registry())


def get(name: str) -> Format:
    try:
        return registry()[name]
    except KeyError:
        raise UsageError(f"unknown export target '{name}'", f"choose one of {', '.join(registry())}") from None


def quant_modes() -> list[str]:
    """Every quantization mode some format offers, in a stable order."""
    return list(dict.fromkeys(q for fmt in registry().values() for q in fmt.quant_modes))


def suffixes() -> list[str]:
    return [suffix for fmt in registry().values() for suffix in fmt.suffixes[:1]]


def for_path(path: Path) -> Format:
    """The format of a model file, by its suffix."""
    suffix = Path(path).suffix.lower()
    for fmt in registry().values():
        if suffix == fmt.suffixes[0]:
            return fmt
    raise ModelError(f"{Path(path).name} is not a {', '.join(suffixes())} model", "pass an export directory or a model file")


def load(name: str) -> Format:
    """The format, after checking its exporter's optional dependencies are installed."""
    fmt = get(name)
    tfenv.tf()  # tf2onnx imports TensorFlow itself, without our silencing
    for module in fmt.requires:
        try:
            importlib.import_module(module)
        except ImportError:
            raise MissingDependency(module, fmt.extra) from None
    return fmt
