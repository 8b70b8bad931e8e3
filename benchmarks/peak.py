"""Run a Python command in its own process and measure that process's own peak resident memory.

    python benchmarks/peak.py REPORT.json [--every SECONDS] -- -m edgeclf audit DATA ...

`ru_maxrss` from wait4 is not the child's own figure on Linux: exec keeps the high-water mark
of the memory it replaces, and Python's subprocess starts children with vfork, whose memory is
the parent's. So a child of a big parent reports the parent's peak. This wrapper runs inside
the child instead: it samples VmRSS every `--every` seconds and, at exit, writes VmHWM (the
peak of this process's memory only) and the samples to REPORT.json. The benchmarks start
their commands through `measured()`.
"""
from __future__ import annotations

import atexit
import json
import re
import runpy
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve()


def _status_mb(field: str) -> float:
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"{field}:\s+(\d+)", text)[1]) / 1024


def measured(argv: list[str], env: dict, log: Path, report: Path, every: float = 0.5) -> tuple[int, float, dict]:
    """Run `python ARGV` (e.g. ["-m", "edgeclf", ...]) through this wrapper; returns its exit code,
    wall seconds and the report (peak_rss_mb, and rss samples as [seconds, MB])."""
    report.unlink(missing_ok=True)
    started = time.perf_counter()
    with open(log, "w") as sink:
        code = subprocess.call([sys.executable, str(HERE), str(report), "--every", str(every), "--", *argv],
                               env=env, stdout=subprocess.DEVNULL, stderr=sink)
    wall = time.perf_counter() - started
    return code, wall, json.loads(report.read_text()) if report.is_file() else {}


def _main() -> None:
    report, rest = Path(sys.argv[1]), sys.argv[2:]
    every = 0.5
    if rest[:1] == ["--every"]:
        every, rest = float(rest[1]), rest[2:]
    if rest[:1] != ["--"] or rest[1:2] != ["-m"] or len(rest) < 3:
        raise SystemExit("usage: peak.py REPORT.json [--every S] -- -m MODULE ARGS...")
    module, args = rest[2], rest[3:]
    samples: list[list[float]] = []
    started = time.perf_counter()

    def sample() -> None:
        while True:
            samples.append([round(time.perf_counter() - started, 2), round(_status_mb("VmRSS"), 1)])
            time.sleep(every)

    threading.Thread(target=sample, daemon=True).start()

    def write() -> None:
        report.write_text(json.dumps({"peak_rss_mb": round(_status_mb("VmHWM"), 1),
                                      "seconds": round(time.perf_counter() - started, 2), "rss": samples}))

    atexit.register(write)
    sys.argv = [module, *args]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    # This folder's scripts (audit.py, scale.py, ...) must not shadow modules the command imports.
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE.parent]
    _main()
