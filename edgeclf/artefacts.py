"""Artefact directories and their manifest.json: what was made, from what, and how well it does."""
from __future__ import annotations

import gzip
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from edgeclf import console, exporters, records
from edgeclf.errors import ModelError
from edgeclf.layout import is_image_shape, sha256_file

MANIFEST_FILE = "manifest.json"
MANIFEST_FORMAT = records.tag("manifest")


def gzip_size(path: Path) -> int:
    """Size after `gzip -9`: what an over-the-air update or an app download actually carries
    (and where the zeros of a pruned model pay off)."""
    return len(gzip.compress(path.read_bytes(), compresslevel=9, mtime=0))


def file_entries(directory: Path) -> dict[str, dict]:
    """sha256, size and gzip size of every file in an artefact directory except the manifest itself."""
    return {
        str(p.relative_to(directory)): {"sha256": sha256_file(p), "bytes": p.stat().st_size, "gzip_bytes": gzip_size(p)}
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.name != MANIFEST_FILE
    }


def write_manifest(directory: Path, manifest: dict) -> None:
    (directory / MANIFEST_FILE).write_text(console.to_json(manifest) + "\n")


def read_manifest(path: Path) -> dict:
    """A manifest.json, checked for the keys every reader relies on."""
    manifest = records.read(path, "manifest", "re-run `edgeclf export`")
    problem = None
    if not isinstance(manifest, dict):
        problem = f"holds a JSON {type(manifest).__name__}, not an object"
    elif not isinstance(manifest.get("model_file"), str):
        problem = "has no model_file"
    elif not isinstance(manifest.get("labels"), list) or not all(isinstance(label, str) for label in manifest["labels"]):
        problem = "has no labels list"
    elif not is_image_shape((manifest.get("input") or {}).get("shape") if isinstance(manifest.get("input"), dict) else None):
        problem = "has no input.shape [1, H, W, C]"
    if problem:
        raise ModelError(f"{path} {problem}", "re-run `edgeclf export` to write a complete artefact")
    return manifest


def model_in_folder(folder: Path, name: str, manifest_path: Path) -> Path:
    """The manifest's model file, refused if it (or OpenVINO's .bin beside it) lies outside the folder.

    A manifest from someone else must not make us read, or push to a device, an arbitrary file.
    """
    relative = Path(name)
    model = folder / relative
    if relative.is_absolute() or ".." in relative.parts or relative.suffix.lower() not in exporters.suffixes():
        raise ModelError(f"{manifest_path} names model_file {name!r}",
                         f"model_file must be a {'/'.join(exporters.suffixes())} file inside the export directory")
    root = folder.resolve()
    for file in [model, *exporters.for_path(model).companions(model)]:
        if file.exists() and not file.resolve().is_relative_to(root):
            raise ModelError(f"{file} leads outside {folder} (a symlink)",
                             "keep the model files themselves inside the export directory")
    return model


@dataclass
class Artefact:
    """An export directory (with manifest) or a bare model file."""

    model_path: Path
    manifest: dict | None

    @classmethod
    def open(cls, path) -> "Artefact":
        path = Path(path)
        if path.is_dir():
            manifest_path = path / MANIFEST_FILE
            if not manifest_path.is_file():
                raise ModelError(f"{path} has no {MANIFEST_FILE}", "pass an export directory from `edgeclf export`, or a model file")
            manifest = read_manifest(manifest_path)
            model = model_in_folder(path, manifest["model_file"], manifest_path)
            if not model.is_file():
                raise ModelError(f"{model} is missing from the export directory", "re-run `edgeclf export`")
            return cls(model, manifest)
        if not path.is_file():
            raise ModelError(f"{path} does not exist", f"pass an export directory or a {'/'.join(exporters.suffixes())} file")
        exporters.for_path(path)  # refuses a file no format reads
        return cls(path, None)

    @property
    def format(self) -> exporters.Format:
        return exporters.for_path(self.model_path)

    @cached_property
    def labels(self) -> list[str] | None:
        return list(self.manifest["labels"]) if self.manifest else None

    @property
    def resize(self) -> str:
        """The resize kernel of the run it was exported from (pipeline/resize.py; older manifests: the default)."""
        from edgeclf.pipeline.resize import DEFAULT

        return ((self.manifest or {}).get("resize") or {}).get("name", DEFAULT)

    @property
    def img_size(self) -> int | None:
        return int(self.manifest["input"]["shape"][1]) if self.manifest else None
