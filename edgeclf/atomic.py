"""Outputs appear only when complete: work in a temp sibling, rename on success.

What may be written or replaced where is the output rule in outputs.py; every writer here
checks it before it starts and again just before the rename.
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

from edgeclf.outputs import DEMO, check_file_output, check_output, check_replaceable, overlaps  # noqa: F401 (the rule)

# Our staging names: `.NAME.tmp-1a2b3c4d` (being built) and `.NAME.old-1a2b3c4d` (being replaced).
STAGING_NAME = re.compile(r"\.(?P<name>.+)\.(?P<kind>tmp|old)-[0-9a-f]{8}")
STALE_AFTER_S = 60  # an unlocked staging dir this old belongs to a process that was killed
DEMO_MARKER = DEMO.marker  # the marker of an `edgeclf demo` folder (runs and artefacts have their own)


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


def publish_file(path: Path, text: str, marker, overwrite: bool, inputs: Iterable = ()) -> None:
    """Write a user-named output file under the output rule: checked, written beside it, renamed."""
    path = Path(path)
    check_file_output(path, marker, overwrite, inputs)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        tmp.write_text(text)
        check_file_output(path, marker, overwrite, inputs)  # again: something may have appeared meanwhile
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
