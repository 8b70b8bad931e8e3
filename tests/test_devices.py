"""On-device validation through real clients: local, OpenSSH (loopback and an emulated aarch64 Pi), adb."""
from __future__ import annotations

import glob
import json
import socket
import sys
import threading
import time

import pytest
from conftest import check_records

from edgeclf import console, records
from edgeclf.devices import DeviceOptions, open_device
from edgeclf.devices.host import predict_file
from edgeclf.devices.targets import parse_target
from edgeclf.errors import DeviceError, UsageError
from edgeclf.jobs.validate import load_images, validate


def _data(tiny_run):
    return str(tiny_run.parent / "data")


def _host_reference(tiny_int8, tiny_run):
    labels = (tiny_int8 / "labels.txt").read_text().split()
    split = load_images(_data(tiny_run), labels, 32)
    return split, predict_file(tiny_int8 / "model.tflite", split.images)


def _leftovers() -> set[str]:
    return set(glob.glob("/tmp/edgeclf.*")) | set(glob.glob("/tmp/edgeclf-device-*"))


def _assert_no_new_leftovers(before: set[str], wait: float = 60) -> None:
    """Every temp dir that appeared since `before` goes away. A test running in parallel may hold
    one of its own for a few seconds, so wait for that one; a dir left behind never goes."""
    deadline = time.monotonic() + wait
    while (new := _leftovers() - before) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not new, f"left behind: {sorted(new)}"


def test_device_names_parse_and_reject_bad_input():
    t = parse_target("ssh://pi@board:2222")
    assert (t.kind, t.user, t.host, t.port) == ("ssh", "pi", "board", 2222)
    assert parse_target("adb://R5CT1234").serial == "R5CT1234"
    assert parse_target("local").kind == "local"
    for bad in ("ssh://host:notaport", "ssh://host/path", "nosuchname"):
        with pytest.raises(UsageError):
            parse_target(bad)
    with pytest.raises(DeviceError, match="not a valid adb serial"):
        open_device("adb://bad;rm -rf /", DeviceOptions(timeout=5))


def test_local_device_accuracy_and_latency(tiny_int8, tiny_run):
    before = _leftovers()
    result = validate(tiny_int8, "local", _data(tiny_run), runs=20, warmup=2, threads=1)
    split, host = _host_reference(tiny_int8, tiny_run)
    assert result["device"]["kind"] == "local" and result["emulated"] is False
    assert result["runtime"]["name"] == "ai_edge_litert" and result["threads"] == 1
    assert result["accuracy"]["where"] == "device" and result["accuracy"]["n_images"] == len(split) == 60
    assert result["accuracy"]["top1"] == pytest.approx((host.argmax(1) == split.labels).mean())
    assert result["accuracy"]["agreement"] is not None and result["accuracy"]["agreement"] >= 0.95
    lat = result["latency_ms"]
    assert lat["count"] == 20 and 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"]
    assert result["init_ms"] > 0 and result["model_bytes"] > 0
    printed = json.loads(console.to_json(result))  # what `validate --json` prints: a result.json without its tag
    assert records.problems(printed | {"record": records.tag("result")}, "result") == []
    _assert_no_new_leftovers(before)


def test_latency_only_without_data(tiny_int8):
    result = validate(tiny_int8 / "model.tflite", "local", None, runs=5, warmup=1)
    assert result["accuracy"] is None and result["latency_ms"]["count"] == 5


def _ssh_options(target, **overrides):
    settings = dict(ssh_config=str(target.ssh_config), timeout=120)
    settings.update(overrides)
    return DeviceOptions(**settings)


def test_ssh_loopback_runs_the_runner_remotely(ssh_device, tiny_int8, tiny_run):
    before = _leftovers()
    result = validate(tiny_int8, f"ssh://{ssh_device.alias}", _data(tiny_run), runs=10, warmup=1, threads=1,
                      options=_ssh_options(ssh_device, remote_python=sys.executable))
    split, host = _host_reference(tiny_int8, tiny_run)
    assert result["device"]["kind"] == "ssh" and result["device"]["arch"] == "x86_64"
    assert result["accuracy"]["top1"] == pytest.approx((host.argmax(1) == split.labels).mean())
    assert result["latency_ms"]["count"] == 10
    _assert_no_new_leftovers(before)


def test_emulated_pi_runs_tflite_runtime_on_aarch64(pi_device, tiny_int8, tiny_run):
    started = time.perf_counter()
    result = validate(tiny_int8, f"ssh://{pi_device.alias}", _data(tiny_run), runs=5, warmup=1, threads=1,
                      options=_ssh_options(pi_device, remote_python=pi_device.python, emulated=True))
    split, host = _host_reference(tiny_int8, tiny_run)
    assert result["device"]["arch"] == "aarch64" and result["emulated"] is True
    assert result["runtime"]["name"] == "tflite_runtime" and result["runtime"]["version"].startswith("2.14")
    # The same int8 model on another runtime and CPU gives the same answers.
    assert result["accuracy"]["top1"] == pytest.approx((host.argmax(1) == split.labels).mean(), abs=0.02)
    assert result["accuracy"]["agreement"] >= 0.95
    leftovers = pi_device.run("ls -d /tmp/edgeclf.* 2>/dev/null || true").stdout.strip()
    assert leftovers == ""
    print(f"emulated Pi validation took {time.perf_counter() - started:.1f} s")


def test_missing_runtime_says_what_to_install(ssh_device, tiny_int8):
    # The machine's bare python3 has numpy but no TFLite runtime.
    probe = ssh_device.run("python3 -c 'import numpy' && ! python3 -c 'import ai_edge_litert' 2>/dev/null")
    if probe.returncode != 0:
        pytest.skip("the ssh user's python3 lacks numpy or already has ai_edge_litert")
    with pytest.raises(DeviceError, match=r"has no runtime for \.tflite models.*install ai-edge-litert"):
        validate(tiny_int8, f"ssh://{ssh_device.alias}", None, runs=1, warmup=0,
                 options=_ssh_options(ssh_device, remote_python="python3"))


@pytest.mark.parametrize("kind, message", [
    ("closed_port", "is unreachable"),
    ("wrong_key", "authentication to .* failed"),
    ("unknown_host_key", "host key of .* is unknown or has changed"),
    ("changed_host_key", "host key of .* is unknown or has changed"),
])
def test_ssh_failures_are_one_clear_error(ssh_device, tiny_int8, kind, message):
    config = ssh_device.make_bad_config(kind)
    with pytest.raises(DeviceError, match=message):
        validate(tiny_int8, f"ssh://{ssh_device.alias}", None, runs=1, warmup=0,
                 options=DeviceOptions(ssh_config=str(config), timeout=30))


def test_ssh_hang_times_out(tiny_int8):
    """A host that accepts TCP but never speaks SSH fails within the timeout."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    held = []
    threading.Thread(target=lambda: held.append(server.accept()), daemon=True).start()
    started = time.perf_counter()
    try:
        with pytest.raises(DeviceError, match="did not answer within|unreachable|ssh to"):
            validate(tiny_int8, f"ssh://127.0.0.1:{port}", None, runs=1, warmup=0,
                     options=DeviceOptions(timeout=4, insecure_host_key=True))
    finally:
        server.close()
    assert time.perf_counter() - started < 15


# -- Android through the real adb client ------------------------------------------------------------
def _adb_options(device, **overrides):
    settings = dict(benchmark_binary=str(device.benchmark_model), timeout=300)
    settings.update(overrides)
    return DeviceOptions(**settings)


def test_android_accuracy_and_latency_with_benchmark_model(android_device, tiny_int8, tiny_run):
    result = validate(tiny_int8, f"adb://{android_device.serial}", _data(tiny_run), runs=10, warmup=2, threads=1,
                      options=_adb_options(android_device))
    split, host = _host_reference(tiny_int8, tiny_run)
    assert result["device"]["kind"] == "adb" and result["device"]["model"] == "Pixel 8"
    assert result["device"]["abi"] == "arm64-v8a" and result["device"]["sdk"] == "34" and result["device"]["arch"] == "aarch64"
    assert result["runtime"]["name"] == "tflite benchmark_model" and result["runtime"]["delegate"] == "xnnpack"
    assert result["accuracy"]["where"] == "device"
    assert result["accuracy"]["top1"] == pytest.approx((host.argmax(1) == split.labels).mean(), abs=0.02)
    assert result["latency_ms"]["mean"] > 0 and result["init_ms"] is not None
    assert not list(android_device.data_dir.glob("edgeclf.*"))


def test_android_needs_the_benchmark_binary(android_device, tiny_int8, monkeypatch):
    monkeypatch.delenv("EDGECLF_BENCHMARK_MODEL", raising=False)
    with pytest.raises(UsageError, match="cannot be downloaded offline.*--benchmark-binary"):
        validate(tiny_int8, f"adb://{android_device.serial}", None, options=DeviceOptions(timeout=30))


def test_adb_not_installed(monkeypatch, tiny_int8):
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(DeviceError, match="adb is not installed"):
        validate(tiny_int8, "adb", None, options=DeviceOptions(timeout=10))


def test_adb_with_no_device(adb_host, monkeypatch, tiny_int8):
    import socket as s
    import subprocess

    probe = s.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    monkeypatch.setenv("ANDROID_ADB_SERVER_PORT", str(port))
    try:
        with pytest.raises(DeviceError, match="no Android device is connected"):
            validate(tiny_int8, "adb", None, options=DeviceOptions(timeout=30))
    finally:
        subprocess.run(["adb", "kill-server"], capture_output=True, timeout=30)


def test_adb_several_devices_and_unauthorized(android_device, android_device_factory, tiny_int8):
    locked = android_device_factory(unauthorized=True, wait_state="unauthorized")
    with pytest.raises(DeviceError, match="several Android devices are connected.*adb://SERIAL"):
        validate(tiny_int8, "adb", None, options=_adb_options(android_device))
    with pytest.raises(DeviceError, match=f"{locked.serial} is unauthorized.*accept the USB debugging prompt"):
        validate(tiny_int8, f"adb://{locked.serial}", None, options=_adb_options(android_device))


def test_adb_disconnect_mid_run(android_device_factory, tiny_int8):
    flaky = android_device_factory(drop_on="benchmark_model", drop_after=0.5)
    with pytest.raises(DeviceError, match="lost the connection|offline|not connected"):
        validate(tiny_int8, f"adb://{flaky.serial}", None, runs=2000, warmup=1, options=_adb_options(flaky))


def test_bench_table_files_and_unavailable_formats(tiny_run, tmp_path):
    from edgeclf.jobs.bench import bench, parse_formats

    summary = bench(tiny_run, parse_formats("tflite:fp32,tflite:int8,coreml:fp32"), "local",
                    _data(tiny_run), runs=10, warmup=1, threads=1, out=str(tmp_path / "bench"))
    rows = {f"{r['format']}:{r['quant']}": r for r in summary["rows"]}
    assert rows["tflite:fp32"]["status"] == "ok" and rows["tflite:fp32"]["speedup"] == 1.0
    assert rows["tflite:int8"]["status"] == "ok" and rows["tflite:int8"]["size_mb"] < rows["tflite:fp32"]["size_mb"]
    assert rows["tflite:int8"]["agreement"] >= 0.95
    assert "unknown export target 'coreml'" in rows["coreml:fp32"]["status"]
    assert sorted(p.name for p in (tmp_path / "bench").iterdir()) == ["bench.csv", "bench.json", "bench.png"]
    csv_lines = (tmp_path / "bench" / "bench.csv").read_text().splitlines()
    assert csv_lines[0].startswith("format,quant,size_mb,top1") and len(csv_lines) == 4
    assert (tiny_run / "exports" / "tflite-fp32" / "manifest.json").is_file()
    assert check_records(tmp_path / "bench") == {"bench"}


def test_devices_lists_named_ssh_targets(ssh_device, pi_device, tmp_path, monkeypatch):
    from edgeclf.devices.inventory import inventory

    devices_file = tmp_path / "edgeclf.yaml"
    devices_file.write_text(
        "targets:\n"
        f"  loop:\n    ssh: {ssh_device.alias}\n    python: {sys.executable}\n    ssh_config: {ssh_device.ssh_config}\n"
        f"  pi:\n    ssh: {pi_device.alias}\n    python: {pi_device.python}\n    ssh_config: {pi_device.ssh_config}\n    emulated: true\n"
        f"  gone:\n    ssh: 127.0.0.1:1\n"
    )
    monkeypatch.setenv("EDGECLF_DEVICES_FILE", str(devices_file))
    found = {d["name"]: d for d in inventory(timeout=20)["devices"]}
    assert found["loop"]["reachable"] and "ai_edge_litert" in found["loop"]["runtimes"]
    assert found["pi"]["reachable"] and found["pi"]["arch"] == "aarch64" and "tflite_runtime" in found["pi"]["runtimes"]
    assert found["pi"]["python"].startswith("3.11")
    assert not found["gone"]["reachable"] and "unreachable" in found["gone"]["status"]
