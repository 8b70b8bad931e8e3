"""The records edgeclf writes have published schemas and versions; a newer record is refused in one line.

That every record written in the suite validates is checked where it is written (`check_records`
in test_train, test_export, test_devices, test_pipeline, test_bundle).
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

from edgeclf import records
from edgeclf.errors import EdgeclfError

REPO = Path(__file__).resolve().parent.parent


def test_published_schemas_are_the_shipped_ones():
    published = {p.name: p.read_text() for p in (REPO / "docs" / "schemas").glob("*.schema.json")}
    assert published == records.schema_files(), "run `python tools/publish_schemas.py`"


@pytest.mark.parametrize("kind", list(records.KINDS))
def test_each_schema_is_draft_2020_12_and_names_the_current_version(kind):
    schema = records.schema(kind)
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["properties"][records.key(kind)] == {"const": records.tag(kind)}
    assert records.problems({records.key(kind): records.tag(kind)}, kind)  # the required keys are required


def test_older_versions_are_read_and_newer_ones_refused():
    assert records.version({}, "bench", "b.json") == 0  # written before records carried a version
    assert records.version({"format": 1}, "manifest", "m.json") == 1  # the integer of version 1
    assert records.version({"format": 1}, "run", "run.json") == 1
    assert records.version({"format": "edgeclf.run/2"}, "run", "run.json") == 2
    assert records.version({"format": "tflite", "record": "edgeclf.result/1"}, "result", "r.json") == 1
    with pytest.raises(records.RecordError, match=r"^m.json was written by a newer edgeclf \(edgeclf.manifest/3; "
                                                  r"this one reads up to edgeclf.manifest/2\) \(upgrade edgeclf"):
        records.version({"format": "edgeclf.manifest/3"}, "manifest", "m.json")
    with pytest.raises(records.RecordError, match=r"is not an edgeclf manifest record \(format 'edgeclf.run/2'\)"):
        records.version({"format": "edgeclf.run/2"}, "manifest", "m.json")
    with pytest.raises(records.RecordError, match="not an edgeclf golden record"):
        records.version({"format": 2}, "golden", "golden.json")
    assert issubclass(records.RecordError, EdgeclfError)


def _one_line_error(*args) -> str:
    proc = subprocess.run([sys.executable, "-m", "edgeclf", *map(str, args)], capture_output=True, text=True, timeout=300)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


def test_cli_refuses_a_newer_manifest_and_run_in_one_line(tmp_path):
    artefact = tmp_path / "export"
    artefact.mkdir()
    (artefact / "model.tflite").write_bytes(b"not read")
    (artefact / "manifest.json").write_text(json.dumps({
        "format": "edgeclf.manifest/9", "model_file": "model.tflite", "labels": ["a", "b"], "input": {"shape": [1, 8, 8, 3]}}))
    assert "manifest.json was written by a newer edgeclf (edgeclf.manifest/9;" in _one_line_error("inspect", artefact)

    run = tmp_path / "run"
    run.mkdir()
    (run / "model.keras").write_bytes(b"not read")
    (run / "labels.txt").write_text("a\nb\n")
    (run / "run.json").write_text(json.dumps({"format": "edgeclf.run/3", "config": {"arch": "mobilenetv2", "seed": 1}}))
    assert "run.json was written by a newer edgeclf (edgeclf.run/3;" in _one_line_error("export", run, "--out", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_newer_pipeline_state_is_not_overwritten(tmp_path):
    from edgeclf.jobs.run import _previous

    (tmp_path / "pipeline.json").write_text(json.dumps({"format": "edgeclf.pipeline/2", "stages": []}))
    with pytest.raises(records.RecordError, match=r"pipeline.json was written by a newer edgeclf \(edgeclf.pipeline/2;"):
        _previous(tmp_path)
    older = {"edgeclf": "0.2.0", "stages": [{"name": "train", "status": "ran"}]}  # before versions: known by its edgeclf key
    (tmp_path / "pipeline.json").write_text(json.dumps(older))
    assert _previous(tmp_path) == {"train": {"name": "train", "status": "ran"}}


def test_check_names_every_problem_of_a_record(tmp_path):
    path = tmp_path / "golden.json"
    path.write_text(json.dumps({"format": "edgeclf.golden/1", "count": 0, "labels": "a"}))
    with pytest.raises(records.RecordError) as caught:
        records.check(path)
    message = str(caught.value)
    assert "count: 0 is less than the minimum of 1" in message and "labels: 'a' is not of type 'array'" in message
    assert "'vectors' is a required property" in message and "\n" not in message
