"""Benchmark `edgeclf bench` on this machine (local) and over the SSH loopback, and time the
emulated-Pi validation of the int8 model end to end.

    .venv/bin/python benchmarks/devices.py RUN_DIR --data TEST_DIR [--runs 100]

It starts the same stand-ins the tests use (tests/devices_infra): a real sshd on 127.0.0.1
for this machine and a chrooted arm64 "Pi" under qemu-user (needs root and binfmt_misc).
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from devices_infra.arm64_root import add_root_user, ensure_arm64_root, ensure_user  # noqa: E402
from devices_infra.sshd import SSHServer, wait_for_ssh  # noqa: E402

EDGECLF = [sys.executable, "-m", "edgeclf"]


def run(argv: list[str]) -> float:
    print("$ " + " ".join(argv[2:] if argv[:2] == EDGECLF[:2] else argv), flush=True)
    started = time.perf_counter()
    subprocess.run(argv, check=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run_dir")
    parser.add_argument("--data", required=True)
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--formats", default="tflite:fp32,tflite:int8,onnx:fp32,onnx:int8,openvino:fp32,openvino:int8")
    args = parser.parse_args()
    common = ["--formats", args.formats, "--data", args.data, "--threads", "1", "--runs", str(args.runs)]

    run([*EDGECLF, "bench", args.run_dir, "--device", "local", *common])

    loop = SSHServer(alias_prefix="edgeclf-bench").start()
    try:
        target = next(iter(loop.targets.values()))
        wait_for_ssh(target)
        run([*EDGECLF, "bench", args.run_dir, "--device", f"ssh://{target.alias}", "--ssh-config", str(target.ssh_config),
             "--remote-python", sys.executable, *common])
    finally:
        loop.stop()

    root = ensure_arm64_root(print)
    uid, gid = ensure_user("pi", comment="edgeclf test device")
    add_root_user(root.path, "pi", uid, gid, "/home/pi")
    pi = SSHServer(users=["pi"], chroot={"pi": root.path}, alias_prefix="edgeclf-pi").start()
    try:
        target = pi.targets["pi"]
        wait_for_ssh(target, timeout=60)
        seconds = run([*EDGECLF, "validate", str(Path(args.run_dir) / "exports" / "tflite-int8"), "--data", args.data,
                       "--device", f"ssh://{target.alias}", "--ssh-config", str(target.ssh_config),
                       "--remote-python", root.python, "--emulated", "--threads", "1", "--runs", "20"])
        print(f"emulated Pi validation of the int8 model, end to end: {seconds:.1f} s")
    finally:
        pi.stop()


if __name__ == "__main__":
    main()
