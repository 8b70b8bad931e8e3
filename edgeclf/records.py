"""The JSON records edgeclf writes, each naming its kind and version (`"format": "edgeclf.manifest/2"`).

Every kind has a JSON Schema (draft 2020-12) in edgeclf/schemas/, published as docs/schemas/,
so that app teams and CI scripts can check an artefact without edgeclf. Readers accept the
versions up to this edgeclf's (a record from before versions were written has none) and refuse
a newer one in one line rather than misread it.
"""
from __future__ import annotations

import json
import re
from importlib import resources
from pathlib import Path

from edgeclf.errors import EdgeclfError, ModelError

# kind -> (current version, the file it is written to)
KINDS = {
    "manifest": (2, "manifest.json"),  # 1 was written as "format": 1
    "run": (2, "run.json"),  # 1 was written as "format": 1
    "bench": (1, "bench.json"),
    "result": (1, "result.json"),
    "golden": (1, "golden.json"),
    "pipeline": (1, "pipeline.json"),
    "audit": (1, "audit.json"),
}
# A measurement's "format" already names the model format (tflite, onnx, ...), as `validate --json` prints it.
TAG_KEY = {"result": "record"}
TAG = re.compile(r"edgeclf\.([a-z]+)/([0-9]+)")


class RecordError(EdgeclfError):
    """A record edgeclf cannot read: another kind, a newer version, or one that breaks its schema."""


def key(kind: str) -> str:
    return TAG_KEY.get(kind, "format")


def tag(kind: str) -> str:
    """What a writer puts under `key(kind)`: e.g. "edgeclf.manifest/2"."""
    return f"edgeclf.{kind}/{KINDS[kind][0]}"


def stamped(kind: str, record: dict) -> dict:
    """`record` as written: its kind and version first."""
    return {key(kind): tag(kind)} | {k: v for k, v in record.items() if k != key(kind)}


def version(record: dict, kind: str, source) -> int:
    """The record's version (0 before versions were written); another kind or a newer version is refused."""
    value = record.get(key(kind)) if isinstance(record, dict) else None
    if value is None:
        return 0
    current = KINDS[kind][0]
    if isinstance(value, int) and not isinstance(value, bool) and value == 1 and current == 2:
        return 1  # manifest and run.json before the tags
    match = TAG.fullmatch(value) if isinstance(value, str) else None
    if match is None or match[1] != kind:
        raise RecordError(f"{source} is not an edgeclf {kind} record ({key(kind)} {value!r})",
                          f"pass the {KINDS[kind][1]} edgeclf wrote")
    if int(match[2]) > current:
        raise RecordError(f"{source} was written by a newer edgeclf ({value}; this one reads up to {tag(kind)})",
                          "upgrade edgeclf (pip install -U edgeclf)")
    return int(match[2])


def read(path: Path, kind: str, fix: str):
    """The JSON in `path` (any type: the reader checks its keys), a newer version refused; `fix` says how to remake it."""
    try:
        data = json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelError(f"{path} is not valid JSON ({exc})", fix) from exc
    if isinstance(data, dict):
        version(data, kind, path)
    return data


def schema(kind: str) -> dict:
    return json.loads(resources.files("edgeclf.schemas").joinpath(f"{kind}.schema.json").read_text())


def schema_files() -> dict[str, str]:
    """file name -> text of every shipped schema (docs/schemas/ holds the same files)."""
    folder = resources.files("edgeclf.schemas")
    return {f"{kind}.schema.json": folder.joinpath(f"{kind}.schema.json").read_text() for kind in KINDS}


def problems(record, kind: str) -> list[str]:
    """Every place where `record` breaks its schema, as "where: what" lines (none when it is valid)."""
    from jsonschema import Draft202012Validator
    from referencing import Registry, Resource

    # bench.schema.json refers to result.schema.json by file name, as a validator given the folder resolves it
    registry = Registry().with_resources(
        (name, Resource.from_contents(json.loads(text))) for name, text in schema_files().items())
    validator = Draft202012Validator(schema(kind), registry=registry)
    return [f"{'/'.join(str(p) for p in error.absolute_path) or '(top)'}: {error.message}"
            for error in sorted(validator.iter_errors(record), key=lambda e: list(map(str, e.absolute_path)))]


def check(path: Path, kind: str | None = None) -> str:
    """Validate a record file against its schema (kind from the file name unless given); returns the kind."""
    path = Path(path)
    kind = kind or next((k for k, (_, name) in KINDS.items() if name == path.name), None)
    if kind is None:
        raise RecordError(f"{path} is not a file name edgeclf writes a record to",
                          f"name the kind: one of {', '.join(KINDS)}")
    found = problems(json.loads(path.read_text()), kind)
    if found:
        raise RecordError(f"{path} breaks {kind}.schema.json: {'; '.join(found)}")
    return kind
