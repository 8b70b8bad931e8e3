"""What every exporter receives and returns. Type-only imports keep this (and every format
module's read side) free of the calibration and run code that exporting needs."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from edgeclf.calibration import CalibrationSet
    from edgeclf.exporters.spec import ExportSpec
    from edgeclf.pipeline.runs import Run


@dataclass
class ExportJob:
    run: Run
    model: object  # the run's Keras model: raw 0..255 pixels in, probabilities out
    spec: ExportSpec
    calibration: CalibrationSet | None
    staging: Path  # write files here; the directory is published only if everything succeeds
    prune_policy: str | None = None  # the run's pruning policy ("xnnpack" when pruned for XNNPACK's sparse kernels)
    validation: object | None = None  # the run's decoded val split (DecodedSplit), for accuracy-controlled int8


@dataclass
class ExportOutput:
    model_file: str  # relative to the artefact directory
    input: dict  # name, shape, dtype, quantization {scale, zero_point} or None
    output: dict
    details: dict = field(default_factory=dict)  # format-specific facts for the manifest
    versions: dict = field(default_factory=dict)  # tool versions this format used
