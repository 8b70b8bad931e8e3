"""Output directories appear only when complete: work in a temp sibling, rename on success."""
from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from pathlib import Path

from edgeclf.errors import UsageError


def check_target_free(target: Path, overwrite: bool, flag: str = "--overwrite") -> None:
    if target.exists() and not overwrite:
        raise UsageError(f"{target} already exists", f"choose another output path, or pass {flag}")
    if target.exists() and not target.is_dir():
        raise UsageError(f"{target} exists and is not a directory", "choose another output path")


def publish(staging: Path, target: Path, overwrite: bool) -> None:
    """Move a finished staging dir into place; an existing target is replaced only now, on success."""
    check_target_free(target, overwrite)
    if target.exists():
        old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(target, old)
        os.replace(staging, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, target)


@contextlib.contextmanager
def staged_dir(target: Path, overwrite: bool = False):
    """Yield a temp dir beside `target`; it becomes `target` only if the block finishes."""
    target = Path(target)
    check_target_free(target, overwrite)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(f".{target.name}.tmp-{uuid.uuid4().hex[:8]}")
    staging.mkdir()
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    publish(staging, target, overwrite)


def write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.write_text(text)
    os.replace(tmp, path)
