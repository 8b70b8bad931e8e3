"""Run models with runner.py on devices that have Python (local machine, SSH boards)."""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np

from edgeclf.devices import runner as runner_module
from edgeclf.devices.base import DeviceRun, Transport
from edgeclf.errors import DeviceError, ModelError

RUNNER_FILE = Path(runner_module.__file__)
INSTALL_HINTS = {
    ".tflite": "ai-edge-litert (or tflite-runtime on Python <= 3.11)",
    ".onnx": "onnxruntime",
    ".xml": "openvino",
}


def run_on_device(transport: Transport, python: str, model_files: list[Path], inputs: np.ndarray | None,
                  runs: int, warmup: int, threads: int | None, timeout: float) -> DeviceRun:
    """Push runner + model (+ packed images), run, read JSON and predictions back, clean up."""
    remote_dir = transport.make_temp_dir()
    try:
        with tempfile.TemporaryDirectory(prefix="edgeclf-push-") as local:
            transport.push(RUNNER_FILE, f"{remote_dir}/runner.py")
            for path in model_files:
                transport.push(path, f"{remote_dir}/{path.name}")
            argv = [python, f"{remote_dir}/runner.py", f"{remote_dir}/{model_files[0].name}",
                    "--runs", str(runs), "--warmup", str(warmup)]
            if threads:
                argv += ["--threads", str(threads)]
            if inputs is not None:
                np.save(Path(local) / "inputs.npy", inputs)
                transport.push(Path(local) / "inputs.npy", f"{remote_dir}/inputs.npy")
                argv += ["--inputs", f"{remote_dir}/inputs.npy", "--predictions", f"{remote_dir}/predictions.npy"]
            result = transport.run(argv, timeout)
            report = _report(transport, python, model_files[0].suffix, result)
            predictions = None
            if inputs is not None:
                transport.pull(f"{remote_dir}/predictions.npy", Path(local) / "predictions.npy")
                predictions = np.load(Path(local) / "predictions.npy")
    finally:
        transport.remove(remote_dir)
    return DeviceRun(
        runtime=report["runtime"],
        device={"kind": transport.kind, "name": transport.name, **report["device"]},
        latency_ms=report.get("latency_ms"),
        init_ms=report.get("init_ms"),
        predictions=predictions,
        peak_rss_mb=report.get("peak_rss_mb"),
        threads=report.get("threads"),
    )


def _report(transport: Transport, python: str, suffix: str, result) -> dict:
    last_line = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    report = None
    if last_line.startswith("{"):
        try:
            report = json.loads(last_line)
        except json.JSONDecodeError:
            report = None
    if report and report.get("error") == "runtime_missing":
        info = report.get("device", {})
        raise DeviceError(
            f"{transport.name} has no runtime for {suffix} models (Python {info.get('python')}, {info.get('arch')})",
            f"install {INSTALL_HINTS.get(suffix, report.get('missing'))} for that Python, e.g. "
            f"`{python} -m pip install {INSTALL_HINTS.get(suffix, '').split(' ')[0]}` (in a venv on Raspberry Pi OS; then pass --remote-python)",
        )
    if report and report.get("error") == "model_invalid":
        raise ModelError(f"{transport.name} cannot load the model: {report.get('message')}",
                         "check that the file is a valid model, or re-export it")
    if result.returncode == 0 and report is not None:
        return report
    stderr = result.stderr.strip()
    lines = stderr.splitlines()
    if result.returncode == 127 or (lines and "not found" in lines[-1] and python in lines[-1]):
        raise DeviceError(f"{python} was not found on {transport.name}", "install Python 3 there, or point --remote-python at it")
    if "No module named 'numpy'" in stderr:
        raise DeviceError(f"numpy is not installed for {python} on {transport.name}", f"`{python} -m pip install numpy` (in a venv on Raspberry Pi OS)")
    last = lines[-1] if lines else f"exit code {result.returncode}"
    raise DeviceError(f"the runner failed on {transport.name}: {last}", "rerun with --debug, or check the model runs there")
