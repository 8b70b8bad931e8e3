"""ExportSpec: what to export and how, checked when built against the format's own record."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from edgeclf import exporters
from edgeclf.errors import UsageError

IO_TYPES = ("uint8", "int8", "float32")
# Quantization modes whose activation ranges come from calibration images.
CALIBRATED_MODES = ("int8", "int16x8")
CALIB_METHODS = ("minmax", "entropy", "percentile")
# Options that only some formats read, with the values that mean "not set" and how the
# command line spells them. A set option the chosen format would ignore is refused.
FORMAT_OPTIONS = {
    "io": ((None, "float32"), "--io {value}"),  # every format takes float32
    "calib_method": (("minmax",), "--calib-method {value}"),
    "per_channel": ((None,), "--per-channel/--per-tensor"),
    "dynamic_batch": ((False,), "--dynamic-batch"),
    "debug_quant": ((False,), "--debug-quant"),
    "float_layers": (((),), "--float-layers"),
    "ptq": ((None,), "--ptq"),
    "accuracy_control": ((None,), "--accuracy-control"),
}


@dataclass
class ExportSpec:
    target: str = "tflite"
    quant: str = "fp32"
    io: str | None = None  # int8 only; default: the format's (uint8 for TFLite: raw pixels in, quantized probabilities out)
    calib_dir: str | None = None
    calib_size: int = 300
    calib_method: str = "minmax"
    per_channel: bool | None = None  # ONNX int8; None: decide per model
    dynamic_batch: bool = False
    debug_quant: bool = False
    float_layers: tuple[str, ...] = ()
    ptq: str | None = None  # int8: comma list of the format's edgeclf.ptq techniques, "none"; None: its default
    # OpenVINO int8: NNCF keeps the ops that cost the most accuracy in float until val top-1
    # is at most this many points below the float model (quantize_with_accuracy_control).
    accuracy_control: float | None = None
    out: str | None = None
    last_mile: bool = False  # measure app mistakes (resize sensitivity) on the run's test split into the manifest

    def __post_init__(self):
        fmt = exporters.get(self.target)
        if self.quant not in fmt.quant_modes:
            raise UsageError(f"--quant {self.quant} is not available for {self.target}", f"choose one of {', '.join(fmt.quant_modes)}")
        if self.io is not None and self.io not in IO_TYPES:
            raise UsageError(f"--io {self.io} is not supported", f"choose one of {', '.join(IO_TYPES)}")
        if self.calib_method not in CALIB_METHODS:
            raise UsageError(f"--calib-method {self.calib_method} is not supported", f"choose one of {', '.join(CALIB_METHODS)}")
        if not self.needs_calibration:
            if self.io not in (None, "float32"):
                raise UsageError(f"--io {self.io} needs --quant int8", f"{self.quant} models take float32 input; drop --io")
            if self.calib_dir is not None:
                raise UsageError(f"--calib-dir is only used by --quant {' and '.join(CALIBRATED_MODES)}, not {self.quant}",
                                 "drop --calib-dir or pass --quant int8")
            self.io = "float32"
        for option, (unset, flag) in FORMAT_OPTIONS.items():
            value = getattr(self, option)
            if value not in unset and not fmt.accepts(option, self.quant):
                flag = flag.format(value=value)
                verb = "apply" if "/" in flag else "applies"
                raise UsageError(f"{flag} {verb} only to {_where(option)}", f"drop {flag.split(' ')[0]}")
        if self.float_layers:
            if self.io not in (None, "float32"):
                raise UsageError("--float-layers keeps part of the model in float, so its IO is float32", "drop --io or use --io float32")
            self.io = "float32"
        if self.io is None:
            self.io = fmt.default_io if fmt.accepts("io", self.quant) else "float32"
        if self.accuracy_control is not None and not 0 <= self.accuracy_control <= 100:
            raise UsageError(f"--accuracy-control {self.accuracy_control} is not a number of points in [0, 100]",
                             "e.g. --accuracy-control 0.5")
        if self.calib_size < 1:
            raise UsageError(f"--calib-size {self.calib_size} must be at least 1", "e.g. --calib-size 300")
        if self.ptq is not None:
            from edgeclf import ptq

            self.ptq = ptq.label(ptq.for_format(fmt, self.ptq))
        if self.calib_dir is not None:
            path = Path(self.calib_dir).expanduser()
            if not path.is_dir():
                raise UsageError(f"--calib-dir {path} is not a folder", "pass a folder with one subfolder per class")
            self.calib_dir = str(path.resolve())

    def ptq_techniques(self, arch: str | None = None) -> tuple[str, ...]:
        """The int8 techniques this export of a model of backbone `arch` applies: --ptq as given,
        else the format's measured default for that backbone."""
        from edgeclf import ptq

        return ptq.for_format(exporters.get(self.target), self.ptq, arch)

    @property
    def needs_calibration(self) -> bool:
        return self.quant in CALIBRATED_MODES

    def default_dir_name(self) -> str:
        return f"{self.target}-{self.quant}"

    def to_dict(self) -> dict:
        data = asdict(self)
        data["float_layers"] = list(self.float_layers)
        return data


def _where(option: str) -> str:
    """Where an option applies, from the registry: e.g. '--target onnx --quant int8'."""
    places = []
    for fmt in exporters.registry().values():
        modes = [q for q in fmt.quant_modes if fmt.accepts(option, q)]
        if modes == list(fmt.quant_modes):
            places.append(f"--target {fmt.name}")
        elif modes:
            places.append(f"--target {fmt.name} --quant {' or '.join(modes)}")
    return "; ".join(places) or "no export target"
