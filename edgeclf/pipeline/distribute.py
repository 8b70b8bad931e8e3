"""Training on several devices (`--distribute mirrored`) or machines (`multi-worker`) with tf.distribute.

Every worker of a multi-worker cluster runs the same command and does the same work, because
tf.distribute needs all of them in every collective step (training, but also saving weights and
reading BatchNorm statistics). Only the chief's files are real: the others write theirs into a
private scratch directory that is deleted at the end, so they leave nothing visible.

`--batch-size` is the global batch, split evenly across all replicas; the learning rate is
used as given. Results therefore do not depend on how many replicas there are, up to
floating-point summation order. To use more devices for a bigger batch, raise both
`--batch-size` and `--lr` by the same factor (the linear scaling rule).
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from edgeclf import console, tfenv
from edgeclf.errors import DeviceError, UsageError

STRATEGIES = ("none", "mirrored", "multi-worker")


@dataclass(frozen=True)
class Role:
    chief: bool
    task: str  # e.g. "worker 1", for messages
    address: str | None = field(default=None, compare=False)  # this task's host:port in TF_CONFIG
    peers: tuple[tuple[str, str], ...] = field(default=(), compare=False)  # (task, host:port) of the others


TF_CONFIG_HINT = ('set TF_CONFIG on every worker, e.g. {"cluster": {"worker": ["host1:port", "host2:port"]}, '
                  '"task": {"type": "worker", "index": 0}}')


def cluster_role(name: str) -> Role:
    """Whether this process writes the run: always, except on a multi-worker cluster's other workers."""
    if name not in STRATEGIES:
        raise UsageError(f"--distribute {name} is not supported", f"use one of {', '.join(STRATEGIES)}")
    if name != "multi-worker":
        return Role(True, "local")
    raw = os.environ.get("TF_CONFIG", "")
    if not raw.strip():
        raise UsageError("--distribute multi-worker needs the TF_CONFIG environment variable", TF_CONFIG_HINT)
    cluster, kind, index = _read_tf_config(raw)
    chief = kind == "chief" or (kind == "worker" and index == 0 and "chief" not in cluster)
    peers = tuple((f"{k} {i}", address) for k, members in cluster.items() for i, address in enumerate(members)
                  if (k, i) != (kind, index))
    return Role(chief, f"{kind} {index}", cluster[kind][index], peers)


def _read_tf_config(raw: str) -> tuple[dict[str, list[str]], str, int]:
    """TF_CONFIG's cluster (task type -> list of host:port), task type and index, each checked:
    TensorFlow itself truncates an index of 0.9 to 0 and fails deep inside on a string list."""
    def bad(what: str):
        return UsageError(f"TF_CONFIG {what}", TF_CONFIG_HINT)

    try:
        config = json.loads(raw)
    except ValueError as exc:
        raise bad(f"is not a valid cluster description (not JSON: {exc})") from None
    cluster, task = (config.get("cluster"), config.get("task")) if isinstance(config, dict) else (None, None)
    if not isinstance(cluster, dict) or not isinstance(task, dict):
        raise bad("needs a `cluster` mapping and a `task` mapping")
    for kind, members in cluster.items():
        if not isinstance(members, list) or not members or not all(isinstance(m, str) and _port(m) for m in members):
            raise bad(f"cluster.{kind} must be a list of \"host:port\" strings, not {json.dumps(members)[:80]}")
    kind, index = task.get("type"), task.get("index")
    if kind not in cluster:
        raise bad(f"task type {json.dumps(kind)} is not one of its cluster's ({', '.join(cluster)})")
    if not (type(index) is int or (isinstance(index, str) and index.isdigit())):
        raise bad(f"task index must be a whole number, not {json.dumps(index)}")
    if not 0 <= int(index) < len(cluster[kind]):
        raise bad(f"task index {index} is not in its {kind} list of {len(cluster[kind])}")
    return cluster, kind, int(index)


def _port(address: str) -> int | None:
    """The port of "host:port" (or "[v6]:port"), None if it is not one."""
    host, _, port = address.rpartition(":")
    return int(port) if host and port.isdigit() and 0 < int(port) < 65536 else None


def strategy(name: str):
    """The tf.distribute strategy for `--distribute` (None for none); create it before any other TensorFlow work."""
    tf = tfenv.tf()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi-worker":
        role = cluster_role(name)  # checks TF_CONFIG
        timeout = worker_timeout()
        with _holding_port(role):  # peers probing us find this port open until TensorFlow takes it over
            _wait_for_peers(role, timeout)
        return _multi_worker_strategy(tf, role)
    return None  # the default: one device, built and trained exactly as without tf.distribute


# Multi-worker start-up. MultiWorkerMirroredStrategy() waits, inside TensorFlow and deaf to
# Ctrl-C and SIGTERM, until every task of the cluster has joined: a worker that never starts
# blocked it for good. So every worker first opens its own port, then waits, in Python and with
# a progress line, until every peer's port answers (its edgeclf got this far), with a deadline.
WORKER_TIMEOUT_ENV = "EDGECLF_WORKER_TIMEOUT"
DEFAULT_WORKER_TIMEOUT_S = 300.0
PROGRESS_EVERY_S = 5.0


def worker_timeout() -> float:
    """Seconds to wait for the other workers: $EDGECLF_WORKER_TIMEOUT, else 300."""
    raw = os.environ.get(WORKER_TIMEOUT_ENV, "").strip()
    try:
        seconds = float(raw) if raw else DEFAULT_WORKER_TIMEOUT_S
    except ValueError:
        seconds = -1.0
    if not 0 < seconds < float("inf"):
        raise UsageError(f"{WORKER_TIMEOUT_ENV}={raw} is not a number of seconds", f"e.g. {WORKER_TIMEOUT_ENV}=600")
    return seconds


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


@contextlib.contextmanager
def _holding_port(role: Role):
    _, port = _split(role.address)
    try:
        if socket.has_dualstack_ipv6():
            server = socket.create_server(("", port), family=socket.AF_INET6, dualstack_ipv6=True)
        else:
            server = socket.create_server(("", port))
    except OSError as exc:
        raise _port_taken(role) if exc.errno == errno.EADDRINUSE else exc
    server.settimeout(0.2)
    done = threading.Event()

    def answer():  # accept and hang up: a probe only needs the connection
        while not done.is_set():
            try:
                server.accept()[0].close()
            except OSError:  # socket.timeout included
                continue

    answering = threading.Thread(target=answer, name="edgeclf worker port", daemon=True)
    answering.start()
    try:
        yield
    finally:  # the port is free only once no accept() holds it, and TensorFlow binds it at once
        done.set()
        answering.join()
        server.close()


def _port_taken(role: Role) -> UsageError:
    port = _split(role.address)[1]
    return UsageError(f"port {port} of {role.task} ({role.address} in TF_CONFIG) is already in use on this machine",
                      f"stop what listens there (`ss -ltnp 'sport = :{port}'`) or give {role.task} a free port in every worker's TF_CONFIG")


def _wait_for_peers(role: Role, timeout: float) -> None:
    started = time.monotonic()
    waiting, next_line = list(role.peers), 0.0
    while True:
        waiting = [(task, address) for task, address in waiting if not _answers(address)]
        elapsed = time.monotonic() - started
        if not waiting:
            return
        if elapsed >= timeout:
            task, address = waiting[0]
            raise DeviceError(f"{task} at {address} did not start within {timeout:g} s",
                              f"run the same edgeclf command on every worker of TF_CONFIG, check the address and firewall, "
                              f"or wait longer with {WORKER_TIMEOUT_ENV}=SECONDS")
        if elapsed >= next_line:
            task, address = waiting[0]
            more = f" and {len(waiting) - 1} more" if len(waiting) > 1 else ""
            console.info(f"waiting for {task} at {address}{more} ({elapsed:.0f} s of {timeout:g} s)")
            next_line = elapsed + PROGRESS_EVERY_S
        time.sleep(0.5)  # in Python, so Ctrl-C and SIGTERM stop the wait


def _answers(address: str) -> bool:
    try:
        socket.create_connection(_split(address), timeout=2).close()
        return True
    except OSError:
        return False


def _multi_worker_strategy(tf, role: Role):
    """The strategy, with our SIGINT and SIGTERM handlers back: TensorFlow's preemption notifier
    takes SIGTERM over, and a worker told to stop then trained on to the end and exited 0."""
    ours = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        return tf.distribute.MultiWorkerMirroredStrategy()
    except Exception as exc:
        if "Could not start gRPC server" in str(exc):  # taken between our check and TensorFlow's bind
            raise _port_taken(role) from None
        raise
    finally:
        if threading.current_thread() is threading.main_thread():
            for sig, handler in ours.items():
                if handler is not None:
                    signal.signal(sig, handler)


def scope(strategy):
    """Where models, optimizers and checkpoints must be created: the strategy's scope, if any."""
    return strategy.scope() if strategy is not None else contextlib.nullcontext()


@dataclass
class Place:
    """Where this process writes: the real directories on the chief, scratch copies elsewhere."""

    work: Path
    out: Path
    chief: bool


@contextlib.contextmanager
def place(role: Role, work: Path, out: Path, resuming: bool, skip: tuple[str, ...] = ()):
    """On the chief: `work` and `out` as they are. On another worker: a scratch directory that
    is deleted when the job ends, however it ends; when resuming it starts as a copy of the
    chief's checkpoint (so --resume needs a filesystem all workers share), without `skip`."""
    if role.chief:
        yield Place(work, out, True)
        return
    scratch = Path(tempfile.mkdtemp(prefix="edgeclf-worker-"))
    try:
        private = scratch / work.name
        if resuming:
            shutil.copytree(work, private, ignore=shutil.ignore_patterns(*skip))
        yield Place(private, scratch / out.name, False)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
