"""A format is one record: a throw-away format registered here, in the test only, is exported,
inspected and validated on the local device, and held to an accuracy budget by the recipes it
declares, with no other file of edgeclf touched; what it declares it cannot do (a hand-off
bundle) is refused in its own words."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgeclf import exporters
from edgeclf.cli.main import cli
from edgeclf.exporters.base import ExportOutput
from edgeclf.exporters.recipes import Budget, Step

# The fake model: each class is the index of one RGB channel; the runtime scores an image by
# its mean channel values. The tiny run's classes are red, green and blue, so it is accurate.
RUNTIME = '''
import json, time
import numpy as np

class Model:
    def __init__(self, path, threads=None):
        started = time.perf_counter()
        with open(path) as f:
            self.channels = json.load(f)["channel_of_class"]
        self.runtime, self.runtime_version = "fake-runtime", "0.1"
        self.init_ms = (time.perf_counter() - started) * 1000
        self.input_shape = [1, 32, 32, 3]

    def invoke(self, pixels):
        means = pixels.astype(np.float32).mean(axis=(0, 1, 2))[self.channels]
        scores = np.exp((means - means.max()) / 10)
        return (scores / scores.sum()).astype(np.float32)
'''


@pytest.fixture
def fake_format(tmp_path):
    runtime = tmp_path / "fake_runtime.py"
    runtime.write_text(RUNTIME)

    def export(job):
        channel = {"red": 0, "green": 1, "blue": 2}
        (job.staging / "model.fake").write_text(json.dumps({"channel_of_class": [channel[c] for c in job.run.labels]}))
        tensor = {"name": "image", "shape": [1, job.run.img_size, job.run.img_size, 3], "dtype": "float32", "quantization": None}
        return ExportOutput("model.fake", tensor, {"name": "probs", "shape": [1, 3], "dtype": "float32", "quantization": None},
                            {"note": "fake"}, {"fake-converter": "1.0"})

    def inspect(path: Path) -> dict:
        return {"path": str(path), "format": "fake", "bytes": path.stat().st_size, "labels": None,
                "inputs": [], "outputs": [], "ops": {}, "quantization": {}, "metadata": json.loads(path.read_text())}

    fmt = exporters.Format(
        name="fake", suffixes=(".fake",), quant_modes=("fp32", "int8"), options={}, extra="fake", requires=(),
        export=export, inspect=inspect, runtime_file=runtime, runtime_hint="fake-runtime", runtime_modules=("json",),
        budget=Budget(steps=(Step("fake int8, exactly as float"),)),  # its int8 is its float model
    )
    exporters.register(fmt)
    yield fmt
    exporters.registry().pop("fake")


def test_a_format_registered_in_a_test_exports_inspects_and_validates(fake_format, tiny_run, tmp_path):
    runner = CliRunner()
    out = tmp_path / "fake-artefact"
    result = runner.invoke(cli, ["export", str(tiny_run), "--target", "fake", "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["target"] == "fake" and manifest["model_file"] == "model.fake"
    assert manifest["accuracy"]["top1"] > 0.9  # scored on the run's val split through the fake runtime
    assert manifest["versions"]["fake-converter"] == "1.0"

    result = runner.invoke(cli, ["inspect", str(out / "model.fake"), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["metadata"]["channel_of_class"] == [2, 1, 0]  # blue, green, red

    data = tiny_run.parent / "data"
    result = runner.invoke(cli, ["validate", str(out), "--data", str(data), "--device", "local", "--runs", "3", "--warmup", "1", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["format"] == "fake" and report["runtime"]["name"] == "fake-runtime"
    assert report["accuracy"]["top1"] > 0.9 and report["latency_ms"]["count"] == 3


def test_a_runner_the_format_lacks_is_refused(fake_format):
    from edgeclf.devices import Device, DeviceOptions
    from edgeclf.devices.targets import Target
    from edgeclf.errors import DeviceError

    class Phone:
        kind, name, runner, python = "adb", "adb://x", "benchmark_model", None

    device = Device(Target("adb", "adb"), Phone(), DeviceOptions())
    with pytest.raises(DeviceError, match="cannot run fake models.*--target tflite"):
        device.run(fake_format, [Path("model.fake")], None, 1, 0, None)


def test_the_budget_runs_the_recipes_a_format_declares(fake_format, tiny_run, tmp_path):
    out = tmp_path / "fake-int8"
    result = CliRunner().invoke(cli, ["export", str(tiny_run), "--target", "fake", "--quant", "int8", "--max-drop", "1",
                                      "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    budget = json.loads((out / "manifest.json").read_text())["budget"]
    assert budget["chosen"] == "fake int8, exactly as float" and len(budget["attempts"]) == 1
    assert budget["attempts"][0]["drop"] <= 0.01  # the fake beats the tiny Keras model: a negative drop fits


def test_a_format_without_recipes_or_a_golden_loader_is_refused_in_its_own_words(fake_format, tiny_run, tmp_path):
    import dataclasses

    exporters.register(dataclasses.replace(fake_format, budget=None))
    result = CliRunner().invoke(cli, ["export", str(tiny_run), "--target", "fake", "--quant", "int8", "--max-drop", "1"])
    assert result.exit_code == 2 and "--target fake offers no accuracy budget" in result.stderr
    assert "Traceback" not in result.output

    out = tmp_path / "fake-artefact"
    assert CliRunner().invoke(cli, ["export", str(tiny_run), "--target", "fake", "--out", str(out)]).exit_code == 0
    result = CliRunner().invoke(cli, ["bundle", str(out), "--out", str(tmp_path / "bundle")])
    assert result.exit_code != 0 and "fake artefacts cannot be bundled: the format declares no check_golden.py loader" in result.stderr
    assert "Traceback" not in result.output and not (tmp_path / "bundle").exists()
