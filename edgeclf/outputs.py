"""The output rule, one place for every command that writes a path the user gave it
(train, optimize, export, budget, bench, report, bundle, check-bundle, demo, run):

1. edgeclf writes and replaces only regular files and folders. A symbolic link, device node,
   FIFO or socket at the output path is refused; the path is checked with lstat, never followed.
2. An existing output is replaced only if edgeclf wrote it, as its content says (the kind's
   marker file carries a format key only edgeclf writes, e.g. `"format": "edgeclf.run/1"`),
   and only when asked (--overwrite; a default location inside a run replaces its own).
   A file merely named like a marker (an empty bundle.json, someone else's pipeline.json) is not ours.
3. An output is never the same as, inside, or around one of the command's input folders.

Anything else is a one-line UsageError saying what to change. atomic.py does the writing.
"""
from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from edgeclf import records
from edgeclf.errors import UsageError

TAG_BYTES = 4096  # a text marker's tag is in its first bytes


@dataclass(frozen=True)
class Kind:
    marker: str  # the file that says what a folder (or file) is
    label: str  # how messages name it
    record: str | None = None  # JSON markers: the record kind (records.py), e.g. "run"
    tag: str | None = None  # text markers: a string in their first bytes

    @property
    def key(self) -> str:
        return records.key(self.record)

    @property
    def format(self) -> str:
        """The tag this edgeclf writes; any version of the same kind is recognised as ours."""
        return records.tag(self.record) if self.record in records.KINDS else f"edgeclf.{self.record}/1"

    def stamp(self) -> dict:
        """What a writer puts into the marker record to make it recognisably ours."""
        return {self.key: self.format}


REPORT_TAG = "<meta name='generator' content='edgeclf report'>"
DEMO_TAG = "written by `edgeclf demo`"
RUN = Kind("run.json", "run", record="run")
ARTEFACT = Kind("manifest.json", "artefact", record="manifest")
BENCH = Kind("bench.json", "bench folder", record="bench")
BUNDLE = Kind("bundle.json", "bundle", record="bundle")
PIPELINE = Kind("pipeline.json", "`edgeclf run` folder", record="pipeline")
COMPARE = Kind("compare.json", "comparison", record="compare")
RESULT = Kind("result.json", "validation result", record="result")  # its "format" is the model's: tagged under "record"
BUDGET_REPORT = Kind("budget-report.json", "budget report", record="budget-report")
AUDIT = Kind("audit.json", "audit folder", record="audit")
DEMO = Kind(".edgeclf-demo", "demo folder", tag=DEMO_TAG)
REPORT = Kind("report.html", "report", tag=REPORT_TAG)
KINDS = {k.marker: k for k in (RUN, ARTEFACT, BENCH, BUNDLE, PIPELINE, COMPARE, RESULT, BUDGET_REPORT, AUDIT, DEMO, REPORT)}


def kind_of(marker: str | Kind) -> Kind:
    return marker if isinstance(marker, Kind) else KINDS[marker]


# -- recognising our own files by content ------------------------------------------------
def carries_format(content: bytes, kind: Kind | str) -> bool:
    """True if `content` is what edgeclf writes as this kind's marker."""
    kind = kind_of(kind)
    if kind.tag is not None:
        return kind.tag in content[:TAG_BYTES].decode("utf-8", "replace")
    try:
        record = json.loads(content)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return False
    if not isinstance(record, dict):
        return False
    value = record.get(kind.key)
    if isinstance(value, str) and value.startswith(f"edgeclf.{kind.record}/") and value.rpartition("/")[2].isdigit():
        return True
    return kind.key == "format" and record.get("format", 1) == 1 and _names_edgeclf(record)  # written before formats were tagged


def _names_edgeclf(record: dict) -> bool:
    """Older edgeclf records say which edgeclf version wrote them."""
    versions = record.get("versions")
    return (isinstance(versions, dict) and isinstance(versions.get("edgeclf"), str)
            or isinstance(record.get("edgeclf"), str) and isinstance(record.get("stages"), list)
            or str(record.get("created_by", "")).startswith("edgeclf "))


def is_plain_mode(mode: int) -> bool:
    """A regular file or a folder: the only things edgeclf writes (an archive member's mode included)."""
    return stat.S_ISREG(mode) or stat.S_ISDIR(mode)


def is_regular(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def is_ours(path: Path, kind: Kind | str) -> bool:
    """True if `path` is a regular file (not a link) that edgeclf wrote as this kind's marker."""
    kind = kind_of(kind)
    if not is_regular(path):
        return False
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        with os.fdopen(fd, "rb") as f:
            content = f.read(TAG_BYTES) if kind.tag is not None else f.read()
    except OSError:
        return False
    return carries_format(content, kind)


def is_our_folder(folder: Path, kind: Kind | str) -> bool:
    folder = Path(folder)
    return _mode(folder) is not None and stat.S_ISDIR(_mode(folder)) and is_ours(folder / kind_of(kind).marker, kind)


# -- the checks ---------------------------------------------------------------------------
def absolute(path) -> Path:
    """An absolute path whose last component is not followed (it may be a link we must refuse)."""
    path = Path(path).expanduser()
    return path.parent.resolve() / path.name if path.name else path.resolve()


def overlaps(a: Path, b: Path) -> bool:
    """True if two folders are the same or one is inside the other."""
    a, b = Path(a).expanduser().resolve(), Path(b).expanduser().resolve()
    return a == b or a in b.parents or b in a.parents


def check_not_in_inputs(target: Path, inputs: Iterable = (), input_runs: Iterable = ()) -> None:
    """`inputs` are folders the command reads (images): an output is neither inside them (it would
    become data) nor around them. `input_runs` may hold outputs (exports/, bench/) but are never replaced."""
    resolved = Path(target).expanduser().resolve()
    data = [Path(p).expanduser().resolve() for p in inputs if p]
    runs = [Path(p).expanduser().resolve() for p in input_runs if p]
    for folder in data + runs:
        if resolved == folder:
            raise UsageError(f"{target} is the input {folder}", "choose a separate output folder")
        if resolved in folder.parents:
            raise UsageError(f"{target} contains the input {folder}", "choose an output folder outside the inputs")
    for folder in data:
        if folder in resolved.parents:
            raise UsageError(f"{target} is inside the input folder {folder}", "choose an output folder outside it")


def check_output(target: Path, marker: str | Kind, overwrite: bool, inputs: Iterable = (), input_runs: Iterable = (),
                 flag: str = "--overwrite") -> None:
    """The rule for an output folder; one line saying what to change when it is refused."""
    check_not_in_inputs(target, inputs, input_runs)
    check_replaceable(Path(target), marker, overwrite, flag)


def check_replaceable(target: Path, marker: str | Kind, overwrite: bool, flag: str = "--overwrite") -> None:
    """An existing folder may be replaced only if it is empty, or ours and overwrite is set."""
    kind = kind_of(marker)
    mode = _mode(target)
    if mode is None:
        return
    _refuse_special(target, mode, "a plain folder")
    if not stat.S_ISDIR(mode):
        raise UsageError(f"{target} exists and is not a directory", "choose another output path")
    if not any(target.iterdir()):
        return
    if not is_ours(target / kind.marker, kind):
        raise UsageError(f"{target} is not an edgeclf {kind.label} (no {kind.marker} written by edgeclf) and edgeclf "
                         "replaces only folders it wrote", "choose a new output folder")
    if not overwrite:
        raise UsageError(f"{target} already exists", f"choose another output path, or pass {flag}")


def check_file_output(target: Path, kind: Kind | str, overwrite: bool, inputs: Iterable = (),
                      flag: str = "--overwrite", ours=None) -> None:
    """The rule for an output file: new, or a regular file edgeclf wrote (and overwrite is set).
    `ours(path)` recognises files that are not the marker itself (a bundle's zip)."""
    kind = kind_of(kind)
    check_not_in_inputs(target, inputs)
    mode = _mode(target)
    if mode is None:
        return
    _refuse_special(target, mode, "a regular file")
    if stat.S_ISDIR(mode):
        raise UsageError(f"{target} is a directory", f"give a file name, e.g. {Path(target) / Path(kind.marker).name}")
    if not (ours or (lambda path: is_ours(path, kind)))(target):
        raise UsageError(f"{target} exists and is not an edgeclf {kind.label}",
                         "choose another output path; edgeclf replaces only files it wrote")
    if not overwrite:
        raise UsageError(f"{target} already exists", f"choose another output path, or pass {flag}")


def _mode(path: Path) -> int | None:
    try:
        return os.lstat(path).st_mode
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise UsageError(f"{path} cannot be checked ({exc.strerror})", "choose another output path") from exc


def _refuse_special(target: Path, mode: int, wanted: str) -> None:
    if stat.S_ISLNK(mode):
        raise UsageError(f"{target} is a symbolic link and edgeclf writes only regular files and folders",
                         f"choose an output path that is {wanted} or does not exist")
    if not is_plain_mode(mode):
        what = "FIFO" if stat.S_ISFIFO(mode) else "socket" if stat.S_ISSOCK(mode) else "device"
        raise UsageError(f"{target} is a {what}, and edgeclf writes only regular files and folders",
                         f"choose an output path that is {wanted} or does not exist")
