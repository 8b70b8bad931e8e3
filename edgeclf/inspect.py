"""`edgeclf inspect`: what is inside a model file, whoever made it."""
from __future__ import annotations

from pathlib import Path

from edgeclf.errors import ModelError


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


INSPECTORS = {".tflite": inspect_tflite}


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
    return inspector(path)
