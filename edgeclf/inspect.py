"""`edgeclf inspect`: what is inside a model file, whoever made it."""
from __future__ import annotations

import json
from pathlib import Path

from edgeclf.errors import MissingDependency, ModelError
from edgeclf.pipeline.runs import check_label_count, output_classes


def inspect_tflite(path: Path) -> dict:
    from edgeclf.exporters import tflite_flatbuffer
    from edgeclf.exporters.tflite_metadata import read_associated_files, read_metadata

    data = path.read_bytes()
    io = tflite_flatbuffer.io_tensors(data)
    metadata = read_metadata(data)
    files = read_associated_files(data)
    labels = None
    for name, content in files.items():
        if name.endswith(".txt") and metadata and any(
            f["name"] == name for t in metadata.get("outputs", []) for f in t.get("associated_files", [])
        ):
            labels = content.decode("utf-8", "replace").splitlines()
    return {
        "path": str(path),
        "format": "tflite",
        "bytes": len(data),
        "inputs": io["inputs"],
        "outputs": io["outputs"],
        "ops": tflite_flatbuffer.op_counts(data),
        "quantization": tflite_flatbuffer.quantization_coverage(data),
        "metadata": metadata,
        "associated_files": sorted(files),
        "labels": labels,
    }


def inspect_onnx(path: Path) -> dict:
    try:
        import onnx
    except ImportError:
        raise MissingDependency("onnx", "onnx") from None
    from edgeclf.exporters import onnx as onnx_exporter

    try:
        model = onnx.load(str(path))
    except Exception as exc:  # DecodeError, or a missing external-data file
        raise ModelError(f"cannot read {path.name} as ONNX: {str(exc).strip()[:200]}", "pass a valid .onnx file") from exc
    try:
        model = onnx.shape_inference.infer_shapes(model)
    except Exception:  # a foreign model may not infer; inspect what is there
        pass
    io = onnx_exporter.io_tensors(model)
    metadata = onnx_exporter.metadata(model)
    labels = json.loads(metadata["edgeclf.labels"]) if "edgeclf.labels" in metadata else None
    return {
        "path": str(path),
        "format": "onnx",
        "bytes": path.stat().st_size,
        "opset": onnx_exporter.opset(model),
        "producer": f"{model.producer_name} {model.producer_version}".strip() or None,
        "inputs": io["inputs"],
        "outputs": io["outputs"],
        "ops": onnx_exporter.op_counts(model),
        "quantization": onnx_exporter.quantization_coverage(model),
        "metadata": ({"name": model.doc_string or None, "description": metadata.get("edgeclf.input"), "version": metadata.get("edgeclf.version")} | metadata) if metadata else None,
        "labels": labels,
    }


def inspect_openvino(path: Path) -> dict:
    try:
        import openvino as ov
    except ImportError:
        raise MissingDependency("openvino", "openvino") from None
    from edgeclf.exporters import openvino as openvino_exporter

    weights = path.with_suffix(".bin")
    try:
        model = ov.Core().read_model(str(path))
    except RuntimeError as exc:
        raise ModelError(f"cannot read {path.name} as OpenVINO IR: {str(exc).strip().splitlines()[0][:200]}", f"keep {weights.name} next to {path.name}") from exc
    io = openvino_exporter.io_tensors(model)
    metadata = openvino_exporter.metadata(model)
    return {
        "path": str(path),
        "format": "openvino",
        "bytes": path.stat().st_size + (weights.stat().st_size if weights.is_file() else 0),
        "files": {p.name: p.stat().st_size for p in (path, weights) if p.is_file()},
        "inputs": io["inputs"],
        "outputs": io["outputs"],
        "ops": openvino_exporter.op_counts(model),
        "quantization": openvino_exporter.weight_precision(model),
        "metadata": ({"name": model.get_friendly_name(), "description": metadata.get("input")} | metadata) if metadata else None,
        "labels": json.loads(metadata["labels"]) if metadata else None,
    }


INSPECTORS = {".tflite": inspect_tflite, ".onnx": inspect_onnx, ".xml": inspect_openvino}


def inspect_model(path) -> dict:
    path = Path(path)
    if path.is_dir():
        from edgeclf.artefacts import Artefact

        path = Artefact.open(path).model_path
    if not path.is_file():
        raise ModelError(f"{path} does not exist", "pass a .tflite, .onnx or .xml file, or an export directory")
    inspector = INSPECTORS.get(path.suffix.lower())
    if inspector is None:
        raise ModelError(f"cannot inspect {path.name}", f"pass a {', '.join(sorted(INSPECTORS))} file")
    info = inspector(path)
    if info.get("labels") is not None:
        check_label_count(info["labels"], output_classes(info["outputs"]), f"the label list embedded in {path.name}")
    return info
