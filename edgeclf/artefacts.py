"""Artefact directories and their manifest.json: what was made, from what, and how well it does."""
from __future__ import annotations

import gzip
import hashlib
import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from edgeclf import console
from edgeclf.errors import ModelError

MANIFEST_FILE = "manifest.json"
MANIFEST_FORMAT = 1
MODEL_SUFFIXES = (".tflite", ".onnx", ".xml")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


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
            try:
                manifest = json.loads(manifest_path.read_text())
            except json.JSONDecodeError as exc:
                raise ModelError(f"{manifest_path} is not valid JSON ({exc})", "re-run `edgeclf export`") from exc
            model = path / manifest["model_file"]
            if not model.is_file():
                raise ModelError(f"{model} is missing from the export directory", "re-run `edgeclf export`")
            return cls(model, manifest)
        if not path.is_file():
            raise ModelError(f"{path} does not exist", "pass an export directory or a .tflite/.onnx/.xml file")
        if path.suffix.lower() not in MODEL_SUFFIXES:
            raise ModelError(f"{path} is not a .tflite, .onnx or .xml model", "pass an export directory or a model file")
        return cls(path, None)

    @cached_property
    def labels(self) -> list[str] | None:
        return list(self.manifest["labels"]) if self.manifest else None

    @property
    def img_size(self) -> int | None:
        return int(self.manifest["input"]["shape"][1]) if self.manifest else None
