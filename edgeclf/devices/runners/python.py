"""Run models with runner.py on devices that have Python (local machine, SSH boards)."""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np

from edgeclf.devices import runner as runner_module
from edgeclf.devices.base import DeviceRun, Transport, remove_quietly
from edgeclf.errors import DeviceError, ModelError

RUNNER_FILE = Path(runner_module.__file__)


def run(device, fmt, model_files: list[Path], inputs: np.ndarray | None, runs: int, warmup: int, threads: int | None,
        raw_outputs: bool = False) -> DeviceRun:
    """The python runner on `device` (devices.Device): runner.py and the format's runtime file."""
    transport = device.transport
    python = device.options.remote_python or device.target.python or transport.python
    return run_on_device(transport, python, fmt, model_files, inputs, runs, warmup, threads, device.options.timeout, raw_outputs)


def run_on_device(transport: Transport, python: str, fmt, model_files: list[Path], inputs: np.ndarray | None,
                  runs: int, warmup: int, threads: int | None, timeout: float, raw_outputs: bool = False) -> DeviceRun:
    """Push runner + runtime + model (+ packed images), run, read JSON and predictions back, clean up.

    With raw_outputs the predictions are the output tensors in the model's own dtype.
    """
    remote_dir = transport.make_temp_dir()
    try:
        with tempfile.TemporaryDirectory(prefix="edgeclf-push-") as local:
            transport.push(RUNNER_FILE, f"{remote_dir}/runner.py")
            runtime = f"{remote_dir}/runtime_{fmt.runtime_file.name}"
            transport.push(fmt.runtime_file, runtime)
            for path in model_files:
                transport.push(path, f"{remote_dir}/{path.name}")
            argv = [python, f"{remote_dir}/runner.py", f"{remote_dir}/{model_files[0].name}", "--runtime", runtime,
                    "--runs", str(runs), "--warmup", str(warmup)]
            if threads:
                argv += ["--threads", str(threads)]
            if inputs is not None:
                np.save(Path(local) / "inputs.npy", inputs)
                transport.push(Path(local) / "inputs.npy", f"{remote_dir}/inputs.npy")
                argv += ["--inputs", f"{remote_dir}/inputs.npy", "--predictions", f"{remote_dir}/predictions.npy"]
                if raw_outputs:
                    argv.append("--raw-outputs")
            result = transport.run(argv, timeout)
            report = _report(transport, python, fmt, result)
            predictions = None
            if inputs is not None:
                transport.pull(f"{remote_dir}/predictions.npy", Path(local) / "predictions.npy")
                predictions = np.load(Path(local) / "predictions.npy")
    finally:
        remove_quietly(transport, remote_dir)
    return DeviceRun(
        runtime=report["runtime"],
        device={"kind": transport.kind, "name": transport.name, **report["device"]},
        latency_ms=report.get("latency_ms"),
        init_ms=report.get("init_ms"),
        predictions=predictions,
        peak_rss_mb=report.get("peak_rss_mb"),
        threads=report.get("threads"),
    )


def _report(transport: Transport, python: str, fmt, result) -> dict:
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
            f"{transport.name} has no runtime for {fmt.suffixes[0]} models (Python {info.get('python')}, {info.get('arch')})",
            f"install {fmt.runtime_hint} for that Python, e.g. "
            f"`{python} -m pip install {fmt.runtime_hint.split(' ')[0]}` (in a venv on Raspberry Pi OS; then pass --remote-python)",
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
    if result.returncode == 126:
        raise DeviceError(f"{python} is not an executable program on {transport.name}", "point --remote-python at a Python 3 interpreter")
    if "No module named 'numpy'" in stderr:
        raise DeviceError(f"numpy is not installed for {python} on {transport.name}", f"`{python} -m pip install numpy` (in a venv on Raspberry Pi OS)")
    last = lines[-1] if lines else f"exit code {result.returncode}"
    raise DeviceError(f"the runner failed on {transport.name}: {last}", "rerun with --debug, or check the model runs there")
