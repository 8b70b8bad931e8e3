"""Exporters: one module per format behind this small registry.

Adding a format means adding a module with TARGET, MODEL_FILE, QUANT_MODES, REQUIRES and
`export(job) -> ExportOutput`, and one line here. The CLI and `edgeclf bench` never branch
on the format.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass

from edgeclf import tfenv
from edgeclf.errors import MissingDependency, UsageError


@dataclass(frozen=True)
class ExporterInfo:
    target: str
    module: str
    quant_modes: tuple[str, ...]
    extra: str  # the pip extra that brings its dependencies
    requires: tuple[str, ...]  # importable modules it needs


REGISTRY = {
    info.target: info
    for info in (
        ExporterInfo("tflite", "edgeclf.exporters.tflite", ("fp32", "fp16", "dynamic", "int8"), "all", ("ai_edge_litert",)),
        ExporterInfo("onnx", "edgeclf.exporters.onnx", ("fp32", "fp16", "dynamic", "int8"), "onnx", ("tf2onnx", "onnx", "onnxruntime")),
        ExporterInfo("openvino", "edgeclf.exporters.openvino", ("fp32", "fp16", "int8"), "openvino", ("openvino", "nncf")),
    )
}


def get_info(target: str) -> ExporterInfo:
    try:
        return REGISTRY[target]
    except KeyError:
        raise UsageError(f"unknown export target '{target}'", f"choose one of {', '.join(REGISTRY)}") from None


def load(target: str):
    """The exporter module, after checking its optional dependencies are installed."""
    info = get_info(target)
    tfenv.tf()  # tf2onnx imports TensorFlow itself, without our silencing
    for name in info.requires:
        try:
            importlib.import_module(name)
        except ImportError:
            raise MissingDependency(name, info.extra) from None
    try:
        return importlib.import_module(info.module)
    except ModuleNotFoundError as exc:
        if exc.name == info.module:
            raise UsageError(f"the {target} exporter is not available in this version", "use --target tflite") from None
        raise
