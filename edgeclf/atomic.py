"""Output directories appear only when complete: work in a temp sibling, rename on success.

The overwrite rule, for every command that writes a directory (see check_output): edgeclf
replaces only a directory it wrote itself and recognises by its marker file, only when asked,
and never a directory that holds (or sits inside) the command's inputs.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Iterable

from edgeclf.errors import UsageError

# Our staging names: `.NAME.tmp-1a2b3c4d` (being built) and `.NAME.old-1a2b3c4d` (being replaced).
STAGING_NAME = re.compile(r"\.(?P<name>.+)\.(?P<kind>tmp|old)-[0-9a-f]{8}")
STALE_AFTER_S = 60  # an unlocked staging dir this old belongs to a process that was killed
DEMO_MARKER = ".edgeclf-demo"  # the marker of an `edgeclf demo` folder (runs and artefacts have their own)
MARKER_KINDS = {"run.json": "run", "manifest.json": "artefact", "bench.json": "bench folder", DEMO_MARKER: "demo folder"}


def overlaps(a: Path, b: Path) -> bool:
    """True if two folders are the same or one is inside the other."""
    a, b = Path(a).expanduser().resolve(), Path(b).expanduser().resolve()
    return a == b or a in b.parents or b in a.parents


def check_output(target: Path, marker: str, overwrite: bool, inputs: Iterable = (), input_runs: Iterable = (),
                 flag: str = "--overwrite") -> None:
    """Refuse an output that could destroy something, with one line saying what to change.

    `marker` is the file by which edgeclf recognises a directory of this kind it wrote (run.json,
    manifest.json, ...). `inputs` are folders the command reads (images): the output may be
    neither inside them (it would become data) nor around them. `input_runs` may hold outputs
    (exports/, bench/) but must never be replaced.
    """
    resolved = Path(target).expanduser().resolve()
    data = [Path(p).expanduser().resolve() for p in inputs if p is not None]
    runs = [Path(p).expanduser().resolve() for p in input_runs if p is not None]
    for folder in data + runs:
        if resolved == folder:
            raise UsageError(f"{target} is the input {folder}", "choose a separate output folder")
        if resolved in folder.parents:
            raise UsageError(f"{target} contains the input {folder}", "choose an output folder outside the inputs")
    for folder in data:
        if folder in resolved.parents:
            raise UsageError(f"{target} is inside the input folder {folder}", "choose an output folder outside it")
    check_replaceable(Path(target), marker, overwrite, flag)


def check_replaceable(target: Path, marker: str, overwrite: bool, flag: str = "--overwrite") -> None:
    """An existing target may be replaced only if it is empty, or ours (has `marker`) and overwrite is set."""
    if not target.exists() and not target.is_symlink():
        return
    if target.is_symlink():
        raise UsageError(f"{target} is a symbolic link", "choose an output path that is a plain folder or does not exist")
    if not target.is_dir():
        raise UsageError(f"{target} exists and is not a directory", "choose another output path")
    if not any(target.iterdir()):
        return
    kind = MARKER_KINDS.get(marker, "output")
    if not (target / marker).is_file():
        raise UsageError(f"{target} is not an edgeclf {kind} (no {marker}) and edgeclf replaces only folders it wrote",
                         "choose a new output folder")
    if not overwrite:
        raise UsageError(f"{target} already exists", f"choose another output path, or pass {flag}")


def publish(staging: Path, target: Path, marker: str, overwrite: bool) -> None:
    """Move a finished staging dir into place; an existing target is replaced only now, on success."""
    check_replaceable(target, marker, overwrite)  # again: the target may have appeared meanwhile
    if target.exists():
        old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(target, old)
        os.replace(staging, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, target)


@contextlib.contextmanager
def staged_dir(target: Path, marker: str, overwrite: bool = False, inputs: Iterable = (), input_runs: Iterable = ()):
    """Yield a temp dir beside `target`; it becomes `target` only if the block finishes.

    The staging dir is locked while this process lives, so that a later writer can tell a
    staging dir whose process was killed (unlocked) and sweep it.
    """
    target = Path(target)
    check_output(target, marker, overwrite, inputs, input_runs)
    target.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale_staging(target.parent)
    staging = target.with_name(f".{target.name}.tmp-{uuid.uuid4().hex[:8]}")
    staging.mkdir()
    lock = _lock(staging)
    try:
        try:
            yield staging
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        try:
            publish(staging, target, marker, overwrite)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    finally:
        os.close(lock)


def _lock(folder: Path) -> int:
    fd = os.open(folder, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return fd


def sweep_stale_staging(parent: Path) -> list[Path]:
    """Remove staging dirs of our exact naming left by killed processes (unlocked, not brand new).

    A `.NAME.old-*` dir is removed only once NAME exists again, i.e. after its replacement
    was published; otherwise it may be the only copy left.
    """
    removed = []
    for path in Path(parent).iterdir() if Path(parent).is_dir() else ():
        match = STAGING_NAME.fullmatch(path.name)
        if not match or path.is_symlink() or not path.is_dir():
            continue
        if match["kind"] == "old" and not (path.parent / match["name"]).exists():
            continue
        with contextlib.suppress(OSError):
            if time.time() - path.stat().st_mtime < STALE_AFTER_S:
                continue
            fd = os.open(path, os.O_RDONLY)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # fails while its process holds it
            except OSError:
                os.close(fd)
                continue
            try:
                shutil.rmtree(path)
                removed.append(path)
            finally:
                os.close(fd)
    return removed


@contextlib.contextmanager
def temp_files_in(folder: Path):
    """Point Python's tempfile (and so TensorFlow's and ONNX's temp dirs) into `folder` for the block,
    so that an interrupted conversion leaves them inside our staging dir, not in /tmp."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    previous = tempfile.tempdir
    tempfile.tempdir = str(folder)
    try:
        yield folder
    finally:
        tempfile.tempdir = previous
        shutil.rmtree(folder, ignore_errors=True)


def write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.write_text(text)
    os.replace(tmp, path)
