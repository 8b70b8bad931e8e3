"""The pipeline file of `edgeclf run`, checked whole before any work starts.

Every key is an option of an existing command with the same name (`img_size` or `img-size`
for `--img-size`), and each section is turned into that command's own config record, so a
setting is never configured or checked two ways. Errors name the file, the line and the key.

    data: {train: images/train, val: images/val, test: images/test}   # paths relative to this file
    train: {arch: [mobilenetv2, efficientnetb0], weights: none, img_size: 96}   # `edgeclf train` options
    optimize: {prune: 0.5, qat: true}                                  # `edgeclf optimize` options
    exports: [{target: tflite, quant: int8, ptq: cle}]                 # `edgeclf export` options (+ name)
    devices: [local, pi, ssh://user@board]                             # names, groups or URLs
    devices_file: devices.yaml                                         # needs --trust-pipeline-devices
    validate: {runs: 50, threads: 1, data: images/test}                # `edgeclf validate` options
    out: runs/flowers

A pipeline file usually comes with a repository, so it is trusted like an `edgeclf.yaml`
found in the working directory: settings that can make ssh run local commands or turn
host-key checking off (TRUSTED_ONLY) take effect only with `--trust-pipeline-devices`.

A `train` value may also be a mapping per backbone, e.g. `weights: {mobilenetv2: w.h5,
efficientnetb0: none}`; with several backbones, `alpha` applies to those that have it.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from edgeclf import exporters
from edgeclf.devices import DeviceOptions, Measure
from edgeclf.devices.runners.benchmark_model import DELEGATES
from edgeclf.devices.targets import expand_devices, parse_target
from edgeclf.errors import EdgeclfError, UsageError
from edgeclf.exporters.spec import ExportSpec
from edgeclf.jobs.budget import BudgetSpec
from edgeclf.jobs.optimize import OptimizeConfig
from edgeclf.pipeline.backbones import BACKBONES, get_backbone
from edgeclf.pipeline.config import TrainConfig

DATA_KEYS = {"train": "data_dir", "val": "val_dir", "test": "test_dir"}
TRAIN_KEYS = [f.name for f in dataclasses.fields(TrainConfig) if f.name not in ("data_dir", "val_dir", "test_dir", "out")]
OPTIMIZE_KEYS = [f.name for f in dataclasses.fields(OptimizeConfig) if f.name not in ("run_dir", "out", "check")]
BUDGET_KEYS = [f.name for f in dataclasses.fields(BudgetSpec) if f.name != "export"]
EXPORT_KEYS = ["name"] + [f.name for f in dataclasses.fields(ExportSpec) if f.name != "out"] + BUDGET_KEYS
VALIDATE_KEYS = ["data", "runs", "warmup", "threads"] + [f.name for f in dataclasses.fields(DeviceOptions) if f.name != "devices_file"]
TOP_KEYS = ["data", "train", "optimize", "exports", "devices", "devices_file", "validate", "report", "bundle", "out"]
# Values that are paths on this machine, resolved against the pipeline file's folder.
PATH_KEYS = {"weights", "calib_dir", "ssh_config", "benchmark_binary", "data", "devices_file", "out", *DATA_KEYS}
# Types of the keys that are not fields of a config record.
EXTRA_TYPES = {"name": "str", "data": "str", "train": "str", "val": "str", "test": "str", "runs": "int", "warmup": "int", "threads": "int | None"}
TRUST_FLAG = "--trust-pipeline-devices"
# Settings a pipeline file may use only when the user trusts it: an ssh config (its own or one in
# a devices file) can run local commands (ProxyCommand, LocalCommand, Match exec), and
# insecure_host_key turns host-key checking off.
TRUSTED_ONLY = {("devices_file",): "names a devices file, whose ssh_config can make ssh run local commands",
                ("validate", "ssh_config"): "can make ssh run local commands (ProxyCommand, LocalCommand)",
                ("validate", "insecure_host_key"): "turns ssh host-key checking off"}
TYPE_WORDS = {"int": "an integer", "float": "a number", "str": "a string", "bool": "true or false", "None": "empty",
              "tuple[str, ...]": "a list of strings"}


@dataclass
class Export:
    name: str  # its folder and stage name, e.g. tflite-int8
    spec: ExportSpec  # out is set per backbone
    budget: BudgetSpec | None = None  # max_drop / min_agreement: `edgeclf export`'s accuracy budget


@dataclass
class PipelineFile:
    path: Path
    out: Path
    trains: list[TrainConfig]  # one per backbone, out set to out/<arch>/run
    optimize: dict | None  # OptimizeConfig settings, checked; run_dir/out are set per backbone
    exports: list[Export]
    targets: dict  # device name -> Target, groups expanded, each parsed once while checking the file
    device_options: DeviceOptions
    runs: int = 100
    warmup: int = 10
    threads: int | None = None
    data: str | None = None  # images validate scores on: validate.data, else data.test
    lines: dict = field(default_factory=dict, repr=False)
    report: bool = True  # one `edgeclf report` page per backbone, with the pipeline's device results
    bundle: tuple[str, ...] = ()  # names of exports with app code (TFLite) to bundle for app teams (`edgeclf bundle`)

    @property
    def devices(self) -> list[str]:
        return list(self.targets)

    @property
    def measure(self) -> Measure:
        return Measure(self.runs, self.warmup, self.threads, self.device_options)


def load(path, trust_devices: bool = False) -> PipelineFile:
    """The checked pipeline file; `trust_devices` lets its device settings that can run local
    commands take effect (see TRUSTED_ONLY), as `edgeclf run --trust-pipeline-devices` says."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UsageError(f"pipeline file {path} {'is not a file' if path.exists() else 'does not exist'}",
                         "pass a YAML file such as examples/digits.yaml")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(f"{path} is not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start})",
                         "save it as UTF-8") from None
    except OSError as exc:
        raise UsageError(f"pipeline file {path} cannot be read ({exc.strerror})", "check its permissions") from None
    try:
        _refuse_aliases(path, text)
        lines = _lines(path, yaml.compose(text))
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise UsageError(f"{path}{where} is not valid YAML ({getattr(exc, 'problem', None) or exc})", "fix its syntax") from None
    except RecursionError:
        raise UsageError(f"{path} nests lists or mappings too deeply", "write a flatter file") from None
    return _Checker(path, lines, trust_devices).check(data)


def _refuse_aliases(path: Path, text: str) -> None:
    """An alias repeats a node without repeating its text, so a few hundred bytes of them can
    stand for billions of values (a "billion laughs"); a pipeline file has no need for them."""
    for event in yaml.parse(text):
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise UsageError(f"{path.name} line {event.start_mark.line + 1}: YAML anchors and aliases (&name, *name) "
                             "are not supported in a pipeline file", "write each value out where it is used")


def _lines(path: Path, node, prefix: tuple = ()) -> dict[tuple, int]:
    """Line of every key and list item, from yaml's node marks: {("train", "alpha"): 3}.

    A key given twice in one mapping is an error here: YAML would silently keep the last one."""
    if node is None:
        return {}
    lines = {prefix: node.start_mark.line + 1}
    if isinstance(node, yaml.MappingNode):
        seen = {}
        for key, value in node.value:
            name = _norm(key.value)
            if name in seen:
                raise UsageError(f"{path.name} line {key.start_mark.line + 1}: key '{name}' is given twice "
                                 f"(first on line {seen[name]})", "keep one of them")
            seen[name] = key.start_mark.line + 1
            where = prefix + (name,)
            lines.update(_lines(path, value, where))
            lines[where] = key.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            lines.update(_lines(path, item, prefix + (index,)))
    return lines


def _norm(key) -> str:
    return str(key).replace("-", "_")


class _Checker:
    def __init__(self, path: Path, lines: dict, trust_devices: bool = False):
        self.path, self.lines, self.base, self.trust_devices = path, lines, path.parent, trust_devices

    def fail(self, where: tuple, what: str, fix: str):
        line = next((self.lines[where[:i]] for i in range(len(where), -1, -1) if where[:i] in self.lines), 1)
        raise UsageError(f"{self.path.name} line {line}: {what}", fix)

    def mapping(self, value, where: tuple, allowed: list[str], required=()) -> dict:
        name = ".".join(map(str, where)) or "the file"
        if not isinstance(value, dict):
            self.fail(where, f"{name} must be a mapping of keys to values", f"write it as `key: value` lines; keys: {', '.join(allowed)}")
        normalised = {_norm(k): v for k, v in value.items()}
        for key in normalised:
            if key not in allowed:
                self.fail(where + (key,), f"unknown key '{key}' in {name}", f"use one of: {', '.join(allowed)}")
        for key in required:
            if key not in normalised:
                self.fail(where, f"{name} needs `{key}`", f"add `{key}:` to {name}")
        return normalised

    def typed(self, value, where: tuple, annotation: str):
        kinds = [part.strip() for part in annotation.split("|")]
        ok = {
            "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
            "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
            "str": lambda v: isinstance(v, str),
            "bool": lambda v: isinstance(v, bool),
            "None": lambda v: v is None,
            "tuple[str, ...]": lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
        }
        if not any(ok[kind](value) for kind in kinds):
            wanted = " or ".join(TYPE_WORDS[k] for k in kinds)
            self.fail(where, f"{'.'.join(map(str, where))} must be {wanted}, not {value!r}", f"set {where[-1]} to {wanted}")
        if where[-1] in PATH_KEYS and isinstance(value, str) and not (where[-1] == "weights" and value.lower() in ("imagenet", "none")):
            return str((self.base / Path(value).expanduser()).resolve())
        return tuple(value) if isinstance(value, list) else value

    def section(self, value, where: tuple, record, allowed: list[str]) -> dict:
        types = {f.name: f.type for f in dataclasses.fields(record)} if record else {}
        settings = self.mapping(value, where, allowed)
        return {key: self.typed(v, where + (key,), EXTRA_TYPES.get(key) or types[key]) for key, v in settings.items()}

    def build(self, where: tuple, make):
        """Build a config record; its own checks become errors that point at the section."""
        try:
            return make()
        except EdgeclfError as exc:
            self.fail(where, f"{where[0]}: {exc.what}", exc.fix or f"fix {where[0]}")

    def check(self, data) -> PipelineFile:
        top = self.mapping(data if data is not None else {}, (), TOP_KEYS, required=("data", "train", "out"))
        self.trust(top)
        out = Path(self.typed(top["out"], ("out",), "str"))
        devices_file = self.typed(top["devices_file"], ("devices_file",), "str") if "devices_file" in top else None
        data_dirs = {DATA_KEYS[k]: v for k, v in self.section(top["data"], ("data",), None, list(DATA_KEYS)).items()}
        if "data_dir" not in data_dirs:
            self.fail(("data",), "data needs `train`", "add `train: FOLDER` under data")
        for key, record_key in DATA_KEYS.items():
            if record_key in data_dirs and not Path(data_dirs[record_key]).is_dir():
                self.fail(("data", key), f"data.{key} {data_dirs[record_key]} is not a folder", "pass a folder with one subfolder per class")
        trains = self.trains(top["train"], data_dirs, out)
        optimize = None
        if top.get("optimize") is not None:
            optimize = self.section(top["optimize"], ("optimize",), OptimizeConfig, OPTIMIZE_KEYS)
            self.build(("optimize",), lambda: OptimizeConfig(run_dir=str(out / "run"), out=str(out / "optimized"), **optimize))
        exports = self.exports(top.get("exports") or [])
        validate = self.section(top.get("validate") or {}, ("validate",), DeviceOptions, VALIDATE_KEYS)
        delegate = validate.get("delegate", "xnnpack")
        if delegate not in DELEGATES:
            self.fail(("validate", "delegate"), f"validate.delegate {delegate} is not supported", f"choose one of {', '.join(DELEGATES)}")
        options = DeviceOptions(devices_file=devices_file, **{k: v for k, v in validate.items() if k not in ("data", "runs", "warmup", "threads")})
        devices = self.devices(top.get("devices") or [], devices_file)
        if validate.get("data") and not Path(validate["data"]).is_dir():
            self.fail(("validate", "data"), f"validate.data {validate['data']} is not a folder", "pass a folder with one subfolder per class")
        how = self.build(("validate",), lambda: Measure(validate.get("runs", 100), validate.get("warmup", 10),
                                                        validate.get("threads"), options))
        report = self.typed(top.get("report", True), ("report",), "bool")
        bundle = self.bundles(top.get("bundle", False), exports)
        return PipelineFile(self.path, out, trains, optimize, exports, devices, options, how.runs, how.warmup, how.threads,
                            validate.get("data") or trains[0].test_dir, self.lines, report, bundle)

    def trust(self, top: dict) -> None:
        """Refuse TRUSTED_ONLY settings unless the user said to trust this file."""
        if self.trust_devices:
            return
        for where, why in TRUSTED_ONLY.items():
            section = top if len(where) == 1 else top.get(where[0])
            if isinstance(section, dict) and {_norm(k): v for k, v in section.items()}.get(where[-1]) not in (None, False):
                self.fail(where, f"{'.'.join(where)} {why}, and a pipeline file is not trusted by default",
                          f"pass {TRUST_FLAG} if you trust {self.path.name} (or remove {where[-1]})")

    def bundles(self, value, exports: list[Export]) -> tuple[str, ...]:
        """`bundle: true` bundles every export whose format has app code (TFLite); a list names the exports to bundle."""
        with_app = [e.name for e in exports if exporters.get(e.spec.target).app_templates]
        kinds = "/".join(n for n, f in exporters.registry().items() if f.app_templates)
        names = tuple(with_app) if value is True else () if value is False else self.typed(value, ("bundle",), "tuple[str, ...]")
        for name in names:
            if name not in with_app:
                self.fail(("bundle",), f"bundle names '{name}', which is not a {kinds} export of this file (with app code)",
                          f"choose from {', '.join(with_app) or f'(no {kinds} exports)'}, or `bundle: true`")
        return names

    def trains(self, value, data_dirs: dict, out: Path) -> list[TrainConfig]:
        raw = self.mapping(value, ("train",), TRAIN_KEYS)
        archs = raw.get("arch", "mobilenetv2")
        archs = [archs] if isinstance(archs, str) else archs
        if not isinstance(archs, list) or not archs or not all(isinstance(a, str) for a in archs):
            self.fail(("train", "arch"), "train.arch must be a backbone name or a list of them", f"choose from {', '.join(BACKBONES)}")
        archs = [self.build(("train", "arch"), lambda a=a: get_backbone(a)).name for a in archs]
        if len(set(archs)) != len(archs):
            self.fail(("train", "arch"), "train.arch lists a backbone twice", "list each backbone once")
        types = {f.name: f.type for f in dataclasses.fields(TrainConfig)}
        configs = []
        for arch in archs:
            settings = {}
            for key, v in raw.items():
                if key == "arch":
                    continue
                if isinstance(v, dict) and v and all(_norm(k).lower() in BACKBONES for k in v):  # a value per backbone
                    if arch not in {_norm(k).lower() for k in v}:
                        continue
                    v = next(x for k, x in v.items() if _norm(k).lower() == arch)
                settings[key] = self.typed(v, ("train", key), types[key])
            if len(archs) > 1 and not get_backbone(arch).has_alpha:
                settings.pop("alpha", None)
            configs.append(self.build(("train",), lambda arch=arch, s=settings: TrainConfig(
                **data_dirs, out=str(out / arch / "run"), arch=arch, **s)))
        return configs

    def exports(self, value) -> list[Export]:
        if not isinstance(value, list):
            self.fail(("exports",), "exports must be a list", "write each export as `- {target: tflite, quant: int8}`")
        types = {f.name: f.type for f in (*dataclasses.fields(ExportSpec), *dataclasses.fields(BudgetSpec))}
        exports = []
        for index, item in enumerate(value):
            where = ("exports", index)
            settings = self.mapping(item, where, EXPORT_KEYS)
            settings = {k: self.typed(v, where + (k,), EXTRA_TYPES.get(k) or types[k]) for k, v in settings.items()}
            name = settings.pop("name", None)
            limits = {k: settings.pop(k) for k in BUDGET_KEYS if k in settings}
            spec = self.build(where, lambda s=settings: ExportSpec(**s))
            budget = self.build(where, lambda: BudgetSpec(spec, **limits))
            name = name or spec.default_dir_name()
            if not _simple(name) or name in [e.name for e in exports]:
                self.fail(where, f"export name '{name}' is {'taken' if _simple(name) else 'not a simple name'}",
                          "give the export its own `name:` (letters, digits, '-', '_' and '.')")
            exports.append(Export(name, spec, budget if budget.active else None))
        return exports

    def devices(self, value, devices_file: str | None) -> dict:
        """Device name -> Target, groups expanded, each device once, in order."""
        entries = [value] if isinstance(value, str) else value
        if not isinstance(entries, list) or not all(isinstance(e, str) for e in entries):
            self.fail(("devices",), "devices must be a device name or a list of them", "e.g. devices: [local, ssh://pi@raspberrypi.local]")
        devices = {}
        for index, entry in enumerate(entries):
            where = ("devices", index) if not isinstance(value, str) else ("devices",)
            for name in self.build(where, lambda e=entry: expand_devices([e], devices_file)):
                if name not in devices:
                    devices[name] = self.build(where, lambda n=name: parse_target(n, devices_file))
        return devices


def _simple(name: str) -> bool:
    return bool(name) and all(c.isalnum() or c in "-_." for c in name) and not name.startswith(".")
