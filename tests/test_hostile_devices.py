"""Hostile or careless device input (issue 10, items 2, 12 and 13): each test reproduces one defect."""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from devices_infra.common import StandInUnavailable
from devices_infra.sshd import SSHServer, wait_for_ssh

from edgeclf import exporters
from edgeclf.devices import DeviceOptions, open_device
from edgeclf.devices.base import CommandResult
from edgeclf.devices.local import LocalTransport
from edgeclf.devices.runners.python import run_on_device
from edgeclf.devices.ssh import SSHTransport
from edgeclf.devices.targets import parse_target
from edgeclf.errors import DeviceError, UsageError


def _edgeclf(*args, cwd: Path, home: Path, path_dirs: list[Path]) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "EDGECLF_DEVICES_FILE"}
    env.update(HOME=str(home), PATH=os.pathsep.join(map(str, path_dirs)))
    return subprocess.run([sys.executable, "-m", "edgeclf", *args], capture_output=True, text=True,
                          timeout=120, cwd=cwd, env=env)


def test_devices_file_in_the_working_directory_cannot_run_a_local_command(ssh_device, tmp_path, monkeypatch):
    marker = tmp_path / "pwned-by-edgeclf-yaml"
    repo = tmp_path / "cloned-repo"
    repo.mkdir()
    (repo / "cfg").write_text(f"Host *\n    ProxyCommand touch {marker}\n")
    (repo / "edgeclf.yaml").write_text(
        f"targets:\n  board:\n    ssh: {ssh_device.user}@127.0.0.1:{ssh_device.port}\n    ssh_config: ./cfg\n")
    home = tmp_path / "home"
    home.mkdir()
    # Only ssh on PATH: the devices listing must not start an adb server of its own.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "ssh").symlink_to(shutil.which("ssh"))

    listing = _edgeclf("devices", "--timeout", "5", cwd=repo, home=home, path_dirs=[bin_dir])
    assert not marker.exists()
    assert listing.returncode == 2, listing.stdout + listing.stderr
    assert listing.stderr.strip().splitlines() == [
        "error: edgeclf.yaml in the working directory sets ssh_config for target 'board', which can run local "
        "commands (pass --devices-file edgeclf.yaml to trust it)"]

    # `validate --device board` opens the device the same way.
    monkeypatch.chdir(repo)
    monkeypatch.delenv("EDGECLF_DEVICES_FILE", raising=False)
    with pytest.raises(UsageError, match="pass --devices-file edgeclf.yaml to trust it"):
        open_device("board", DeviceOptions(timeout=5))
    assert not marker.exists()


def test_devices_file_named_by_the_user_or_in_home_is_trusted(ssh_device, tmp_path, monkeypatch):
    from edgeclf.devices.inventory import ssh_inventory

    monkeypatch.delenv("EDGECLF_DEVICES_FILE", raising=False)
    text = f"targets:\n  loop:\n    ssh: {ssh_device.alias}\n    python: {sys.executable}\n    ssh_config: {ssh_device.ssh_config}\n"
    (tmp_path / "edgeclf.yaml").write_text(text)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UsageError, match="--devices-file"):
        parse_target("loop")
    assert parse_target("loop", "edgeclf.yaml").ssh_config == str(ssh_device.ssh_config)
    (row,) = ssh_inventory(20, explicit_file="edgeclf.yaml")
    assert row["reachable"], row["status"]

    home = tmp_path / "home"
    (home / ".config" / "edgeclf").mkdir(parents=True)
    (home / ".config" / "edgeclf" / "devices.yaml").write_text(text)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(home)
    assert parse_target("loop").ssh_config == str(ssh_device.ssh_config)


TFLITE = exporters.get("tflite")


def _model_file(tmp_path: Path) -> Path:
    model = tmp_path / "model.tflite"
    model.write_bytes(b"not pushed anywhere real")
    return model


def test_missing_remote_python_is_a_clear_error(tmp_path):
    model = _model_file(tmp_path)
    with pytest.raises(DeviceError, match=r"no-such-python was not found on local \(.*--remote-python"):
        run_on_device(LocalTransport(), str(tmp_path / "no-such-python"), TFLITE, [model], None, 1, 0, None, 30)
    with pytest.raises(DeviceError, match=r"is not an executable program on local \(point --remote-python"):
        run_on_device(LocalTransport(), str(tmp_path), TFLITE, [model], None, 1, 0, None, 30)


class UndeletableLocal(LocalTransport):
    def remove(self, remote: str) -> None:
        shutil.rmtree(remote, ignore_errors=True)
        raise DeviceError(f"could not remove {remote}", "remove it by hand")


def test_failed_cleanup_does_not_replace_the_original_error(tmp_path, capsys):
    with pytest.raises(DeviceError, match="the runner failed on local: exit code 1"):
        run_on_device(UndeletableLocal(), shutil.which("false"), TFLITE, [_model_file(tmp_path)], None, 1, 0, None, 30)
    assert "warning: could not remove" in capsys.readouterr().err


def test_adb_serial_may_not_start_with_a_dash(monkeypatch):
    from edgeclf.devices import adb

    def no_adb(*args, **kwargs):
        raise AssertionError("a serial that adb would read as an option reached adb")

    monkeypatch.setattr(adb, "list_devices", no_adb)
    for serial in ("-H", "--help", "-a", "-s127.0.0.1:5555"):
        with pytest.raises(DeviceError, match="not a valid adb serial"):
            open_device(f"adb://{serial}", DeviceOptions(timeout=5))


def test_ssh_host_user_and_port_are_checked_strictly():
    # Shell metacharacters and option-like values, refused by edgeclf rather than left to OpenSSH.
    for host, user, port in [
        ("board;touch /tmp/x", None, None), ("$(id)", None, None), ("a`id`", None, None), ("host|id", None, None),
        ("host&", None, None), ("%h", None, None), ("-oProxyCommand=id", None, None), ("", None, None),
        ("board", "pi;id", None), ("board", "$(id)", None), ("board", "-lroot", None), ("board", "a'b", None),
        ("board", "pi", 0), ("board", "pi", 70000), ("board", "pi", "22 -oProxyCommand=id"), ("board", "pi", True),
    ]:
        with pytest.raises(DeviceError, match="is not a valid SSH (host|user name|port)"):
            SSHTransport(host, user, port)


def test_ssh_checks_accept_real_names_and_cover_devices_files(tmp_path, monkeypatch):
    for host in ("raspberrypi.local", "edgeclf-local-root", "my_board", "10.0.0.7", "::1", "fe80::1"):
        SSHTransport(host, "first.last", 2222)
    (tmp_path / "edgeclf.yaml").write_text("targets:\n  board:\n    ssh: pi@board\n    port: 22 -oProxyCommand=id\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("EDGECLF_DEVICES_FILE", raising=False)
    with pytest.raises(DeviceError, match="not a valid SSH port"):
        open_device("board", DeviceOptions(timeout=5))
    with pytest.raises(DeviceError, match="not a valid SSH user name"):
        open_device("ssh://pi;id@board", DeviceOptions(timeout=5))


class BannerSSHServer(SSHServer):
    """The test sshd, but every session prints a login banner on stdout first (as a noisy .bashrc would)."""

    def _write_sshd_config(self) -> None:
        super()._write_sshd_config()
        with open(self.dir / "sshd_config", "a") as config:
            config.write('ForceCommand echo "Welcome to the board"; echo; eval "$SSH_ORIGINAL_COMMAND"\n')


@pytest.fixture(scope="module")
def banner_device():
    try:
        server = BannerSSHServer(alias_prefix="edgeclf-banner").start()
    except StandInUnavailable as exc:
        pytest.skip(f"stand-in device unavailable: {exc}")
    try:
        target = next(iter(server.targets.values()))
        if wait_for_ssh(target).returncode != 0:
            pytest.skip(f"ssh to the banner sshd failed:\n{server.log_text()[-2000:]}")
        yield target
    finally:
        server.stop()


def test_login_banner_does_not_become_part_of_the_temp_dir(banner_device):
    assert banner_device.run("true").stdout.startswith("Welcome to the board")
    transport = SSHTransport(banner_device.alias, ssh_config=str(banner_device.ssh_config))
    remote_dir = transport.make_temp_dir()
    try:
        assert re.fullmatch(r"/tmp/edgeclf\.[A-Za-z0-9]{8}", remote_dir), remote_dir
        assert os.path.isdir(remote_dir)  # the "device" is this machine
    finally:
        transport.remove(remote_dir)
    assert not os.path.exists(remote_dir)
    # Whatever else mktemp's last line holds is refused rather than later removed with rm -rf.
    from edgeclf.devices.base import temp_dir_from_output

    for printed in ("", "Welcome\n", "/tmp/edgeclf.ab12CD34\nbye\n", "/\n", "/tmp/edgeclf.x/../..\n", "/tmp/edgeclf.a b\n"):
        with pytest.raises(DeviceError, match="mktemp on board printed"):
            temp_dir_from_output(printed, "/tmp", "board")


def test_adb_cleanup_ends_rm_options_before_the_path():
    from edgeclf.devices.adb import AdbTransport

    class RecordingAdb(AdbTransport):
        def __init__(self):  # no phone needed: only the command line is checked
            self.serial, self.name, self.connect_timeout, self.commands = "R5CT1234", "adb://R5CT1234", 5, []

        def run(self, argv, timeout):
            self.commands.append(argv)
            return CommandResult(0, "", "")

    phone = RecordingAdb()
    phone.remove("/data/local/tmp/edgeclf.ab12CD34")
    assert phone.commands == [["rm", "-rf", "--", "/data/local/tmp/edgeclf.ab12CD34"]]


# -- Ctrl-C / SIGTERM during validate stops the runner on the device too (issue 21, item 9) ---------
def _processes() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line) of every process here (the stand-in devices run on this machine)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        found[int(entry.name)] = (parent, cmdline)
    return found


def _has_model_open(pid: int, folder: str) -> bool:
    """Whether the runner has loaded its model (mapped or open): past the point where removing its folder would end it."""
    try:
        if f"{folder}/model" in Path(f"/proc/{pid}/maps").read_text():
            return True
        return any(f"{folder}/model" in os.readlink(fd) for fd in Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return False


def _wait_for(predicate, seconds: float, what: str):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {seconds:g} s waiting for {what}")


def _interrupt_validate(args: list[str], remote_dir: str, runner: str, signum: int, env: dict | None = None):
    """Start `edgeclf validate ARGS` (long runs), signal it once its runner runs on the device, and
    return its stderr and remote folder once no process there works in that folder any more.

    The folder is the one named by edgeclf's own ssh/adb client (a child of it): other tests may
    run runners of their own at the same time.
    """
    proc = subprocess.Popen([sys.executable, "-m", "edgeclf", "validate", *args, "--runs", "100000000", "--warmup", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {}), "PYTHONPATH": str(Path(__file__).resolve().parents[1])})

    def running_folder():
        if proc.poll() is not None:
            return "exited"
        table = _processes()
        for parent, cmdline in table.values():
            match = re.search(remote_dir, cmdline)
            if parent == proc.pid and match and runner in cmdline:
                folder = match.group(0)
                on_device = [pid for pid, (ppid, line) in table.items() if ppid != proc.pid and f"{folder}/{runner}" in line]
                return folder if any(_has_model_open(pid, folder) for pid in on_device) else None
        return None

    try:
        folder = _wait_for(running_folder, 120, "the runner to start on the device")
        assert proc.poll() is None, proc.communicate()
        time.sleep(1)  # well inside its timing loop
        proc.send_signal(signum)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr
    left = lambda: [line for _, line in _processes().values() if folder in line]
    try:
        _wait_for(lambda: not left(), 15, "the runner to stop")
    except AssertionError:
        raise AssertionError(f"still running on the device: {left()}") from None
    return stderr, folder


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_validate_stops_the_runner_on_an_ssh_device(ssh_device, tiny_int8, tmp_path, signum):
    # A runner that prints nothing more once it runs (its stderr goes nowhere), so no SIGPIPE ends it
    # by chance: only edgeclf can stop it.
    quiet_python = tmp_path / "python"
    quiet_python.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} "$@" 2>/dev/null\n')
    quiet_python.chmod(0o755)
    stderr, folder = _interrupt_validate([str(tiny_int8), "--device", f"ssh://{ssh_device.alias}", "--ssh-config",
                                          str(ssh_device.ssh_config), "--remote-python", str(quiet_python)],
                                 r"/tmp/edgeclf\.\w+", "runner.py ", signum)
    assert "error: interrupted" in stderr
    assert not Path(folder).exists()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_validate_stops_benchmark_model_on_an_android_device(android_device_factory, tiny_int8, signum):
    android_device = android_device_factory(hangup_kills=False)  # as adbd without a pty may
    stderr, folder = _interrupt_validate([str(tiny_int8), "--device", f"adb://{android_device.serial}",
                                          "--benchmark-binary", str(android_device.benchmark_model)],
                                 r"/data/local/tmp/edgeclf\.\w+", "benchmark_model --graph", signum,
                                 env=android_device.env)
    assert "error: interrupted" in stderr
    assert not (android_device.data_dir / Path(folder).name).exists()


# -- Exit codes come from results: a failed device or format is exit 3, files still written (item 11)
DEAD = "ssh://127.0.0.1:9"  # the discard port: nothing listens, ssh is refused at once


def _cli(*args):
    from click.testing import CliRunner

    from edgeclf.cli.main import cli

    return CliRunner().invoke(cli, [str(a) for a in args])


def test_validate_on_several_devices_exits_3_when_one_failed(tiny_int8):
    result = _cli("validate", tiny_int8, "--device", "local", "--device", DEAD, "--runs", 2, "--warmup", 0, "--json")
    assert result.exit_code == 3, result.output
    rows = {row["device_name"]: row for row in json.loads(result.stdout[result.stdout.index("{"):])["rows"]}
    assert rows["local"]["status"] == "ok" and "unreachable" in rows[DEAD]["status"]
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: 1 of 2 measurements failed: {DEAD}")


def test_bench_exits_3_when_its_only_device_or_one_of_several_failed(tiny_run, tmp_path):
    alone = _cli("bench", tiny_run, "--formats", "tflite:fp32", "--device", DEAD, "--runs", 2, "--warmup", 0,
                 "--out", tmp_path / "alone")
    assert alone.exit_code == 3, alone.output
    (row,) = json.loads((tmp_path / "alone" / "bench.json").read_text())["rows"]
    assert "unreachable" in row["status"]
    assert f"error: 1 of 1 measurements failed: tflite:fp32 (see the reasons in the table; the results are in {tmp_path / 'alone'})" in alone.stderr

    several = _cli("bench", tiny_run, "--formats", "tflite:fp32", "--device", "local", "--device", DEAD,
                   "--runs", 2, "--warmup", 0, "--out", tmp_path / "several")
    assert several.exit_code == 3, several.output
    rows = {row["device"]: row["status"] for row in json.loads((tmp_path / "several" / "bench.json").read_text())["rows"]}
    assert rows["local"] == "ok" and "unreachable" in rows[DEAD]
    assert f"measurements failed: tflite:fp32 on {DEAD}" in several.stderr

    fine = _cli("bench", tiny_run, "--formats", "tflite:fp32", "--runs", 2, "--warmup", 0, "--out", tmp_path / "fine")
    assert fine.exit_code == 0, fine.output


# -- One folder per device name, and a file-system error fails one stage, not the run (item 7)
def test_devices_differing_only_in_at_or_underscore_keep_their_own_results(ssh_device, tmp_path, monkeypatch):
    import dataclasses
    import errno

    from test_pipeline import FP32, write_project

    from edgeclf.jobs import run as run_job, run_file

    user = ssh_device.user
    config = tmp_path / "ssh_config"  # two host names for the one stand-in board
    config.write_text(ssh_device.ssh_config.read_text().replace(f"Host {ssh_device.alias}\n", f"Host board {user}_board\n"))
    at, underscore = f"ssh://{user}@board", f"ssh://{user}_board"
    path = write_project(tmp_path, FP32, devices=f"['{at}', '{underscore}']")
    pf = dataclasses.replace(run_file.load(path), device_options=DeviceOptions(
        remote_python=sys.executable, ssh_config=str(config), timeout=120))
    state = {s["name"]: s for s in run_job.run(pf)["stages"]}
    assert {name: s["status"] for name, s in state.items()} == dict.fromkeys(
        ["train", "export/tflite-fp32", f"validate/tflite-fp32@{at}", f"validate/tflite-fp32@{underscore}", "report", "compare"], "ran")
    out = tmp_path / "runs" / "tiny"
    assert [state[f"validate/tflite-fp32@{d}"]["output"] for d in (at, underscore)] == [
        f"mobilenetv2/validate/tflite-fp32@ssh~{user}%40board", f"mobilenetv2/validate/tflite-fp32@ssh~{user}_board"]
    assert all((out / state[f"validate/tflite-fp32@{d}"]["output"] / "result.json").is_file() for d in (at, underscore))
    report = out / "mobilenetv2" / "report"
    assert sorted(p.name for p in report.iterdir()) == ["report.html"]  # device results go in the page, not in made-up bench folders
    page = (report / "report.html").read_text()
    assert f"edgeclf run on {at}" in page and f"edgeclf run on {underscore}" in page
    rows = json.loads((out / "compare" / "compare.json").read_text())["rows"]
    assert [(r["device"], r["status"]) for r in rows] == [(at, "ok"), (underscore, "ok")]

    # A disk that fills up while the report is written fails that stage; the run still ends with its record.
    def disk_full(run_dir, out, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(out))

    monkeypatch.setattr("edgeclf.report.write_report", disk_full)
    again = {s["name"]: s for s in run_job.run(pf, force="report")["stages"]}
    assert again["report"]["status"] == "failed" and again["report"]["error"].startswith("disk full while writing ")
    assert again["compare"]["status"] == "cached"
    assert json.loads((out / "pipeline.json").read_text())["stages"][-2]["status"] == "failed"


def test_device_names_that_one_folder_would_hold_are_refused_when_planning(tmp_path):
    from test_pipeline import FP32, write_project

    from edgeclf.jobs import run as run_job, run_file

    pf = run_file.load(write_project(tmp_path, FP32, devices="['ssh://pi@Board', 'ssh://pi@board']"))
    with pytest.raises(UsageError, match=r"stages validate/tflite-fp32@ssh://pi@Board and validate/tflite-fp32@ssh://pi@board "
                                         r"would write the same folder .*name each device once"):
        run_job.plan(pf)
    assert not (tmp_path / "runs").exists()


# -- Clusters: TF_CONFIG and `--distribute multi-worker` (items 10, 16 and 17)
@pytest.mark.parametrize("tf_config, message", [
    ({"cluster": {"worker": "127.0.0.1:23471,127.0.0.1:23472"}, "task": {"type": "worker", "index": 0}},
     r'^TF_CONFIG cluster.worker must be a list of "host:port" strings, not "127.0.0.1:23471,127.0.0.1:23472" \(set TF_CONFIG'),
    ({"cluster": {"worker": ["127.0.0.1:23471", "127.0.0.1"]}, "task": {"type": "worker", "index": 0}},
     r'^TF_CONFIG cluster.worker must be a list of "host:port" strings'),
    ({"cluster": {"worker": ["127.0.0.1:23471", "127.0.0.1:23472"]}, "task": {"type": "worker", "index": 0.9}},
     r"^TF_CONFIG task index must be a whole number, not 0.9 \("),
    ({"cluster": {"worker": ["127.0.0.1:23471", "127.0.0.1:23472"]}, "task": {"type": "worker", "index": True}},
     r"^TF_CONFIG task index must be a whole number, not true"),
    ({"cluster": {"worker": ["127.0.0.1:23471"]}, "task": {"type": "chief", "index": 0}},
     r'^TF_CONFIG task type "chief" is not one of its cluster\'s \(worker\)'),
    (["worker"], r"^TF_CONFIG needs a `cluster` mapping and a `task` mapping"),
])
def test_a_tf_config_tensorflow_would_misread_is_refused_in_one_line(monkeypatch, tf_config, message):
    from edgeclf.pipeline import distribute

    monkeypatch.setenv("TF_CONFIG", json.dumps(tf_config))
    with pytest.raises(UsageError, match=message):
        distribute.cluster_role("multi-worker")
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": "1"}}))
    role = distribute.cluster_role("multi-worker")  # TensorFlow reads a digit string as the number
    assert role == distribute.Role(False, "worker 1") and role.address == "b:2" and role.peers == (("worker 0", "a:1"),)


def _cluster_worker(tmp_path, hosts: list[str], index: int, epochs: int = 1, **env) -> subprocess.Popen:
    """`edgeclf train --distribute multi-worker` as worker INDEX of HOSTS, on a tiny folder (127.0.0.1 only)."""
    from conftest import REPO, make_image_folder

    data = tmp_path / "data"
    if not data.is_dir():
        make_image_folder(data, {"red": 8, "green": 8}, size=16)
    (tmp_path / f"tmp{index}").mkdir(exist_ok=True)  # the non-chief's scratch folder
    argv = [sys.executable, "-m", "edgeclf", "train", str(data), "--out", str(tmp_path / "run"), "--arch", "mobilenetv2",
            "--weights", "none", "--alpha", "0.35", "--img-size", "32", "--head-epochs", "0",
            "--fine-tune-epochs", str(epochs), "--batch-size", "8", "--no-augment", "--seed", "1", "--distribute", "multi-worker"]
    env = dict(os.environ, PYTHONPATH=str(REPO), CUDA_VISIBLE_DEVICES="-1", TMPDIR=str(tmp_path / f"tmp{index}"),
               TF_CONFIG=json.dumps({"cluster": {"worker": hosts}, "task": {"type": "worker", "index": index}}), **env)
    return subprocess.Popen(argv, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _line_starting(proc: subprocess.Popen, prefix: str, timeout: float) -> str | None:
    """The first line of PROC's stderr that starts with PREFIX, or None after TIMEOUT seconds."""
    import queue
    import threading

    found: queue.Queue = queue.Queue()

    def read():
        found.put(next((line for line in proc.stderr if line.startswith(prefix)), None))

    threading.Thread(target=read, daemon=True).start()
    try:
        return found.get(timeout=timeout)
    except queue.Empty:
        return None


def _stop_all(*procs: subprocess.Popen) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def test_a_worker_that_never_starts_is_waited_for_with_a_line_then_given_up_on(tmp_path):
    from test_scale import _free_ports

    hosts = [f"127.0.0.1:{port}" for port in _free_ports(4)]
    alone = _cluster_worker(tmp_path / "a", hosts[:2], 0, EDGECLF_WORKER_TIMEOUT="3")
    stopped = _cluster_worker(tmp_path / "b", hosts[2:], 1, EDGECLF_WORKER_TIMEOUT="120")
    try:
        line = _line_starting(stopped, "waiting for worker 0", timeout=120)  # waiting in Python: SIGTERM still works
        assert line == f"waiting for worker 0 at {hosts[2]} (0 s of 120 s)\n"
        stopped.send_signal(signal.SIGTERM)
        assert stopped.wait(timeout=30) == 130 and "error: interrupted" in stopped.stderr.read()

        _, err = alone.communicate(timeout=120)  # it blocked for over 10 minutes
        assert alone.returncode == 1, err[-2000:]
        assert re.search(rf"^waiting for worker 1 at {re.escape(hosts[1])} \(\d s of 3 s\)$", err, re.M), err[-2000:]
        assert err.strip().splitlines()[-1] == (
            f"error: worker 1 at {hosts[1]} did not start within 3 s (run the same edgeclf command on every worker of "
            "TF_CONFIG, check the address and firewall, or wait longer with EDGECLF_WORKER_TIMEOUT=SECONDS)")
        assert not list((tmp_path / "a").glob("run*"))
    finally:
        _stop_all(alone, stopped)


def test_a_sigterm_stops_a_worker_of_a_running_cluster(tmp_path):
    from test_scale import _free_ports

    hosts = [f"127.0.0.1:{port}" for port in _free_ports(2)]
    chief, other = (_cluster_worker(tmp_path, hosts, index, epochs=40) for index in (0, 1))
    try:
        deadline = time.monotonic() + 300
        while not list((tmp_path / "tmp1").glob("edgeclf-worker-*")):  # its scratch folder: the strategy exists
            for proc in (chief, other):
                assert proc.poll() is None, proc.communicate()[1][-2000:]
            assert time.monotonic() < deadline, "the cluster did not start"
            time.sleep(0.2)
        time.sleep(2)
        other.send_signal(signal.SIGTERM)
        # Python runs the handler once the main thread leaves TensorFlow's C++ (a first step's
        # tracing and collectives, 60+ s when the suite's other worker loads both cores), so the
        # wait is generous; exit 130, not 0, is what shows the signal stopped the training.
        assert other.wait(timeout=240) == 130  # it used to train all 40 epochs and exit 0
        assert "error: interrupted" in other.stderr.read()
        assert list((tmp_path / "tmp1").iterdir()) == []  # its scratch folder went too
    finally:
        _stop_all(chief, other)


def test_a_port_already_in_use_is_one_line_naming_it(tmp_path):
    from test_scale import _free_ports

    hosts = [f"127.0.0.1:{port}" for port in _free_ports(2)]
    with socket.create_server(("127.0.0.1", int(hosts[0].rpartition(":")[2]))):  # another program holds worker 0's port
        worker = _cluster_worker(tmp_path, hosts, 0, EDGECLF_WORKER_TIMEOUT="60")
        try:
            _, err = worker.communicate(timeout=120)
        finally:
            _stop_all(worker)
    assert worker.returncode == 2 and "unexpected" not in err, err[-2000:]
    port = hosts[0].rpartition(":")[2]
    assert err.strip().splitlines()[-1] == (
        f"error: port {port} of worker 0 ({hosts[0]} in TF_CONFIG) is already in use on this machine (stop what listens "
        f"there (`ss -ltnp 'sport = :{port}'`) or give worker 0 a free port in every worker's TF_CONFIG)")


# -- Device groups (item 17)
def test_groups_may_hold_groups_and_a_cycle_is_named_as_one(tmp_path):
    from edgeclf.devices.targets import expand_devices

    devices = tmp_path / "devices.yaml"
    devices.write_text("targets:\n  pi4: {ssh: pi@pi4.local}\n  pi5: {ssh: pi@pi5.local}\n"
                       "groups:\n  pis: [pi4, pi5]\n  all: [local, pis, pi4]\n  a: [pi4, b]\n  b: [c]\n  c: [a]\n")
    assert expand_devices(["all"], str(devices)) == ["local", "pi4", "pi5"]
    with pytest.raises(UsageError, match=rf"^devices file {re.escape(str(devices))}: groups contain each other "
                                         r"\(a -> b -> c -> a\) \(remove one of them from the other\)$"):
        expand_devices(["a"], str(devices))
