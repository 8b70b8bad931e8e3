"""Several devices at once: one thread per device, and that device's jobs one after another.

Never two jobs on one device at a time (two latency measurements would disturb each other),
while the wall time for N devices stays close to the slowest one. A job that fails becomes
an outcome with its one-line reason; the device's other jobs and the other devices go on.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Callable

from edgeclf.errors import EdgeclfError, PartialFailure, failure_line, first_line


@dataclass
class Outcome:
    device: str
    index: int  # position in that device's job list
    result: object | None
    error: str | None  # one line, when the job failed
    seconds: float

    @property
    def ok(self) -> bool:
        return self.error is None


def run_on_devices(jobs: dict[str, list[Callable[[], object]]],
                   on_done: Callable[[Outcome], None] | None = None) -> dict[str, list[Outcome]]:
    """Run each device's jobs in order, devices in parallel; a single device runs in this thread."""
    outcomes: dict[str, list[Outcome]] = {device: [] for device in jobs}
    report_lock = threading.Lock()

    several = len(jobs) > 1

    def work(device: str) -> None:
        for index, job in enumerate(jobs[device]):
            outcome = _run_one(device, index, job, catch_all=several)
            outcomes[device].append(outcome)
            if on_done is not None:
                with report_lock:
                    on_done(outcome)

    if not several:
        for device in jobs:
            work(device)
        return outcomes
    threads = [threading.Thread(target=work, args=(device,), name=f"device {device}", daemon=True) for device in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        while thread.is_alive():  # a timed join keeps Ctrl-C working in the main thread
            thread.join(0.2)
    return outcomes


def _run_one(device: str, index: int, job: Callable[[], object], catch_all: bool) -> Outcome:
    started = time.perf_counter()
    try:
        result, error = job(), None
    except (EdgeclfError, OSError) as exc:  # an OSError (disk full, a folder in the way) fails this job only
        result, error = None, failure_line(exc)
    except Exception as exc:
        if not catch_all:  # one device: a surprise goes to the CLI's error boundary, as before
            raise
        # with several devices, a surprise on one must not stop the others
        result, error = None, f"unexpected {type(exc).__name__}: {first_line(exc)}"
    return Outcome(device, index, result, error, round(time.perf_counter() - started, 2))


def check_results(rows: list[dict], describe: Callable[[dict], str], where: str | None = None) -> None:
    """Exit codes come from results: once the table and files are out, any row whose status is
    not "ok" fails the command with PartialFailure (exit 3)."""
    failed = [describe(row) for row in rows if row.get("status") != "ok"]
    if failed:
        shown = ", ".join(failed[:3]) + (" ..." if len(failed) > 3 else "")
        raise PartialFailure(f"{len(failed)} of {len(rows)} measurements failed: {shown}",
                             "see the reasons in the table" + (f"; the results are in {where}" if where else ""))
