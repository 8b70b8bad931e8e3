"""A zipped bundle: found by its content (not its file name), unpacked within fixed bounds.

A browser saves a second download as `handoff (1).zip`, so the zip's own name says nothing;
the bundle is the one folder in it holding bundle.json (or the zip's top level). Extraction
refuses members outside that folder, links and special files (the output rule: regular files
and folders only), more than MAX_MEMBERS members or more than MAX_BYTES
unpacked (checked against the sizes the zip declares, and again while writing).
"""
from __future__ import annotations

import stat
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from edgeclf.bundle import BUNDLE_FILE, BundleError
from edgeclf.outputs import is_plain_mode

MAX_MEMBERS = 20_000
MAX_BYTES = 1 << 30  # 1 GiB: far above any model plus golden vectors edgeclf writes
REMAKE = "re-create it with `edgeclf bundle`"


def bundle_root(zipped: zipfile.ZipFile) -> str | None:
    """The folder prefix ("name/" or "") that holds bundle.json, or None if it is not a bundle."""
    names = [n for n in zipped.namelist() if not n.endswith("/")]
    if BUNDLE_FILE in names:
        return ""
    tops = {PurePosixPath(n).parts[0] for n in names if PurePosixPath(n).parts}
    if len(tops) == 1 and f"{next(iter(tops))}/{BUNDLE_FILE}" in names:
        return f"{next(iter(tops))}/"
    return None


def _member_path(name: str, root: str, zip_path: Path) -> PurePosixPath | None:
    """The member's path inside the bundle folder; refused if it would land anywhere else."""
    pure = PurePosixPath(name)
    # A backslash is a plain character here (a model may be named so), but a separator where the
    # bundle may be unpacked again (Windows): a `..` or a drive either way is refused.
    windows_parts = name.replace("\\", "/").split("/")
    if name.startswith(("/", "\\")) or ".." in windows_parts or (pure.parts and ":" in pure.parts[0]) \
            or not name.startswith(root):
        raise BundleError(f"{zip_path} holds {name!r}, which is outside the bundle folder {root or '(top level)'}", REMAKE)
    inside = PurePosixPath(name[len(root):])
    return None if name.endswith("/") or not inside.parts else inside


def extract(zip_path: Path, work: Path) -> Path:
    """Unpack the bundle in `zip_path` into `work`; returns the bundle folder."""
    try:
        with zipfile.ZipFile(zip_path) as zipped:
            root = bundle_root(zipped)
            if root is None:
                raise BundleError(f"{zip_path} holds no {BUNDLE_FILE} (at its top level or in its one folder)",
                                  "pass a folder or .zip written by `edgeclf bundle`")
            infos = zipped.infolist()
            if len(infos) > MAX_MEMBERS:
                raise BundleError(f"{zip_path} has {len(infos)} members; a bundle has at most {MAX_MEMBERS}", REMAKE)
            for info in infos:
                mode = info.external_attr >> 16
                if stat.S_IFMT(mode) and not is_plain_mode(mode):
                    raise BundleError(f"{zip_path} holds {info.filename!r}, which is a link or special file, "
                                      "not a regular file", REMAKE)
            declared = sum(info.file_size for info in infos)
            if declared > MAX_BYTES:
                raise BundleError(f"{zip_path} would unpack to {declared / 2**20:.0f} MiB; a bundle is at most "
                                  f"{MAX_BYTES / 2**20:.0f} MiB", REMAKE)
            folder = work / "bundle"
            folder.mkdir()
            seen = set()
            budget = MAX_BYTES
            for info in infos:
                inside = _member_path(info.filename, root, zip_path)
                if inside is None:
                    continue
                if inside in seen:
                    raise BundleError(f"{zip_path} holds {info.filename!r} twice", REMAKE)
                seen.add(inside)
                target = folder.joinpath(*inside.parts)
                target.parent.mkdir(parents=True, exist_ok=True)
                with zipped.open(info) as source, open(target, "xb") as sink:
                    budget -= _copy_bounded(source, sink, budget, zip_path)
            return folder
    except (zipfile.BadZipFile, zlib.error, RuntimeError, NotImplementedError, EOFError) as exc:
        raise BundleError(f"{zip_path} is a damaged or unsupported zip ({exc})", REMAKE) from exc


def _copy_bounded(source, sink, budget: int, zip_path: Path) -> int:
    written = 0
    while block := source.read(1 << 20):
        written += len(block)
        if written > budget:
            raise BundleError(f"{zip_path} unpacks to more than it declares, beyond {MAX_BYTES / 2**20:.0f} MiB", REMAKE)
        sink.write(block)
    return written

