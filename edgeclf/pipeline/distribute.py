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
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from edgeclf import tfenv
from edgeclf.errors import UsageError

STRATEGIES = ("none", "mirrored", "multi-worker")


@dataclass(frozen=True)
class Role:
    chief: bool
    task: str  # e.g. "worker 1", for messages


def cluster_role(name: str) -> Role:
    """Whether this process writes the run: always, except on a multi-worker cluster's other workers."""
    if name not in STRATEGIES:
        raise UsageError(f"--distribute {name} is not supported", f"use one of {', '.join(STRATEGIES)}")
    if name != "multi-worker":
        return Role(True, "local")
    raw = os.environ.get("TF_CONFIG", "")
    hint = 'set TF_CONFIG on every worker, e.g. {"cluster": {"worker": ["host1:port", "host2:port"]}, "task": {"type": "worker", "index": 0}}'
    if not raw.strip():
        raise UsageError("--distribute multi-worker needs the TF_CONFIG environment variable", hint)
    try:
        config = json.loads(raw)
        cluster, task = config["cluster"], config["task"]
        kind, index = str(task["type"]), int(task["index"])
        members = cluster[kind]
    except (ValueError, KeyError, TypeError) as exc:
        raise UsageError(f"TF_CONFIG is not a valid cluster description ({type(exc).__name__}: {exc})", hint) from exc
    if not 0 <= index < len(members):
        raise UsageError(f"TF_CONFIG's task index {index} is not in its {kind} list", hint)
    chief = kind == "chief" or (kind == "worker" and index == 0 and "chief" not in cluster)
    return Role(chief, f"{kind} {index}")


def strategy(name: str):
    """The tf.distribute strategy for `--distribute` (None for none); create it before any other TensorFlow work."""
    tf = tfenv.tf()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi-worker":
        cluster_role(name)  # checks TF_CONFIG
        return tf.distribute.MultiWorkerMirroredStrategy()
    return None  # the default: one device, built and trained exactly as without tf.distribute


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
