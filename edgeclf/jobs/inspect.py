"""`edgeclf inspect`: what is inside a model file, whoever made it. Each format reads its own."""
from __future__ import annotations

from pathlib import Path

from edgeclf import exporters
from edgeclf.errors import ModelError
from edgeclf.pipeline.runs import check_label_count, output_classes


def inspect_model(path) -> dict:
    path = Path(path)
    if path.is_dir():
        from edgeclf.artefacts import Artefact

        path = Artefact.open(path).model_path
    if not path.is_file():
        raise ModelError(f"{path} does not exist", f"pass a {', '.join(exporters.suffixes())} file, or an export directory")
    try:
        fmt = exporters.for_path(path)
    except ModelError:
        raise ModelError(f"cannot inspect {path.name}", f"pass a {', '.join(sorted(exporters.suffixes()))} file") from None
    info = fmt.inspect(path)
    if info.get("labels") is not None:
        check_label_count(info["labels"], output_classes(info["outputs"]), f"the label list embedded in {path.name}")
    return info
