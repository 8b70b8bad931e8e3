"""ExportSpec: what to export and how, checked when built."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from edgeclf.errors import UsageError
from edgeclf.exporters import get_info

IO_TYPES = ("uint8", "int8", "float32")
CALIB_METHODS = ("minmax", "entropy", "percentile")


@dataclass
class ExportSpec:
    target: str = "tflite"
    quant: str = "fp32"
    io: str | None = None  # int8 only; default uint8 (raw pixels in, quantized probabilities out)
    calib_dir: str | None = None
    calib_size: int = 300
    calib_method: str = "minmax"
    per_channel: bool | None = None  # ONNX int8; None: decide per model
    dynamic_batch: bool = False
    debug_quant: bool = False
    float_layers: tuple[str, ...] = ()
    ptq: str | None = None  # TFLite int8: comma list of edgeclf.ptq.TECHNIQUES, "none"; None: the default recipe
    out: str | None = None

    def __post_init__(self):
        info = get_info(self.target)
        if self.quant not in info.quant_modes:
            raise UsageError(f"--quant {self.quant} is not available for {self.target}", f"choose one of {', '.join(info.quant_modes)}")
        if self.io is not None and self.io not in IO_TYPES:
            raise UsageError(f"--io {self.io} is not supported", f"choose one of {', '.join(IO_TYPES)}")
        if self.quant != "int8":
            if self.io not in (None, "float32"):
                raise UsageError(f"--io {self.io} needs --quant int8", f"{self.quant} models take float32 input; drop --io")
            self.io = "float32"
        if self.target != "tflite" and self.io not in (None, "float32"):
            raise UsageError(f"--io {self.io} applies only to --target tflite", "drop --io")
        if self.float_layers:
            if self.quant != "int8" or self.target != "tflite":
                raise UsageError("--float-layers needs --target tflite --quant int8", "drop --float-layers")
            if self.io not in (None, "float32"):
                raise UsageError("--float-layers keeps part of the model in float, so its IO is float32", "drop --io or use --io float32")
            self.io = "float32"
        if self.io is None:
            self.io = "uint8" if self.target == "tflite" else "float32"
        if self.calib_size < 1:
            raise UsageError(f"--calib-size {self.calib_size} must be at least 1", "e.g. --calib-size 300")
        if self.calib_method not in CALIB_METHODS:
            raise UsageError(f"--calib-method {self.calib_method} is not supported", f"choose one of {', '.join(CALIB_METHODS)}")
        # Options one exporter reads and the others would silently ignore.
        if self.dynamic_batch and self.target != "onnx":
            raise UsageError("--dynamic-batch applies only to --target onnx", f"drop --dynamic-batch; {self.target} is exported with batch 1")
        if self.calib_method != "minmax" and (self.target, self.quant) != ("onnx", "int8"):
            raise UsageError(f"--calib-method {self.calib_method} applies only to --target onnx --quant int8",
                             f"drop --calib-method; {self.target} {self.quant} calibrates with min/max ranges")
        if self.per_channel is not None and (self.target != "onnx" or self.quant not in ("dynamic", "int8")):
            raise UsageError("--per-channel/--per-tensor apply only to --target onnx with --quant int8 or dynamic",
                             "drop the option; TFLite and OpenVINO int8 always quantize conv weights per channel")
        if self.calib_dir is not None and not self.needs_calibration:
            raise UsageError(f"--calib-dir is only used by --quant int8, not {self.quant}", "drop --calib-dir or pass --quant int8")
        if self.debug_quant and (self.quant != "int8" or self.target != "tflite"):
            raise UsageError("--debug-quant needs --target tflite --quant int8", "drop --debug-quant")
        if self.ptq is not None:
            if (self.target, self.quant) != ("tflite", "int8"):
                raise UsageError("--ptq applies only to --target tflite --quant int8", "drop --ptq")
            from edgeclf import ptq

            self.ptq = ptq.label(ptq.parse(self.ptq))
        if self.calib_dir is not None:
            path = Path(self.calib_dir).expanduser()
            if not path.is_dir():
                raise UsageError(f"--calib-dir {path} is not a folder", "pass a folder with one subfolder per class")
            self.calib_dir = str(path.resolve())

    @property
    def needs_calibration(self) -> bool:
        return self.quant == "int8"

    def default_dir_name(self) -> str:
        return f"{self.target}-{self.quant}"

    def to_dict(self) -> dict:
        data = asdict(self)
        data["float_layers"] = list(self.float_layers)
        return data
