"""The stand-in devices work through the REAL clients: OpenSSH's ssh/scp and Debian's adb.

Fixtures come from tests/devices_infra/fixtures.py (imported by conftest.py).
Everything talks to 127.0.0.1 only.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from edgeclf.devices.parsers import parse_benchmark_model

FAKE_BENCHMARK_MODEL = Path(__file__).parent / "devices_infra" / "fake_benchmark_model.py"

RUNNER = r'''
import json, platform, sys
out = {"machine": platform.machine(), "python": sys.version.split()[0]}
try:
    import numpy, tflite_runtime
    out["numpy"] = numpy.__version__
    out["tflite_runtime"] = tflite_runtime.__version__
except ImportError as exc:
    out["import_error"] = str(exc)
print(json.dumps(out))
'''


@pytest.fixture(scope="session")
def tiny_tflite(tmp_path_factory):
    """A real (tiny) float classifier .tflite, an input and the host LiteRT output for it."""
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    import tensorflow as tf
    import tf_keras
    from ai_edge_litert.interpreter import Interpreter

    tf_keras.utils.set_random_seed(0)
    model = tf_keras.Sequential([
        tf_keras.layers.Input((8, 8, 3), name="image"),
        tf_keras.layers.Conv2D(4, 3, activation="relu"),
        tf_keras.layers.GlobalAveragePooling2D(),
        tf_keras.layers.Dense(3, activation="softmax"),
    ])
    d = tmp_path_factory.mktemp("tiny_tflite")
    path = d / "tiny.tflite"
    path.write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())
    x = np.random.default_rng(0).random((1, 8, 8, 3), dtype=np.float32)
    it = Interpreter(model_path=str(path))
    it.allocate_tensors()
    inp = it.get_input_details()[0]
    it.set_tensor(inp["index"], x)
    it.invoke()
    y = it.get_tensor(it.get_output_details()[0]["index"]).copy()
    (d / "x.npy").write_bytes(_npy_bytes(x))
    (d / "x.bin").write_bytes(x.tobytes())
    # A batch of 4 (the batch dimension is resizable), as on-device accuracy runs would send.
    x4 = np.random.default_rng(1).random((4, 8, 8, 3), dtype=np.float32)
    it.resize_tensor_input(inp["index"], [4, 8, 8, 3])
    it.allocate_tensors()
    it.set_tensor(inp["index"], x4)
    it.invoke()
    y4 = it.get_tensor(it.get_output_details()[0]["index"]).copy()
    (d / "x4.bin").write_bytes(x4.tobytes())
    return {"model": path, "x": x, "y": y, "x_npy": d / "x.npy", "x_bin": d / "x.bin", "input_name": inp["name"],
            "x4_bin": d / "x4.bin", "y4": y4}


def _npy_bytes(a: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


# ------------------------------------------------------------------ SSH device (this machine)


def test_ssh_device_runs_commands_with_host_key_checking(ssh_device):
    cfg = ssh_device.ssh_config.read_text()
    assert "StrictHostKeyChecking yes" in cfg and f"Port {ssh_device.port}" in cfg
    assert f"[127.0.0.1]:{ssh_device.port} ssh-ed25519 " in ssh_device.known_hosts.read_text()
    res = subprocess.run(["ssh", "-F", str(ssh_device.ssh_config), ssh_device.alias, "echo hello; echo oops >&2; exit 7"],
                         capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert (res.returncode, res.stdout, res.stderr) == (7, "hello\n", "oops\n")
    assert ssh_device.host == "127.0.0.1" and ssh_device.arch and ssh_device.python
    assert ssh_device.emulated is False


def test_ssh_device_push_runner_and_read_json(ssh_device, tmp_path):
    runner = tmp_path / "runner.py"
    runner.write_text(RUNNER)
    remote = f"{ssh_device.workdir}/runner.py"
    ssh_device.push(runner, remote)
    res = ssh_device.run(f"{ssh_device.python} {remote}")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["machine"] == ssh_device.arch
    # scp works too (OpenSSH 9 scp speaks SFTP; the test sshd serves internal-sftp).
    local = tmp_path / "blob.bin"
    local.write_bytes(os.urandom(100_000))
    res = subprocess.run(["scp", "-q", "-F", str(ssh_device.ssh_config), str(local), f"{ssh_device.alias}:{ssh_device.workdir}/blob.bin"],
                         capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert res.returncode == 0, res.stderr
    assert ssh_device.pull(f"{ssh_device.workdir}/blob.bin") == local.read_bytes()


@pytest.mark.parametrize("kind, message", [
    ("wrong_key", "Permission denied (publickey)"),
    ("unknown_host_key", "Host key verification failed"),
    ("changed_host_key", "REMOTE HOST IDENTIFICATION HAS CHANGED"),
    ("closed_port", "Connection refused"),
])
def test_ssh_device_auth_failures(ssh_device, kind, message):
    cfg = ssh_device.make_bad_config(kind)
    res = subprocess.run(["ssh", "-F", str(cfg), ssh_device.alias, "echo should-not-run"],
                         capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert res.returncode == 255
    assert message in res.stderr
    assert "should-not-run" not in res.stdout


# ------------------------------------------------------------------ emulated Raspberry Pi


def test_pi_is_aarch64_with_tflite_runtime(pi_device):
    res = pi_device.run("python3 -c 'import platform, tflite_runtime.interpreter, numpy; print(platform.machine())'")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "aarch64"
    assert (pi_device.arch, pi_device.emulated, pi_device.python) == ("aarch64", True, "/usr/bin/python3")
    ident = pi_device.run("uname -m; id -un; cat /proc/device-tree/model; echo; . /etc/os-release; echo $VERSION_CODENAME")
    machine, user, model, codename = ident.stdout.split("\n")[:4]
    assert (machine, user, codename) == ("aarch64", pi_device.user, "bookworm")
    assert model.startswith("Raspberry Pi 4")


def test_pi_runner_json_and_file_transfer(pi_device, tmp_path):
    runner = tmp_path / "runner.py"
    runner.write_text(RUNNER)
    pi_device.push(runner, f"{pi_device.workdir}/runner.py")
    res = pi_device.run(f"{pi_device.python} {pi_device.workdir}/runner.py")
    assert res.returncode == 0, res.stderr
    info = json.loads(res.stdout)
    assert info["machine"] == "aarch64" and info["tflite_runtime"] == "2.14.0" and info["numpy"].startswith("1.")
    blob = tmp_path / "blob.bin"
    blob.write_bytes(os.urandom(200_000))
    res = subprocess.run(["scp", "-q", "-F", str(pi_device.ssh_config), str(blob), f"{pi_device.alias}:{pi_device.workdir}/blob.bin"],
                         capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert res.returncode == 0, res.stderr
    assert pi_device.pull(f"{pi_device.workdir}/blob.bin") == blob.read_bytes()


def test_pi_rejects_unknown_host_key(pi_device):
    res = subprocess.run(["ssh", "-F", str(pi_device.make_bad_config("unknown_host_key")), pi_device.alias, "true"],
                         capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert res.returncode == 255 and "Host key verification failed" in res.stderr


@pytest.mark.slow
def test_pi_runs_tiny_model_like_host_litert(pi_device, tiny_tflite):
    wd = pi_device.workdir
    pi_device.push(tiny_tflite["model"], f"{wd}/tiny.tflite")
    pi_device.push(tiny_tflite["x_npy"], f"{wd}/x.npy")
    script = (
        "import json, numpy as np\n"
        "from tflite_runtime.interpreter import Interpreter\n"
        f"it = Interpreter(model_path='{wd}/tiny.tflite', num_threads=2)\n"
        "it.allocate_tensors()\n"
        f"it.set_tensor(it.get_input_details()[0]['index'], np.load('{wd}/x.npy'))\n"
        "it.invoke()\n"
        "print(json.dumps(it.get_tensor(it.get_output_details()[0]['index']).tolist()))\n"
    )
    res = pi_device.run(f"{pi_device.python} -", input=script)
    assert res.returncode == 0, res.stderr
    y_pi = np.array(json.loads(res.stdout.strip().splitlines()[-1]), dtype=np.float32)
    np.testing.assert_allclose(y_pi, tiny_tflite["y"], atol=1e-5)


# ------------------------------------------------------------------ Android stand-in (real adb client)


def test_adb_getprop_and_device_listing(android_device):
    assert android_device.adb_server_port == int(os.environ["ANDROID_ADB_SERVER_PORT"])
    res = subprocess.run(["adb", "-s", android_device.serial, "shell", "getprop", "ro.product.model"],
                         capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert (res.returncode, res.stdout) == (0, "Pixel 8\n")
    props = {k: android_device.shell(f"getprop {k}").stdout.strip()
             for k in ("ro.product.cpu.abi", "ro.board.platform", "ro.soc.model", "ro.build.version.sdk", "no.such.prop")}
    assert props == {"ro.product.cpu.abi": "arm64-v8a", "ro.board.platform": "zuma", "ro.soc.model": "Tensor G3",
                     "ro.build.version.sdk": "34", "no.such.prop": ""}
    listing = android_device.host.adb("devices", "-l").stdout
    assert f"{android_device.serial}" in listing and "model:Pixel_8" in listing


def test_adb_shell_exit_codes_streams_and_stdin(android_device):
    res = android_device.shell("echo out; echo err >&2; exit 3")
    assert (res.returncode, res.stdout, res.stderr) == (3, "out\n", "err\n")
    res = android_device.shell("uname -m; id -u; echo $TMPDIR")
    assert res.stdout.split() == ["aarch64", "2000", "/data/local/tmp"]
    # stdin is forwarded with shell protocol v2 (and closed at EOF).
    res = android_device.adb("shell", "cat > /data/local/tmp/stdin.txt && wc -c < /data/local/tmp/stdin.txt",
                             input=b"x" * 70000)
    assert res.returncode == 0 and res.stdout.decode().strip() == "70000"
    # Legacy shell (no shell protocol, `adb shell -x`): merged output and NO exit status.
    res = android_device.adb("shell", "-x", "echo legacy; exit 5")
    assert (res.returncode, res.stdout.strip()) == (0, "legacy")


def test_adb_push_pull_roundtrip_and_errors(android_device, tmp_path):
    payload = os.urandom(700_000)  # several sync DATA chunks and adb WRTE packets
    local = tmp_path / "payload.bin"
    local.write_bytes(payload)
    android_device.push(local, "/data/local/tmp/sub/dir/payload.bin")
    assert (android_device.data_dir / "sub/dir/payload.bin").read_bytes() == payload
    res = android_device.shell("md5sum /data/local/tmp/sub/dir/payload.bin")
    assert res.stdout.split()[0] == hashlib.md5(payload).hexdigest()
    back = tmp_path / "back.bin"
    res = android_device.adb("pull", "/data/local/tmp/sub/dir/payload.bin", str(back))
    assert res.returncode == 0, res.stdout + res.stderr
    assert back.read_bytes() == payload
    res = android_device.adb("exec-out", "cat /data/local/tmp/sub/dir/payload.bin", text=False)
    assert res.returncode == 0 and res.stdout == payload
    res = android_device.adb("push", str(local), "/system/payload.bin")
    assert res.returncode == 1 and "Read-only file system" in res.stdout + res.stderr
    res = android_device.adb("pull", "/data/local/tmp/missing.bin", str(tmp_path / "missing"))
    assert res.returncode == 1 and "No such file or directory" in res.stdout + res.stderr


def test_adb_device_python_is_arm64_with_tflite_runtime(android_device):
    res = android_device.shell(
        "python3 -c 'import platform, tflite_runtime.interpreter, numpy; print(platform.machine(), numpy.__version__)'")
    assert res.returncode == 0, res.stderr
    assert res.stdout.split()[0] == "aarch64"


def test_adb_unauthorized_device(android_device_factory):
    phone = android_device_factory(unauthorized=True, connect=False)
    out = phone.host.connect(phone.serial, expect="any")
    assert "failed to authenticate" in out  # and yet `adb connect` exited 0
    assert phone.host.wait_for_state(phone.serial, "unauthorized") == "unauthorized"
    res = phone.shell("echo hi")
    assert res.returncode == 1 and "unauthorized" in res.stderr


def test_adb_disconnect_mid_run(android_device_factory):
    phone = android_device_factory(drop_on="sleep 20", drop_after=1.0)
    t0 = time.monotonic()
    res = phone.shell("echo started; sleep 20; echo finished", timeout=60)
    assert time.monotonic() - t0 < 15
    assert "started" in res.stdout and "finished" not in res.stdout
    # NB: Debian's adb 29 exits 0 here (no exit packet ever arrived): callers must check output, not only the code.
    assert phone.host.wait_for_state(phone.serial, "offline", timeout=10) in ("offline", None)
    res = phone.shell("echo again", timeout=30)
    assert res.returncode != 0 and ("offline" in res.stderr or "not found" in res.stderr)


def test_fake_benchmark_model_on_host_parses(tiny_tflite, tmp_path):
    """Runs the stand-in tool with the host's LiteRT: quick check of flags, output format and --output_filepath."""
    out = tmp_path / "out.bin"
    name = tiny_tflite["input_name"].replace(":", "::")
    res = subprocess.run([sys.executable, str(FAKE_BENCHMARK_MODEL), f"--graph={tiny_tflite['model']}", "--num_threads=1",
                          "--warmup_runs=2", "--num_runs=7", "--min_secs=0", "--warmup_min_secs=0",
                          f"--input_layer={tiny_tflite['input_name']}", "--input_layer_shape=1,8,8,3",
                          f"--input_layer_value_files={name}:{tiny_tflite['x_bin']}", f"--output_filepath={out}"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    parsed = parse_benchmark_model(res.stdout + res.stderr)
    assert parsed["count"] == 7 and parsed["warmup_count"] == 2 and parsed["num_threads"] == 1
    assert parsed["inference_avg_ms"] > 0 and parsed["median_ms"] is not None
    np.testing.assert_allclose(np.frombuffer(out.read_bytes(), dtype=np.float32), tiny_tflite["y"].ravel(), atol=1e-6)
    res = subprocess.run([sys.executable, str(FAKE_BENCHMARK_MODEL), f"--graph={tmp_path}/none.tflite"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 1 and "ERROR: Benchmarking failed." in res.stderr


@pytest.mark.slow
def test_fake_benchmark_model_on_phone(android_device, tiny_tflite, tmp_path):
    tool = android_device.install_benchmark_model()
    android_device.push(tiny_tflite["model"], "/data/local/tmp/edgeclf/tiny.tflite")
    android_device.push(tiny_tflite["x4_bin"], "/data/local/tmp/edgeclf/x4.bin")
    # The real tool's escape for ':' inside an input name in --input_layer_value_files is '::'.
    name = tiny_tflite["input_name"].replace(":", "::")
    cmd = (f"{tool} --graph=/data/local/tmp/edgeclf/tiny.tflite --num_threads=4 --warmup_runs=2 --num_runs=20 "
           f"--min_secs=0 --warmup_min_secs=0 --use_xnnpack=true --report_peak_memory_footprint=true "
           f"--input_layer={tiny_tflite['input_name']} --input_layer_shape=4,8,8,3 "
           f"--input_layer_value_files={name}:/data/local/tmp/edgeclf/x4.bin "
           f"--output_filepath=/data/local/tmp/edgeclf/out.bin")
    res = android_device.shell(cmd, timeout=180)
    assert res.returncode == 0, res.stdout + res.stderr
    parsed = parse_benchmark_model(res.stdout + res.stderr)
    assert parsed["count"] == 20 and parsed["warmup_count"] == 2 and parsed["num_threads"] == 4
    assert parsed["delegates"] == ["XNNPACK"] and parsed["fully_delegated"] is True
    assert parsed["peak_mb"] is not None and parsed["init_ms"] > 0
    res = android_device.adb("exec-out", "cat /data/local/tmp/edgeclf/out.bin", text=False)
    y = np.frombuffer(res.stdout, dtype=np.float32).reshape(4, 3)
    np.testing.assert_allclose(y, tiny_tflite["y4"], atol=1e-5)  # on-device accuracy through the real flags
    res = android_device.shell(f"{tool} --graph=/data/local/tmp/edgeclf/missing.tflite")
    assert res.returncode == 1 and "ERROR: Benchmarking failed." in res.stderr
